//! The payment as the saga decides on it: a stage whose variants carry what is known in it
//! (the authorization, the capture, a compensation under way), the terms the merchant asked
//! for, what the merchant did with a manual payment, and its refunds. Built from the stored
//! row ([`PaymentState::from_row`]), refusing combinations of columns that cannot happen
//! (an authorized payment without its authorization, a settled one still being compensated),
//! so [`super::decide`] never has to ask whether an `Option` is set.

use super::decide::mutation::{self, Mutation};
use crate::store::{Compensation, MerchantAction, PaymentRow, ProviderMismatch};
use chrono::{DateTime, Utc};
use sagapay_domain::events::{CaptureMethod, ProviderOperation};
use sagapay_domain::{
    AmountMinor, Currency, CustomerId, PaymentMethod, PaymentStatus, RefundStatus,
};
use uuid::Uuid;

/// What the merchant asked for; fixed when the payment is created.
#[derive(Debug, Clone, PartialEq)]
pub struct Terms {
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub customer_id: CustomerId,
    /// The authorized amount (what was asked for).
    pub amount: AmountMinor,
    pub currency: Currency,
    pub payment_method: PaymentMethod,
    pub capture_method: CaptureMethod,
    pub created_at: DateTime<Utc>,
    pub correlation_id: String,
}

/// What a merchant (or the expiry) did with a manual payment once it was authorized,
/// recorded once.
#[derive(Debug, Clone, PartialEq)]
pub struct Manual {
    pub action: MerchantAction,
    /// The request's idempotency key (none for the expiry).
    pub key: Option<String>,
    /// A capture's amount: at most the authorized amount.
    pub capture_amount: Option<AmountMinor>,
}

/// Where the payment is, with what is known there.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    Created,
    RiskReview,
    /// Sent for authorization; `voiding`: the saga is voiding whatever the authorization did.
    Approved {
        voiding: bool,
    },
    Authorized {
        authorization_id: String,
        /// The authorization is being voided (a compensation, a cancel or the expiry).
        voiding: bool,
    },
    Captured {
        capture_id: String,
        /// How the capture is being undone, if it is: the ledger refused it or an operator
        /// failed the payment (a refund), or a void sent before the capture went through (the
        /// adapter performs it as the refund of the capture).
        undoing: Option<Compensation>,
    },
    Settled {
        capture_id: String,
    },
    PartiallyRefunded {
        capture_id: String,
    },
    Refunded {
        capture_id: String,
    },
    Failed,
    /// Voided or refunded; `capture_id` when a capture was refunded (a posting of it that
    /// arrives late is reversed in the ledger).
    Reversed {
        capture_id: Option<String>,
    },
    Canceled,
}

