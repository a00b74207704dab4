//! The provider adapter's model (its operations table and worker, with the real retry
//! policy deciding after every attempt) and the payment provider's (books that refuse what a
//! PSP refuses: a capture above the authorization, a second capture, a capture or void after
//! a void or capture, a refund above what is left captured).

use super::Dice;
use crate::saga::consumed::Event;
use crate::saga::decide::mutation::{self, Mutation};
use sagapay_domain::events::{
    CaptureMethod, PaymentAuthorized, PaymentCaptured, PaymentFailed, PaymentRefunded,
    PaymentReversed, ProviderOperation, ProviderRetriesExhausted,
};
use sagapay_domain::{AmountMinor, Currency};
use sagapay_provider_adapter::policy::{self, Answer, Next, Progress, RetrySettings};
use sagapay_provider_adapter::provider::{ProviderError, ProviderOutcome};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

const PROVIDER: &str = "simulated";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpStatus {
    Pending,
    Succeeded,
    Declined,
    NotPerformed,
    Exhausted,
}

/// One provider operation the adapter owns, as its table holds it.
#[derive(Debug, Clone)]
pub struct Op {
    pub payment: Uuid,
    pub operation: ProviderOperation,
    pub refund_id: Option<Uuid>,
    pub amount: AmountMinor,
    pub reference: Option<String>,
    pub reason: String,
    pub capture_method: CaptureMethod,
    pub declined_card: bool,
    pub status: OpStatus,
    pub attempts: i32,
    pub resolving: bool,
    pub unknown: bool,
    pub next_at: u64,
    pub give_up_at: u64,
    pub result: Option<(String, AmountMinor)>,
    pub last_error: String,
    /// Performed as the refund of a capture (a void after the capture went through).
    pub as_refund: bool,
}

/// The adapter's operations: one per payment, operation and refund.
#[derive(Debug, Default)]
pub struct Adapter {
    pub ops: Vec<Op>,
}

/// The provider's books for one payment.
#[derive(Debug, Default, Clone)]
pub struct Books {
    pub authorized: Option<i64>,
    pub voided: bool,
    pub captured: Option<i64>,
    pub captures: u32,
    pub refunded: i64,
}

/// The payment provider.
#[derive(Debug, Default)]
pub struct Psp {
    pub books: BTreeMap<Uuid, Books>,
    by_key: BTreeMap<String, ProviderOutcome>,
    /// What it refused that the platform should never have asked (a bug of ours it caught).
    pub refusals: Vec<String>,
}

pub fn settings() -> RetrySettings {
    RetrySettings {
        give_up_after: Duration::from_secs(3600),
        ..RetrySettings::default()
    }
}

fn usd() -> Currency {
    Currency::parse("USD").expect("USD")
}

impl Psp {
    fn key(op: &Op) -> String {
        let what = if op.as_refund {
            "REFUND"
        } else {
            op.operation.as_str()
        };
        format!("{}:{what}:{:?}", op.payment, op.refund_id)
    }

    /// `faults`: now and then the provider authorizes another amount than was asked (a
    /// partial authorization the merchant never opted into).
    fn call(
        &mut self,
        op: &Op,
        amount: AmountMinor,
        dice: &mut Dice,
        faults: bool,
    ) -> ProviderOutcome {
        let key = Self::key(op);
        if let Some(done) = self.by_key.get(&key) {
            return done.clone();
        }
        let b = self.books.entry(op.payment).or_default();
        let a = amount.get();
        let operation = if op.as_refund {
            ProviderOperation::Refund
        } else {
            op.operation
        };
        let refused = match operation {
            ProviderOperation::Authorize if op.declined_card => Some("card_declined"),
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
        };
        // Now and then the provider refuses a merchant's refund (the card's account is
        // closed, the charge disputed): a decline of its own, not a bug of ours.
        if faults && refused.is_none() && op.refund_id.is_some() && dice.chance(10) {
            let outcome = ProviderOutcome::Declined {
                code: "refund_declined".into(),
            };
            self.by_key.insert(key, outcome.clone());
            return outcome;
        }
        let partial =
            faults && operation == ProviderOperation::Authorize && a > 1 && dice.chance(2);
        let (a, amount) = if partial {
            (a - 1, AmountMinor::new(a - 1).expect("positive"))
        } else {
            (a, amount)
        };
        let outcome = match refused {
            Some(code) => {
                if operation != ProviderOperation::Authorize {
                    self.refusals
                        .push(format!("{} {operation:?} of {a}: {code}", op.payment));
                }
                ProviderOutcome::Declined { code: code.into() }
            }
            None => {
                match operation {
                    ProviderOperation::Authorize => b.authorized = Some(a),
                    ProviderOperation::Capture => {
                        b.captured = Some(a);
                        b.captures += 1;
                    }
                    ProviderOperation::Void => b.voided = true,
                    ProviderOperation::Refund => b.refunded += a,
                }
                ProviderOutcome::Succeeded {
                    reference: format!("{}-{:x}", operation.as_str().to_lowercase(), dice.next()),
                    amount_minor: amount,
                    currency: usd(),
                }
            }
        };
        self.by_key.insert(key, outcome.clone());
        outcome
    }

