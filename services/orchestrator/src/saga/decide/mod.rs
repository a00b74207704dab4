//! The saga's pure core: [`decide`] takes the payment's state, an input and the time, and
//! returns what to do, with no I/O. One small function per input kind: consumed events
//! ([`events`], dispatched from their declaration in [`super::consumed`]), merchants' and
//! operators' requests ([`actions`]), deadlines ([`deadline`]). The shell
//! ([`super::shell`]) loads the state and writes the decision in one transaction; the
//! simulator (`tests/simulation`) runs the same function against models of the other
//! services under injected faults.

pub mod actions;
pub mod deadline;
pub mod events;
pub mod mutation;

use super::consumed::rule_of;
use super::deadlines::Deadlines;
use super::decision::{Command, Decision, Effect, Facts, Ignored, Input, Refusal};
use super::state::PaymentState;
use chrono::{DateTime, Utc};
use sagapay_domain::events::PaymentFinalized;
use sagapay_domain::{EventType, PaymentStatus};

/// A decision, or why there is none.
pub type Decided = Result<Decision, Refusal>;

/// What the saga does with `input` for the payment in state `s` at `now`.
pub fn decide(
    s: &PaymentState,
    input: &Input,
    now: DateTime<Utc>,
    deadlines: &Deadlines,
) -> Decided {
    let decision = match input {
        Input::Event(ev) => ev.dispatch(s)?,
        Input::Merchant(request) => actions::merchant(s, request)?,
        Input::Operator(request) => actions::operator(s, request)?,
        Input::Deadline => deadline::payment(s, now, deadlines)?,
        Input::RefundDeadline(refund_id) => deadline::refund(s, *refund_id, deadlines)?,
    };
    check(s, &decision);
    Ok(decision)
}

/// The invariants every decision keeps, asserted where they hold: each move is in the
/// transition table (from where the previous move left the payment), and a payment never
/// sends a capture, posting or refund of more than it holds.
fn check(s: &PaymentState, d: &Decision) {
    let mut at = s.status();
    for effect in &d.effects {
        if let Effect::Move { to, .. } = effect {
            assert!(
                at.can_transition_to(*to),
                "decided an illegal move {at} -> {to}"
            );
            at = *to;
        }
    }
    for command in &d.send {
        match command {
            Command::Capture(c) => assert!(
                c.amount_minor <= s.terms.amount,
                "capture above the authorization"
            ),
            Command::Post(p) => assert!(
                p.amount_minor <= s.terms.amount,
                "posting above the authorization"
            ),
            Command::Refund(r) if r.refund_id.is_none() => {
                assert!(
                    r.amount_minor <= s.to_capture(),
                    "compensation refund above the capture"
                )
            }
            _ => {}
        }
    }
}

/// Whether `event` applies to the payment as it is now ([`super::consumed::STEPS`]); an
/// event that does not is ignored, stale or illegal.
pub fn expect(s: &PaymentState, event: EventType) -> Result<(), Decision> {
    let applies_in = rule_of(event).map_or(&[][..], |r| r.applies_in);
    expect_in(s, applies_in)
}

/// [`expect`] against explicit states.
pub fn expect_in(s: &PaymentState, expected: &[PaymentStatus]) -> Result<(), Decision> {
    let status = s.status();
    if expected.contains(&status) {
        return Ok(());
    }
    let furthest = expected.iter().map(|s| progress(*s)).max().unwrap_or(0);
    let why = if progress(status) > furthest {
        Ignored::Stale
    } else {
        Ignored::Illegal
    };
    Err(Decision::of(Effect::Ignore(why)))
}

/// How far along the saga a status is; terminal states are furthest.
fn progress(s: PaymentStatus) -> u8 {
    match s {
        PaymentStatus::Created => 0,
        PaymentStatus::RiskReview => 1,
        PaymentStatus::Approved => 2,
        PaymentStatus::Authorized => 3,
        PaymentStatus::Captured => 4,
        PaymentStatus::Settled
        | PaymentStatus::Failed
        | PaymentStatus::Reversed
        | PaymentStatus::PartiallyRefunded
        | PaymentStatus::Refunded
        | PaymentStatus::Canceled => 5,
    }
}

/// A move, with its facts.
pub fn moved(to: PaymentStatus, reason: String, facts: Facts) -> Effect {
    Effect::Move { to, reason, facts }
}

/// The move to a terminal state and its announcement (`payments.finalized`).
pub fn end(s: &PaymentState, to: PaymentStatus, reason: String, facts: Facts) -> Decision {
    debug_assert!(to.is_terminal());
    let finalized = finalized(s, to, &reason);
    Decision::of(moved(to, reason, facts)).send(Command::Finalized(finalized))
}

pub fn finalized(s: &PaymentState, status: PaymentStatus, reason: &str) -> PaymentFinalized {
    PaymentFinalized {
        status,
        merchant_id: s.terms.merchant_id,
        customer_id: s.terms.customer_id.clone(),
        amount_minor: s.terms.amount,
        currency: s.terms.currency,
        amount_captured_minor: s.captured_in(status),
        reason: reason.to_owned(),
        created_at: s.terms.created_at,
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_parked;
