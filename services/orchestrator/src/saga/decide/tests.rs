//! The core's rules, one case each, on states built in memory.

use super::decide;
use crate::saga::apply::apply;
use crate::saga::consumed::Event;
use crate::saga::deadlines::Deadlines;
use crate::saga::decision::{
    Command, Decision, Effect, Ignored, Input, MerchantRequest, OperatorRequest, RefusalKind,
};
use crate::saga::state::{Manual, PaymentState, Refund, Stage, Terms};
use crate::store::{Compensation, MerchantAction};
use chrono::Utc;
use sagapay_domain::events::{
    CaptureMethod, PaymentCaptured, PaymentReversed, PaymentSettled, ProviderOperation,
    RiskApproved,
};
use sagapay_domain::{
    AmountMinor, Currency, CustomerId, PaymentMethod, PaymentStatus, RefundStatus,
};
use uuid::Uuid;

pub(super) fn minor(n: i64) -> AmountMinor {
    AmountMinor::new(n).unwrap()
}

pub(super) fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

pub(super) fn payment(stage: Stage, capture_method: CaptureMethod) -> PaymentState {
    PaymentState {
        terms: Terms {
            payment_id: Uuid::from_u64_pair(1, 1),
            merchant_id: Uuid::from_u64_pair(2, 2),
            customer_id: CustomerId::parse("cust-1").unwrap(),
            amount: minor(10_000),
            currency: usd(),
            payment_method: PaymentMethod::parse("pm_card_ok").unwrap(),
            capture_method,
            created_at: Utc::now(),
            correlation_id: "c".into(),
        },
        stage,
        manual: None,
        nudges: 0,
        due: None,
        attention: false,
        void_refused: false,
        mismatch: None,
        refunds: Vec::new(),
    }
}

pub(super) fn decided(s: &PaymentState, input: Input) -> Decision {
    decide(s, &input, Utc::now(), &Deadlines::default()).expect("a decision")
}

pub(super) fn authorized(voiding: bool) -> Stage {
    Stage::Authorized {
        authorization_id: "auth-1".into(),
        voiding,
    }
}

#[test]
fn risk_approval_moves_to_approved_and_asks_for_the_authorization() {
    let s = payment(Stage::Created, CaptureMethod::Automatic);
    let d = decided(
        &s,
        Input::Event(Event::RiskApproved(RiskApproved {
            reason: "ok".into(),
        })),
    );
    assert_eq!(d.moves_to(), Some(PaymentStatus::Approved));
    assert!(matches!(d.send.as_slice(), [Command::Authorize(_)]));
    let again = apply(&s, &d).unwrap();
    let stale = decided(
        &again,
        Input::Event(Event::RiskApproved(RiskApproved {
            reason: "ok".into(),
        })),
    );
    assert_eq!(stale.effects, vec![Effect::Ignore(Ignored::Stale)]);
}

/// The over-refund of issue 24: a partial manual capture of 4000 of 10000, an operator's
/// fail while it was in flight, the void performed as the refund of the capture. A reversal
/// of more than was captured is never applied.
#[test]
fn a_reversal_of_more_than_was_captured_is_flagged_not_applied() {
    let mut s = payment(
        Stage::Captured {
            capture_id: "cap".into(),
            undoing: Some(Compensation::Void),
        },
        CaptureMethod::Manual,
    );
    s.manual = Some(Manual {
        action: MerchantAction::Capture,
        key: Some("k".into()),
        capture_amount: Some(minor(4000)),
    });
    let reversed = |amount| {
        Input::Event(Event::PaymentReversed(PaymentReversed {
            provider: "p".into(),
            operation: ProviderOperation::Refund,
            reference: "r".into(),
            reason: "failed by ops".into(),
            amount_minor: Some(minor(amount)),
            currency: Some(usd()),
        }))
    };
    let over = decided(&s, reversed(10_000));
    assert!(
        matches!(over.effects.as_slice(), [Effect::Flag { .. }]),
        "{over:?}"
    );
    let exact = decided(&s, reversed(4000));
    assert_eq!(exact.moves_to(), Some(PaymentStatus::Reversed));
    let Some(Command::Finalized(f)) = exact.send.first() else {
        panic!("{exact:?}")
    };
    assert_eq!(
        f.amount_captured_minor, None,
        "a reversed payment holds no capture"
    );
}

#[test]
fn a_capture_while_voiding_is_recorded_and_never_posted() {
    let s = payment(authorized(true), CaptureMethod::Automatic);
    let d = decided(
        &s,
        Input::Event(Event::PaymentCaptured(PaymentCaptured {
            provider: "p".into(),
            capture_id: "cap".into(),
            amount_minor: minor(10_000),
            currency: usd(),
            authorization_id: Some("auth-1".into()),
        })),
    );
    assert_eq!(d.moves_to(), Some(PaymentStatus::Captured));
    assert!(d.send.is_empty(), "not posted: {d:?}");
    let next = apply(&s, &d).unwrap();
    assert_eq!(next.compensation(), Some(Compensation::Void));
}

