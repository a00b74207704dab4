//! A payment as the API shows it: created, read whole, listed.

use crate::refunds::Refund;
use chrono::{DateTime, Utc};
use sagapay_domain::{AmountMinor, Currency, CustomerId, PaymentStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The answer to creating a payment (also to its replay).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentCreated {
    pub payment_id: Uuid,
    pub status: PaymentStatus,
}

/// When a payment is captured.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum CaptureMethod {
    /// As soon as it is authorized (the default).
    #[default]
    Automatic,
    /// When the merchant asks (`POST /payments/{id}/capture`), or never (cancel, expiry).
    Manual,
}

impl From<sagapay_domain::events::CaptureMethod> for CaptureMethod {
    fn from(m: sagapay_domain::events::CaptureMethod) -> Self {
        match m {
            sagapay_domain::events::CaptureMethod::Automatic => CaptureMethod::Automatic,
            sagapay_domain::events::CaptureMethod::Manual => CaptureMethod::Manual,
        }
    }
}

impl From<CaptureMethod> for sagapay_domain::events::CaptureMethod {
    fn from(m: CaptureMethod) -> Self {
        match m {
            CaptureMethod::Automatic => sagapay_domain::events::CaptureMethod::Automatic,
            CaptureMethod::Manual => sagapay_domain::events::CaptureMethod::Manual,
        }
    }
}

/// What a timeline entry records.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TimelineKind {
    /// A change of state.
    Transition,
    /// A saga step that did not change the state (a command sent again, a refund posted).
    Step,
}

impl TimelineKind {
    pub const ALL: [Self; 2] = [Self::Transition, Self::Step];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transition => "TRANSITION",
            Self::Step => "STEP",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One step of a payment's history.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimelineEntry {
    pub kind: TimelineKind,
    /// The state before a transition; none for the payment's creation.
    pub from_state: Option<PaymentStatus>,
    /// The state after a transition, or the state a step happened in.
    pub to_state: PaymentStatus,
    pub reason: String,
    pub event_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// A payment, with its timeline and refunds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Payment {
    pub payment_id: Uuid,
    pub status: PaymentStatus,
    /// Integer minor units of the currency.
    #[cfg_attr(feature = "openapi", schema(value_type = i64, example = 2500))]
    pub amount_cents: AmountMinor,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "USD"))]
    pub currency: Currency,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "cus_42"))]
    pub customer_id: CustomerId,
    pub capture_method: CaptureMethod,
    /// What was captured, once it was (a manual capture may take less than the amount).
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub amount_captured_cents: Option<AmountMinor>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub timeline: Vec<TimelineEntry>,
    pub refunds: Vec<Refund>,
}

/// A payment as listed (no timeline or refunds: `GET /payments/{id}` has those).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentSummary {
    pub payment_id: Uuid,
    pub status: PaymentStatus,
    #[cfg_attr(feature = "openapi", schema(value_type = i64, example = 2500))]
    pub amount_cents: AmountMinor,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "USD"))]
    pub currency: Currency,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "cus_42"))]
    pub customer_id: CustomerId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A page of payments, newest first; `has_more` when another page follows (ask for it with
/// `starting_after` set to the last id of this one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PaymentPage {
    pub data: Vec<PaymentSummary>,
    pub has_more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_kinds_parse_back_and_match_serde() {
        for k in TimelineKind::ALL {
            assert_eq!(TimelineKind::parse(k.as_str()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }

    #[test]
    fn capture_methods_are_lowercase_on_the_wire() {
        assert_eq!(
            serde_json::to_value(CaptureMethod::Manual).unwrap(),
            serde_json::json!("manual")
        );
        assert_eq!(
            CaptureMethod::from(sagapay_domain::events::CaptureMethod::Automatic),
            CaptureMethod::Automatic
        );
    }
}