    fn status(&self, op: &Op) -> Option<ProviderOutcome> {
        self.by_key.get(&Self::key(op)).cloned()
    }
}

/// A command for the adapter.
pub struct Request {
    pub payment: Uuid,
    pub operation: ProviderOperation,
    pub refund_id: Option<Uuid>,
    pub amount: AmountMinor,
    pub reference: Option<String>,
    pub reason: String,
    pub capture_method: CaptureMethod,
    pub declined_card: bool,
}

impl Adapter {
    fn find(
        &self,
        payment: Uuid,
        operation: ProviderOperation,
        refund_id: Option<Uuid>,
    ) -> Option<usize> {
        self.ops.iter().position(|o| {
            o.payment == payment && o.operation == operation && o.refund_id == refund_id
        })
    }

    /// A command: a new operation, or the existing one answered again (its outcome), re-armed
    /// (given up, unless the saga is undoing what it would do) or left to finish.
    pub fn command(&mut self, r: Request, now: u64) -> Vec<Event> {
        let voided = self
            .ops
            .iter()
            .any(|o| o.payment == r.payment && o.operation == ProviderOperation::Void);
        if r.operation == ProviderOperation::Capture && voided {
            return Vec::new(); // asked after the void: not performed
        }
        let Some(i) = self.find(r.payment, r.operation, r.refund_id) else {
            self.ops.push(Op {
                payment: r.payment,
                operation: r.operation,
                refund_id: r.refund_id,
                amount: r.amount,
                reference: r.reference,
                reason: r.reason,
                capture_method: r.capture_method,
                declined_card: r.declined_card,
                status: OpStatus::Pending,
                attempts: 0,
                resolving: false,
                unknown: false,
                next_at: now,
                give_up_at: now + settings().give_up_after(r.operation).as_millis() as u64,
                result: None,
                last_error: String::new(),
                as_refund: false,
            });
            return Vec::new();
        };
        let compensated = self.ops.iter().any(|o| {
            o.payment == r.payment
                && o.refund_id.is_none()
                && matches!(
                    o.operation,
                    ProviderOperation::Void | ProviderOperation::Refund
                )
        });
        let op = &mut self.ops[i];
        match op.status {
            OpStatus::Pending => Vec::new(),
            OpStatus::Exhausted => {
                let undone = compensated
                    && matches!(
                        op.operation,
                        ProviderOperation::Authorize | ProviderOperation::Capture
                    );
                if !undone {
                    op.status = OpStatus::Pending;
                    op.attempts = 0;
                    op.resolving = op.unknown;
                    op.next_at = now;
                    op.give_up_at = now + settings().give_up_after(op.operation).as_millis() as u64;
                }
                Vec::new()
            }
            _ => report(op).into_iter().collect(),
        }
    }

    /// An operation due now that may run: a void waits while an authorization or a capture
    /// of its payment is pending.
    pub fn due(&self, now: u64, dice: &mut Dice) -> Option<usize> {
        let ready: Vec<usize> = (0..self.ops.len())
            .filter(|&i| {
                let o = &self.ops[i];
                o.status == OpStatus::Pending && o.next_at <= now && !self.waits(o)
            })
            .collect();
        (!ready.is_empty()).then(|| ready[dice.below(ready.len() as u64) as usize])
    }