/// A merchant refund of the payment.
#[derive(Debug, Clone, PartialEq)]
pub struct Refund {
    pub refund_id: Uuid,
    pub status: RefundStatus,
    pub amount: AmountMinor,
    pub currency: Currency,
    pub reason: String,
    /// Re-sends of its current step so far.
    pub nudges: i32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentState {
    pub terms: Terms,
    pub stage: Stage,
    pub manual: Option<Manual>,
    /// Re-sends of the current step so far.
    pub nudges: i32,
    /// When the current step is overdue.
    pub due: Option<DateTime<Utc>>,
    /// Flagged for an operator.
    pub attention: bool,
    /// Flagged because the provider refused to void the authorization (nothing captured).
    pub void_refused: bool,
    /// An authorization or capture the provider reported for another amount than was asked
    /// (never applied; an operator fails or accepts the payment with it).
    pub mismatch: Option<ProviderMismatch>,
    /// Its merchant refunds (loaded for settled payments, the only ones that have any).
    pub refunds: Vec<Refund>,
}

impl PaymentState {
    /// The state a stored row holds; an error names a combination that cannot happen.
    pub fn from_row(row: &PaymentRow, refunds: Vec<Refund>) -> Result<PaymentState, String> {
        let corrupt = |what: &str| format!("payment {} is {} {what}", row.payment_id, row.status);
        let manual = row.merchant_action.map(|action| Manual {
            action,
            key: row.merchant_action_key.clone(),
            capture_amount: row.capture_amount_minor,
        });
        if manual.is_some() && row.capture_method != CaptureMethod::Manual {
            return Err(corrupt("captured automatically with a merchant's action"));
        }
        if let Some(amount) = row.capture_amount_minor {
            if amount > row.amount_minor || amount.get() <= 0 {
                return Err(corrupt(&format!(
                    "with a capture of {amount} of {}",
                    row.amount_minor
                )));
            }
        }
        Ok(PaymentState {
            terms: Terms {
                payment_id: row.payment_id,
                merchant_id: row.merchant_id,
                customer_id: row.customer_id.clone(),
                amount: row.amount_minor,
                currency: row.currency,
                payment_method: row.payment_method.clone(),
                capture_method: row.capture_method,
                created_at: row.created_at,
                correlation_id: row.correlation_id.clone(),
            },
            stage: Stage::of_row(row).map_err(corrupt)?,
            manual,
            nudges: row.nudges,
            due: row.deadline_at,
            attention: row.attention_since.is_some(),
            void_refused: row.attention_since.is_some()
                && row.attention_kind.as_deref() == Some(crate::store::ATTENTION_VOID_DECLINED),
            mismatch: row.provider_mismatch.clone(),
            refunds,
        })
    }

    pub fn status(&self) -> PaymentStatus {
        self.stage.status()
    }

    /// The compensation under way, as the row records it.
    pub fn compensation(&self) -> Option<Compensation> {
        match &self.stage {
            Stage::Approved { voiding: true } | Stage::Authorized { voiding: true, .. } => {
                Some(Compensation::Void)
            }
            Stage::Captured { undoing, .. } => *undoing,
            _ => None,
        }
    }

    pub fn authorization_id(&self) -> Option<&str> {
        match &self.stage {
            Stage::Authorized {
                authorization_id, ..
            } => Some(authorization_id),
            _ => None,
        }
    }

    pub fn capture_id(&self) -> Option<&str> {
        match &self.stage {
            Stage::Captured { capture_id, .. }
            | Stage::Settled { capture_id }
            | Stage::PartiallyRefunded { capture_id }
            | Stage::Refunded { capture_id } => Some(capture_id),
            _ => None,
        }
    }

    /// What is (or will be) captured: what the provider took when it captured another
    /// amount than was asked (see `PaymentRow::captured_minor`), else a manual capture's
    /// amount, else the whole amount.
    pub fn to_capture(&self) -> AmountMinor {
        self.mismatch
            .as_ref()
            .and_then(ProviderMismatch::captured)
            .unwrap_or_else(|| self.to_capture_asked())
    }

    /// What the payment asked to capture: a manual capture's amount, else the whole amount.
    pub fn to_capture_asked(&self) -> AmountMinor {
        self.manual
            .as_ref()
            .and_then(|m| m.capture_amount)
            .unwrap_or(self.terms.amount)
    }

    /// What the provider holds authorized: what it reported when it authorized another
    /// amount than was asked, else the amount (a void releases it).
    pub fn to_void(&self) -> AmountMinor {
        match &self.mismatch {
            Some(m) if m.operation == ProviderOperation::Authorize => m.amount,
            _ => self.terms.amount,
        }
    }

    /// Whether the payment holds a place in admission control: the pipeline still has work
    /// to do for it and it is not parked for an operator (`crate::admission`'s rule).
    pub fn holds_place(&self) -> bool {
        let parked = self.attention && !mutation::active(Mutation::ParkedHoldsPlace);
        crate::admission::in_pipeline(self.status(), self.terms.capture_method, parked)
    }

