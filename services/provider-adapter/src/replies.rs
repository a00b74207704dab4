//! The events that report an operation's outcome to the saga, built in one place: by the
//! worker when the operation ends, and by the command handler when a command for an operation
//! that already ended is received again (a step re-sent after its deadline is answered with
//! the outcome, never performed twice).

use crate::provider::ProviderOutcome;
use sagapay_domain::events::{
    EventPayload, PaymentAuthorized, PaymentCaptured, PaymentFailed, PaymentRefunded,
    PaymentReversed, ProviderOperation, ProviderRetriesExhausted,
};
use sagapay_domain::Envelope;
use uuid::Uuid;

/// The operation an answer is about, and the command it answers.
#[derive(Debug, Clone)]
pub struct Answering<'a> {
    pub payment_id: Uuid,
    /// The command being answered.
    pub causation_id: Uuid,
    pub correlation_id: &'a str,
    pub operation: ProviderOperation,
    /// The merchant refund this operation performs, if it is one.
    pub refund_id: Option<Uuid>,
    /// The reason a void or refund was asked for.
    pub reason: &'a str,
    pub provider: &'a str,
    /// The authorization a capture captures.
    pub authorization_id: Option<&'a str>,
    /// Attempts made so far.
    pub attempts: u32,
}

/// How the operation ended.
#[derive(Debug, Clone)]
pub enum Ending<'a> {
    /// What the provider reports it did.
    Outcome(&'a ProviderOutcome),
    /// An authorization that never reached the provider.
    NotPerformed { last_error: &'a str },
    /// Given up: the saga compensates (an authorization) or an operator decides.
    Exhausted { attempts: u32, last_error: &'a str },
}

impl Answering<'_> {
    fn envelope<P: EventPayload>(&self, payload: &P) -> Envelope {
        Envelope::new(
            self.payment_id,
            Some(self.causation_id),
            self.correlation_id,
            payload,
        )
    }

    /// The event reporting `ending`.
    pub fn event(&self, ending: Ending<'_>) -> Envelope {
        let provider = self.provider.to_owned();
        match ending {
            Ending::Outcome(ProviderOutcome::Succeeded {
                reference,
                amount_minor,
                currency,
            }) => {
                let (reference, amount_minor, currency) =
                    (reference.clone(), *amount_minor, *currency);
                match (self.operation, self.refund_id) {
                    (ProviderOperation::Authorize, _) => self.envelope(&PaymentAuthorized {
                        provider,
                        authorization_id: reference,
                        amount_minor,
                        currency,
                    }),
                    (ProviderOperation::Capture, _) => self.envelope(&PaymentCaptured {
                        provider,
                        capture_id: reference,
                        amount_minor,
                        currency,
                        authorization_id: self.authorization_id.map(str::to_owned),
                    }),
                    (ProviderOperation::Refund, Some(refund_id)) => {
                        self.envelope(&PaymentRefunded {
                            refund_id,
                            provider,
                            reference,
                            amount_minor,
                            currency,
                        })
                    }
                    (operation @ (ProviderOperation::Void | ProviderOperation::Refund), _) => self
                        .envelope(&PaymentReversed {
                            provider,
                            operation,
                            reference,
                            reason: self.reason.to_owned(),
                            amount_minor: Some(amount_minor),
                            currency: Some(currency),
                        }),
                }
            }
            Ending::Outcome(ProviderOutcome::Declined { code })
                if self.operation == ProviderOperation::Authorize =>
            {
                self.envelope(&PaymentFailed {
                    provider,
                    reason: format!("authorization declined: {code}"),
                    decline_code: code.clone(),
                })
            }
            // A capture, void or refund the provider refused did not happen; the payment is
            // not failed by it (it was authorized): the saga decides what follows.
            Ending::Outcome(ProviderOutcome::Declined { code }) => {
                self.envelope(&ProviderRetriesExhausted {
                    operation: self.operation,
                    attempts: self.attempts,
                    last_error: format!("declined by {provider}: {code}"),
                    refund_id: self.refund_id,
                    decline_code: Some(code.clone()),
                })
            }
            Ending::NotPerformed { last_error } => self.envelope(&PaymentFailed {
                provider,
                decline_code: "provider_unavailable".into(),
                reason: format!("the provider could not be reached: {last_error}"),
            }),
            Ending::Exhausted {
                attempts,
                last_error,
            } => self.envelope(&ProviderRetriesExhausted {
                operation: self.operation,
                attempts,
                last_error: last_error.chars().take(500).collect(),
                refund_id: self.refund_id,
                decline_code: None,
            }),
        }
    }
}
