//! What happens after each provider attempt: one pure function, [`decide`], so that every
//! path is a row of a table test.
//!
//! The rules, as a payments engineer would state them:
//! - a success or a decline is final, for every operation, whatever else happened before (a
//!   call's answer or a status query's): **a refusal is an answer**. A provider that declines
//!   a capture, void or refund has said what it did (nothing), and asking again under the
//!   same idempotency key gets the same answer, so retrying it for a day only hides it; the
//!   saga hears the decline at once (`provider.retries_exhausted` with its `decline_code`) and
//!   decides what follows;
//! - a failed attempt is retried on the short schedule (1 s, 2 s, 4 s by default);
//! - **unknown is not failed**: when an attempt timed out (or the provider answered with an
//!   error), the operation may have happened, so once the short schedule is spent the
//!   provider is *asked* (a status query by idempotency key) before anything else is done;
//! - an operation the provider does not know was never performed: an authorization is then
//!   given up (the saga voids it by key, which is safe whatever happened in flight), any other
//!   operation is simply called again;
//! - an authorization refused every time (connection refused: it never reached the provider)
//!   is `NOT_PERFORMED` at once: the customer is waiting and no money moved;
//! - captures, voids and refunds must happen: while their outcome is unknown or the provider
//!   cannot be reached, they keep being tried, or asked about, on the long schedule (seconds,
//!   then minutes apart), and are given up only after `give_up_after` (a day by default),
//!   when an operator decides;
//! - an authorization whose outcome is still unknown after one status query (or
//!   `authorize_give_up_after`) is given up: the saga voids it.
//!
//! And what the adapter decides around its attempts, each a pure function here so that the
//! worker, the command handler and the orchestrator's simulator (whose model of this adapter
//! calls these very functions, not a copy of them) decide alike:
//! - a void waits while an authorization or capture of its payment is pending
//!   ([`VOID_WAITS_FOR`], from which the worker's claim is written), and a void of a payment
//!   whose capture went through is performed as the refund of that capture, for exactly what
//!   it took ([`performed`]);
//! - an automatic payment's capture follows its authorization, only for the amount asked
//!   ([`captures_after`]), and no capture is scheduled once a void was asked for
//!   ([`scheduled_after_void`]);
//! - a command for an operation that exists already waits for it, gets its outcome again, or
//!   re-arms it when it was given up, unless the saga is undoing what it would do
//!   ([`repeated`]).

use crate::provider::{ProviderError, ProviderOutcome, ProviderRequest};
use crate::records::{OperationKey, OperationStatus};
use sagapay_domain::events::{CaptureMethod, ProviderOperation};
use sagapay_domain::{AmountMinor, Currency};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Bound on one provider call or status query.
    pub call_timeout: Duration,
    /// The short schedule: waits before the 2nd, 3rd, ... attempt (`backoff.len() + 1`
    /// attempts before the provider is asked or the long schedule starts).
    pub backoff: Vec<Duration>,
    /// The long schedule after that; its last step repeats.
    pub long_backoff: Vec<Duration>,
    /// How long captures, voids and refunds are tried before they are given up.
    pub give_up_after: Duration,
    /// How long an authorization with an unknown outcome is asked about (0: once).
    pub authorize_give_up_after: Duration,
    /// Operations in flight at once.
    pub max_in_flight: usize,
    /// Operations of one merchant in flight at once in one worker (0: no bound but
    /// `max_in_flight`), so that a merchant whose calls all hang (each holding its place for
    /// `call_timeout`) leaves the rest of the places to the others.
    pub max_in_flight_per_merchant: usize,
    /// How long a worker owns a claimed operation.
    pub claim_timeout: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(2),
            backoff: vec![
                Duration::from_secs(1),
                Duration::from_secs(2),
                Duration::from_secs(4),
            ],
            long_backoff: [5, 15, 30, 60, 120, 300, 600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            give_up_after: Duration::from_secs(24 * 3600),
            authorize_give_up_after: Duration::ZERO,
            max_in_flight: 64,
            max_in_flight_per_merchant: 32,
            claim_timeout: Duration::from_secs(60),
        }
    }
}

impl RetrySettings {
    /// How long `operation` is tried or asked about before it is given up.
    pub fn give_up_after(&self, operation: ProviderOperation) -> Duration {
        match operation {
            ProviderOperation::Authorize => self.authorize_give_up_after,
            _ => self.give_up_after,
        }
    }

