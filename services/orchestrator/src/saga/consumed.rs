//! The events the saga consumes, declared once: each line names the event's payload type,
//! its handler (in [`super::decide::events`]), the states of the payment it applies in and
//! the states it may move the payment to, and how it is checked. Everything else follows from
//! the line: the [`Event`] enum the shell decodes into, [`CONSUMES`] (the channels the
//! orchestrator subscribes to, through each event type's channel), [`STEPS`] (checked against
//! the one transition table by a test) and the dispatch to the handler. Adding a consumed
//! event is its payload type in `sagapay_domain::events`, one line here and its handler.
//!
//! An event arriving in a state its line does not name is recorded and not applied: stale
//! when the payment is already past those states, illegal otherwise
//! ([`super::decide::expect`]).

use super::decide::events as on;
use super::decision::{Decision, Refusal};
use super::state::PaymentState;
use sagapay_domain::events::{
    DecodeError, EventPayload, LedgerPostFailed, PaymentAuthorized, PaymentCaptured, PaymentFailed,
    PaymentRefunded, PaymentReversed, PaymentSettled, ProviderRetriesExhausted, RefundPosted,
    RiskApproved, RiskDenied, RiskReviewRequired,
};
use sagapay_domain::{Envelope, EventType, PaymentStatus};

/// How an event is checked against the payment's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Against `applies_in`, as soon as its payload is read.
    OnArrival,
    /// By its handler, which first looks at something else: a posting that arrives while the
    /// capture is being undone, the ledger's reversal of a capture, a refund's own status, a
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

macro_rules! consumed {
    ($( $variant:ident => $handler:path,
        in [$($from:ident),*] to [$($to:ident),*] $checked:ident; )*) => {
        /// A consumed event, decoded.
        #[derive(Debug, Clone)]
        pub enum Event { $( $variant($variant), )* }

        /// Every event the orchestrator consumes.
        pub const CONSUMES: &[EventType] = &[ $( <$variant as EventPayload>::EVENT_TYPE, )* ];

        /// Each consumed event's row.
        pub const STEPS: &[StepRule] = &[ $( StepRule {
            event: <$variant as EventPayload>::EVENT_TYPE,
            applies_in: &[$(PaymentStatus::$from),*],
            moves_to: &[$(PaymentStatus::$to),*],
            checked: Checked::$checked,
        }, )* ];

        impl Event {
            /// The envelope's payload as the event its type names; `None` for a type the
            /// saga does not consume.
            pub fn decode(env: &Envelope) -> Option<Result<Event, DecodeError>> {
                let t = env.event_type()?;
                $( if t == <$variant as EventPayload>::EVENT_TYPE {
                    return Some(env.decode().map(Event::$variant));
                } )*
                None
            }

            pub fn event_type(&self) -> EventType {
                match self { $( Event::$variant(_) => <$variant as EventPayload>::EVENT_TYPE, )* }
            }

            pub(super) fn dispatch(&self, s: &PaymentState) -> Result<Decision, Refusal> {
                match self { $( Event::$variant(ev) => $handler(s, ev), )* }
            }
        }
    };
}

consumed! {
    RiskApproved => on::risk_approved, in [Created, RiskReview] to [Approved] OnArrival;
    RiskReviewRequired => on::risk_review_required, in [Created] to [RiskReview] OnArrival;
    RiskDenied => on::risk_denied, in [Created, RiskReview] to [Failed] OnArrival;
    PaymentFailed => on::payment_failed, in [Approved] to [Failed] OnArrival;
    PaymentAuthorized => on::payment_authorized, in [Approved] to [Authorized] OnArrival;
    // A capture that overtook its authorization applies the authorization first.
    PaymentCaptured => on::payment_captured,
        in [Authorized, Approved] to [Authorized, Captured] OnArrival;
    PaymentSettled => on::payment_settled, in [Captured] to [Settled] ByHandler;
    // Starts the refund of the capture; the payment stays CAPTURED until it is reversed.
    LedgerPostFailed => on::ledger_post_failed, in [Captured] to [] OnArrival;
    PaymentReversed => on::payment_reversed,
        in [Approved, Authorized, Captured] to [Reversed, Canceled] OnArrival;
    // Checked against the refund's status, not the payment's.
    PaymentRefunded => on::payment_refunded, in [] to [] ByHandler;
    RefundPosted => on::refund_posted,
        in [Settled, PartiallyRefunded] to [PartiallyRefunded, Refunded] ByHandler;
    // An authorization given up starts its void from APPROVED (REVERSED comes with the void's
    // answer); a capture given up is flagged in AUTHORIZED; a compensation given up is flagged
    // wherever it is.
    ProviderRetriesExhausted => on::provider_retries_exhausted,
        in [Approved, Authorized] to [] ByHandler;
}

/// The row of `event`, if the saga consumes it.
pub fn rule_of(event: EventType) -> Option<&'static StepRule> {
    STEPS.iter().find(|r| r.event == event)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_consumed_event_has_one_row_and_its_own_type() {
        for event in CONSUMES {
            assert_eq!(
                STEPS.iter().filter(|r| r.event == *event).count(),
                1,
                "{event:?}"
            );
        }
        assert_eq!(STEPS.len(), CONSUMES.len());
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
