//! What goes into [`super::decide`] and what comes out: an [`Input`] (a consumed event, a
//! merchant's or operator's request, a deadline), and a [`Decision`] (the [`Effect`]s on the
//! payment and its refunds, each with its timeline entry, and the [`Command`]s and events to
//! send), or a [`Refusal`]. Plain data: the I/O shell writes a decision in one transaction
//! (`super::shell`), the simulator applies it to its model (`super::apply`).

use super::consumed::Event;
use super::state::Manual;
use crate::store::{Compensation, ProviderMismatch};
use sagapay_domain::events::{
    AuthorizeRequested, CaptureRequested, EventPayload, LedgerPostRequested, LedgerRefundRequested,
    PaymentAwaitingCapture, PaymentFinalized, PaymentRequested, ProviderOperation, RefundFailed,
    RefundRequested, RefundSucceeded, VoidRequested,
};
use sagapay_domain::{AmountMinor, Envelope, PaymentStatus};
use uuid::Uuid;

/// What the saga is asked to decide on.
#[derive(Debug, Clone)]
pub enum Input {
    Event(Event),
    Merchant(MerchantRequest),
    Operator(OperatorRequest),
    /// The payment's deadline passed (the sweeper found it).
    Deadline,
    /// A merchant refund's deadline passed.
    RefundDeadline(Uuid),
}

#[derive(Debug, Clone)]
pub enum MerchantRequest {
    /// Capture a manual payment, in full (`None`) or in part.
    Capture {
        amount: Option<AmountMinor>,
        key: String,
    },
    /// Void a manual payment's authorization.
    Cancel { key: String },
    /// Refund a settled payment; `refund_id` is the new refund's.
    Refund {
        refund_id: Uuid,
        amount: AmountMinor,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub enum OperatorRequest {
    /// Send the outstanding step again (and re-arm the refunds in flight).
    Retry { who: String },
    /// Fail the payment: at once before the provider was asked, else by compensating.
    Fail { who: String, why: String },
    /// Keep what the provider captured when it captured another amount than was asked: the
    /// payment is posted and settles for what was captured.
    Accept { who: String, why: String },
}

/// The decision: effects in order, then what is sent.
#[derive(Debug, Clone, Default)]
pub struct Decision {
    pub effects: Vec<Effect>,
    pub send: Vec<Command>,
}

/// Facts a transition records on the payment besides its status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    pub authorization_id: Option<String>,
    pub capture_id: Option<String>,
    pub journal_transaction_id: Option<Uuid>,
}

/// Why an event was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// The payment is already past the state the event expects.
    Stale,
    /// The payment has not reached that state: a bug or a forgery.
    Illegal,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Stale => "stale",
            Ignored::Illegal => "illegal_transition",
        }
    }
}

/// Why a payment needs an operator (each has its metric).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// Waited too long (no answer after every re-send, or a person).
    Overdue,
    /// The provider reports an amount other than the one asked for.
    AmountMismatch(&'static str),
    /// A compensation (void, refund) failed for as long as it was tried or was refused.
    CompensationFailed(ProviderOperation),
    /// A capture's outcome is unknown, or the provider refused a capture.
    CaptureUnresolved,
    /// The provider refused to void the authorization (nothing was captured): an operator
    /// may end the payment, the hold lapsing at the card's issuer.
    VoidDeclined,
}

impl FlagKind {
    /// As `payments.attention_kind` stores it.
    pub fn as_str(self) -> &'static str {
        match self {
            FlagKind::Overdue => "OVERDUE",
            FlagKind::AmountMismatch(_) => "AMOUNT_MISMATCH",
            FlagKind::CompensationFailed(_) => "COMPENSATION_FAILED",
            FlagKind::CaptureUnresolved => "CAPTURE_UNRESOLVED",
            FlagKind::VoidDeclined => crate::store::ATTENTION_VOID_DECLINED,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Not applied: recorded in the inbox and counted.
    Ignore(Ignored),
    /// A timeline step; the payment does not move.
    Step {
        reason: String,
    },
    /// A transition checked against the transition table.
    Move {
        to: PaymentStatus,
        reason: String,
        facts: Facts,
    },
    /// A compensation starts; the payment stays where it is until its answer.
    Compensate {
        kind: Compensation,
        reason: String,
    },
    /// A merchant's (or the expiry's) action on a manual payment, recorded once.
    Act {
        manual: Manual,
        reason: String,
    },
    /// The outstanding step sent again (`reset`: by an operator, the count starts again).
    Resend {
        reason: String,
        reset: bool,
    },
    /// Needs an operator.
    Flag {
        reason: String,
        kind: FlagKind,
    },
    /// The provider moved another amount than was asked: recorded, never applied (a flag
    /// follows).
    Mismatch(ProviderMismatch),
    /// Nothing waits any more: the deadline is cleared.
    ClearDeadline,
    Refund(RefundEffect),
}

#[derive(Debug, Clone, PartialEq)]
pub enum RefundEffect {
    Admit {
        refund_id: Uuid,
        amount: AmountMinor,
        reason: String,
    },
    /// The provider refunded it: PROCESSED, waiting for the ledger.
    Processed {
        refund_id: Uuid,
        reference: String,
    },
    /// The ledger posted it: SUCCEEDED.
    Succeeded {
        refund_id: Uuid,
        journal_transaction_id: Uuid,
    },
    /// The provider refused it: it did not happen.
    Failed {
        refund_id: Uuid,
        reason: String,
    },
    /// Its outcome is unknown: flagged, still REQUESTED (it keeps counting).
    OutcomeUnknown {
        refund_id: Uuid,
        reason: String,
    },
    /// An operator's retry: due again now, its count reset.
    Rearm {
        refund_id: Uuid,
    },
    /// Its step sent again after its deadline.
    Resend {
        refund_id: Uuid,
        reason: String,
    },
    /// No answer after every re-send.
    Flag {
        refund_id: Uuid,
        reason: String,
    },
    ClearDeadline {
        refund_id: Uuid,
    },
}

/// A command or event the saga sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Requested(PaymentRequested),
    Authorize(AuthorizeRequested),
    Capture(CaptureRequested),
    Void(VoidRequested),
    Refund(RefundRequested),
    Post(LedgerPostRequested),
    PostRefund(LedgerRefundRequested),
    Finalized(PaymentFinalized),
    AwaitingCapture(PaymentAwaitingCapture),
    RefundSucceeded(RefundSucceeded),
    RefundFailed(RefundFailed),
}

