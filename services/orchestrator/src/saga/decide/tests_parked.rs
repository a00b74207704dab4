//! Parked payments and the provider's refusals, one case each: a capture of another amount is
//! recorded and can be failed or accepted, a refused refund fails and is announced, a refused
//! capture releases the authorization, a refused void can be ended by an operator.

use super::decide;
use super::tests::{authorized, decided, minor, payment, usd};
use crate::saga::apply::apply;
use crate::saga::consumed::Event;
use crate::saga::deadlines::Deadlines;
use crate::saga::decision::{
    Command, Effect, FlagKind, Input, OperatorRequest, RefundEffect, RefusalKind,
};
use crate::saga::state::{PaymentState, Refund, Stage};
use crate::store::{Compensation, ProviderMismatch};
use chrono::Utc;
use sagapay_domain::events::{
    CaptureMethod, PaymentCaptured, PaymentReversed, ProviderOperation, ProviderRetriesExhausted,
};
use sagapay_domain::{PaymentStatus, RefundStatus};
use uuid::Uuid;

fn captured_less() -> Input {
    Input::Event(Event::PaymentCaptured(PaymentCaptured {
        provider: "p".into(),
        capture_id: "cap-1".into(),
        amount_minor: minor(9_999),
        currency: usd(),
        authorization_id: Some("auth-1".into()),
    }))
}

/// An automatic payment whose capture took 9,999 of 10,000, as the saga leaves it.
fn mismatched() -> PaymentState {
    let s = payment(authorized(false), CaptureMethod::Automatic);
    let d = decided(&s, captured_less());
    assert!(
        matches!(
            d.effects.as_slice(),
            [
                Effect::Mismatch(_),
                Effect::Flag {
                    kind: FlagKind::AmountMismatch("capture"),
                    ..
                }
            ]
        ),
        "{d:?}"
    );
    assert_eq!(d.moves_to(), None, "never applied");
    let parked = apply(&s, &d).unwrap();
    assert!(parked.attention);
    assert_eq!(parked.to_capture(), minor(9_999));
    parked
}

fn operator(request: OperatorRequest) -> Input {
    Input::Operator(request)
}

fn declined(operation: ProviderOperation, refund_id: Option<Uuid>) -> Input {
    Input::Event(Event::ProviderRetriesExhausted(ProviderRetriesExhausted {
        operation,
        attempts: 1,
        last_error: "declined".into(),
        refund_id,
        decline_code: Some("refused_here".into()),
    }))
}

#[test]
fn a_capture_of_another_amount_answered_again_is_flagged_again_never_applied() {
    let parked = mismatched();
    let again = decided(&parked, captured_less());
    assert_eq!(again.moves_to(), None, "{again:?}");
    assert!(again
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Flag { .. })));
}

#[test]
fn an_operator_fails_a_capture_of_another_amount_by_refunding_what_was_taken() {
    let parked = mismatched();
    let fail = OperatorRequest::Fail {
        who: "ops-ann".into(),
        why: "customer called".into(),
    };
    let d = decided(&parked, operator(fail));
    assert!(matches!(d.send.as_slice(), [Command::Void(_)]), "{d:?}");
    let voiding = apply(&parked, &d).unwrap();
    let reversed = |amount| {
        Input::Event(Event::PaymentReversed(PaymentReversed {
            provider: "p".into(),
            operation: ProviderOperation::Refund,
            reference: "re-1".into(),
            reason: "failed".into(),
            amount_minor: Some(minor(amount)),
            currency: Some(usd()),
        }))
    };
    let exact = decided(&voiding, reversed(9_999));
    assert_eq!(exact.moves_to(), Some(PaymentStatus::Reversed), "{exact:?}");
    let asked = decided(&voiding, reversed(10_000));
    assert_eq!(
        asked.moves_to(),
        None,
        "more than the provider took: {asked:?}"
    );
}

#[test]
fn an_operator_accepts_a_capture_of_another_amount_and_it_is_posted_for_it() {
    let parked = mismatched();
    let accept = OperatorRequest::Accept {
        who: "ops-ann".into(),
        why: "the customer agreed".into(),
    };
    let d = decided(&parked, operator(accept.clone()));
    assert_eq!(d.moves_to(), Some(PaymentStatus::Captured));
    let [Command::Post(post)] = d.send.as_slice() else {
        panic!("{d:?}")
    };
    assert_eq!(post.amount_minor, minor(9_999));
    assert_eq!(post.capture_id, "cap-1");
    let captured = apply(&parked, &d).unwrap();
    assert!(!captured.attention);
    assert_eq!(
        captured.captured_in(PaymentStatus::Settled),
        Some(minor(9_999))
    );
    // Nothing to accept on a payment without a capture of another amount.
    let plain = payment(authorized(false), CaptureMethod::Automatic);
    let refused = decide(&plain, &operator(accept), Utc::now(), &Deadlines::default());
    assert_eq!(refused.unwrap_err().code, "nothing_to_accept");
}