    /// How many operations of one merchant a worker runs at once: the setting, within
    /// `max_in_flight`.
    pub fn merchant_cap(&self) -> usize {
        match self.max_in_flight_per_merchant {
            0 => self.max_in_flight,
            n => n.min(self.max_in_flight),
        }
    }

    fn short_attempts(&self) -> i32 {
        self.backoff.len() as i32 + 1
    }

    /// The wait after attempt `attempt_no` (1-based) of the long schedule's part.
    fn long_wait(&self, attempt_no: i32) -> Duration {
        let step = (attempt_no - self.short_attempts()).max(1) as usize - 1;
        self.long_backoff
            .get(step)
            .or(self.long_backoff.last())
            .copied()
            .unwrap_or(Duration::from_secs(60))
    }
}

/// What the attempt got.
#[derive(Debug)]
pub enum Answer {
    /// The provider said what it did (to a call, or to a status query).
    Outcome(ProviderOutcome),
    /// A status query: the provider never received the operation.
    NotFound,
    /// No answer (timeout), an error, or a refused connection.
    Error(ProviderError),
}

/// Where the operation stood when the attempt was made.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub operation: ProviderOperation,
    /// This attempt's number (1-based), calls and status queries alike.
    pub attempt_no: i32,
    /// The attempt was a status query.
    pub resolving: bool,
    /// An earlier attempt may have been performed.
    pub outcome_unknown: bool,
    /// `give_up_at` has passed.
    pub past_give_up: bool,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Final: report the provider's outcome.
    Done(ProviderOutcome),
    /// Final: an authorization that certainly did not happen.
    NotPerformed,
    /// Try again after `wait`: a status query when `resolving`, else a call.
    Again {
        wait: Duration,
        resolving: bool,
        unknown: bool,
    },
    /// Given up: an operator (or, for an authorization, the saga's void) takes over.
    Exhausted { unknown: bool },
}

pub fn decide(p: Progress, answer: Answer, s: &RetrySettings) -> Next {
    let authorize = p.operation == ProviderOperation::Authorize;
    let error = match answer {
        // A success, or a refusal of any operation (to a call or found by a status query):
        // the provider said what it did.
        Answer::Outcome(outcome) => return Next::Done(outcome),
        Answer::NotFound if authorize => {
            return Next::Exhausted {
                unknown: p.outcome_unknown,
            }
        }
        // Never performed, and it must be: call again now.
        Answer::NotFound => {
            return Next::Again {
                wait: Duration::ZERO,
                resolving: false,
                unknown: false,
            }
        }
        Answer::Error(e) => e,
    };
    let unknown = p.outcome_unknown || error.maybe_performed();
    if !p.resolving && p.attempt_no < s.short_attempts() {
        let wait = s.backoff[(p.attempt_no - 1) as usize];
        return Next::Again {
            wait,
            resolving: false,
            unknown,
        };
    }
    if unknown && !p.resolving {
        // Ask before anything else is done.
        return Next::Again {
            wait: Duration::ZERO,
            resolving: true,
            unknown,
        };
    }
    if authorize && !unknown {
        return Next::NotPerformed;
    }
    if p.past_give_up {
        return Next::Exhausted { unknown };
    }
    Next::Again {
        wait: s.long_wait(p.attempt_no),
        resolving: unknown,
        unknown,
    }
}

/// The operations a void waits for: while one of these of its payment is pending, the void is
/// not attempted (it must never run before what it undoes). The worker's claim is written
/// from this list (`worker::claim`).
pub const VOID_WAITS_FOR: [ProviderOperation; 2] =
    [ProviderOperation::Authorize, ProviderOperation::Capture];

/// Whether an operation `operation` waits, given the operations of its payment still pending.
pub fn waits(
    operation: ProviderOperation,
    pending: impl IntoIterator<Item = ProviderOperation>,
) -> bool {
    operation == ProviderOperation::Void && pending.into_iter().any(|p| VOID_WAITS_FOR.contains(&p))
}

