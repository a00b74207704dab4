//! One handler per consumed event (declared in [`crate::saga::consumed`]): each checks the
//! event against the payment's state and says what follows.

use super::mutation::{self, Mutation};
use super::{end, expect, expect_in, moved, Decided};
use crate::saga::commands;
use crate::saga::decision::{Decision, Effect, Facts, FlagKind, RefundEffect, Refusal};
use crate::saga::state::{PaymentState, Stage};
use crate::store::{Compensation, MerchantAction, ProviderMismatch};
use sagapay_domain::events::{
    capture_reversal_id, CaptureMethod, EventPayload, LedgerPostFailed, PaymentAuthorized,
    PaymentAwaitingCapture, PaymentCaptured, PaymentFailed, PaymentRefunded, PaymentReversed,
    PaymentSettled, ProviderOperation, ProviderRetriesExhausted, RefundFailed, RefundPosted,
    RefundSucceeded, RiskApproved, RiskDenied, RiskReviewRequired,
};
use sagapay_domain::{AmountMinor, Currency, PaymentStatus, RefundStatus};

/// Applies only in the states of its row; else ignored.
macro_rules! expected {
    ($s:expr, $payload:ty) => {
        if let Err(ignored) = expect($s, <$payload as EventPayload>::EVENT_TYPE) {
            return Ok(ignored);
        }
    };
}

/// The provider reports `what` for an amount other than the one asked for: never applied
/// (so never posted), flagged for an operator with both amounts.
fn differs(
    what: &'static str,
    (amount, currency): (AmountMinor, Currency),
    (expected, expected_currency): (AmountMinor, Currency),
) -> Option<Decision> {
    if amount == expected && currency == expected_currency {
        return None;
    }
    let reason = format!(
        "the provider reports a {what} of {amount} {currency}, but {expected} \
         {expected_currency} was requested: not applied"
    );
    Some(Decision::of(Effect::Flag {
        reason,
        kind: FlagKind::AmountMismatch(what),
    }))
}

/// The provider authorized or captured another amount than was asked: recorded (what it
/// holds, for the operator who ends the payment) and flagged, never applied.
fn mismatched(
    operation: ProviderOperation,
    reference: &str,
    reported: (AmountMinor, Currency),
    expected: (AmountMinor, Currency),
) -> Option<Decision> {
    let what = match operation {
        ProviderOperation::Authorize => "authorization",
        _ => "capture",
    };
    let flag = differs(what, reported, expected)?;
    // Another currency cannot be settled or refunded as this payment's: flagged only.
    if reported.1 != expected.1 {
        return Some(flag);
    }
    let mismatch = ProviderMismatch {
        operation,
        reference: reference.to_owned(),
        amount: reported.0,
    };
    let mut decision = Decision::of(Effect::Mismatch(mismatch));
    decision.effects.extend(flag.effects);
    Some(decision)
}

pub fn risk_approved(s: &PaymentState, ev: &RiskApproved) -> Decided {
    expected!(s, RiskApproved);
    let reason = format!("risk approved: {}", ev.reason);
    Ok(
        Decision::of(moved(PaymentStatus::Approved, reason, Facts::default()))
            .send(commands::authorize(s)),
    )
}

pub fn risk_review_required(s: &PaymentState, ev: &RiskReviewRequired) -> Decided {
    expected!(s, RiskReviewRequired);
    let reason = format!("risk review required: {}", ev.reason);
    Ok(Decision::of(moved(
        PaymentStatus::RiskReview,
        reason,
        Facts::default(),
    )))
}

pub fn risk_denied(s: &PaymentState, ev: &RiskDenied) -> Decided {
    expected!(s, RiskDenied);
    let reason = format!("risk denied: {}", ev.reason);
    Ok(end(s, PaymentStatus::Failed, reason, Facts::default()))
}

pub fn payment_failed(s: &PaymentState, ev: &PaymentFailed) -> Decided {
    expected!(s, PaymentFailed);
    let reason = format!(
        "declined by {} ({}): {}",
        ev.provider, ev.decline_code, ev.reason
    );
    Ok(end(s, PaymentStatus::Failed, reason, Facts::default()))
}

