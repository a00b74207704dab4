//! What must hold in the simulated world: after every step ([`always`]) and once the
//! faults stopped and everything came to rest ([`at_rest`]).

use super::adapter::OpStatus;
use super::world::World;
use crate::saga::state::Stage;
use sagapay_domain::events::CaptureMethod;
use sagapay_domain::{PaymentStatus, RefundStatus};

/// After every step: at the provider captured ≤ authorized, refunded ≤ captured, at most one
/// capture, and nothing asked that a provider refuses; in the ledger only what was captured,
/// for what was captured; nothing but refund work sent for a payment that ended; every
/// decision applicable (its moves in the transition table).
pub fn always(w: &World) -> Result<(), String> {
    if let Some(v) = w.sent_after_end.first() {
        return Err(v.clone());
    }
    if let Some(r) = w.psp.refusals.first() {
        return Err(format!("the provider refused what the platform asked: {r}"));
    }
    for (p, b) in &w.psp.books {
        if let Some(captured) = b.captured {
            if b.authorized.is_none_or(|a| captured > a) {
                return Err(format!(
                    "{p}: captured {captured} of an authorization of {:?}",
                    b.authorized
                ));
            }
        }
        if b.refunded > b.captured.unwrap_or(0) {
            return Err(format!(
                "{p}: refunded {} of a capture of {:?}",
                b.refunded, b.captured
            ));
        }
        if b.captures > 1 {
            return Err(format!("{p}: captured {} times", b.captures));
        }
    }
    admission_follows(w)?;
    for (p, posted) in &w.ledger.books {
        if let Some((_, amount, _)) = &posted.capture {
            let at_provider = w.psp.books.get(p).and_then(|b| b.captured);
            if at_provider != Some(amount.get()) {
                return Err(format!(
                    "{p}: the ledger posted {amount}, the provider captured {at_provider:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Once at rest: every payment ended or waits for an operator with a reason; no operation
/// pending, no message in flight; one `payments.finalized` per terminal state the payment
/// reached (settled, then refunded) and none for the others; the ledger equal to the provider's books; each status what the provider did.
pub fn at_rest(w: &World) -> Result<(), String> {
    always(w)?;
    if !w.queue.is_empty() || w.adapter.pending() {
        return Err("at rest with messages in flight or operations pending".into());
    }
    if let Some(op) = w.adapter.ops.iter().find(|o| o.status == OpStatus::Pending) {
        return Err(format!("{op:?} still pending"));
    }
    for (p, t) in &w.payments {
        let s = &t.state;
        let status = s.status();
        if !status.is_terminal() && !s.attention {
            return Err(format!("{p} rests in {status} without an operator's flag"));
        }
        let mut announced: Vec<PaymentStatus> = w
            .notification
            .finalized
            .get(p)
            .map(|f| f.values().copied().collect())
            .unwrap_or_default();
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
            return Err(format!(
                "{p} is {status}: its merchant heard payments.finalized {announced:?}, not {expected:?}"
            ));
        }
        let flagged = s.attention || !t.refund_flagged.is_empty();
        if !flagged {
            books_agree(w, *p, status, &t.state)?;
        }
    }
    Ok(())
}

/// Admission's count of each merchant equals a recount by its rule as the spec states it:
/// payments the automatic pipeline still has to finish (waiting for risk, authorization,
/// capture or posting) that are not parked for an operator. A parked payment holds no place.
fn admission_follows(w: &World) -> Result<(), String> {
    let mut recount: std::collections::BTreeMap<uuid::Uuid, i64> = Default::default();
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
            return Err(format!(
                "admission counts {counted} places for merchant {merchant}, its pipeline holds {actual}"
            ));
        }
    }
    Ok(())
}

/// Once operators ended the parked payments: every payment ended, the books agree for each,
/// and every refund the provider declined failed (the refusal reached the saga).
pub fn ended(w: &World) -> Result<(), String> {
    at_rest(w)?;
    for (p, t) in &w.payments {
        if !t.state.status().is_terminal() {
            return Err(format!(
                "{p} is still {} after operators ended every parked payment",
                t.state.status()
            ));
        }
        books_agree(w, *p, t.state.status(), &t.state)?;
    }
    for op in w
        .adapter
        .ops
        .iter()
        .filter(|o| o.status == OpStatus::Declined)
    {
        let Some(refund_id) = op.refund_id else {
            continue;
        };
        let refund = w.payments[&op.payment].state.refund(refund_id);
        if refund.is_none_or(|r| r.status != RefundStatus::Failed) {
            return Err(format!(
                "{}: refund {refund_id} was declined by the provider but is {:?}",
                op.payment,
                refund.map(|r| r.status)
            ));
        }
        if w.notification.refunds_failed.get(&refund_id) != Some(&1) {
            return Err(format!(
                "{}: refund {refund_id} declined, announced {:?} times",
                op.payment,
                w.notification.refunds_failed.get(&refund_id)
            ));
        }
    }
    Ok(())
}

/// The provider's books, the ledger and the payment's status tell one story.
fn books_agree(
    w: &World,
    p: uuid::Uuid,
    status: PaymentStatus,
    s: &crate::saga::state::PaymentState,
) -> Result<(), String> {
    let b = w.psp.books.get(&p).cloned().unwrap_or_default();
    let posted = w.ledger.books.get(&p).cloned().unwrap_or_default();
    let psp_net = b.captured.unwrap_or(0) - b.refunded;
    let ledger_net = posted.capture.as_ref().map_or(0, |c| c.1.get())
        - posted.refunds.values().map(|r| r.0.get()).sum::<i64>();
    if psp_net != ledger_net {
        return Err(format!(
            "{p} ({status}): the provider holds {psp_net}, the ledger {ledger_net}"
        ));
    }
    let succeeded: i64 = s
        .refunds
        .iter()
        .filter(|r| r.status == RefundStatus::Succeeded)
        .map(|r| r.amount.get())
        .sum();
    let expected = match &s.stage {
        Stage::Settled { .. } | Stage::PartiallyRefunded { .. } | Stage::Refunded { .. } => {
            Some(s.to_capture().get() - succeeded)
        }
        Stage::Failed | Stage::Reversed { .. } | Stage::Canceled => Some(0),
        _ => None,
    };
    if let Some(expected) = expected {
        if psp_net != expected {
            return Err(format!(
                "{p} is {status} and the provider holds {psp_net}, not {expected}"
            ));
        }
    }
    if status == PaymentStatus::Canceled && b.captured.is_some() {
        return Err(format!("{p} is CANCELED and was captured"));
    }
    // No card hold left: an authorization of a payment that ended without keeping a capture
    // was voided (or captured, and the capture refunded).
    let ended_empty = matches!(
        status,
        PaymentStatus::Failed | PaymentStatus::Reversed | PaymentStatus::Canceled
    );
    if ended_empty && b.authorized.is_some() && !b.voided && b.captured.is_none() {
        return Err(format!(
            "{p} is {status} and its authorization of {:?} is still open at the provider",
            b.authorized
        ));
    }
    // The merchant heard of exactly the refunds that succeeded.
    let heard = w
        .notification
        .refunds_succeeded
        .get(&p)
        .cloned()
        .unwrap_or_default();
    let succeeded_ids: std::collections::BTreeSet<uuid::Uuid> = s
        .refunds
        .iter()
        .filter(|r| r.status == RefundStatus::Succeeded)
        .map(|r| r.refund_id)
        .collect();
    if heard != succeeded_ids {
        return Err(format!(
            "{p}: refunds succeeded {succeeded_ids:?}, its merchant heard of {heard:?}"
        ));
    }
    Ok(())
}