/// The idempotency key of an operation: the same for every attempt, so a repeat acts at most
/// once at the provider. `<operation>:<payment_id>`, and `:<refund_id>` for merchant refunds.
pub fn idempotency_key(
    operation: ProviderOperation,
    payment_id: Uuid,
    operation_key: OperationKey,
) -> String {
    let op = operation.as_str().to_ascii_lowercase();
    match operation_key.0 {
        None => format!("{op}:{payment_id}"),
        Some(refund_id) => format!("{op}:{payment_id}:{refund_id}"),
    }
}

/// What a succeeded capture took at the provider (its operation's recorded result).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub reference: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

/// What the provider is asked for `req`: the request itself, except a void of a payment whose
/// capture went through (`captured`), which becomes the refund of that capture, for exactly
/// what the capture took (a partial capture takes less than was authorized, and a provider
/// refuses to pay back more than it captured), under the refund's key.
pub fn performed(mut req: ProviderRequest, captured: Option<Taken>) -> ProviderRequest {
    let Some(taken) = captured.filter(|_| req.operation == ProviderOperation::Void) else {
        return req;
    };
    req.operation = ProviderOperation::Refund;
    req.idempotency_key = idempotency_key(
        ProviderOperation::Refund,
        req.payment_id,
        OperationKey::NONE,
    );
    req.reference = Some(taken.reference);
    req.amount_minor = taken.amount_minor;
    req.currency = taken.currency;
    req
}

/// Whether a command for `operation` is scheduled once a void of its payment was asked for
/// (a replayed dead letter, a command delayed past an operator's fail): a capture is not, the
/// authorization is (or will be) gone and a provider refuses it; an automatic capture is not
/// scheduled either.
pub fn scheduled_after_void(operation: ProviderOperation) -> bool {
    operation != ProviderOperation::Capture
}

/// The authorization an automatic capture follows, if one does: the authorization `next`
/// reports succeeded, of an automatic payment, for the amount and currency `asked`. Not when
/// the provider authorized another amount: the saga flags that payment for an operator, and
/// a capture of the amount asked would be refused.
pub fn captures_after(
    next: &Next,
    operation: ProviderOperation,
    capture_method: CaptureMethod,
    asked: (AmountMinor, Currency),
) -> Option<&str> {
    match (next, operation, capture_method) {
        (
            Next::Done(ProviderOutcome::Succeeded {
                reference,
                amount_minor,
                currency,
            }),
            ProviderOperation::Authorize,
            CaptureMethod::Automatic,
        ) if (*amount_minor, *currency) == asked => Some(reference.as_str()),
        _ => None,
    }
}

/// What a command for an operation that exists already gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeated {
    /// In progress: its outcome will answer.
    Waits,
    /// Ended: its outcome is reported again (a refusal too: the provider would refuse the
    /// same key again, so it is never re-armed).
    Answered,
    /// Given up: tried again from the start of its schedules.
    Rearmed,
    /// Given up, and the saga is undoing what it would do: left as it is.
    Left,
}

/// What a command for an existing operation `operation` in `status` gets; `compensated`: a
/// void or a refund of the capture of its payment exists (the saga is undoing the payment).
pub fn repeated(
    status: OperationStatus,
    operation: ProviderOperation,
    compensated: bool,
) -> Repeated {
    match status {
        OperationStatus::Pending => Repeated::Waits,
        OperationStatus::Succeeded | OperationStatus::Declined | OperationStatus::NotPerformed => {
            Repeated::Answered
        }
        OperationStatus::Exhausted => {
            let undone = compensated
                && matches!(
                    operation,
                    ProviderOperation::Authorize | ProviderOperation::Capture
                );
            if undone {
                Repeated::Left
            } else {
                Repeated::Rearmed
            }
        }
    }
}

