//! The events merchants receive by webhook and read from `GET /events`: their types, as the
//! public API spells them. One list, used by the gateway to validate subscriptions, by the
//! notification service to name what it records, and by the API document.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum MerchantEventType {
    /// A manual payment waits for its capture.
    #[serde(rename = "payment.authorized")]
    PaymentAuthorized,
    #[serde(rename = "payment.settled")]
    PaymentSettled,
    #[serde(rename = "payment.failed")]
    PaymentFailed,
    #[serde(rename = "payment.reversed")]
    PaymentReversed,
    #[serde(rename = "payment.canceled")]
    PaymentCanceled,
    /// A merchant's refund went through (refunded and posted).
    #[serde(rename = "refund.succeeded")]
    RefundSucceeded,
    /// The provider refused a merchant's refund: it did not happen.
    #[serde(rename = "refund.failed")]
    RefundFailed,
}

impl MerchantEventType {
    pub const ALL: [Self; 7] = [
        Self::PaymentAuthorized,
        Self::PaymentSettled,
        Self::PaymentFailed,
        Self::PaymentReversed,
        Self::PaymentCanceled,
        Self::RefundSucceeded,
        Self::RefundFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PaymentAuthorized => "payment.authorized",
            Self::PaymentSettled => "payment.settled",
            Self::PaymentFailed => "payment.failed",
            Self::PaymentReversed => "payment.reversed",
            Self::PaymentCanceled => "payment.canceled",
            Self::RefundSucceeded => "refund.succeeded",
            Self::RefundFailed => "refund.failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// What a payment reaching the terminal `status` tells its merchant.
    pub fn of_final_status(status: crate::PaymentStatus) -> Option<Self> {
        use crate::PaymentStatus::*;
        match status {
            Settled => Some(Self::PaymentSettled),
            Failed => Some(Self::PaymentFailed),
            Reversed => Some(Self::PaymentReversed),
            Canceled => Some(Self::PaymentCanceled),
            // The refund that made it so is its own event (refund.succeeded).
            Created | RiskReview | Approved | Authorized | Captured | PartiallyRefunded
            | Refunded => None,
        }
    }
}

impl std::fmt::Display for MerchantEventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_match_serde() {
        for t in MerchantEventType::ALL {
            assert_eq!(MerchantEventType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_value(t).unwrap(),
                serde_json::json!(t.as_str())
            );
        }
        assert_eq!(MerchantEventType::parse("payment.SETTLED"), None);
        let terminal = crate::PaymentStatus::ALL.into_iter().filter(|s| {
            s.is_terminal()
                && !matches!(
                    s,
                    crate::PaymentStatus::PartiallyRefunded | crate::PaymentStatus::Refunded
                )
        });
        for s in terminal {
            assert!(MerchantEventType::of_final_status(s).is_some(), "{s:?}");
        }
    }
}