/// No command follows: the adapter captures an automatic payment by itself (its capture
/// comes next on this channel), a manual one waits for its merchant, and one being voided is
/// voided. A manual payment tells its merchant it can be captured now.
pub fn payment_authorized(s: &PaymentState, ev: &PaymentAuthorized) -> Decided {
    expected!(s, PaymentAuthorized);
    let requested = (s.terms.amount, s.terms.currency);
    let reported = (ev.amount_minor, ev.currency);
    let authorization = ProviderOperation::Authorize;
    if let Some(flag) = mismatched(authorization, &ev.authorization_id, reported, requested) {
        return Ok(flag);
    }
    let voiding = s.compensation().is_some();
    let (p, id) = (&ev.provider, &ev.authorization_id);
    let reason = match (voiding, s.terms.capture_method) {
        (true, _) => format!("authorized by {p} ({id}) while being compensated: not captured"),
        (false, CaptureMethod::Automatic) => {
            format!("authorized by {p} ({id}); captured automatically")
        }
        (false, CaptureMethod::Manual) => {
            format!("authorized by {p} ({id}); waiting for the capture")
        }
    };
    let facts = Facts {
        authorization_id: Some(id.clone()),
        ..Facts::default()
    };
    let decision = Decision::of(moved(PaymentStatus::Authorized, reason, facts));
    if voiding || s.terms.capture_method != CaptureMethod::Manual {
        return Ok(decision);
    }
    Ok(
        decision.send(crate::saga::decision::Command::AwaitingCapture(
            PaymentAwaitingCapture {
                merchant_id: s.terms.merchant_id,
                customer_id: s.terms.customer_id.clone(),
                amount_minor: s.terms.amount,
                currency: s.terms.currency,
                created_at: s.terms.created_at,
            },
        )),
    )
}

/// A capture is posted, unless the payment is being compensated: then it is recorded and
/// never posted (the adapter turns the pending void into the refund of this capture). A
/// capture that overtook its authorization (two relays of the adapter published them out of
/// order) applies the authorization it names first.
pub fn payment_captured(s: &PaymentState, ev: &PaymentCaptured) -> Decided {
    expected!(s, PaymentCaptured);
    // Against what was asked, not what a mismatch recorded: a capture of another amount
    // answered again is flagged again, never applied.
    let requested = (s.to_capture_asked(), s.terms.currency);
    let reported = (ev.amount_minor, ev.currency);
    let capture = ProviderOperation::Capture;
    if let Some(flag) = mismatched(capture, &ev.capture_id, reported, requested) {
        return Ok(flag);
    }
    let mut decision = Decision::default();
    if let Stage::Approved { .. } = s.stage {
        let Some(authorization_id) = ev.authorization_id.clone() else {
            return Err(Refusal::broken(
                "a capture without its authorization id, before the authorization".into(),
            ));
        };
        let reason = format!(
            "authorized by {} ({authorization_id}), learnt from its capture",
            ev.provider
        );
        let facts = Facts {
            authorization_id: Some(authorization_id),
            ..Facts::default()
        };
        decision = decision.then(moved(PaymentStatus::Authorized, reason, facts));
    }
    let facts = Facts {
        capture_id: Some(ev.capture_id.clone()),
        ..Facts::default()
    };
    let (p, id) = (&ev.provider, &ev.capture_id);
    if s.compensation().is_some() {
        let reason =
            format!("captured by {p} ({id}) while being compensated: not posted, refunded");
        return Ok(decision.then(moved(PaymentStatus::Captured, reason, facts)));
    }
    let reason = format!("captured by {p} ({id})");
    Ok(decision
        .then(moved(PaymentStatus::Captured, reason, facts))
        .send(commands::post(s, id)))
}

/// The posting settles the payment; posted after all while the capture is being undone, or
/// after it was refunded (an operator failed the payment with the posting in flight, and the
/// ledger answered after the provider), the ledger reverses it, once per payment.
pub fn payment_settled(s: &PaymentState, ev: &PaymentSettled) -> Decided {
    let refunded = matches!(
        s.stage,
        Stage::Reversed {
            capture_id: Some(_)
        }
    ) && !mutation::active(Mutation::LatePostingKept);
    if refunded
        || matches!(
            s.stage,
            Stage::Captured {
                undoing: Some(_),
                ..
            }
        )
    {
        let reason = format!(
            "the ledger posted the capture ({}) while it was being refunded: reversing the posting",
            ev.journal_transaction_id
        );
        let reversal = capture_reversal_id(s.terms.payment_id);
        let command = commands::post_refund(s, reversal, ev.amount_minor);
        return Ok(Decision::of(Effect::Step { reason }).send(command));
    }
    expected!(s, PaymentSettled);
    let reason = format!("ledger posted ({})", ev.journal_transaction_id);
    let facts = Facts {
        journal_transaction_id: Some(ev.journal_transaction_id),
        ..Facts::default()
    };
    Ok(end(s, PaymentStatus::Settled, reason, facts))
}