impl Command {
    /// The command as an envelope of the payment: a follow-up of `cause` when an event caused
    /// it, else a new event in `correlation_id`.
    pub fn envelope(
        &self,
        payment_id: Uuid,
        cause: Option<&Envelope>,
        correlation_id: &str,
    ) -> Envelope {
        fn wrap<P: EventPayload>(
            p: &P,
            id: Uuid,
            cause: Option<&Envelope>,
            corr: &str,
        ) -> Envelope {
            match cause {
                Some(env) => env.follow_up(p),
                None => Envelope::new(id, None, corr, p),
            }
        }
        let (id, c, corr) = (payment_id, cause, correlation_id);
        match self {
            Command::Requested(p) => wrap(p, id, c, corr),
            Command::Authorize(p) => wrap(p, id, c, corr),
            Command::Capture(p) => wrap(p, id, c, corr),
            Command::Void(p) => wrap(p, id, c, corr),
            Command::Refund(p) => wrap(p, id, c, corr),
            Command::Post(p) => wrap(p, id, c, corr),
            Command::PostRefund(p) => wrap(p, id, c, corr),
            Command::Finalized(p) => wrap(p, id, c, corr),
            Command::AwaitingCapture(p) => wrap(p, id, c, corr),
            Command::RefundSucceeded(p) => wrap(p, id, c, corr),
            Command::RefundFailed(p) => wrap(p, id, c, corr),
        }
    }

    pub fn event_type(&self) -> sagapay_domain::EventType {
        use sagapay_domain::events::EventPayload as P;
        match self {
            Command::Requested(_) => PaymentRequested::EVENT_TYPE,
            Command::Authorize(_) => AuthorizeRequested::EVENT_TYPE,
            Command::Capture(_) => CaptureRequested::EVENT_TYPE,
            Command::Void(_) => VoidRequested::EVENT_TYPE,
            Command::Refund(_) => <RefundRequested as P>::EVENT_TYPE,
            Command::Post(_) => LedgerPostRequested::EVENT_TYPE,
            Command::PostRefund(_) => LedgerRefundRequested::EVENT_TYPE,
            Command::Finalized(_) => PaymentFinalized::EVENT_TYPE,
            Command::AwaitingCapture(_) => PaymentAwaitingCapture::EVENT_TYPE,
            Command::RefundSucceeded(_) => RefundSucceeded::EVENT_TYPE,
            Command::RefundFailed(_) => RefundFailed::EVENT_TYPE,
        }
    }
}

/// A request (or an event) the saga will not act on, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub kind: RefusalKind,
    /// Machine-readable (the API's error code).
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// Not now, in this state (HTTP 409).
    Conflict,
    /// Never, with these values (HTTP 422).
    Unprocessable,
    /// Something that cannot happen happened: a bug, or a forged or corrupt message (an
    /// event is dead-lettered; a request gets 500).
    Broken,
}

impl Refusal {
    pub fn conflict(code: &'static str, message: String) -> Refusal {
        Refusal {
            kind: RefusalKind::Conflict,
            code,
            message,
        }
    }

    pub fn unprocessable(code: &'static str, message: String) -> Refusal {
        Refusal {
            kind: RefusalKind::Unprocessable,
            code,
            message,
        }
    }

    pub fn broken(message: String) -> Refusal {
        Refusal {
            kind: RefusalKind::Broken,
            code: "internal_error",
            message,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl Decision {
    pub fn of(effect: Effect) -> Decision {
        Decision {
            effects: vec![effect],
            send: Vec::new(),
        }
    }

    pub fn then(mut self, effect: Effect) -> Decision {
        self.effects.push(effect);
        self
    }

    pub fn send(mut self, command: Command) -> Decision {
        self.send.push(command);
        self
    }

    /// The status the payment ends this decision in, when it moves.
    pub fn moves_to(&self) -> Option<PaymentStatus> {
        self.effects.iter().rev().find_map(|e| match e {
            Effect::Move { to, .. } => Some(*to),
            _ => None,
        })
    }
}
