//! What must hold in the simulated world, each rule with a name ([`Invariant`]), so that a
//! failing seed says which rule broke and a deliberate bug's test says which rule caught it:
//! after every step ([`always`]), once the faults stopped and everything came to rest
//! ([`at_rest`]), and once operators ended every parked payment ([`ended`]).
//!
//! The books are compared for every payment, parked ones included: what a payment's state
//! says the provider did, it did ([`Invariant::StateMatchesProvider`]), and every ledger
//! posting is one the provider's books back ([`Invariant::LedgerPostingsMatchProvider`]).
//! The totals ([`Invariant::StatusMatchesProvider`], [`Invariant::LedgerMatchesProvider`])
//! and the card hold ([`Invariant::NoOpenAuthorization`]) wait for a payment that is not
//! parked: a parked payment waits for an operator, and its ledger may lag its provider until
//! one acts. Announcements and postings are counted per payment in the models' rows, which
//! can hold a second one (`models`).

use super::world::{Tracked, World};
use crate::saga::decision::FlagKind;
use crate::saga::state::{PaymentState, Stage};
use sagapay_domain::events::{capture_reversal_id, CaptureMethod, ProviderOperation};
use sagapay_domain::{PaymentStatus, RefundStatus};
use sagapay_provider_adapter::policy::idempotency_key;
use sagapay_provider_adapter::records::{OperationKey, OperationStatus};
use std::collections::BTreeMap;
use uuid::Uuid;

use super::adapter::Books;
use super::models::{Heard, Kind};

pub use super::verdict::{Checked, Invariant, Violation};

fn broke(invariant: Invariant, detail: String) -> Checked {
    Err(Violation { invariant, detail })
}

/// After every step.
pub fn always(w: &World) -> Checked {
    if let Some((invariant, detail)) = w.breaches.first() {
        return broke(*invariant, detail.clone());
    }
    if let Some(r) = w.psp.refusals.first() {
        let detail = format!("the provider refused what the platform asked: {r}");
        return broke(Invariant::ProviderNeverRefuses, detail);
    }
    for (p, b) in &w.psp.books {
        provider_books_hold(*p, b)?;
    }
    admission_follows(w)?;
    for posting in &w.ledger.journal {
        let Kind::Capture = posting.kind else {
            continue;
        };
        let at_provider = w.psp.books.get(&posting.payment).and_then(|b| b.captured);
        if at_provider != Some(posting.amount.get()) {
            let detail = format!(
                "{}: the ledger posted {}, the provider captured {at_provider:?}",
                posting.payment, posting.amount
            );
            return broke(Invariant::LedgerPostsWhatWasCaptured, detail);
        }
    }
    Ok(())
}

fn provider_books_hold(p: Uuid, b: &Books) -> Checked {
    let captured = b.captured.unwrap_or(0);
    let detail = if b.captured.is_some() && b.authorized.is_none_or(|a| captured > a) {
        format!(
            "{p}: captured {captured} of an authorization of {:?}",
            b.authorized
        )
    } else if b.refunded > captured {
        format!("{p}: refunded {} of a capture of {captured}", b.refunded)
    } else if b.captures > 1 {
        format!("{p}: captured {} times", b.captures)
    } else {
        return Ok(());
    };
    broke(Invariant::ProviderBooksHold, detail)
}

/// At most one posting per payment and kind, and no message that made two rows.
fn posted_once(w: &World) -> Checked {
    let mut postings: BTreeMap<(Uuid, Kind), usize> = BTreeMap::new();
    let mut messages: BTreeMap<u64, usize> = BTreeMap::new();
    for posting in &w.ledger.journal {
        *postings.entry((posting.payment, posting.kind)).or_default() += 1;
        *messages.entry(posting.message).or_default() += 1;
    }
    if let Some(((p, kind), n)) = postings.iter().find(|(_, n)| **n > 1) {
        let detail = format!("{p}: the ledger posted {kind:?} {n} times");
        return broke(Invariant::PostedOnce, detail);
    }
    let mut announced: BTreeMap<u64, usize> = BTreeMap::new();
    for e in &w.notification.events {
        *announced.entry(e.message).or_default() += 1;
    }
    let twice = (messages.iter().chain(announced.iter())).find(|(_, n)| **n > 1);
    if let Some((message, n)) = twice {
        let detail = format!("message {message} acted on {n} times: its inbox let it through");
        return broke(Invariant::PostedOnce, detail);
    }
    Ok(())
}