/// The ledger refused the posting: the capture is refunded (once).
pub fn ledger_post_failed(s: &PaymentState, ev: &LedgerPostFailed) -> Decided {
    expected!(s, LedgerPostFailed);
    let Stage::Captured {
        capture_id,
        undoing: None,
    } = &s.stage
    else {
        return Ok(Decision::of(Effect::Ignore(
            crate::saga::decision::Ignored::Stale,
        )));
    };
    let reason = format!(
        "ledger refused the posting ({}): refunding the capture",
        ev.reason
    );
    let why = format!("ledger refused the posting: {}", ev.reason);
    Ok(Decision::of(Effect::Compensate {
        kind: Compensation::Refund,
        reason,
    })
    .send(commands::refund_capture(s, capture_id, &why)))
}

/// The provider voided the authorization or refunded the capture: REVERSED, or CANCELED
/// for a manual payment's void its merchant (or the expiry) asked for. The amount reversed
/// must be what was captured (or authorized).
pub fn payment_reversed(s: &PaymentState, ev: &PaymentReversed) -> Decided {
    expected!(s, PaymentReversed);
    let (what, kind, expected) = match ev.operation {
        ProviderOperation::Refund => ("capture refunded", "reversal refund", s.to_capture()),
        _ => ("authorization voided", "void", s.to_void()),
    };
    // A void releases the whole authorization whatever amount it names: the one asked for,
    // or (asked before the provider's authorization of another amount was known) the
    // amount of the payment.
    let asked_before = ev.operation == ProviderOperation::Void
        && ev.amount_minor == Some(s.terms.amount)
        && ev.currency == Some(s.terms.currency);
    if let (Some(amount), Some(currency), false) = (ev.amount_minor, ev.currency, asked_before) {
        let checked = !mutation::active(Mutation::ReversalAmountUnchecked);
        let expected = (expected, s.terms.currency);
        if let Some(flag) = differs(kind, (amount, currency), expected).filter(|_| checked) {
            return Ok(flag);
        }
    }
    let reason = format!(
        "{what} by {} ({}): {}",
        ev.provider, ev.reference, ev.reason
    );
    let canceled = ev.operation == ProviderOperation::Void
        && matches!(
            s.manual.as_ref().map(|m| m.action),
            Some(MerchantAction::Cancel | MerchantAction::Expire)
        );
    let to = if canceled {
        PaymentStatus::Canceled
    } else {
        PaymentStatus::Reversed
    };
    Ok(end(s, to, reason, Facts::default()))
}

/// The provider refunded a merchant refund: PROCESSED, and the ledger posts it.
pub fn payment_refunded(s: &PaymentState, ev: &PaymentRefunded) -> Decided {
    let Some(refund) = s.refund(ev.refund_id) else {
        return Err(Refusal::broken(format!(
            "unknown refund {} of payment {}",
            ev.refund_id, s.terms.payment_id
        )));
    };
    if refund.status != RefundStatus::Requested {
        return Ok(Decision::of(Effect::Ignore(
            crate::saga::decision::Ignored::Stale,
        )));
    }
    let requested = (refund.amount, refund.currency);
    if let Some(flag) = differs("refund", (ev.amount_minor, ev.currency), requested) {
        return Ok(flag);
    }
    let reason = format!(
        "refund {} refunded by {} ({})",
        ev.refund_id, ev.provider, ev.reference
    );
    Ok(Decision::of(Effect::Refund(RefundEffect::Processed {
        refund_id: ev.refund_id,
        reference: ev.reference.clone(),
    }))
    .then(Effect::Step { reason })
    .send(commands::post_refund(s, ev.refund_id, ev.amount_minor)))
}

