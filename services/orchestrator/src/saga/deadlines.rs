//! Deadlines: how long a payment may wait in each state for the answer to its outstanding
//! command before the sweeper ([`crate::saga::sweeper`]) re-sends that command.
//!
//! Why every state has one: the saga moves only when an answer arrives, and an answer can be
//! lost for many reasons (a message parked as a dead letter, an event deleted by hand, a
//! service that was down when it mattered). Without a deadline such a payment waits forever
//! and nobody notices. With one, the step is tried again (every command is idempotent where
//! it lands: a repeat is answered with the outcome already reached) and, after
//! `max_nudges` re-sends without progress, the payment is flagged as needing an operator.
//!
//! | state | waits for | default |
//! |---|---|---|
//! | CREATED | risk's decision | 60 s |
//! | RISK_REVIEW | a person (flagged, never re-sent) | 24 h |
//! | APPROVED | the authorization | 2 min |
//! | AUTHORIZED | the capture | 2 min |
//! | AUTHORIZED, manual capture not yet asked for | the merchant's capture or cancel; then voided (CANCELED) | 7 days |
//! | CAPTURED | the ledger's posting | 60 s |
//! | any, compensating | the void or refund the saga started | 10 min |
//! | a merchant refund, REQUESTED or PROCESSED | the provider's refund, the ledger's posting | 10 min |

use crate::store::Compensation;
use sagapay_domain::PaymentStatus;
use sagapay_service_kit::config::{env_ms, env_parse};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Deadlines {
    pub created: Duration,
    pub risk_review: Duration,
    pub approved: Duration,
    pub authorized: Duration,
    /// How long a manual payment's authorization waits for its merchant before it is voided.
    pub manual_capture: Duration,
    pub captured: Duration,
    pub compensating: Duration,
    pub refund: Duration,
    /// Re-sends of one step before the payment needs attention.
    pub max_nudges: i32,
    /// How often the sweeper looks for payments past their deadline.
    pub sweep_interval: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Self {
            created: Duration::from_secs(60),
            risk_review: Duration::from_secs(24 * 3600),
            approved: Duration::from_secs(120),
            authorized: Duration::from_secs(120),
            manual_capture: Duration::from_secs(7 * 24 * 3600),
            captured: Duration::from_secs(60),
            compensating: Duration::from_secs(600),
            refund: Duration::from_secs(600),
            max_nudges: 3,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

impl Deadlines {
    /// The deadlines' settings (`SAGAPAY_DEADLINE_*`, see `docs/configuration.md`).
    pub fn from_env() -> anyhow::Result<Self> {
        let d = Self::default();
        Ok(Self {
            created: env_ms("SAGAPAY_DEADLINE_CREATED_MS", d.created)?,
            risk_review: env_ms("SAGAPAY_DEADLINE_RISK_REVIEW_MS", d.risk_review)?,
            approved: env_ms("SAGAPAY_DEADLINE_APPROVED_MS", d.approved)?,
            authorized: env_ms("SAGAPAY_DEADLINE_AUTHORIZED_MS", d.authorized)?,
            manual_capture: env_ms("SAGAPAY_AUTHORIZATION_EXPIRY_MS", d.manual_capture)?,
            captured: env_ms("SAGAPAY_DEADLINE_CAPTURED_MS", d.captured)?,
            compensating: env_ms("SAGAPAY_DEADLINE_COMPENSATING_MS", d.compensating)?,
            refund: env_ms("SAGAPAY_DEADLINE_REFUND_MS", d.refund)?,
            max_nudges: env_parse("SAGAPAY_DEADLINE_NUDGES", d.max_nudges)?,
            sweep_interval: env_ms("SAGAPAY_SWEEP_INTERVAL_MS", d.sweep_interval)?,
        })
    }

    /// How long a payment may stay in `status` (with `compensation` in progress, if any;
    /// `awaiting_merchant`: an authorized manual payment nobody acted on yet); `None` for a
    /// terminal state.
    pub fn after(
        &self,
        status: PaymentStatus,
        compensation: Option<Compensation>,
        awaiting_merchant: bool,
    ) -> Option<Duration> {
        if status.is_terminal() {
            return None;
        }
        if compensation.is_some() {
            return Some(self.compensating);
        }
        Some(match status {
            PaymentStatus::Created => self.created,
            PaymentStatus::RiskReview => self.risk_review,
            PaymentStatus::Approved => self.approved,
            PaymentStatus::Authorized if awaiting_merchant => self.manual_capture,
            PaymentStatus::Authorized => self.authorized,
            PaymentStatus::Captured => self.captured,
            // Terminal states returned above; SETTLED and PARTIALLY_REFUNDED are terminal
            // for the payment (refunds in flight have deadlines of their own).
            PaymentStatus::Settled
            | PaymentStatus::Failed
            | PaymentStatus::Reversed
            | PaymentStatus::PartiallyRefunded
            | PaymentStatus::Refunded
            | PaymentStatus::Canceled => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_waiting_state_has_a_deadline_and_terminal_ones_none() {
        let d = Deadlines::default();
        for status in PaymentStatus::ALL {
            assert_eq!(
                d.after(status, None, false).is_some(),
                !status.is_terminal(),
                "{status}"
            );
        }
        assert_eq!(
            d.after(PaymentStatus::Authorized, Some(Compensation::Void), false),
            Some(d.compensating)
        );
        assert_eq!(
            d.after(PaymentStatus::Settled, Some(Compensation::Refund), false),
            None
        );
        assert_eq!(
            d.after(PaymentStatus::Authorized, None, true),
            Some(d.manual_capture)
        );
    }
}