    fn waits(&self, o: &Op) -> bool {
        if o.operation != ProviderOperation::Void {
            return false;
        }
        let ignore_capture = mutation::active(Mutation::VoidIgnoresPendingCapture);
        self.ops.iter().any(|p| {
            p.payment == o.payment
                && p.status == OpStatus::Pending
                && (p.operation == ProviderOperation::Authorize
                    || (p.operation == ProviderOperation::Capture && !ignore_capture))
        })
    }

    /// The next time an operation of the adapter may run (a void waiting for another
    /// operation runs after it).
    pub fn next_due(&self) -> Option<u64> {
        self.ops
            .iter()
            .filter(|o| o.status == OpStatus::Pending && !self.waits(o))
            .map(|o| o.next_at)
            .min()
    }

    pub fn pending(&self) -> bool {
        self.ops.iter().any(|o| o.status == OpStatus::Pending)
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
        let (op, amount) = self.as_performed(i);
        let Some(answer) = ask(&op, amount, psp, dice, faults, trace) else {
            // The worker crashed after the provider acted: its claim expires, it runs again.
            self.ops[i].next_at = now + 3000;
            return Vec::new();
        };
        self.conclude(i, op, answer, now, trace)
    }

    /// What operation `i` asks the provider: itself, except a void of a payment whose
    /// capture went through, which becomes the refund of that capture, for what it took.
    fn as_performed(&self, i: usize) -> (Op, AmountMinor) {
        let mut op = self.ops[i].clone();
        let mut amount = op.amount;
        if op.operation != ProviderOperation::Void {
            return (op, amount);
        }
        let captured = self.ops.iter().find(|c| {
            c.payment == op.payment
                && c.operation == ProviderOperation::Capture
                && c.status == OpStatus::Succeeded
        });
        if let Some((reference, taken)) = captured.and_then(|c| c.result.clone()) {
            op.as_refund = true;
            op.reference = Some(reference);
            if !mutation::active(Mutation::OverRefundBeforeFix) {
                amount = taken;
            }
        }
        (op, amount)
    }

    /// After an attempt: what the policy decides, the operation's new state, the event that
    /// reports its end, and an automatic payment's capture after its authorization.
    fn conclude(
        &mut self,
        i: usize,
        mut op: Op,
        answer: Answer,
        now: u64,
        trace: &mut Vec<String>,
    ) -> Vec<Event> {
        let progress = Progress {
            operation: op.operation,
            attempt_no: op.attempts + 1,
            resolving: op.resolving,
            outcome_unknown: op.unknown,
            past_give_up: now >= op.give_up_at,
        };
        op.last_error = match &answer {
            Answer::Error(e) => e.to_string(),
            Answer::NotFound => "not found at the provider".into(),
            Answer::Outcome(ProviderOutcome::Declined { code }) => format!("declined: {code}"),
            Answer::Outcome(_) => String::new(),
        };
        let next = policy::decide(progress, answer, &settings());
        trace.push(format!("  policy: {next:?}"));
        op.attempts += 1;
        match next {
            Next::Done(ProviderOutcome::Succeeded {
                reference,
                amount_minor,
                ..
            }) => {
                op.status = OpStatus::Succeeded;
                op.result = Some((reference, amount_minor));
            }
            Next::Done(ProviderOutcome::Declined { .. }) => op.status = OpStatus::Declined,
            Next::NotPerformed => op.status = OpStatus::NotPerformed,
            Next::Again {
                wait,
                resolving,
                unknown,
            } => {
                op.next_at = now + wait.as_millis() as u64;
                op.resolving = resolving;
                op.unknown = unknown;
            }
            Next::Exhausted { .. } => op.status = OpStatus::Exhausted,
        }
        let events: Vec<Event> = report(&op).into_iter().collect();
        self.ops[i] = op;
        self.capture_next(i, now);
        events
    }

