//! The provider adapter's model and the payment provider's.
//!
//! The adapter: its operations table and its worker, as data in memory (one operation per
//! payment, kind and refund; one due operation attempted per step). Every decision in it is
//! the adapter's own function, called here as the adapter calls it, never restated:
//! `sagapay_provider_adapter::policy` decides what follows an attempt (`decide`), whether a
//! void waits (`waits`), what a void after a capture performs (`performed`), whether an
//! automatic capture follows (`captures_after`), whether a capture is scheduled after a void
//! (`scheduled_after_void`) and what a repeated command gets (`repeated`, `reported_as`);
//! `sagapay_provider_adapter::replies` builds the event that reports an outcome, decoded here
//! as the orchestrator decodes it. What is the model's own: the table as a `Vec`, the order
//! of due operations (random), and the faults (timeouts before or after the provider acted,
//! refused connections, a worker that crashes after the provider acted).
//!
//! The provider: books per payment, idempotent by the adapter's key, refusing what a PSP
//! refuses (a capture above the authorization, a second capture, a capture or void after a
//! void or capture, a refund above what is left captured), with faults of its own while the
//! faults last (see [`Psp::call`]).

use super::Dice;
use crate::saga::consumed::Event;
use sagapay_domain::events::{CaptureMethod, ProviderOperation};
use sagapay_domain::{AmountMinor, Currency, Envelope};
use sagapay_provider_adapter::policy::{
    self, Answer, Next, Progress, Repeated, RetrySettings, Taken,
};
use sagapay_provider_adapter::provider::{ProviderError, ProviderOutcome, ProviderRequest};
use sagapay_provider_adapter::records::{OperationKey, OperationStatus};
use sagapay_provider_adapter::replies::{Answering, Ending};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

const PROVIDER: &str = "simulated";

/// A command for the adapter (what the saga's command asks for).
#[derive(Debug, Clone)]
pub struct Request {
    pub payment: Uuid,
    pub operation: ProviderOperation,
    pub refund_id: Option<Uuid>,
    pub amount: AmountMinor,
    pub reference: Option<String>,
    pub reason: String,
    pub capture_method: CaptureMethod,
    pub payment_method: String,
}

/// One provider operation the adapter owns, as its table holds it.
#[derive(Debug, Clone)]
pub struct Op {
    pub asked: Request,
    pub status: OperationStatus,
    pub attempts: i32,
    pub resolving: bool,
    pub unknown: bool,
    pub next_at: u64,
    pub give_up_at: u64,
    /// What a succeeded operation did at the provider.
    pub result: Option<Taken>,
    /// As the adapter stores it: a refusal's code, or the last attempt's error.
    pub last_error: String,
}

impl Op {
    pub fn payment(&self) -> Uuid {
        self.asked.payment
    }

    pub fn operation(&self) -> ProviderOperation {
        self.asked.operation
    }

    /// The merchant refund it performs, if it is one.
    pub fn refund_id(&self) -> Option<Uuid> {
        self.asked
            .refund_id
            .filter(|_| self.operation() == ProviderOperation::Refund)
    }
}

/// The adapter's operations: one per payment, operation and refund.
#[derive(Debug, Default)]
pub struct Adapter {
    pub ops: Vec<Op>,
}

pub fn settings() -> RetrySettings {
    RetrySettings {
        give_up_after: Duration::from_secs(3600),
        ..RetrySettings::default()
    }
}

pub fn usd() -> Currency {
    Currency::parse("USD").expect("USD")
}

/// The orchestrator's event in an envelope the adapter built.
fn decoded(env: Envelope) -> Event {
    match Event::decode(&env) {
        Some(Ok(event)) => event,
        other => unreachable!("the adapter reported what the saga cannot read: {other:?}"),
    }
}

impl Adapter {
    fn find(&self, r: &Request) -> Option<usize> {
        self.ops.iter().position(|o| {
            o.payment() == r.payment && o.operation() == r.operation && o.refund_id() == r.refund_id
        })
    }

    fn of(&self, payment: Uuid) -> impl Iterator<Item = &Op> {
        self.ops.iter().filter(move |o| o.payment() == payment)
    }