    /// What the payment holds captured in `status` (see `PaymentRow::captured_in`).
    pub fn captured_in(&self, status: PaymentStatus) -> Option<AmountMinor> {
        matches!(
            status,
            PaymentStatus::Captured
                | PaymentStatus::Settled
                | PaymentStatus::PartiallyRefunded
                | PaymentStatus::Refunded
        )
        .then(|| self.to_capture())
    }

    /// An authorized manual payment nobody has acted on yet: it waits for its merchant.
    pub fn awaits_merchant(&self) -> bool {
        matches!(self.stage, Stage::Authorized { voiding: false, .. })
            && self.terms.capture_method == CaptureMethod::Manual
            && self.manual.is_none()
    }

    /// What the refunds hold against the capture: all but the failed ones (one whose
    /// outcome is unknown still counts).
    pub fn committed_refunds(&self) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.status != RefundStatus::Failed)
            .map(|r| r.amount.get())
            .sum()
    }

    /// What the succeeded refunds add up to.
    pub fn succeeded_refunds(&self) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.status == RefundStatus::Succeeded)
            .map(|r| r.amount.get())
            .sum()
    }

    pub fn refund(&self, refund_id: Uuid) -> Option<&Refund> {
        self.refunds.iter().find(|r| r.refund_id == refund_id)
    }
}

impl Stage {
    /// The stage a stored row is in; an error says what is missing or cannot be.
    fn of_row(row: &PaymentRow) -> Result<Stage, &'static str> {
        let authorization = || {
            row.authorization_id
                .clone()
                .ok_or("without an authorization id")
        };
        let capture = || row.capture_id.clone().ok_or("without a capture id");
        let voiding = row.compensation == Some(Compensation::Void);
        Ok(match (row.status, row.compensation) {
            (PaymentStatus::Approved | PaymentStatus::Authorized, Some(Compensation::Refund)) => {
                return Err("refunding a capture it does not have")
            }
            (
                PaymentStatus::Settled | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded,
                Some(_),
            ) => return Err("with a compensation under way"),
            (PaymentStatus::Created, _) => Stage::Created,
            (PaymentStatus::RiskReview, _) => Stage::RiskReview,
            (PaymentStatus::Approved, _) => Stage::Approved { voiding },
            (PaymentStatus::Authorized, _) => Stage::Authorized {
                authorization_id: authorization()?,
                voiding,
            },
            (PaymentStatus::Captured, undoing) => Stage::Captured {
                capture_id: capture()?,
                undoing,
            },
            (PaymentStatus::Settled, _) => Stage::Settled {
                capture_id: capture()?,
            },
            (PaymentStatus::PartiallyRefunded, _) => Stage::PartiallyRefunded {
                capture_id: capture()?,
            },
            (PaymentStatus::Refunded, _) => Stage::Refunded {
                capture_id: capture()?,
            },
            (PaymentStatus::Failed, _) => Stage::Failed,
            (PaymentStatus::Reversed, _) => Stage::Reversed {
                capture_id: row.capture_id.clone(),
            },
            (PaymentStatus::Canceled, _) => Stage::Canceled,
        })
    }

    pub fn status(&self) -> PaymentStatus {
        match self {
            Stage::Created => PaymentStatus::Created,
            Stage::RiskReview => PaymentStatus::RiskReview,
            Stage::Approved { .. } => PaymentStatus::Approved,
            Stage::Authorized { .. } => PaymentStatus::Authorized,
            Stage::Captured { .. } => PaymentStatus::Captured,
            Stage::Settled { .. } => PaymentStatus::Settled,
            Stage::PartiallyRefunded { .. } => PaymentStatus::PartiallyRefunded,
            Stage::Refunded { .. } => PaymentStatus::Refunded,
            Stage::Failed => PaymentStatus::Failed,
            Stage::Reversed { .. } => PaymentStatus::Reversed,
            Stage::Canceled => PaymentStatus::Canceled,
        }
    }
}