#[test]
fn a_posting_during_a_refund_of_the_capture_is_reversed_in_the_ledger() {
    let s = payment(
        Stage::Captured {
            capture_id: "cap".into(),
            undoing: Some(Compensation::Refund),
        },
        CaptureMethod::Automatic,
    );
    let d = decided(
        &s,
        Input::Event(Event::PaymentSettled(PaymentSettled {
            journal_transaction_id: Uuid::nil(),
            amount_minor: minor(10_000),
            currency: usd(),
        })),
    );
    assert_eq!(d.moves_to(), None);
    assert!(matches!(d.send.as_slice(), [Command::PostRefund(_)]));
}

#[test]
fn merchant_refunds_are_bounded_by_what_was_captured_less_what_they_hold() {
    let mut s = payment(
        Stage::Settled {
            capture_id: "cap".into(),
        },
        CaptureMethod::Manual,
    );
    s.manual = Some(Manual {
        action: MerchantAction::Capture,
        key: None,
        capture_amount: Some(minor(4000)),
    });
    s.refunds.push(Refund {
        refund_id: Uuid::nil(),
        status: RefundStatus::Requested,
        amount: minor(1000),
        currency: usd(),
        reason: "r".into(),
        nudges: 0,
    });
    let ask = |amount| {
        Input::Merchant(MerchantRequest::Refund {
            refund_id: Uuid::max(),
            amount: minor(amount),
            reason: "r".into(),
        })
    };
    let refused = decide(&s, &ask(3001), Utc::now(), &Deadlines::default()).unwrap_err();
    assert_eq!(
        (refused.kind, refused.code),
        (RefusalKind::Unprocessable, "refund_exceeds_captured")
    );
    let admitted = decided(&s, ask(3000));
    assert!(
        matches!(admitted.send.as_slice(), [Command::Refund(r)] if r.amount_minor == minor(3000))
    );
}

#[test]
fn an_operator_fails_by_the_stage_the_payment_is_in() {
    let fail = || {
        Input::Operator(OperatorRequest::Fail {
            who: "ops".into(),
            why: "fraud".into(),
        })
    };
    let created = decided(&payment(Stage::Created, CaptureMethod::Automatic), fail());
    assert_eq!(created.moves_to(), Some(PaymentStatus::Failed));
    let auth = decided(
        &payment(authorized(false), CaptureMethod::Automatic),
        fail(),
    );
    assert!(matches!(
        auth.effects.as_slice(),
        [Effect::Compensate {
            kind: Compensation::Void,
            ..
        }]
    ));
    let captured = decided(
        &payment(
            Stage::Captured {
                capture_id: "c".into(),
                undoing: None,
            },
            CaptureMethod::Automatic,
        ),
        fail(),
    );
    assert!(matches!(
        captured.effects.as_slice(),
        [Effect::Compensate {
            kind: Compensation::Refund,
            ..
        }]
    ));
    let twice = decide(
        &payment(authorized(true), CaptureMethod::Automatic),
        &fail(),
        Utc::now(),
        &Deadlines::default(),
    );
    assert_eq!(twice.unwrap_err().code, "payment_not_failable");
}

#[test]
fn a_settled_payment_has_nothing_outstanding() {
    let s = payment(
        Stage::Settled {
            capture_id: "c".into(),
        },
        CaptureMethod::Automatic,
    );
    let d = decided(&s, Input::Deadline);
    assert_eq!(d.effects, vec![Effect::ClearDeadline]);
    let retry = decide(
        &s,
        &Input::Operator(OperatorRequest::Retry { who: "ops".into() }),
        Utc::now(),
        &Deadlines::default(),
    );
    assert_eq!(retry.unwrap_err().code, "nothing_to_retry");
}

#[test]
fn a_manual_payment_nobody_acted_on_expires_into_a_void() {
    let s = payment(authorized(false), CaptureMethod::Manual);
    let d = decided(&s, Input::Deadline);
    assert!(matches!(
        d.effects.as_slice(),
        [Effect::Act {
            manual: Manual {
                action: MerchantAction::Expire,
                ..
            },
            ..
        }]
    ));
    assert!(matches!(d.send.as_slice(), [Command::Void(_)]));
}

/// Found by the simulator: the ledger's answer to the posting arrives after the provider
/// refunded the capture (an operator failed the payment meanwhile). The posting is reversed,
/// not ignored as stale (the ledger would keep money the provider paid back).
#[test]
fn a_posting_after_the_capture_was_refunded_is_reversed_in_the_ledger() {
    let s = payment(
        Stage::Reversed {
            capture_id: Some("cap".into()),
        },
        CaptureMethod::Automatic,
    );
    let d = decided(
        &s,
        Input::Event(Event::PaymentSettled(PaymentSettled {
            journal_transaction_id: Uuid::nil(),
            amount_minor: minor(10_000),
            currency: usd(),
        })),
    );
    assert!(
        matches!(d.send.as_slice(), [Command::PostRefund(r)] if r.amount_minor == minor(10_000)),
        "{d:?}"
    );
    let voided = payment(
        Stage::Reversed { capture_id: None },
        CaptureMethod::Automatic,
    );
    let stale = decided(
        &voided,
        Input::Event(Event::PaymentSettled(PaymentSettled {
            journal_transaction_id: Uuid::nil(),
            amount_minor: minor(10_000),
            currency: usd(),
        })),
    );
    assert_eq!(stale.effects, vec![Effect::Ignore(Ignored::Stale)]);
}