#[test]
fn a_refused_refund_fails_frees_its_amount_and_is_announced() {
    let refund_id = Uuid::from_u64_pair(9, 9);
    let mut s = payment(
        Stage::Settled {
            capture_id: "cap".into(),
        },
        CaptureMethod::Automatic,
    );
    s.refunds.push(Refund {
        refund_id,
        status: RefundStatus::Requested,
        amount: minor(4_000),
        currency: usd(),
        reason: "damaged".into(),
        nudges: 0,
    });
    let d = decided(&s, declined(ProviderOperation::Refund, Some(refund_id)));
    assert!(d
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Refund(RefundEffect::Failed { .. }))));
    let [Command::RefundFailed(ev)] = d.send.as_slice() else {
        panic!("{d:?}")
    };
    assert_eq!(
        (ev.amount_minor, ev.decline_code.as_str()),
        (minor(4_000), "refused_here")
    );
    let after = apply(&s, &d).unwrap();
    assert_eq!(after.committed_refunds(), 0, "its amount is free again");
    let again = decided(&after, declined(ProviderOperation::Refund, Some(refund_id)));
    assert!(again.send.is_empty(), "announced once: {again:?}");
}

#[test]
fn a_refused_capture_voids_the_authorization() {
    let s = payment(authorized(false), CaptureMethod::Automatic);
    let d = decided(&s, declined(ProviderOperation::Capture, None));
    assert!(
        matches!(
            d.effects.as_slice(),
            [Effect::Compensate {
                kind: Compensation::Void,
                ..
            }]
        ),
        "{d:?}"
    );
    assert!(matches!(d.send.as_slice(), [Command::Void(_)]));
}

#[test]
fn a_refused_void_is_flagged_and_an_operator_can_end_it() {
    let s = payment(authorized(true), CaptureMethod::Automatic);
    let d = decided(&s, declined(ProviderOperation::Void, None));
    assert!(
        matches!(
            d.effects.as_slice(),
            [Effect::Flag {
                kind: FlagKind::VoidDeclined,
                ..
            }]
        ),
        "{d:?}"
    );
    let parked = apply(&s, &d).unwrap();
    let fail = OperatorRequest::Fail {
        who: "ops-ann".into(),
        why: "hold lapses".into(),
    };
    let ended = decided(&parked, operator(fail.clone()));
    assert_eq!(ended.moves_to(), Some(PaymentStatus::Failed), "{ended:?}");
    // Not while the void is still being tried, nor when it is flagged for another reason
    // (unanswered: the void may still happen, or the provider says it was captured).
    let refused = decide(
        &s,
        &operator(fail.clone()),
        Utc::now(),
        &Deadlines::default(),
    );
    assert_eq!(refused.unwrap_err().kind, RefusalKind::Conflict);
    let captured = Input::Event(Event::ProviderRetriesExhausted(ProviderRetriesExhausted {
        operation: ProviderOperation::Void,
        attempts: 1,
        last_error: "declined".into(),
        refund_id: None,
        decline_code: Some("already_captured".into()),
    }));
    let flagged = apply(&s, &decided(&s, captured)).unwrap();
    assert!(flagged.attention && !flagged.void_refused);
    let refused = decide(&flagged, &operator(fail), Utc::now(), &Deadlines::default());
    assert_eq!(refused.unwrap_err().code, "payment_not_failable");
}

#[test]
fn an_authorization_of_another_amount_is_voided_for_what_the_provider_holds() {
    let mut s = payment(Stage::Approved { voiding: true }, CaptureMethod::Automatic);
    s.mismatch = Some(ProviderMismatch {
        operation: ProviderOperation::Authorize,
        reference: "auth-1".into(),
        amount: minor(9_000),
    });
    let voided = Input::Event(Event::PaymentReversed(PaymentReversed {
        provider: "p".into(),
        operation: ProviderOperation::Void,
        reference: "void-1".into(),
        reason: "failed".into(),
        amount_minor: Some(minor(9_000)),
        currency: Some(usd()),
    }));
    assert_eq!(
        decided(&s, voided).moves_to(),
        Some(PaymentStatus::Reversed)
    );
}