    /// What the payment's capture took, once it succeeded.
    fn captured(&self, payment: Uuid) -> Option<Taken> {
        self.of(payment)
            .find(|o| {
                o.operation() == ProviderOperation::Capture
                    && o.status == OperationStatus::Succeeded
            })
            .and_then(|o| o.result.clone())
    }

    /// A capture asked once a void of its payment was asked for, which is not scheduled
    /// (`policy::scheduled_after_void`).
    fn after_void(&self, r: &Request) -> bool {
        !policy::scheduled_after_void(r.operation)
            && self
                .of(r.payment)
                .any(|o| o.operation() == ProviderOperation::Void)
    }

    fn insert(&mut self, r: &Request, now: u64) {
        self.ops.push(Op {
            asked: r.clone(),
            status: OperationStatus::Pending,
            attempts: 0,
            resolving: false,
            unknown: false,
            next_at: now,
            give_up_at: now + settings().give_up_after(r.operation).as_millis() as u64,
            result: None,
            last_error: String::new(),
        });
    }

    /// A command: not performed (a capture after the payment's void), a new operation, or
    /// the existing one waited for, answered again, re-armed or left, as the adapter's policy
    /// says.
    pub fn command(&mut self, r: Request, now: u64) -> Vec<Event> {
        if self.after_void(&r) {
            return Vec::new();
        }
        let Some(i) = self.find(&r) else {
            self.insert(&r, now);
            return Vec::new();
        };
        let compensated = self.of(r.payment).any(|o| {
            o.refund_id().is_none()
                && matches!(
                    o.operation(),
                    ProviderOperation::Void | ProviderOperation::Refund
                )
        });
        let op = &self.ops[i];
        match policy::repeated(op.status, op.operation(), compensated) {
            Repeated::Waits | Repeated::Left => Vec::new(),
            Repeated::Rearmed => {
                let op = &mut self.ops[i];
                op.status = OperationStatus::Pending;
                op.attempts = 0;
                op.resolving = op.unknown;
                op.next_at = now;
                op.give_up_at = now + settings().give_up_after(op.operation()).as_millis() as u64;
                Vec::new()
            }
            Repeated::Answered => vec![self.answer_again(i, &r)],
        }
    }

    /// The outcome of ended operation `i` again, for a repeated command `r`.
    fn answer_again(&self, i: usize, r: &Request) -> Event {
        let op = &self.ops[i];
        let captured = self.captured(op.payment()).is_some();
        let answering = Answering {
            operation: policy::reported_as(op.operation(), captured),
            attempts: op.attempts as u32,
            ..answering(r)
        };
        let outcome = match (op.status, &op.result) {
            (OperationStatus::Succeeded, Some(t)) => Some(ProviderOutcome::Succeeded {
                reference: t.reference.clone(),
                amount_minor: t.amount_minor,
                currency: t.currency,
            }),
            (OperationStatus::Declined, _) => Some(ProviderOutcome::Declined {
                code: op.last_error.clone(),
            }),
            _ => None,
        };
        decoded(answering.event(match &outcome {
            Some(outcome) => Ending::Outcome(outcome),
            None => Ending::NotPerformed {
                last_error: &op.last_error,
            },
        }))
    }

    /// An operation due now that may run (see `policy::waits`), picked at random.
    pub fn due(&self, now: u64, dice: &mut Dice) -> Option<usize> {
        let ready: Vec<usize> = (0..self.ops.len())
            .filter(|&i| {
                let o = &self.ops[i];
                o.status == OperationStatus::Pending && o.next_at <= now && !self.waits(o)
            })
            .collect();
        (!ready.is_empty()).then(|| ready[dice.below(ready.len() as u64) as usize])
    }

    fn waits(&self, o: &Op) -> bool {
        let pending = self
            .of(o.payment())
            .filter(|p| p.status == OperationStatus::Pending)
            .map(Op::operation);
        policy::waits(o.operation(), pending)
    }

    /// The next time an operation of the adapter may run (a void waiting for another
    /// operation runs after it).
    pub fn next_due(&self) -> Option<u64> {
        self.ops
            .iter()
            .filter(|o| o.status == OperationStatus::Pending && !self.waits(o))
            .map(|o| o.next_at)
            .min()
    }