/// Admission's count of each merchant equals a recount by its rule as the spec states it:
/// payments the automatic pipeline still has to finish (waiting for risk, authorization,
/// capture or posting) that are not parked for an operator. A parked payment holds no place.
fn admission_follows(w: &World) -> Checked {
    let mut recount: BTreeMap<Uuid, i64> = BTreeMap::new();
    for t in w.payments.values() {
        let s = &t.state;
        let pipeline = match s.status() {
            PaymentStatus::Created | PaymentStatus::Approved | PaymentStatus::Captured => true,
            PaymentStatus::Authorized => s.terms.capture_method == CaptureMethod::Automatic,
            _ => false,
        };
        *recount.entry(s.terms.merchant_id).or_insert(0) += i64::from(pipeline && !s.attention);
    }
    for (merchant, counted) in &w.admission {
        let actual = recount.get(merchant).copied().unwrap_or(0);
        if *counted != actual {
            let detail = format!(
                "admission counts {counted} places for merchant {merchant}, its pipeline holds {actual}"
            );
            return broke(Invariant::AdmissionFollows, detail);
        }
    }
    Ok(())
}

/// Once at rest: nothing in flight; every payment ended or parked with a reason; what each
/// merchant heard, counted; each payment's state and postings backed by the provider's
/// books; and, for a payment not parked, the totals and the card hold.
pub fn at_rest(w: &World) -> Checked {
    always(w)?;
    if !w.queue.is_empty() || w.adapter.pending() {
        let detail = "at rest with messages in flight or operations pending".into();
        return broke(Invariant::Settles, detail);
    }
    posted_once(w)?;
    for (p, t) in &w.payments {
        let s = &t.state;
        if !s.status().is_terminal() && !s.attention {
            let detail = format!("{p} rests in {} without an operator's flag", s.status());
            return broke(Invariant::Settles, detail);
        }
        finalized_once(w, *p, s)?;
        refunds_announced_once(w, *p, s)?;
        state_matches_provider(w, *p, s)?;
        ledger_postings_match(w, *p, s)?;
        if !s.attention && t.refund_flagged.is_empty() {
            books_agree(w, *p, s)?;
        }
    }
    Ok(())
}

/// One `payments.finalized` per terminal state reached (settled, then refunded), none for
/// the others; at most one `payments.awaiting_capture`.
fn finalized_once(w: &World, p: Uuid, s: &PaymentState) -> Checked {
    let status = s.status();
    let mut announced: Vec<PaymentStatus> = (w.notification.events.iter())
        .filter(|e| e.payment == p)
        .filter_map(|e| match e.heard {
            Heard::Finalized(status) => Some(status),
            _ => None,
        })
        .collect();
    announced.sort_by_key(|s| s.as_str());
    let mut expected = match status {
        PaymentStatus::Settled | PaymentStatus::PartiallyRefunded => {
            vec![PaymentStatus::Settled]
        }
        PaymentStatus::Refunded => vec![PaymentStatus::Settled, PaymentStatus::Refunded],
        ended if ended.is_terminal() => vec![ended],
        _ => Vec::new(),
    };
    expected.sort_by_key(|s| s.as_str());
    if announced != expected {
        let detail = format!(
            "{p} is {status}: its merchant heard payments.finalized {announced:?}, not {expected:?}"
        );
        return broke(Invariant::FinalizedOnce, detail);
    }
    let awaiting = w.notification.heard(p, Heard::AwaitingCapture);
    if awaiting > 1 {
        let detail = format!("{p}: its merchant heard payments.awaiting_capture {awaiting} times");
        return broke(Invariant::FinalizedOnce, detail);
    }
    Ok(())
}

