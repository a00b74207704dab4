//! The commands the saga sends, built from the payment's state. A step sends them; a
//! deadline and an operator's retry send the outstanding one again. One builder per command,
//! so a re-sent command is exactly the command the step sent.

use super::decide::mutation::{self, Mutation};
use super::decision::Command;
use super::state::{PaymentState, Refund, Stage};
use crate::store::Compensation;
use sagapay_domain::events::{
    AuthorizeRequested, CaptureRequested, LedgerPostRequested, LedgerRefundRequested,
    PaymentRequested, RefundRequested, VoidRequested,
};
use sagapay_domain::{AmountMinor, RefundStatus};
use uuid::Uuid;

pub fn requested(s: &PaymentState) -> Command {
    let t = &s.terms;
    Command::Requested(PaymentRequested {
        merchant_id: t.merchant_id,
        customer_id: t.customer_id.clone(),
        amount_minor: t.amount,
        currency: t.currency,
        payment_method: t.payment_method.clone(),
    })
}

pub fn authorize(s: &PaymentState) -> Command {
    let t = &s.terms;
    Command::Authorize(AuthorizeRequested {
        merchant_id: t.merchant_id,
        customer_id: t.customer_id.clone(),
        amount_minor: t.amount,
        currency: t.currency,
        payment_method: t.payment_method.clone(),
        capture_method: t.capture_method,
    })
}

/// Captures `amount` of the authorization.
pub fn capture(s: &PaymentState, authorization_id: &str, amount: AmountMinor) -> Command {
    Command::Capture(CaptureRequested {
        authorization_id: authorization_id.to_owned(),
        amount_minor: amount,
        currency: s.terms.currency,
    })
}

/// Posts what was captured.
pub fn post(s: &PaymentState, capture_id: &str) -> Command {
    Command::Post(LedgerPostRequested {
        merchant_id: s.terms.merchant_id,
        capture_id: capture_id.to_owned(),
        amount_minor: s.to_capture(),
        currency: s.terms.currency,
    })
}

/// Voids the authorization, for what the provider holds authorized; addressed by the
/// authorization's idempotency key when its id is not known (an authorization whose outcome
/// was never learnt).
pub fn void(s: &PaymentState, reason: &str) -> Command {
    Command::Void(VoidRequested {
        authorization_id: s.authorization_id().map(str::to_owned),
        amount_minor: s.to_void(),
        currency: s.terms.currency,
        reason: reason.to_owned(),
    })
}

/// Refunds the whole capture (the saga's compensation; merchant refunds have their own).
pub fn refund_capture(s: &PaymentState, capture_id: &str, reason: &str) -> Command {
    Command::Refund(RefundRequested {
        capture_id: capture_id.to_owned(),
        amount_minor: s.to_capture(),
        currency: s.terms.currency,
        reason: reason.to_owned(),
        refund_id: None,
    })
}

/// A merchant refund at the provider.
pub fn refund(capture_id: &str, r: &Refund) -> Command {
    Command::Refund(RefundRequested {
        capture_id: capture_id.to_owned(),
        amount_minor: r.amount,
        currency: r.currency,
        reason: r.reason.clone(),
        refund_id: Some(r.refund_id),
    })
}

/// A refund's posting in the ledger.
pub fn post_refund(s: &PaymentState, refund_id: Uuid, amount: AmountMinor) -> Command {
    Command::PostRefund(LedgerRefundRequested {
        refund_id,
        merchant_id: s.terms.merchant_id,
        amount_minor: amount,
        currency: s.terms.currency,
    })
}

/// What a payment waits for.
#[derive(Debug, PartialEq)]
pub enum Outstanding {
    /// A command whose answer moves it on.
    Command(Command),
    /// A person (a risk review): nothing to send.
    Person,
    /// The merchant, who did not capture or cancel a manual payment in time: its
    /// authorization is to be voided (the payment ends CANCELED).
    Expired,
    /// Nothing: the payment is terminal.
    Nothing,
}

/// The command `s` waits on in its current state.
pub fn outstanding(s: &PaymentState) -> Outstanding {
    let resent = "compensation sent again after its deadline";
    Outstanding::Command(match &s.stage {
        Stage::Created => requested(s),
        Stage::RiskReview => return Outstanding::Person,
        Stage::Approved { voiding: false } => authorize(s),
        Stage::Approved { voiding: true } | Stage::Authorized { voiding: true, .. } => {
            void(s, resent)
        }
        Stage::Authorized { .. } if s.awaits_merchant() => return Outstanding::Expired,
        Stage::Authorized {
            authorization_id, ..
        } => capture(s, authorization_id, s.to_capture()),
        Stage::Captured {
            capture_id,
            undoing: None,
        } => post(s, capture_id),
        Stage::Captured {
            undoing: Some(Compensation::Void),
            ..
        } => void(s, resent),
        Stage::Captured {
            capture_id,
            undoing: Some(Compensation::Refund),
        } => refund_capture(s, capture_id, resent),
        Stage::Settled { capture_id } if mutation::active(Mutation::DeadlineRecapturesSettled) => {
            capture(s, capture_id, s.to_capture())
        }
        Stage::Settled { .. }
        | Stage::PartiallyRefunded { .. }
        | Stage::Refunded { .. }
        | Stage::Failed
        | Stage::Reversed { .. }
        | Stage::Canceled => return Outstanding::Nothing,
    })
}

/// The command a merchant refund waits on: the provider's refund (REQUESTED) or the
/// ledger's posting (PROCESSED); none once it ended.
pub fn refund_outstanding(s: &PaymentState, r: &Refund) -> Option<Command> {
    let capture_id = s.capture_id()?;
    match r.status {
        RefundStatus::Requested => Some(refund(capture_id, r)),
        RefundStatus::Processed => Some(post_refund(s, r.refund_id, r.amount)),
        RefundStatus::Succeeded | RefundStatus::Failed => None,
    }
}
