//! A decision applied to the state in memory: what the store's statements do to the row
//! (`crate::store`: `transition`, `start_compensation`, `record_merchant_action`, `resend`,
//! `flag_attention`, the refunds' updates), for the simulator and the core's tests. Kept
//! beside the decision types so the two cannot drift apart unnoticed: every effect has its
//! arm here and in the shell.

use super::decision::{Decision, Effect, RefundEffect};
use super::state::{PaymentState, Refund, Stage};
use crate::store::Compensation;
use sagapay_domain::{PaymentStatus, RefundStatus};

/// `s` after `d`; `None` when the decision changes nothing but the inbox (ignored).
pub fn apply(s: &PaymentState, d: &Decision) -> Result<PaymentState, String> {
    let mut next = s.clone();
    for effect in &d.effects {
        next = effect_on(next, effect)?;
    }
    Ok(next)
}

fn effect_on(mut s: PaymentState, effect: &Effect) -> Result<PaymentState, String> {
    match effect {
        Effect::Ignore(_) | Effect::Step { .. } => {}
        Effect::Move { to, facts, .. } => {
            s.stage = moved(&s, *to, facts)?;
            s.nudges = 0;
            s.attention = false;
            s.void_refused = false;
        }
        Effect::Compensate { kind, .. } => {
            s.stage = compensating(&s, *kind)?;
            s.nudges = 0;
            s.attention = false;
            s.void_refused = false;
        }
        Effect::Act { manual, .. } => {
            if manual.action != crate::store::MerchantAction::Capture {
                s.stage = compensating(&s, Compensation::Void)?;
            }
            s.manual = Some(manual.clone());
            s.nudges = 0;
            s.attention = false;
            s.void_refused = false;
        }
        Effect::Resend { reset, .. } => {
            s.nudges = if *reset { 0 } else { s.nudges + 1 };
            s.attention = false;
            s.void_refused = false;
        }
        Effect::Flag { kind, .. } => {
            s.attention = true;
            s.void_refused = *kind == super::decision::FlagKind::VoidDeclined;
        }
        Effect::Mismatch(m) => s.mismatch = Some(m.clone()),
        Effect::ClearDeadline => s.due = None,
        Effect::Refund(r) => refund_effect(&mut s, r)?,
    }
    Ok(s)
}

/// The stage `to` with the facts of the move (and what the payment knew before).
fn moved(
    s: &PaymentState,
    to: PaymentStatus,
    facts: &super::decision::Facts,
) -> Result<Stage, String> {
    if !s.status().can_transition_to(to) {
        return Err(format!("illegal move {} -> {to}", s.status()));
    }
    let missing = |what: &str| format!("a move to {to} without {what}");
    let capture_id = || {
        facts
            .capture_id
            .clone()
            .or_else(|| s.capture_id().map(str::to_owned))
            .ok_or_else(|| missing("a capture id"))
    };
    Ok(match to {
        PaymentStatus::Created => Stage::Created,
        PaymentStatus::RiskReview => Stage::RiskReview,
        PaymentStatus::Approved => Stage::Approved { voiding: false },
        PaymentStatus::Authorized => Stage::Authorized {
            authorization_id: facts
                .authorization_id
                .clone()
                .ok_or_else(|| missing("an authorization id"))?,
            voiding: s.compensation().is_some(),
        },
        PaymentStatus::Captured => Stage::Captured {
            capture_id: capture_id()?,
            undoing: s.compensation(),
        },
        PaymentStatus::Settled => Stage::Settled {
            capture_id: capture_id()?,
        },
        PaymentStatus::PartiallyRefunded => Stage::PartiallyRefunded {
            capture_id: capture_id()?,
        },
        PaymentStatus::Refunded => Stage::Refunded {
            capture_id: capture_id()?,
        },
        PaymentStatus::Failed => Stage::Failed,
        PaymentStatus::Reversed => Stage::Reversed {
            capture_id: s.capture_id().map(str::to_owned),
        },
        PaymentStatus::Canceled => Stage::Canceled,
    })
}

fn compensating(s: &PaymentState, kind: Compensation) -> Result<Stage, String> {
    Ok(match (&s.stage, kind) {
        (Stage::Approved { .. }, Compensation::Void) => Stage::Approved { voiding: true },
        (
            Stage::Authorized {
                authorization_id, ..
            },
            Compensation::Void,
        ) => Stage::Authorized {
            authorization_id: authorization_id.clone(),
            voiding: true,
        },
        (Stage::Captured { capture_id, .. }, kind) => Stage::Captured {
            capture_id: capture_id.clone(),
            undoing: Some(kind),
        },
        (stage, kind) => return Err(format!("{kind:?} of a payment in {stage:?}")),
    })
}

fn refund_effect(s: &mut PaymentState, effect: &RefundEffect) -> Result<(), String> {
    let set = |s: &mut PaymentState, id, from: &[RefundStatus], to| {
        if let Some(r) = s.refunds.iter_mut().find(|r| r.refund_id == id) {
            if from.contains(&r.status) {
                r.status = to;
                r.nudges = 0;
            }
        }
    };
    match effect {
        RefundEffect::Admit {
            refund_id,
            amount,
            reason,
        } => s.refunds.push(Refund {
            refund_id: *refund_id,
            status: RefundStatus::Requested,
            amount: *amount,
            currency: s.terms.currency,
            reason: reason.clone(),
            nudges: 0,
        }),
        RefundEffect::Processed { refund_id, .. } => set(
            s,
            *refund_id,
            &[RefundStatus::Requested],
            RefundStatus::Processed,
        ),
        RefundEffect::Succeeded { refund_id, .. } => set(
            s,
            *refund_id,
            &[RefundStatus::Processed],
            RefundStatus::Succeeded,
        ),
        RefundEffect::Failed { refund_id, .. } => set(
            s,
            *refund_id,
            &[RefundStatus::Requested],
            RefundStatus::Failed,
        ),
        RefundEffect::Resend { refund_id, .. } => {
            if let Some(r) = s.refunds.iter_mut().find(|r| r.refund_id == *refund_id) {
                r.nudges += 1;
            }
        }
        RefundEffect::Rearm { refund_id } => {
            if let Some(r) = s.refunds.iter_mut().find(|r| r.refund_id == *refund_id) {
                r.nudges = 0;
            }
        }
        RefundEffect::OutcomeUnknown { .. }
        | RefundEffect::Flag { .. }
        | RefundEffect::ClearDeadline { .. } => {}
    }
    Ok(())
}