    pub fn pending(&self) -> bool {
        self.ops
            .iter()
            .any(|o| o.status == OperationStatus::Pending)
    }

    /// One attempt of operation `i`: a call (or a status query), then the policy. `faults`:
    /// whether this attempt may time out, fail, or crash the worker after the provider acted.
    pub fn attempt(
        &mut self,
        i: usize,
        psp: &mut Psp,
        dice: &mut Dice,
        now: u64,
        faults: bool,
        trace: &mut Vec<String>,
    ) -> Vec<Event> {
        let req = self.request(i);
        let merchant_refund = self.ops[i].refund_id().is_some();
        let asked = Asked {
            req: &req,
            resolving: self.ops[i].resolving,
            merchant_refund,
        };
        let Some(answer) = ask(asked, psp, dice, faults, trace) else {
            // The worker crashed after the provider acted: its claim expires, it runs again.
            self.ops[i].next_at = now + 3000;
            return Vec::new();
        };
        self.conclude(i, &req, answer, now, trace)
    }

    /// What operation `i` asks the provider (`policy::performed`: a void after a capture is
    /// the refund of what the capture took).
    fn request(&self, i: usize) -> ProviderRequest {
        let a = &self.ops[i].asked;
        let key = OperationKey::refund(self.ops[i].refund_id());
        let req = ProviderRequest {
            payment_id: a.payment,
            operation: a.operation,
            idempotency_key: policy::idempotency_key(a.operation, a.payment, key),
            amount_minor: a.amount,
            currency: usd(),
            payment_method: a.payment_method.clone(),
            reference: a.reference.clone(),
        };
        policy::performed(req, self.captured(a.payment))
    }

    /// After an attempt: what the policy decides, the operation's new state, the event that
    /// reports its end, and an automatic payment's capture after its authorization.
    fn conclude(
        &mut self,
        i: usize,
        req: &ProviderRequest,
        answer: Answer,
        now: u64,
        trace: &mut Vec<String>,
    ) -> Vec<Event> {
        let op = &self.ops[i];
        let attempt_no = op.attempts + 1;
        let progress = Progress {
            operation: op.operation(),
            attempt_no,
            resolving: op.resolving,
            outcome_unknown: op.unknown,
            past_give_up: now >= op.give_up_at,
        };
        // As the worker words it.
        let last_error = match &answer {
            Answer::Error(e) => e.to_string(),
            Answer::NotFound => "not found at the provider".into(),
            Answer::Outcome(ProviderOutcome::Declined { code }) => format!("declined: {code}"),
            Answer::Outcome(_) => String::new(),
        };
        let next = policy::decide(progress, answer, &settings());
        trace.push(format!("  policy: {next:?}"));
        let asked = op.asked.clone();
        let answering = Answering {
            operation: req.operation,
            attempts: attempt_no as u32,
            ..answering(&asked)
        };
        let event = self.ops[i].after(&next, now, last_error, &answering);
        // The adapter's automatic capture, in the authorization's transaction: unless it
        // exists, or a void was asked for.
        let amount = (asked.amount, usd());
        let capture = policy::captures_after(&next, asked.operation, asked.capture_method, amount);
        if let Some(authorization_id) = capture {
            let capture = Request {
                operation: ProviderOperation::Capture,
                refund_id: None,
                reference: Some(authorization_id.to_owned()),
                reason: String::new(),
                ..asked.clone()
            };
            if !self.after_void(&capture) && self.find(&capture).is_none() {
                self.insert(&capture, now);
            }
        }
        event.into_iter().collect()
    }
}