/// Each refund announced as it ended, once: `refund.succeeded` for a succeeded one,
/// `refund.failed` for a failed one, nothing for one still under way; nothing for a refund
/// the payment does not have.
fn refunds_announced_once(w: &World, p: Uuid, s: &PaymentState) -> Checked {
    for r in &s.refunds {
        let id = r.refund_id;
        let heard = (
            w.notification.heard(p, Heard::RefundSucceeded(id)),
            w.notification.heard(p, Heard::RefundFailed(id)),
        );
        let expected = match r.status {
            RefundStatus::Succeeded => (1, 0),
            RefundStatus::Failed => (0, 1),
            RefundStatus::Requested | RefundStatus::Processed => (0, 0),
        };
        if heard != expected {
            let detail = format!(
                "{p}: refund {id} is {}; its merchant heard (succeeded, failed) {heard:?} times, \
                 not {expected:?}",
                r.status
            );
            return broke(Invariant::RefundAnnouncedOnce, detail);
        }
    }
    let stranger = w.notification.events.iter().find(|e| {
        e.payment == p
            && match e.heard {
                Heard::RefundSucceeded(id) | Heard::RefundFailed(id) => s.refund(id).is_none(),
                _ => false,
            }
    });
    if let Some(e) = stranger {
        let detail = format!(
            "{p}: its merchant heard {:?} of a refund it does not have",
            e.heard
        );
        return broke(Invariant::RefundAnnouncedOnce, detail);
    }
    Ok(())
}

/// The provider's books for `p` (empty when it was never asked).
fn books(w: &World, p: Uuid) -> Books {
    w.psp.books.get(&p).cloned().unwrap_or_default()
}

/// What the provider refunded under merchant refund `refund_id`'s key (`None`: the
/// reversal of the capture), if it did.
fn refunded(b: &Books, p: Uuid, refund_id: Option<Uuid>) -> Option<i64> {
    let key = idempotency_key(
        ProviderOperation::Refund,
        p,
        OperationKey::refund(refund_id),
    );
    b.refunds.get(&key).map(|(done, _)| *done)
}

/// What the payment's state says the provider did, it did, parked or not: the capture a
/// stage holds (for what the payment says it captured), the authorization of an authorized
/// payment, each refund counted as made (processed or succeeded, for its amount), and no
/// refund counted as failed.
fn state_matches_provider(w: &World, p: Uuid, s: &PaymentState) -> Checked {
    let b = books(w, p);
    let status = s.status();
    let holds_capture = s.capture_id().is_some()
        || matches!(
            s.stage,
            Stage::Reversed {
                capture_id: Some(_)
            }
        );
    let captured = s.to_capture().get();
    if holds_capture && b.captured != Some(captured) {
        let detail = format!(
            "{p} is {status} with a capture of {captured}; the provider captured {:?}",
            b.captured
        );
        return broke(Invariant::StateMatchesProvider, detail);
    }
    if matches!(s.stage, Stage::Authorized { .. }) && b.authorized.is_none() {
        let detail = format!("{p} is AUTHORIZED; the provider holds no authorization");
        return broke(Invariant::StateMatchesProvider, detail);
    }
    for r in &s.refunds {
        let done = refunded(&b, p, Some(r.refund_id));
        let backed = match r.status {
            RefundStatus::Processed | RefundStatus::Succeeded => done == Some(r.amount.get()),
            RefundStatus::Failed => done.is_none(),
            RefundStatus::Requested => true,
        };
        if !backed {
            let detail = format!(
                "{p}: refund {} of {} is {}; the provider refunded {done:?} under its key",
                r.refund_id, r.amount, r.status
            );
            return broke(Invariant::StateMatchesProvider, detail);
        }
    }
    Ok(())
}

/// Every posting of the payment is backed, parked or not: a merchant refund's by a refund
/// the payment counts as made and the provider made for that amount; the reversal of the
/// capture posting by that posting, for its amount.
fn ledger_postings_match(w: &World, p: Uuid, s: &PaymentState) -> Checked {
    let b = books(w, p);
    let capture = w.ledger.of(p).find(|x| x.kind == Kind::Capture);
    for posting in w.ledger.of(p) {
        let Kind::Refund(id) = posting.kind else {
            continue;
        };
        let amount = posting.amount.get();
        let backed = if id == capture_reversal_id(p) {
            capture.is_some_and(|c| c.amount.get() == amount)
        } else {
            let counted = s.refund(id).is_some_and(|r| {
                matches!(r.status, RefundStatus::Processed | RefundStatus::Succeeded)
            });
            counted && refunded(&b, p, Some(id)) == Some(amount)
        };
        if !backed {
            let detail = format!(
                "{p} ({}): the ledger posted refund {id} of {amount}, which nothing backs",
                s.status()
            );
            return broke(Invariant::LedgerPostingsMatchProvider, detail);
        }
    }
    Ok(())
}