/// The ledger posted a merchant refund: SUCCEEDED, the payment PARTIALLY_REFUNDED or
/// REFUNDED, and the merchant hears of the refund itself. The ledger's reversal of a capture
/// posting is a step.
pub fn refund_posted(s: &PaymentState, ev: &RefundPosted) -> Decided {
    if ev.refund_id == capture_reversal_id(s.terms.payment_id) {
        let reason = format!(
            "capture posting reversed in the ledger ({})",
            ev.journal_transaction_id
        );
        return Ok(Decision::of(Effect::Step { reason }));
    }
    expected!(s, RefundPosted);
    let Some(refund) = s
        .refund(ev.refund_id)
        .filter(|r| r.status == RefundStatus::Processed)
    else {
        let stale = Decision::of(Effect::Ignore(crate::saga::decision::Ignored::Stale));
        return Ok(match s.refund(ev.refund_id) {
            Some(r)
                if r.status == RefundStatus::Succeeded
                    && mutation::active(Mutation::RefundAnnouncedAgain) =>
            {
                stale.send(succeeded(s, r, s.status()))
            }
            _ => stale,
        });
    };
    let captured = s.to_capture();
    let refunded = s.succeeded_refunds() + refund.amount.get();
    assert!(
        refunded <= captured.get(),
        "refunds admitted under the payment lock never exceed the capture"
    );
    let to = if refunded == captured.get() {
        PaymentStatus::Refunded
    } else {
        PaymentStatus::PartiallyRefunded
    };
    let reason = format!(
        "refund {} posted ({}): {refunded} of {captured} {} refunded",
        ev.refund_id, ev.journal_transaction_id, s.terms.currency
    );
    let succeeded = succeeded(s, refund, to);
    let posted = Effect::Refund(RefundEffect::Succeeded {
        refund_id: ev.refund_id,
        journal_transaction_id: ev.journal_transaction_id,
    });
    let moving = if to == PaymentStatus::Refunded {
        end(s, to, reason, Facts::default())
    } else {
        Decision::of(moved(to, reason, Facts::default()))
    };
    let mut decision = Decision::of(posted).send(succeeded);
    decision.effects.extend(moving.effects);
    decision.send.extend(moving.send);
    Ok(decision)
}

/// The merchant's news of refund `r`'s success, the payment then `payment_status`.
fn succeeded(
    s: &PaymentState,
    r: &crate::saga::state::Refund,
    payment_status: PaymentStatus,
) -> crate::saga::decision::Command {
    crate::saga::decision::Command::RefundSucceeded(RefundSucceeded {
        merchant_id: s.terms.merchant_id,
        refund_id: r.refund_id,
        amount_minor: r.amount,
        currency: r.currency,
        reason: r.reason.clone(),
        payment_status,
    })
}

/// The adapter gave an operation up: declined by the provider, or its outcome unknown after
/// every attempt.
pub fn provider_retries_exhausted(s: &PaymentState, ev: &ProviderRetriesExhausted) -> Decided {
    let unknown = ev.refund_id.is_some() && mutation::active(Mutation::DeclinedRefundPending);
    if let Some(code) = ev.decline_code.as_ref().filter(|_| !unknown) {
        return declined(s, ev, code);
    }
    let op = ev.operation.as_str();
    if let Some(refund_id) = ev.refund_id {
        // Never told whether the refund happened: not failed (a second refund could pay the
        // customer twice); it stays REQUESTED, counting against the refundable amount.
        let reason = format!(
            "refund {refund_id}: outcome unknown after {} attempts ({}); still pending, \
             counted against the refundable amount",
            ev.attempts, ev.last_error
        );
        return Ok(Decision::of(Effect::Refund(RefundEffect::OutcomeUnknown {
            refund_id,
            reason: reason.clone(),
        }))
        .then(Effect::Step { reason }));
    }
    match ev.operation {
        ProviderOperation::Authorize => {
            if let Err(ignored) = expect_in(s, &[PaymentStatus::Approved]) {
                return Ok(ignored);
            }
            let reason = format!(
                "{op} outcome unknown after {} attempts ({}): voiding the authorization",
                ev.attempts, ev.last_error
            );
            let why = format!("{op} outcome unknown after {} attempts", ev.attempts);
            Ok(Decision::of(Effect::Compensate {
                kind: Compensation::Void,
                reason,
            })
            .send(commands::void(s, &why)))
        }
        // Voiding could leave a charge without a record: an operator decides (the three-way
        // reconciliation shows the provider's side).
        ProviderOperation::Capture => {
            if let Err(ignored) = expect_in(s, &[PaymentStatus::Authorized]) {
                return Ok(ignored);
            }
            let reason = format!(
                "capture outcome unknown after {} attempts ({}): not voided, the capture may \
                 have happened",
                ev.attempts, ev.last_error
            );
            Ok(Decision::of(Effect::Flag {
                reason,
                kind: FlagKind::CaptureUnresolved,
            }))
        }
        // A compensation that kept failing for as long as it was tried: an operator decides;
        // replaying its dead letter re-arms it.
        ProviderOperation::Void | ProviderOperation::Refund => {
            let reason = format!(
                "{op} failed for as long as it was tried ({} attempts, {})",
                ev.attempts, ev.last_error
            );
            Ok(Decision::of(Effect::Flag {
                reason,
                kind: FlagKind::CompensationFailed(ev.operation),
            }))
        }
    }
}

