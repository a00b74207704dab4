//! Merchants' and operators' requests: what each may do in which state, and what follows.
//! A refusal carries the API's error code; the request's own idempotency (a repeat of an
//! earlier request) is answered by the shell before it asks.

use super::mutation::{self, Mutation};
use super::{end, Decided};
use crate::saga::commands::{self, Outstanding};
use crate::saga::decision::{
    Decision, Effect, Facts, MerchantRequest, OperatorRequest, RefundEffect, Refusal,
};
use crate::saga::state::{Manual, PaymentState, Refund, Stage};
use crate::store::{Compensation, MerchantAction};
use sagapay_domain::events::CaptureMethod;
use sagapay_domain::{PaymentStatus, RefundStatus};

pub fn merchant(s: &PaymentState, request: &MerchantRequest) -> Decided {
    match request {
        MerchantRequest::Capture { amount, key } => {
            capture(s, amount.unwrap_or(s.terms.amount), key)
        }
        MerchantRequest::Cancel { key } => cancel(s, key),
        MerchantRequest::Refund {
            refund_id,
            amount,
            reason,
        } => refund(
            s,
            Refund {
                refund_id: *refund_id,
                status: RefundStatus::Requested,
                amount: *amount,
                currency: s.terms.currency,
                reason: reason.clone(),
                nudges: 0,
            },
        ),
    }
}

pub fn operator(s: &PaymentState, request: &OperatorRequest) -> Decided {
    match request {
        OperatorRequest::Retry { who } => retry(s, who),
        OperatorRequest::Fail { who, why } => fail(s, &format!("failed by {who}: {why}")),
        OperatorRequest::Accept { who, why } => accept(s, who, why),
    }
}

/// Whether a manual payment allows `action` now: 409 with why when not.
fn allowed(s: &PaymentState, action: MerchantAction) -> Result<(), Refusal> {
    let verb = match action {
        MerchantAction::Capture => "captured",
        MerchantAction::Cancel | MerchantAction::Expire => "canceled",
    };
    if s.terms.capture_method != CaptureMethod::Manual {
        return Err(Refusal::conflict(
            "payment_not_manual",
            format!("the payment is captured automatically; it cannot be {verb} by request"),
        ));
    }
    if let Some(taken) = &s.manual {
        let done = match taken.action {
            MerchantAction::Capture => "captured",
            MerchantAction::Cancel => "canceled",
            MerchantAction::Expire => "voided (its authorization expired)",
        };
        return Err(Refusal::conflict(
            "payment_action_taken",
            format!("the payment was already {done}; it cannot be {verb} now"),
        ));
    }
    if !s.awaits_merchant() {
        return Err(Refusal::conflict(
            "payment_not_authorized",
            format!(
                "the payment is {}; it can be {verb} only while AUTHORIZED",
                s.status()
            ),
        ));
    }
    Ok(())
}

fn capture(s: &PaymentState, amount: sagapay_domain::AmountMinor, key: &str) -> Decided {
    allowed(s, MerchantAction::Capture)?;
    if amount > s.terms.amount {
        return Err(Refusal::unprocessable(
            "capture_exceeds_authorized",
            format!(
                "the capture of {amount} exceeds the authorized {} {}",
                s.terms.amount, s.terms.currency
            ),
        ));
    }
    let Stage::Authorized {
        authorization_id, ..
    } = &s.stage
    else {
        unreachable!("allowed() holds only while AUTHORIZED");
    };
    let reason = format!(
        "capture of {amount} of {} {} requested by the merchant",
        s.terms.amount, s.terms.currency
    );
    let manual = Manual {
        action: MerchantAction::Capture,
        key: Some(key.to_owned()),
        capture_amount: Some(amount),
    };
    Ok(
        Decision::of(Effect::Act { manual, reason }).send(commands::capture(
            s,
            authorization_id,
            amount,
        )),
    )
}

fn cancel(s: &PaymentState, key: &str) -> Decided {
    allowed(s, MerchantAction::Cancel)?;
    let reason = "canceled by the merchant: voiding the authorization".to_owned();
    let manual = Manual {
        action: MerchantAction::Cancel,
        key: Some(key.to_owned()),
        capture_amount: None,
    };
    let void = commands::void(s, &reason);
    Ok(Decision::of(Effect::Act { manual, reason }).send(void))
}

/// A refund of a settled payment, admitted only within what is left of the capture (the
/// payment's lock makes concurrent requests take turns).
fn refund(s: &PaymentState, r: Refund) -> Decided {
    let capture_id = match &s.stage {
        Stage::Settled { capture_id } | Stage::PartiallyRefunded { capture_id } => capture_id,
        _ => {
            return Err(Refusal::conflict(
                "payment_not_refundable",
                format!(
                    "only a settled payment can be refunded; this one is {}",
                    s.status()
                ),
            ))
        }
    };
    let bound = if mutation::active(Mutation::RefundBoundByAuthorized) {
        s.terms.amount
    } else {
        s.to_capture()
    };
    let remaining = bound.get() - s.committed_refunds();
    if r.amount.get() > remaining {
        return Err(Refusal::unprocessable(
            "refund_exceeds_captured",
            format!(
                "the refund of {} exceeds what is left to refund ({remaining} of {} {})",
                r.amount,
                s.to_capture(),
                s.terms.currency
            ),
        ));
    }
    let reason = format!(
        "refund {} of {} requested: {}",
        r.refund_id, r.amount, r.reason
    );
    let command = commands::refund(capture_id, &r);
    Ok(Decision::of(Effect::Refund(RefundEffect::Admit {
        refund_id: r.refund_id,
        amount: r.amount,
        reason: r.reason,
    }))
    .then(Effect::Step { reason })
    .send(command))
}

