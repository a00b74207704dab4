//! Deadlines (see [`crate::saga::deadlines`]): a payment past its deadline has its
//! outstanding step sent again, up to `max_nudges` times, then waits for an operator; a
//! manual payment nobody acted on is voided (its authorization expired); one that waits for
//! a person is flagged. A merchant refund likewise.

use super::mutation::{self, Mutation};
use super::Decided;
use crate::saga::commands::{self, Outstanding};
use crate::saga::deadlines::Deadlines;
use crate::saga::decision::{Decision, Effect, Facts, FlagKind, RefundEffect, Refusal};
use crate::saga::state::{Manual, PaymentState};
use crate::store::MerchantAction;
use chrono::{DateTime, Utc};
use sagapay_domain::PaymentStatus;
use uuid::Uuid;

pub fn payment(s: &PaymentState, now: DateTime<Utc>, d: &Deadlines) -> Decided {
    let waited = s
        .due
        .map(|due| (now - due).num_seconds().max(0))
        .unwrap_or(0);
    let status = s.status();
    Ok(match commands::outstanding(s) {
        Outstanding::Command(command) if s.nudges < d.max_nudges => {
            let reason = format!(
                "deadline passed in {status} ({waited} s ago): {} sent again ({} of {})",
                command.event_type(),
                s.nudges + 1,
                d.max_nudges
            );
            Decision::of(Effect::Resend {
                reason,
                reset: false,
            })
            .send(command)
        }
        Outstanding::Command(command) => {
            let reason = format!(
                "no answer to {} in {status} after {} re-sends",
                command.event_type(),
                s.nudges
            );
            Decision::of(Effect::Flag {
                reason,
                kind: FlagKind::Overdue,
            })
        }
        Outstanding::Expired if mutation::active(Mutation::ExpiryWithoutVoid) => {
            let reason = "not captured in time: canceled".to_owned();
            super::end(s, PaymentStatus::Canceled, reason, Facts::default())
        }
        Outstanding::Expired => {
            let reason = format!(
                "not captured within {} s of its authorization: voiding it",
                d.manual_capture.as_secs()
            );
            let void = commands::void(s, &reason);
            let manual = Manual {
                action: MerchantAction::Expire,
                key: None,
                capture_amount: None,
            };
            Decision::of(Effect::Act { manual, reason }).send(void)
        }
        Outstanding::Person => {
            let allowed = d.after(status, None, false).map_or(0, |a| a.as_secs());
            let reason = format!("waiting for a person in {status} for more than {allowed} s");
            Decision::of(Effect::Flag {
                reason,
                kind: FlagKind::Overdue,
            })
        }
        // Terminal since its deadline was set: nothing waits.
        Outstanding::Nothing => Decision::of(Effect::ClearDeadline),
    })
}

pub fn refund(s: &PaymentState, refund_id: Uuid, d: &Deadlines) -> Decided {
    let Some(r) = s.refund(refund_id) else {
        return Err(Refusal::broken(format!(
            "refund {refund_id} is not one of payment {}",
            s.terms.payment_id
        )));
    };
    let Some(command) = commands::refund_outstanding(s, r) else {
        return Ok(Decision::of(Effect::Refund(RefundEffect::ClearDeadline {
            refund_id,
        })));
    };
    if r.nudges >= d.max_nudges {
        let reason = format!(
            "refund {refund_id}: no answer to {} in {} after {} re-sends",
            command.event_type(),
            r.status,
            r.nudges
        );
        return Ok(Decision::of(Effect::Refund(RefundEffect::Flag {
            refund_id,
            reason,
        })));
    }
    let reason = format!(
        "refund {refund_id}: deadline passed in {}: {} sent again ({} of {})",
        r.status,
        command.event_type(),
        r.nudges + 1,
        d.max_nudges
    );
    Ok(Decision::of(Effect::Refund(RefundEffect::Resend { refund_id, reason })).send(command))
}