impl Op {
    /// The operation after the policy decided `next`, as the worker records it, and the event
    /// that reports its end.
    fn after(
        &mut self,
        next: &Next,
        now: u64,
        last_error: String,
        answering: &Answering<'_>,
    ) -> Option<Event> {
        self.attempts += 1;
        self.last_error = last_error;
        let ending = match next {
            Next::Done(outcome) => {
                match outcome {
                    ProviderOutcome::Succeeded {
                        reference,
                        amount_minor,
                        currency,
                    } => {
                        self.status = OperationStatus::Succeeded;
                        self.result = Some(Taken {
                            reference: reference.clone(),
                            amount_minor: *amount_minor,
                            currency: *currency,
                        });
                    }
                    ProviderOutcome::Declined { code } => {
                        self.status = OperationStatus::Declined;
                        self.last_error = code.clone();
                    }
                }
                Ending::Outcome(outcome)
            }
            Next::NotPerformed => {
                self.status = OperationStatus::NotPerformed;
                Ending::NotPerformed {
                    last_error: &self.last_error,
                }
            }
            Next::Again {
                wait,
                resolving,
                unknown,
            } => {
                self.next_at = now + wait.as_millis() as u64;
                self.resolving = *resolving;
                self.unknown = *unknown;
                return None;
            }
            Next::Exhausted { .. } => {
                self.status = OperationStatus::Exhausted;
                Ending::Exhausted {
                    attempts: self.attempts as u32,
                    last_error: &self.last_error,
                }
            }
        };
        Some(decoded(answering.event(ending)))
    }
}

/// Who an operation's events answer, as the adapter fills it in (the operation reported and
/// the attempts are the caller's).
fn answering(r: &Request) -> Answering<'_> {
    Answering {
        payment_id: r.payment,
        causation_id: Uuid::nil(),
        correlation_id: "simulation",
        operation: r.operation,
        refund_id: r
            .refund_id
            .filter(|_| r.operation == ProviderOperation::Refund),
        reason: &r.reason,
        provider: PROVIDER,
        authorization_id: match r.operation {
            ProviderOperation::Capture => r.reference.as_deref(),
            _ => None,
        },
        attempts: 0,
    }
}

/// The provider's books for one payment.
#[derive(Debug, Default, Clone)]
pub struct Books {
    pub authorized: Option<i64>,
    pub voided: bool,
    pub captured: Option<i64>,
    pub captures: u32,
    pub refunded: i64,
    /// Each refund it made, by the adapter's idempotency key, and what it was asked for.
    pub refunds: BTreeMap<String, (i64, i64)>,
}

/// The payment provider.
#[derive(Debug, Default)]
pub struct Psp {
    pub books: BTreeMap<Uuid, Books>,
    by_key: BTreeMap<String, ProviderOutcome>,
    /// What it refused that the platform should never have asked (a bug of ours it caught).
    pub refusals: Vec<String>,
}