/// The outstanding step again, its count reset, and the refunds in flight re-armed.
fn retry(s: &PaymentState, who: &str) -> Decided {
    let mut decision = Decision::default();
    if let Outstanding::Command(command) = commands::outstanding(s) {
        let reason = format!(
            "{who} asked to retry: {} sent again in {}",
            command.event_type(),
            s.status()
        );
        decision = decision
            .then(Effect::Resend {
                reason,
                reset: true,
            })
            .send(command);
    }
    for r in s.refunds.iter().filter(|r| in_flight(r.status)) {
        decision = decision.then(Effect::Refund(RefundEffect::Rearm {
            refund_id: r.refund_id,
        }));
    }
    if decision.effects.is_empty() {
        return Err(Refusal::conflict(
            "nothing_to_retry",
            format!(
                "payment {} is {} and waits for nothing",
                s.terms.payment_id,
                s.status()
            ),
        ));
    }
    Ok(decision)
}

fn in_flight(status: RefundStatus) -> bool {
    matches!(status, RefundStatus::Requested | RefundStatus::Processed)
}

/// An operator fails the payment: at once when the provider was not asked yet; by voiding
/// the authorization (which may exist, or be in flight); by refunding the capture. A payment
/// parked because the provider refused its void ends FAILED: nothing was captured, and the
/// authorization lapses at the card's issuer.
fn fail(s: &PaymentState, reason: &str) -> Decided {
    if s.status().is_terminal() {
        return Err(Refusal::conflict(
            "payment_not_failable",
            format!("payment {} is already {}", s.terms.payment_id, s.status()),
        ));
    }
    if let Some(kind) = s.compensation() {
        if s.void_refused && kind == Compensation::Void {
            let reason = format!(
                "{reason}; the provider did not void the authorization: nothing was \
                 captured, the hold lapses at the card's issuer"
            );
            return Ok(end(s, PaymentStatus::Failed, reason, Facts::default()));
        }
        return Err(Refusal::conflict(
            "payment_not_failable",
            format!(
                "payment {} is already being compensated ({})",
                s.terms.payment_id,
                kind.as_str()
            ),
        ));
    }
    let compensate = |kind| Effect::Compensate {
        kind,
        reason: reason.to_owned(),
    };
    Ok(match &s.stage {
        Stage::Created | Stage::RiskReview => end(
            s,
            PaymentStatus::Failed,
            reason.to_owned(),
            Facts::default(),
        ),
        Stage::Approved { .. } | Stage::Authorized { .. } => {
            Decision::of(compensate(Compensation::Void)).send(commands::void(s, reason))
        }
        Stage::Captured { capture_id, .. } => Decision::of(compensate(Compensation::Refund))
            .send(commands::refund_capture(s, capture_id, reason)),
        terminal => unreachable!("{terminal:?} is terminal, checked above"),
    })
}

/// An operator keeps a capture the provider made of another amount than was asked: the
/// payment is captured for what the provider took, posted for it, and settles.
fn accept(s: &PaymentState, who: &str, why: &str) -> Decided {
    let Some((reference, captured)) = s
        .mismatch
        .as_ref()
        .and_then(|m| Some((m.reference.as_str(), m.captured()?)))
    else {
        return Err(Refusal::conflict(
            "nothing_to_accept",
            format!(
                "payment {} has no capture of another amount to accept",
                s.terms.payment_id
            ),
        ));
    };
    if !matches!(s.stage, Stage::Authorized { voiding: false, .. }) {
        return Err(Refusal::conflict(
            "payment_not_acceptable",
            format!(
                "payment {} is {}{}; a capture is accepted only while AUTHORIZED",
                s.terms.payment_id,
                s.status(),
                if s.compensation().is_some() {
                    " and being voided"
                } else {
                    ""
                }
            ),
        ));
    }
    if captured > s.terms.amount {
        return Err(Refusal::unprocessable(
            "capture_exceeds_authorized",
            format!(
                "the provider captured {captured}, more than the authorized {} {}: fail the \
                 payment to refund it",
                s.terms.amount, s.terms.currency
            ),
        ));
    }
    let reason = format!(
        "capture {reference} of {captured} {} accepted by {who} ({} was asked): {why}",
        s.terms.currency,
        s.to_capture_asked()
    );
    let facts = Facts {
        capture_id: Some(reference.to_owned()),
        ..Facts::default()
    };
    Ok(
        Decision::of(super::moved(PaymentStatus::Captured, reason, facts))
            .send(commands::post(s, reference)),
    )
}
