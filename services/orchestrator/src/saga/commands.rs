//! The commands the saga sends, built from the payment as it is stored. The saga sends them
//! as steps; the sweeper and an operator's retry send the outstanding one again. One builder
//! per command, so a re-sent command is exactly the command the step sent.

use crate::store::{Compensation, PaymentRow};
use anyhow::anyhow;
use sagapay_domain::events::{
    AuthorizeRequested, CaptureRequested, LedgerPostRequested, LedgerRefundRequested,
    PaymentFinalized, PaymentRequested, RefundRequested, VoidRequested,
};
use sagapay_domain::{AmountMinor, Currency, Envelope, PaymentStatus, RefundStatus};
use uuid::Uuid;

pub fn requested(p: &PaymentRow) -> PaymentRequested {
    PaymentRequested {
        merchant_id: p.merchant_id,
        customer_id: p.customer_id.clone(),
        amount_minor: p.amount_minor,
        currency: p.currency,
        payment_method: p.payment_method.clone(),
    }
}

pub fn authorize(p: &PaymentRow) -> AuthorizeRequested {
    AuthorizeRequested {
        merchant_id: p.merchant_id,
        customer_id: p.customer_id.clone(),
        amount_minor: p.amount_minor,
        currency: p.currency,
        payment_method: p.payment_method.clone(),
        capture_method: p.capture_method,
    }
}

/// Captures what is to be captured: the manual capture's amount, or the whole amount.
pub fn capture(p: &PaymentRow, authorization_id: &str) -> CaptureRequested {
    CaptureRequested {
        authorization_id: authorization_id.to_owned(),
        amount_minor: p.captured_minor(),
        currency: p.currency,
    }
}

pub fn post(p: &PaymentRow, capture_id: &str) -> LedgerPostRequested {
    LedgerPostRequested {
        merchant_id: p.merchant_id,
        capture_id: capture_id.to_owned(),
        amount_minor: p.captured_minor(),
        currency: p.currency,
    }
}

/// Voids the authorization; addressed by the authorization's idempotency key when its id is
/// not known (an authorization whose outcome was never learnt).
pub fn void(p: &PaymentRow, reason: &str) -> VoidRequested {
    VoidRequested {
        authorization_id: p.authorization_id.clone(),
        amount_minor: p.amount_minor,
        currency: p.currency,
        reason: reason.to_owned(),
    }
}

/// Refunds the whole capture (the saga's compensation; merchant refunds have their own).
pub fn refund_capture(p: &PaymentRow, reason: &str) -> anyhow::Result<RefundRequested> {
    Ok(RefundRequested {
        capture_id: p
            .capture_id
            .clone()
            .ok_or_else(|| anyhow!("payment {} has no capture to refund", p.payment_id))?,
        amount_minor: p.captured_minor(),
        currency: p.currency,
        reason: reason.to_owned(),
        refund_id: None,
    })
}

pub fn finalized(p: &PaymentRow, status: PaymentStatus, reason: &str) -> PaymentFinalized {
    PaymentFinalized {
        status,
        merchant_id: p.merchant_id,
        customer_id: p.customer_id.clone(),
        amount_minor: p.amount_minor,
        currency: p.currency,
        amount_captured_minor: p.captured_in(status),
        reason: reason.to_owned(),
        created_at: p.created_at,
    }
}

/// What a payment waits for.
#[derive(Debug)]
pub enum Outstanding {
    /// A command whose answer moves it on: this one, as a new event.
    Command(Envelope),
    /// A person (a risk review): nothing to send.
    Person,
    /// The merchant, who did not capture or cancel a manual payment in time: its
    /// authorization is to be voided (the payment ends CANCELED).
    Expired,
    /// Nothing: the payment is terminal.
    Nothing,
}

/// A new event (its own id, no cause) in the payment's correlation.
pub fn fresh<P: sagapay_domain::events::EventPayload>(p: &PaymentRow, payload: &P) -> Envelope {
    Envelope::new(p.payment_id, None, &p.correlation_id, payload)
}

/// The command `p` waits on in its current state, built afresh (a new event id; every
/// command is idempotent where it lands).
pub fn outstanding(p: &PaymentRow) -> anyhow::Result<Outstanding> {
    let missing = |what: &str| anyhow!("payment {} is {} without {what}", p.payment_id, p.status);
    if let Some(kind) = p.compensation {
        if p.status.is_terminal() {
            return Ok(Outstanding::Nothing);
        }
        let reason = "compensation sent again after its deadline";
        return Ok(Outstanding::Command(match kind {
            Compensation::Void => fresh(p, &void(p, reason)),
            Compensation::Refund => fresh(p, &refund_capture(p, reason)?),
        }));
    }
    Ok(match p.status {
        PaymentStatus::Created => Outstanding::Command(fresh(p, &requested(p))),
        PaymentStatus::RiskReview => Outstanding::Person,
        PaymentStatus::Approved => Outstanding::Command(fresh(p, &authorize(p))),
        PaymentStatus::Authorized if p.awaits_merchant() => Outstanding::Expired,
        PaymentStatus::Authorized => {
            let authorization = p
                .authorization_id
                .as_deref()
                .ok_or_else(|| missing("an authorization id"))?;
            Outstanding::Command(fresh(p, &capture(p, authorization)))
        }
        PaymentStatus::Captured => {
            let capture_id = p
                .capture_id
                .as_deref()
                .ok_or_else(|| missing("a capture id"))?;
            Outstanding::Command(fresh(p, &post(p, capture_id)))
        }
        PaymentStatus::Settled
        | PaymentStatus::Failed
        | PaymentStatus::Reversed
        | PaymentStatus::PartiallyRefunded
        | PaymentStatus::Refunded
        | PaymentStatus::Canceled => Outstanding::Nothing,
    })
}

/// A merchant refund in flight, as the sweeper reads it.
#[derive(Debug, Clone)]
pub struct RefundInFlight {
    pub refund_id: Uuid,
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub status: RefundStatus,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub reason: String,
    pub capture_id: Option<String>,
    pub correlation_id: String,
    pub nudges: i32,
}

/// The command a refund waits on: the provider's refund (REQUESTED) or the ledger's posting
/// (PROCESSED).
pub fn refund_outstanding(r: &RefundInFlight) -> anyhow::Result<Option<Envelope>> {
    let (amount_minor, currency) = (r.amount_minor, r.currency);
    let fresh = |payload: &dyn Fn() -> anyhow::Result<Envelope>| payload().map(Some);
    match r.status {
        RefundStatus::Requested => fresh(&|| {
            let capture_id = r
                .capture_id
                .clone()
                .ok_or_else(|| anyhow!("refund {} of a payment without a capture", r.refund_id))?;
            Ok(Envelope::new(
                r.payment_id,
                None,
                &r.correlation_id,
                &RefundRequested {
                    capture_id,
                    amount_minor,
                    currency,
                    reason: r.reason.clone(),
                    refund_id: Some(r.refund_id),
                },
            ))
        }),
        RefundStatus::Processed => fresh(&|| {
            Ok(Envelope::new(
                r.payment_id,
                None,
                &r.correlation_id,
                &LedgerRefundRequested {
                    refund_id: r.refund_id,
                    merchant_id: r.merchant_id,
                    amount_minor,
                    currency,
                },
            ))
        }),
        RefundStatus::Succeeded | RefundStatus::Failed => Ok(None),
    }
}