impl Psp {
    /// What a PSP refuses outright, by its books.
    fn refuses(b: &Books, req: &ProviderRequest) -> Option<&'static str> {
        let a = req.amount_minor.get();
        match req.operation {
            ProviderOperation::Authorize if req.payment_method == "pm_card_declined" => {
                Some("card_declined")
            }
            ProviderOperation::Authorize if b.voided => Some("authorization_voided"),
            ProviderOperation::Authorize => None,
            ProviderOperation::Capture if b.voided => Some("authorization_voided"),
            ProviderOperation::Capture if b.captured.is_some() => Some("already_captured"),
            ProviderOperation::Capture if Some(a) > b.authorized || b.authorized.is_none() => {
                Some("amount_above_authorization")
            }
            ProviderOperation::Capture => None,
            ProviderOperation::Void if b.captured.is_some() => Some("already_captured"),
            ProviderOperation::Void => None,
            ProviderOperation::Refund if a > b.captured.unwrap_or(0) - b.refunded => {
                Some("amount_above_captured")
            }
            ProviderOperation::Refund => None,
        }
    }

    /// A call. `faults`: now and then the provider authorizes another amount than was asked
    /// (a partial authorization the merchant never opted into), pays back less than asked
    /// when it reverses a capture (a fee it withholds: the saga flags the payment and never
    /// applies the reversal, see `invariants::left_to_reconcile`), and declines of its own
    /// accord a merchant's refund (the card's account closed, the charge disputed), a capture
    /// (the authorization expired) or a void (reversals not supported for the card): a
    /// refusal is an answer, which the adapter's policy reports at once.
    fn call(
        &mut self,
        req: &ProviderRequest,
        merchant_refund: bool,
        dice: &mut Dice,
        faults: bool,
    ) -> ProviderOutcome {
        if let Some(done) = self.by_key.get(&req.idempotency_key) {
            return done.clone();
        }
        let b = self.books.entry(req.payment_id).or_default();
        let refused = Self::refuses(b, req);
        let own = match req.operation {
            _ if !faults || refused.is_some() => None,
            ProviderOperation::Refund if merchant_refund => {
                dice.chance(10).then_some("refund_declined")
            }
            ProviderOperation::Capture => dice.chance(2).then_some("authorization_expired"),
            ProviderOperation::Void => dice.chance(2).then_some("reversal_not_supported"),
            _ => None,
        };
        let outcome = match (refused, own) {
            (Some(code), _) => {
                if req.operation != ProviderOperation::Authorize {
                    let (p, a) = (req.payment_id, req.amount_minor);
                    let operation = req.operation;
                    self.refusals
                        .push(format!("{p} {operation:?} of {a}: {code}"));
                }
                ProviderOutcome::Declined { code: code.into() }
            }
            (None, Some(code)) => ProviderOutcome::Declined { code: code.into() },
            (None, None) => {
                let short = faults
                    && req.amount_minor.get() > 1
                    && match req.operation {
                        ProviderOperation::Authorize => dice.chance(2),
                        ProviderOperation::Refund if !merchant_refund => dice.chance(3),
                        _ => false,
                    };
                let amount = req.amount_minor.get() - i64::from(short);
                Self::perform(b, req, amount, dice)
            }
        };
        self.by_key
            .insert(req.idempotency_key.clone(), outcome.clone());
        outcome
    }

    /// Does `req` for `amount` (what it asked for, unless a fault says otherwise).
    fn perform(
        b: &mut Books,
        req: &ProviderRequest,
        amount: i64,
        dice: &mut Dice,
    ) -> ProviderOutcome {
        match req.operation {
            ProviderOperation::Authorize => b.authorized = Some(amount),
            ProviderOperation::Capture => {
                b.captured = Some(amount);
                b.captures += 1;
            }
            ProviderOperation::Void => b.voided = true,
            ProviderOperation::Refund => {
                b.refunded += amount;
                let asked = req.amount_minor.get();
                b.refunds
                    .insert(req.idempotency_key.clone(), (amount, asked));
            }
        }
        ProviderOutcome::Succeeded {
            reference: format!(
                "{}-{:x}",
                req.operation.as_str().to_lowercase(),
                dice.next()
            ),
            amount_minor: AmountMinor::new(amount).expect("positive"),
            currency: req.currency,
        }
    }

    fn status(&self, req: &ProviderRequest) -> Option<ProviderOutcome> {
        self.by_key.get(&req.idempotency_key).cloned()
    }
}

/// What one attempt asks.
struct Asked<'a> {
    req: &'a ProviderRequest,
    /// A status query, not a call.
    resolving: bool,
    merchant_refund: bool,
}

/// One call of the provider (or a status query when the outcome is unknown), with the
/// faults of the network and the worker: `None` when the worker crashed after the provider
/// acted (the attempt is not recorded).
fn ask(
    asked: Asked<'_>,
    psp: &mut Psp,
    dice: &mut Dice,
    faults: bool,
    trace: &mut Vec<String>,
) -> Option<Answer> {
    if asked.resolving {
        return Some(match psp.status(asked.req) {
            Some(outcome) => Answer::Outcome(outcome),
            None => Answer::NotFound,
        });
    }
    let roll = if faults { dice.below(100) } else { 99 };
    match roll {
        0..=7 => return Some(Answer::Error(ProviderError::Timeout)), // never reached it
        8..=12 => return Some(Answer::Error(ProviderError::Unavailable("refused".into()))),
        _ => {}
    }
    let outcome = psp.call(asked.req, asked.merchant_refund, dice, faults);
    match roll {
        13..=20 => {
            trace.push(format!(
                "  the provider did it; its answer was lost ({outcome:?})"
            ));
            Some(Answer::Error(ProviderError::Timeout))
        }
        21..=24 => {
            trace.push(
                "  the adapter crashed after the provider acted: attempt not recorded".into(),
            );
            None
        }
        _ => Some(Answer::Outcome(outcome)),
    }
}