/// The operation a repeated command's answer reports: a void of a payment whose capture
/// went through was performed as the refund of that capture (see [`performed`]) and reports
/// a refund, the second time as the first.
pub fn reported_as(operation: ProviderOperation, captured: bool) -> ProviderOperation {
    match operation {
        ProviderOperation::Void if captured => ProviderOperation::Refund,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProviderOperation::{Authorize, Capture, Refund, Void};

    fn s() -> RetrySettings {
        RetrySettings::default()
    }

    fn ok() -> ProviderOutcome {
        ProviderOutcome::Succeeded {
            reference: "r".into(),
            amount_minor: AmountMinor::new(5).unwrap(),
            currency: Currency::parse("USD").unwrap(),
        }
    }

    fn declined() -> ProviderOutcome {
        ProviderOutcome::Declined { code: "no".into() }
    }

    fn at(operation: ProviderOperation, attempt_no: i32) -> Progress {
        Progress {
            operation,
            attempt_no,
            resolving: false,
            outcome_unknown: false,
            past_give_up: false,
        }
    }

    fn timeout() -> Answer {
        Answer::Error(ProviderError::Timeout)
    }

    fn refused() -> Answer {
        Answer::Error(ProviderError::Unavailable("refused".into()))
    }

    fn again(wait_s: u64, resolving: bool, unknown: bool) -> Next {
        Next::Again {
            wait: Duration::from_secs(wait_s),
            resolving,
            unknown,
        }
    }

    #[test]
    fn every_path_of_the_retry_policy() {
        let resolving = |p: Progress| Progress {
            resolving: true,
            outcome_unknown: true,
            ..p
        };
        let given_up = |p: Progress| Progress {
            past_give_up: true,
            ..p
        };
        let unknown_before = |p: Progress| Progress {
            outcome_unknown: true,
            ..p
        };
        let table: Vec<(&str, Progress, Answer, Next)> = vec![
            (
                "a success is final",
                at(Capture, 3),
                Answer::Outcome(ok()),
                Next::Done(ok()),
            ),
            (
                "a decline of an authorization is final",
                at(Authorize, 1),
                Answer::Outcome(declined()),
                Next::Done(declined()),
            ),
            (
                "a status query that finds a success is final",
                resolving(at(Capture, 5)),
                Answer::Outcome(ok()),
                Next::Done(ok()),
            ),
            (
                "short schedule, 1st",
                at(Capture, 1),
                timeout(),
                again(1, false, true),
            ),
            (
                "short schedule, 3rd",
                at(Authorize, 3),
                refused(),
                again(4, false, false),
            ),
            (
                "unknown after the short schedule: ask now",
                at(Capture, 4),
                timeout(),
                again(0, true, true),
            ),
            (
                "an earlier timeout keeps it unknown",
                unknown_before(at(Void, 4)),
                refused(),
                again(0, true, true),
            ),
            (
                "an authorization refused every time did not happen",
                at(Authorize, 4),
                refused(),
                Next::NotPerformed,
            ),
            (
                "a capture refused every time is tried again on the long schedule",
                at(Capture, 4),
                refused(),
                again(5, false, false),
            ),
            (
                "the long schedule grows",
                at(Refund, 6),
                refused(),
                again(15, false, false),
            ),
            (
                "its last step repeats",
                at(Refund, 40),
                refused(),
                again(600, false, false),
            ),
            (
                "no answer to the status query: ask again later",
                resolving(at(Capture, 5)),
                timeout(),
                again(5, true, true),
            ),
            (
                "an authorization still unknown after asking is given up",
                given_up(resolving(at(Authorize, 5))),
                timeout(),
                Next::Exhausted { unknown: true },
            ),
            (
                "a capture is given up only after its window",
                given_up(resolving(at(Capture, 30))),
                timeout(),
                Next::Exhausted { unknown: true },
            ),
            (
                "an authorization the provider does not know is given up (voided by key)",
                resolving(at(Authorize, 5)),
                Answer::NotFound,
                Next::Exhausted { unknown: true },
            ),
            (
                "a capture the provider does not know is called again now",
                resolving(at(Capture, 5)),
                Answer::NotFound,
                again(0, false, false),
            ),
            (
                "a declined refund is final: a refusal is an answer",
                at(Refund, 1),
                Answer::Outcome(declined()),
                Next::Done(declined()),
            ),
            (
                "a declined capture is final",
                at(Capture, 2),
                Answer::Outcome(declined()),
                Next::Done(declined()),
            ),
            (
                "a declined void is final, even after an earlier timeout",
                unknown_before(at(Void, 3)),
                Answer::Outcome(declined()),
                Next::Done(declined()),
            ),
            (
                "a status query that finds a declined capture is final",
                resolving(at(Capture, 5)),
                Answer::Outcome(declined()),
                Next::Done(declined()),
            ),
            (
                "a status query that finds a declined refund is final, past its window too",
                given_up(resolving(at(Refund, 30))),
                Answer::Outcome(declined()),
                Next::Done(declined()),
            ),
            (
                "a status query that finds a declined void is final",
                resolving(at(Void, 5)),
                Answer::Outcome(declined()),
                Next::Done(declined()),
            ),
        ];
        for (what, progress, answer, expected) in table {
            assert_eq!(decide(progress, answer, &s()), expected, "{what}");
        }
    }

    fn request(operation: ProviderOperation) -> ProviderRequest {
        let payment_id = Uuid::from_u128(7);
        ProviderRequest {
            payment_id,
            operation,
            idempotency_key: idempotency_key(operation, payment_id, OperationKey::NONE),
            amount_minor: AmountMinor::new(1000).unwrap(),
            currency: Currency::parse("USD").unwrap(),
            payment_method: "pm_card_ok".into(),
            reference: Some("auth-1".into()),
        }
    }

    #[test]
    fn a_void_after_a_capture_refunds_exactly_what_the_capture_took() {
        let taken = Taken {
            reference: "cap-1".into(),
            amount_minor: AmountMinor::new(400).unwrap(),
            currency: Currency::parse("USD").unwrap(),
        };
        let refund = performed(request(Void), Some(taken.clone()));
        assert_eq!(refund.operation, Refund);
        assert_eq!(refund.amount_minor.get(), 400, "not the 1000 authorized");
        assert_eq!(refund.reference.as_deref(), Some("cap-1"));
        assert_eq!(
            refund.idempotency_key,
            format!("refund:{}", Uuid::from_u128(7))
        );
        assert_eq!(
            performed(request(Void), None),
            request(Void),
            "nothing captured"
        );
        assert_eq!(
            performed(request(Capture), Some(taken)),
            request(Capture),
            "only a void becomes a refund"
        );
        assert!(waits(Void, [Refund, Capture]));
        assert!(!waits(Void, [Refund, Void]));
        assert!(!waits(Capture, [Authorize]));
    }

    #[test]
    fn automatic_capture_follows_only_an_authorization_of_the_amount_asked() {
        let usd = Currency::parse("USD").unwrap();
        let asked = (AmountMinor::new(5).unwrap(), usd);
        let done = Next::Done(ok());
        assert_eq!(
            captures_after(&done, Authorize, CaptureMethod::Automatic, asked),
            Some("r")
        );
        let other = (AmountMinor::new(6).unwrap(), usd);
        assert_eq!(
            captures_after(&done, Authorize, CaptureMethod::Automatic, other),
            None
        );
        assert_eq!(
            captures_after(&done, Authorize, CaptureMethod::Manual, asked),
            None
        );
        assert_eq!(
            captures_after(
                &Next::Done(declined()),
                Authorize,
                CaptureMethod::Automatic,
                asked
            ),
            None
        );
        assert!(!scheduled_after_void(Capture));
        assert!(scheduled_after_void(Refund));
    }

    #[test]
    fn a_repeated_command_waits_is_answered_or_re_arms() {
        use OperationStatus::*;
        assert_eq!(repeated(Pending, Capture, false), Repeated::Waits);
        for status in [Succeeded, Declined, NotPerformed] {
            assert_eq!(repeated(status, Refund, true), Repeated::Answered);
        }
        assert_eq!(repeated(Exhausted, Capture, false), Repeated::Rearmed);
        assert_eq!(repeated(Exhausted, Capture, true), Repeated::Left);
        assert_eq!(repeated(Exhausted, Authorize, true), Repeated::Left);
        assert_eq!(repeated(Exhausted, Void, true), Repeated::Rearmed);
        assert_eq!(reported_as(Void, true), Refund);
        assert_eq!(reported_as(Void, false), Void);
    }

    #[test]
    fn a_merchant_holds_at_most_its_cap_within_the_worker() {
        let with = |max_in_flight, max_in_flight_per_merchant| RetrySettings {
            max_in_flight,
            max_in_flight_per_merchant,
            ..s()
        };
        assert_eq!(s().merchant_cap(), 32, "half the places by default");
        assert_eq!(with(64, 10).merchant_cap(), 10);
        assert_eq!(
            with(1, 32).merchant_cap(),
            1,
            "never more than the worker runs"
        );
        assert_eq!(with(64, 0).merchant_cap(), 64, "0: no cap of its own");
    }
}