    /// Automatic capture: the capture of an authorization that just succeeded, unless the
    /// provider authorized another amount than was asked (as the adapter), or a void of the
    /// payment was asked for (`command` checks).
    fn capture_next(&mut self, i: usize, now: u64) {
        let op = &self.ops[i];
        let automatic = op.operation == ProviderOperation::Authorize
            && op.status == OpStatus::Succeeded
            && op.capture_method == CaptureMethod::Automatic
            && op.result.as_ref().is_some_and(|r| r.1 == op.amount);
        if !automatic
            || self
                .find(op.payment, ProviderOperation::Capture, None)
                .is_some()
        {
            return;
        }
        let capture = Request {
            payment: op.payment,
            operation: ProviderOperation::Capture,
            refund_id: None,
            amount: op.amount,
            reference: op.result.as_ref().map(|r| r.0.clone()),
            reason: String::new(),
            capture_method: CaptureMethod::Automatic,
            declined_card: false,
        };
        self.command(capture, now);
    }
}

/// One call of the provider (or a status query when the outcome is unknown), with the
/// faults of the network and the worker: `None` when the worker crashed after the provider
/// acted (the attempt is not recorded).
fn ask(
    op: &Op,
    amount: AmountMinor,
    psp: &mut Psp,
    dice: &mut Dice,
    faults: bool,
    trace: &mut Vec<String>,
) -> Option<Answer> {
    if op.resolving {
        return Some(match psp.status(op) {
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
    let outcome = psp.call(op, amount, dice, faults);
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

/// The event that reports an operation's end (as the adapter's `replies` build it).
fn report(op: &Op) -> Option<Event> {
    let operation = if op.as_refund {
        ProviderOperation::Refund
    } else {
        op.operation
    };
    let provider = PROVIDER.to_owned();
    Some(match op.status {
        OpStatus::Pending => return None,
        OpStatus::Succeeded => return succeeded(op, operation),
        OpStatus::Declined if operation == ProviderOperation::Authorize => {
            Event::PaymentFailed(PaymentFailed {
                provider,
                decline_code: "card_declined".into(),
                reason: "authorization declined".into(),
            })
        }
        OpStatus::Declined => Event::ProviderRetriesExhausted(ProviderRetriesExhausted {
            operation,
            attempts: op.attempts as u32,
            last_error: op.last_error.clone(),
            refund_id: op.refund_id,
            // The bare code, as the adapter reports it (its last error says "declined: ...").
            decline_code: Some(
                (op.last_error.strip_prefix("declined: "))
                    .unwrap_or(&op.last_error)
                    .to_owned(),
            ),
        }),
        OpStatus::NotPerformed => Event::PaymentFailed(PaymentFailed {
            provider,
            decline_code: "provider_unavailable".into(),
            reason: format!("the provider could not be reached: {}", op.last_error),
        }),
        OpStatus::Exhausted => Event::ProviderRetriesExhausted(ProviderRetriesExhausted {
            operation,
            attempts: op.attempts as u32,
            last_error: op.last_error.clone(),
            refund_id: op.refund_id,
            decline_code: None,
        }),
    })
}

/// The event that reports a succeeded operation.
fn succeeded(op: &Op, operation: ProviderOperation) -> Option<Event> {
    let provider = PROVIDER.to_owned();
    let (reference, amount) = op.result.clone()?;
    Some(match (operation, op.refund_id) {
        (ProviderOperation::Authorize, _) => Event::PaymentAuthorized(PaymentAuthorized {
            provider,
            authorization_id: reference,
            amount_minor: amount,
            currency: usd(),
        }),
        (ProviderOperation::Capture, _) => Event::PaymentCaptured(PaymentCaptured {
            provider,
            capture_id: reference,
            amount_minor: amount,
            currency: usd(),
            authorization_id: op.reference.clone(),
        }),
        (ProviderOperation::Refund, Some(refund_id)) => Event::PaymentRefunded(PaymentRefunded {
            refund_id,
            provider,
            reference,
            amount_minor: amount,
            currency: usd(),
        }),
        (operation, _) => Event::PaymentReversed(PaymentReversed {
            provider,
            operation,
            reference,
            reason: op.reason.clone(),
            amount_minor: Some(amount),
            currency: Some(usd()),
        }),
    })
}