/// The totals of a payment not parked: what the provider holds is what its status says,
/// the ledger holds the same, and no authorization is left open on one that ended without
/// its capture.
fn books_agree(w: &World, p: Uuid, s: &PaymentState) -> Checked {
    let b = books(w, p);
    let status = s.status();
    let psp_net = b.captured.unwrap_or(0) - b.refunded;
    let expected = match &s.stage {
        Stage::Settled { .. } | Stage::PartiallyRefunded { .. } | Stage::Refunded { .. } => {
            Some(s.to_capture().get() - s.succeeded_refunds())
        }
        Stage::Failed | Stage::Reversed { .. } | Stage::Canceled => Some(0),
        _ => None,
    };
    if expected.is_some_and(|e| e != psp_net) {
        let detail = format!(
            "{p} is {status} and the provider holds {psp_net}, not {}",
            expected.unwrap_or_default()
        );
        return broke(Invariant::StatusMatchesProvider, detail);
    }
    if status == PaymentStatus::Canceled && b.captured.is_some() {
        let detail = format!("{p} is CANCELED and was captured");
        return broke(Invariant::StatusMatchesProvider, detail);
    }
    let ledger_net = w.ledger.net(p);
    if psp_net != ledger_net {
        let detail =
            format!("{p} ({status}): the provider holds {psp_net}, the ledger {ledger_net}");
        return broke(Invariant::LedgerMatchesProvider, detail);
    }
    no_open_authorization(w, p, status, &b)
}

/// A payment that ended without keeping a capture left no card hold: its authorization was
/// voided (or captured, and the capture refunded); unless the provider refused the void,
/// when the hold lapses at the card's issuer.
fn no_open_authorization(w: &World, p: Uuid, status: PaymentStatus, b: &Books) -> Checked {
    let ended_empty = matches!(
        status,
        PaymentStatus::Failed | PaymentStatus::Reversed | PaymentStatus::Canceled
    );
    let open = b.authorized.is_some() && !b.voided && b.captured.is_none();
    let refused = (w.adapter.ops.iter()).any(|o| {
        o.payment() == p
            && o.operation() == ProviderOperation::Void
            && o.status == OperationStatus::Declined
    });
    if ended_empty && open && !refused {
        let detail = format!(
            "{p} is {status} and its authorization of {:?} is still open at the provider",
            b.authorized
        );
        return broke(Invariant::NoOpenAuthorization, detail);
    }
    Ok(())
}

/// A payment operators cannot end through the saga: the provider performed its reversal for
/// another amount than was asked, and the saga flagged it (never applied): an operator
/// reconciles it by hand.
pub fn left_to_reconcile(w: &World, p: Uuid, t: &Tracked) -> bool {
    let b = books(w, p);
    let key = idempotency_key(ProviderOperation::Refund, p, OperationKey::NONE);
    let other = b
        .refunds
        .get(&key)
        .is_some_and(|(done, asked)| done != asked);
    other && t.state.attention && t.flag == Some(FlagKind::AmountMismatch("reversal refund"))
}

/// Once operators ended every parked payment: every payment ended (but those left to
/// reconcile by hand), its books agreeing, and every refund the provider declined failed
/// (the refusal reached the saga).
pub fn ended(w: &World) -> Checked {
    at_rest(w)?;
    for (p, t) in &w.payments {
        if left_to_reconcile(w, *p, t) {
            continue;
        }
        if !t.state.status().is_terminal() {
            let detail = format!(
                "{p} is still {} after operators ended every parked payment",
                t.state.status()
            );
            return broke(Invariant::OperatorsEndParked, detail);
        }
        books_agree(w, *p, &t.state)?;
    }
    let declined = (w.adapter.ops.iter()).filter(|o| o.status == OperationStatus::Declined);
    for op in declined {
        let Some(refund_id) = op.refund_id() else {
            continue;
        };
        let refund = w.payments[&op.payment()].state.refund(refund_id);
        if refund.is_none_or(|r| r.status != RefundStatus::Failed) {
            let detail = format!(
                "{}: refund {refund_id} was declined by the provider but is {:?}",
                op.payment(),
                refund.map(|r| r.status)
            );
            return broke(Invariant::DeclinedRefundFails, detail);
        }
    }
    Ok(())
}