/// The provider refused a capture, void or refund: it did not happen (see each path).
fn declined(s: &PaymentState, ev: &ProviderRetriesExhausted, code: &str) -> Decided {
    if let Some(refund_id) = ev.refund_id {
        return refund_declined(s, refund_id, code);
    }
    match ev.operation {
        ProviderOperation::Authorize => Err(Refusal::broken(
            "a declined authorization is reported as payments.failed, not as retries exhausted"
                .into(),
        )),
        ProviderOperation::Capture => capture_declined(s, code),
        // The provider says the authorization was captured: a capture whose outcome we never
        // learnt went through. An operator resolves it (reconciliation shows the capture).
        ProviderOperation::Void if code == "already_captured" => {
            let reason = format!(
                "void declined by the provider ({code}): the authorization was captured \
                 although no capture is known here"
            );
            Ok(Decision::of(Effect::Flag {
                reason,
                kind: FlagKind::CaptureUnresolved,
            }))
        }
        ProviderOperation::Void if s.compensation().is_some() => {
            let reason = format!(
                "void declined by the provider ({code}): nothing was captured; the hold \
                 lapses at the card's issuer unless it is voided (an operator may fail it)"
            );
            Ok(Decision::of(Effect::Flag {
                reason,
                kind: FlagKind::VoidDeclined,
            }))
        }
        ProviderOperation::Void | ProviderOperation::Refund => {
            let reason = format!(
                "{} declined by the provider ({code}): it did not happen",
                ev.operation.as_str()
            );
            let kind = match s.compensation() {
                Some(_) => FlagKind::CompensationFailed(ev.operation),
                None => FlagKind::CaptureUnresolved,
            };
            Ok(Decision::of(Effect::Flag { reason, kind }))
        }
    }
}

/// A merchant's refund the provider refused fails: what it held of the refundable amount is
/// free again, and the merchant hears of it (`refund.failed`).
fn refund_declined(s: &PaymentState, refund_id: uuid::Uuid, code: &str) -> Decided {
    let Some(refund) = s.refund(refund_id) else {
        return Err(Refusal::broken(format!(
            "unknown refund {refund_id} of payment {}",
            s.terms.payment_id
        )));
    };
    if refund.status != RefundStatus::Requested {
        return Ok(Decision::of(Effect::Ignore(
            crate::saga::decision::Ignored::Stale,
        )));
    }
    let reason = format!("refund {refund_id} declined by the provider: {code}");
    let failed = crate::saga::decision::Command::RefundFailed(RefundFailed {
        merchant_id: s.terms.merchant_id,
        refund_id,
        amount_minor: refund.amount,
        currency: refund.currency,
        reason: refund.reason.clone(),
        decline_code: code.to_owned(),
        payment_status: s.status(),
    });
    Ok(Decision::of(Effect::Refund(RefundEffect::Failed {
        refund_id,
        reason: reason.clone(),
    }))
    .then(Effect::Step { reason })
    .send(failed))
}

/// The provider refused to capture the authorization (expired, or refused by the issuer):
/// nothing was captured, and the hold on the customer's card is released by voiding the
/// authorization; the payment ends REVERSED (or is flagged if the void is refused too).
fn capture_declined(s: &PaymentState, code: &str) -> Decided {
    if let Err(ignored) = expect_in(s, &[PaymentStatus::Authorized]) {
        return Ok(ignored);
    }
    if s.compensation().is_some() {
        // A void is already under way: it releases the authorization.
        let reason = format!("capture declined by the provider ({code}) while being voided");
        return Ok(Decision::of(Effect::Step { reason }));
    }
    let reason = format!("capture declined by the provider ({code}): voiding the authorization");
    let why = format!("capture declined by the provider: {code}");
    Ok(Decision::of(Effect::Compensate {
        kind: Compensation::Void,
        reason,
    })
    .send(commands::void(s, &why)))
}
