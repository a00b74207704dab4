//! The payment state machine. One table, `TRANSITIONS`, says which moves are legal; the
//! orchestrator checks every change against it and writes it with compare-and-set on
//! `(status, state_version)`.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PaymentStatus {
    Created,
    RiskReview,
    Approved,
    Authorized,
    Captured,
    Settled,
    Failed,
    Reversed,
    PartiallyRefunded,
    Refunded,
    /// A manually captured payment whose authorization was voided before any capture: by
    /// the merchant, or because it was not captured in time.
    Canceled,
}

use PaymentStatus::*;

/// Every legal transition `(from, to)`. Anything not listed is rejected.
pub const TRANSITIONS: &[(PaymentStatus, PaymentStatus)] = &[
    // risk
    (Created, Approved),
    (Created, RiskReview),
    (Created, Failed),
    (RiskReview, Approved),
    (RiskReview, Failed),
    // provider authorization
    (Approved, Authorized),
    (Approved, Failed),
    (Approved, Reversed), // authorization outcome unknown: voided
    // provider capture
    (Authorized, Captured),
    (Authorized, Reversed), // capture failed: authorization voided
    (Authorized, Canceled), // manual capture: voided by the merchant or on expiry
    (Authorized, Failed),   // the provider refused the void: an operator ends it, uncaptured
    // ledger
    (Captured, Settled),
    (Captured, Reversed), // ledger could not post: capture refunded
    // refunds after settlement
    (Settled, PartiallyRefunded),
    (Settled, Refunded),
    (PartiallyRefunded, PartiallyRefunded),
    (PartiallyRefunded, Refunded),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal payment transition {from} -> {to}")]
pub struct TransitionError {
    pub from: PaymentStatus,
    pub to: PaymentStatus,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 11] = [
        Created,
        RiskReview,
        Approved,
        Authorized,
        Captured,
        Settled,
        Failed,
        Reversed,
        PartiallyRefunded,
        Refunded,
        Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Created => "CREATED",
            RiskReview => "RISK_REVIEW",
            Approved => "APPROVED",
            Authorized => "AUTHORIZED",
            Captured => "CAPTURED",
            Settled => "SETTLED",
            Failed => "FAILED",
            Reversed => "REVERSED",
            PartiallyRefunded => "PARTIALLY_REFUNDED",
            Refunded => "REFUNDED",
            Canceled => "CANCELED",
        }
    }

    /// Terminal for the payment saga: no saga step will move it again. (Refunds may still
    /// follow a SETTLED payment; they are saga steps of their own.)
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Settled | Failed | Reversed | PartiallyRefunded | Refunded | Canceled
        )
    }

    pub fn can_transition_to(self, to: PaymentStatus) -> bool {
        TRANSITIONS.iter().any(|&(f, t)| f == self && t == to)
    }

    /// Checks a transition against the table.
    pub fn transition_to(self, to: PaymentStatus) -> Result<PaymentStatus, TransitionError> {
        if self.can_transition_to(to) {
            Ok(to)
        } else {
            Err(TransitionError { from: self, to })
        }
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown payment status {0:?}")]
pub struct UnknownStatus(pub String);

impl FromStr for PaymentStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_happy_path_is_legal_step_by_step() {
        let path = [Created, Approved, Authorized, Captured, Settled];
        for pair in path.windows(2) {
            assert!(pair[0].can_transition_to(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn skipping_steps_and_leaving_terminal_states_is_illegal() {
        assert!(Created.transition_to(Settled).is_err());
        assert!(Approved.transition_to(Captured).is_err());
        for terminal in [Failed, Reversed, Refunded] {
            for to in PaymentStatus::ALL {
                assert!(!terminal.can_transition_to(to), "{terminal} -> {to}");
            }
        }
    }

    #[test]
    fn every_state_round_trips_through_its_name() {
        for st in PaymentStatus::ALL {
            assert_eq!(st.as_str().parse::<PaymentStatus>().unwrap(), st);
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(json, format!("\"{}\"", st.as_str()));
        }
    }

    #[test]
    fn the_table_has_no_duplicates() {
        for (i, a) in TRANSITIONS.iter().enumerate() {
            assert!(!TRANSITIONS[i + 1..].contains(a), "duplicate {a:?}");
        }
    }
}
