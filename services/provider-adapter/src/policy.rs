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

use crate::provider::{ProviderError, ProviderOutcome};
use sagapay_domain::events::ProviderOperation;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;
    use sagapay_domain::{AmountMinor, Currency};
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
