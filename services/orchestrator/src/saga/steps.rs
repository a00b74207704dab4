//! The saga's common case as a table, beside the one transition table
//! (`sagapay_domain::state::TRANSITIONS`): for each event the orchestrator consumes, the states
//! of the payment in which it is applied and the states it may move the payment to. An event
//! arriving in any other state is recorded and not applied: stale when the payment is already
//! past those states, illegal otherwise (`Saga::expect`). What each event then does (its
//! reason, its facts, the next command) is its arm of `Saga::handle`; the special cases are
//! plain functions there, and their rows say how they are checked.

use sagapay_domain::{EventType, PaymentStatus};
use PaymentStatus::*;

/// How an event is checked against the payment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Against `applies_in`, as soon as its payload is read.
    OnArrival,
    /// By its handler, which first looks at something else: a posting that arrives while the
    /// capture is being refunded, the ledger's reversal of a capture, a refund's own status, a
    /// provider operation that was given up (by operation).
    ByHandler,
}

#[derive(Debug)]
pub struct StepRule {
    pub event: EventType,
    pub applies_in: &'static [PaymentStatus],
    /// Where applying it may take the payment (empty: it records a step, or starts a
    /// compensation, without a transition).
    pub moves_to: &'static [PaymentStatus],
    pub checked: Checked,
}

const fn rule(
    event: EventType,
    applies_in: &'static [PaymentStatus],
    moves_to: &'static [PaymentStatus],
    checked: Checked,
) -> StepRule {
    StepRule {
        event,
        applies_in,
        moves_to,
        checked,
    }
}

use Checked::{ByHandler, OnArrival};

pub const STEPS: &[StepRule] = &[
    rule(
        EventType::RiskApproved,
        &[Created, RiskReview],
        &[Approved],
        OnArrival,
    ),
    rule(
        EventType::RiskReviewRequired,
        &[Created],
        &[RiskReview],
        OnArrival,
    ),
    rule(
        EventType::RiskDenied,
        &[Created, RiskReview],
        &[Failed],
        OnArrival,
    ),
    rule(EventType::PaymentFailed, &[Approved], &[Failed], OnArrival),
    rule(
        EventType::PaymentAuthorized,
        &[Approved],
        &[Authorized],
        OnArrival,
    ),
    // A capture that overtook its authorization applies the authorization first.
    rule(
        EventType::PaymentCaptured,
        &[Authorized, Approved],
        &[Authorized, Captured],
        OnArrival,
    ),
    rule(
        EventType::PaymentSettled,
        &[Captured],
        &[Settled],
        ByHandler,
    ),
    // Starts the refund of the capture; the payment stays CAPTURED until it is reversed.
    rule(EventType::LedgerPostFailed, &[Captured], &[], OnArrival),
    rule(
        EventType::PaymentReversed,
        &[Approved, Authorized, Captured],
        &[Reversed, Canceled],
        OnArrival,
    ),
    rule(
        EventType::RefundPosted,
        &[Settled, PartiallyRefunded],
        &[PartiallyRefunded, Refunded],
        ByHandler,
    ),
    // Checked against the refund's status, not the payment's.
    rule(EventType::PaymentRefunded, &[], &[], ByHandler),
    // An authorization given up starts its void from APPROVED (REVERSED comes with the void's
    // answer); a capture given up is flagged in AUTHORIZED; a compensation given up is flagged
    // wherever it is.
    rule(
        EventType::ProviderRetriesExhausted,
        &[Approved, Authorized],
        &[],
        ByHandler,
    ),
];

/// The row of `event`, if the saga handles it.
pub fn of(event: EventType) -> Option<&'static StepRule> {
    STEPS.iter().find(|r| r.event == event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consumed_event_has_one_row() {
        for event in crate::CONSUMES {
            assert_eq!(
                STEPS.iter().filter(|r| r.event == *event).count(),
                1,
                "{event:?}"
            );
        }
        assert_eq!(STEPS.len(), crate::CONSUMES.len());
    }

    /// The rows agree with the transition table: every state a row moves to is reachable
    /// from a state it applies in, and from every state it applies in some state it moves to
    /// is reachable (directly, or through another of its states: a capture that applies its
    /// authorization first).
    #[test]
    fn every_move_is_in_the_transition_table() {
        let reaches = |r: &StepRule, from: PaymentStatus, to: PaymentStatus| {
            from.can_transition_to(to)
                || r.moves_to
                    .iter()
                    .any(|&via| from.can_transition_to(via) && via.can_transition_to(to))
        };
        for r in STEPS {
            for &to in r.moves_to {
                assert!(
                    r.applies_in.iter().any(|&from| reaches(r, from, to)),
                    "{:?}: nothing it applies in reaches {to}",
                    r.event
                );
            }
            if !r.moves_to.is_empty() {
                for &from in r.applies_in {
                    assert!(
                        r.moves_to.iter().any(|&to| reaches(r, from, to)),
                        "{:?}: from {from} it reaches none of its states",
                        r.event
                    );
                }
            }
        }
    }
}
