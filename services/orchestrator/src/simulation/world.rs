//! The simulated world: the orchestrator (the real core over its state in memory), the other
//! services' models, the network between them, the clock, and the merchants and operators.

use super::adapter::{Adapter, Psp, Request};
use super::models::{Inbox, Ledger, Notification, Risk};
use super::verdict::Invariant;
use super::{Config, Dice, Summary};
use crate::saga::apply::apply;
use crate::saga::consumed::Event;
use crate::saga::deadlines::Deadlines;
use crate::saga::decide::decide;
use crate::saga::decision::{
    Command, Decision, Effect, FlagKind, Input, MerchantRequest, OperatorRequest, RefundEffect,
    RefusalKind,
};
use crate::saga::state::{PaymentState, Stage, Terms};
use chrono::{DateTime, TimeZone, Utc};
use sagapay_domain::events::{CaptureMethod, ProviderOperation};
use sagapay_domain::{AmountMinor, Currency, CustomerId, PaymentMethod};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

/// Who receives a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum To {
    Orchestrator,
    Risk,
    Adapter,
    Ledger,
    Notification,
}

#[derive(Debug, Clone)]
pub enum Body {
    Event(Event),
    Command(Command),
}

/// A message in flight. Messages of one lane (a payment, its producer, one of the
/// producer's relays) are first delivered in order; a redelivery can come at any time.
#[derive(Debug, Clone)]
pub struct Msg {
    pub id: u64,
    pub payment: Uuid,
    pub to: To,
    pub lane: (Uuid, To, u8),
    pub due: u64,
    pub body: Body,
    pub redelivery: bool,
}

/// The orchestrator's row of a payment.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub state: PaymentState,
    pub due: Option<u64>,
    pub refund_due: BTreeMap<Uuid, Option<u64>>,
    pub refund_flagged: BTreeSet<Uuid>,
    /// Why it is parked, while it is.
    pub flag: Option<FlagKind>,
}

pub struct World {
    pub seed: u64,
    pub(super) config: Config,
    pub dice: Dice,
    pub now: u64,
    pub step: usize,
    pub(super) faults: bool,
    pub deadlines: Deadlines,
    pub payments: BTreeMap<Uuid, Tracked>,
    order: Vec<Uuid>,
    /// The orchestrator's, risk's and the adapter's inboxes (the ledger and notification
    /// hold their own, see `models`).
    inboxes: BTreeMap<To, Inbox>,
    pub queue: Vec<Msg>,
    /// Messages parked as dead letters; an operator replays them once the faults stop.
    pub(super) parked: Vec<Msg>,
    next_id: u64,
    pub adapter: Adapter,
    pub psp: Psp,
    risk: Risk,
    pub ledger: Ledger,
    pub notification: Notification,
    pub trace: Vec<String>,
    pub(super) summary: Summary,
    /// What broke while deciding (checked by the invariants): a decision that does not apply
    /// or an input refused as broken, anything but refund work sent for a payment that ended.
    pub breaches: Vec<(Invariant, String)>,
    /// Admission control's count of each merchant's payments in the pipeline, followed
    /// decision by decision as the shell follows it (checked against a recount).
    pub admission: BTreeMap<Uuid, i64>,
}

/// Each merchant's share of admission control in the simulated world: a new payment of a
/// merchant holding this many places is refused (and asked for again later).
pub const SHARE: i64 = 2;

fn deadlines() -> Deadlines {
    Deadlines {
        risk_review: Duration::from_secs(600),
        manual_capture: Duration::from_secs(1800),
        ..Deadlines::default()
    }
}

impl World {
    pub fn new(seed: u64, config: Config) -> World {
        World {
            seed,
            config,
            dice: Dice::new(seed),
            now: 0,
            step: 0,
            faults: true,
            deadlines: deadlines(),
            payments: BTreeMap::new(),
            order: Vec::new(),
            inboxes: BTreeMap::new(),
            queue: Vec::new(),
            parked: Vec::new(),
            next_id: 0,
            adapter: Adapter::default(),
            psp: Psp::default(),
            risk: Risk::default(),
            ledger: Ledger::default(),
            notification: Notification::default(),
            trace: Vec::new(),
            summary: Summary::default(),
            breaches: Vec::new(),
            admission: BTreeMap::new(),
        }
    }

    pub(super) fn clock(&self) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0)
            .single()
            .expect("epoch")
            + chrono::Duration::milliseconds(self.now as i64)
    }

    pub(super) fn faulty_step(&mut self) {
        self.step += 1;
        self.now += self.dice.below(300);
        let created = self.order.len();
        let due_payments = (self.config.payments * 2 * self.step / self.config.fault_steps)
            .min(self.config.payments);
        if created < due_payments {
            self.create_payment();
        }
        if self.dice.chance(6) && !self.order.is_empty() {
            self.act();
        }
        let roll = self.dice.below(100);
        if roll < 60 && self.deliver() {
            return;
        }
        if roll < 85 && self.attempt() {
            return;
        }
        if !self.sweep() {
            self.wait();
        }
    }

    /// One step towards rest; false once nothing is left to do.
    pub(super) fn settling_step(&mut self) -> bool {
        self.step += 1;
        if self.deliver() || self.attempt() || self.sweep() {
            return true;
        }
        self.wait()
    }

    /// Moves the clock to the next moment something is due; false when nothing ever is.
    fn wait(&mut self) -> bool {
        // A message waits for its lane's earlier ones: only the lanes' heads count.
        let messages = (0..self.queue.len())
            .filter(|&i| self.head_of_lane(i))
            .map(|i| self.queue[i].due)
            .min();
        let ops = self.adapter.next_due();
        let deadlines = self.payments.values().flat_map(|t| {
            let payment = t.due.filter(|_| !t.state.attention);
            let refunds = t
                .refund_due
                .iter()
                .filter(|(id, _)| !t.refund_flagged.contains(id))
                .filter_map(|(_, due)| *due);
            payment.into_iter().chain(refunds)
        });
        let next = messages.into_iter().chain(ops).chain(deadlines).min();
        match next {
            Some(at) => {
                self.now = self.now.max(at);
                true
            }
            None => false,
        }
    }

    /// An operator replays every dead letter: each its message again as a new event (a new
    /// id, so no inbox has seen it).
    pub(super) fn replay_dead_letters(&mut self) {
        for mut msg in std::mem::take(&mut self.parked) {
            self.next_id += 1;
            self.trace.push(format!(
                "t={} an operator replays dead letter {} as {}",
                self.now, msg.id, self.next_id
            ));
            msg.id = self.next_id;
            msg.due = self.now;
            msg.redelivery = true;
            self.queue.push(msg);
        }
    }

    fn create_payment(&mut self) {
        let merchant_id = Uuid::from_u64_pair(1, self.dice.below(2));
        let holds = self.admission.get(&merchant_id).copied().unwrap_or(0);
        if holds >= SHARE {
            self.trace.push(format!(
                "t={} merchant {merchant_id} refused: {holds} places held, its share",
                self.now
            ));
            self.summary.refused += 1;
            return;
        }
        let payment_id = Uuid::from_u64_pair(self.dice.next(), self.dice.next());
        let manual = self.dice.chance(35);
        let terms = Terms {
            payment_id,
            merchant_id,
            customer_id: CustomerId::parse(format!("cust-{}", self.dice.below(5)))
                .expect("customer"),
            amount: AmountMinor::new(self.dice.between(100, 10_000)).expect("amount"),
            currency: Currency::parse("USD").expect("USD"),
            payment_method: PaymentMethod::parse(if self.dice.chance(8) {
                "pm_card_declined"
            } else {
                "pm_card_ok"
            })
            .expect("method"),
            capture_method: if manual {
                CaptureMethod::Manual
            } else {
                CaptureMethod::Automatic
            },
            created_at: self.clock(),
            correlation_id: format!("sim-{payment_id}"),
        };
        let state = PaymentState {
            terms,
            stage: Stage::Created,
            manual: None,
            nudges: 0,
            due: None,
            attention: false,
            void_refused: false,
            mismatch: None,
            refunds: Vec::new(),
        };
        self.trace.push(format!(
            "t={} payment {payment_id} created: {} {:?}",
            self.now, state.terms.amount, state.terms.capture_method
        ));
        let requested = crate::saga::commands::requested(&state);
        self.payments.insert(
            payment_id,
            Tracked {
                due: Some(self.now + self.deadlines.created.as_millis() as u64),
                state,
                refund_due: BTreeMap::new(),
                refund_flagged: BTreeSet::new(),
                flag: None,
            },
        );
        self.order.push(payment_id);
        *self.admission.entry(merchant_id).or_insert(0) += 1;
        self.send(payment_id, To::Orchestrator, Body::Command(requested));
    }

    /// Puts a message on the network from `from`.
    fn send(&mut self, payment: Uuid, from: To, body: Body) {
        let to = match &body {
            Body::Event(_) => To::Orchestrator,
            Body::Command(c) => route(c),
        };
        let relay = u8::from(self.faults && from == To::Adapter && self.dice.chance(10));
        self.next_id += 1;
        // Mostly prompt; now and then a consumer lags behind by seconds.
        let delay = match (self.faults, self.dice.chance(10)) {
            (false, _) => 10,
            (true, false) => self.dice.below(400),
            (true, true) => self.dice.below(6000),
        };
        self.queue.push(Msg {
            id: self.next_id,
            payment,
            to,
            lane: (payment, from, relay),
            due: self.now + delay,
            body,
            redelivery: false,
        });
    }

    /// Whether message `i` may go first: a redelivery, or the first of its lane.
    fn head_of_lane(&self, i: usize) -> bool {
        let m = &self.queue[i];
        m.redelivery
            || !self.queue[..i]
                .iter()
                .any(|e| e.lane == m.lane && !e.redelivery)
    }

    /// Delivers one message that may be delivered now; false when none may.
    fn deliver(&mut self) -> bool {
        let deliverable: Vec<usize> = (0..self.queue.len())
            .filter(|&i| self.queue[i].due <= self.now && self.head_of_lane(i))
            .collect();
        if deliverable.is_empty() {
            return false;
        }
        let pick = deliverable[self.dice.below(deliverable.len() as u64) as usize];
        let msg = self.queue.remove(pick);
        if self.faults && self.dice.chance(6) {
            // Delivered, then the consumer crashed before it committed its offset: it comes again.
            let mut again = msg.clone();
            again.redelivery = true;
            again.due = self.now + self.dice.below(2000);
            self.queue.push(again);
        }
        if self.faults && msg.to != To::Notification && !msg.redelivery && self.dice.chance(1) {
            self.trace.push(format!(
                "t={} message {} to {:?} parked as a dead letter",
                self.now, msg.id, msg.to
            ));
            self.parked.push(msg);
            return true;
        }
        // The ledger and notification read through inboxes of their own (`models`).
        let own_inbox = matches!(msg.to, To::Ledger | To::Notification);
        if !own_inbox && !self.inboxes.entry(msg.to).or_default().first(msg.id) {
            self.trace.push(format!(
                "t={} {:?} skips duplicate {}",
                self.now, msg.to, msg.id
            ));
            return true;
        }
        self.summary.delivered += 1;
        self.receive(msg);
        true
    }

    fn receive(&mut self, msg: Msg) {
        let p = msg.payment;
        self.trace.push(format!(
            "t={} {:?} receives {} {}",
            self.now,
            msg.to,
            msg.id,
            describe(&msg.body)
        ));
        match (msg.to, msg.body) {
            (To::Orchestrator, Body::Event(ev)) => self.orchestrate(p, Input::Event(ev)),
            (To::Risk, Body::Command(_)) => {
                let verdict = self.risk.assess(p, &mut self.dice);
                self.send(p, To::Risk, Body::Event(verdict));
            }
            (To::Adapter, Body::Command(c)) => {
                let request = self.request(p, &c);
                for ev in self.adapter.command(request, self.now) {
                    self.send(p, To::Adapter, Body::Event(ev));
                }
            }
            (To::Ledger, Body::Command(c)) => {
                let refuse = if self.faults { 4 } else { 0 };
                let answer = (self.ledger).receive(msg.id, p, &c, &mut self.dice, refuse);
                match answer {
                    Some(ev) => self.send(p, To::Ledger, Body::Event(ev)),
                    None => self.trace.push("  the ledger's inbox skips it".into()),
                }
            }
            (To::Notification, Body::Command(c)) => self.notification.receive(msg.id, p, &c),
            (to, body) => unreachable!("{to:?} does not receive {body:?}"),
        }
    }

    fn request(&self, payment: Uuid, c: &Command) -> Request {
        let t = &self.payments[&payment].state.terms;
        let base =
            |operation, amount, reference: Option<String>, reason: String, refund_id| Request {
                payment,
                operation,
                refund_id,
                amount,
                reference,
                reason,
                capture_method: t.capture_method,
                payment_method: t.payment_method.as_str().to_owned(),
            };
        match c {
            Command::Authorize(a) => base(
                ProviderOperation::Authorize,
                a.amount_minor,
                None,
                String::new(),
                None,
            ),
            Command::Capture(a) => base(
                ProviderOperation::Capture,
                a.amount_minor,
                Some(a.authorization_id.clone()),
                String::new(),
                None,
            ),
            Command::Void(v) => base(
                ProviderOperation::Void,
                v.amount_minor,
                v.authorization_id.clone(),
                v.reason.clone(),
                None,
            ),
            Command::Refund(r) => base(
                ProviderOperation::Refund,
                r.amount_minor,
                Some(r.capture_id.clone()),
                r.reason.clone(),
                r.refund_id,
            ),
            other => unreachable!("the adapter does not handle {other:?}"),
        }
    }

    /// One attempt of a due provider operation; false when none is due.
    fn attempt(&mut self) -> bool {
        let Some(i) = self.adapter.due(self.now, &mut self.dice) else {
            return false;
        };
        let op = &self.adapter.ops[i];
        self.trace.push(format!(
            "t={} adapter attempts {:?} of {} (attempt {})",
            self.now,
            op.operation(),
            op.payment(),
            op.attempts + 1
        ));
        let payment = op.payment();
        let events = self.adapter.attempt(
            i,
            &mut self.psp,
            &mut self.dice,
            self.now,
            self.faults,
            &mut self.trace,
        );
        for ev in events {
            self.send(payment, To::Adapter, Body::Event(ev));
        }
        true
    }

    /// The sweeper: every payment and refund past its deadline; false when none is.
    fn sweep(&mut self) -> bool {
        let now = self.now;
        let mut inputs = Vec::new();
        for (id, t) in &self.payments {
            if t.due.is_some_and(|d| d <= now) && !t.state.attention {
                inputs.push((*id, Input::Deadline));
            }
            for (refund, due) in &t.refund_due {
                if due.is_some_and(|d| d <= now) && !t.refund_flagged.contains(refund) {
                    inputs.push((*id, Input::RefundDeadline(*refund)));
                }
            }
        }
        let swept = !inputs.is_empty();
        for (id, input) in inputs {
            self.trace.push(format!(
                "t={now} sweeper: {id} past its deadline ({input:?})"
            ));
            self.orchestrate(id, input);
        }
        swept
    }

    /// A merchant or an operator acts on a payment at random.
    fn act(&mut self) {
        // Mostly a payment still in motion (where the races are), now and then any.
        let moving: Vec<Uuid> = (self.order.iter().copied())
            .filter(|p| !self.payments[p].state.status().is_terminal())
            .collect();
        let pool = if !moving.is_empty() && self.dice.chance(70) {
            &moving
        } else {
            &self.order
        };
        let p = pool[self.dice.below(pool.len() as u64) as usize];
        // What this payment's state invites (60 %), or anything at all.
        let input = match (&self.payments[&p].state.stage, self.dice.below(100)) {
            (Stage::RiskReview, 0..=59) => return self.review(p),
            (Stage::Authorized { .. }, 0..=44) => self.capture(p),
            (Stage::Authorized { .. }, 45..=59) => {
                Input::Merchant(MerchantRequest::Cancel { key: self.key() })
            }
            (Stage::Settled { .. } | Stage::PartiallyRefunded { .. }, 0..=59) => self.refund(p),
            _ => match self.dice.below(100) {
                0..=19 => self.capture(p),
                20..=39 => self.refund(p),
                40..=69 => Input::Operator(OperatorRequest::Retry { who: "ops".into() }),
                _ => Input::Operator(OperatorRequest::Fail {
                    who: "ops".into(),
                    why: "customer called".into(),
                }),
            },
        };
        self.trace
            .push(format!("t={} request for {p}: {input:?}", self.now));
        self.orchestrate(p, input);
    }

    fn key(&mut self) -> String {
        format!("k{}", self.dice.below(1000))
    }

    /// A merchant's capture: in full, in part, or (refused) above the authorization.
    fn capture(&mut self, p: Uuid) -> Input {
        let authorized = self.payments[&p].state.terms.amount.get();
        let amount = match self.dice.below(10) {
            0..=4 => None,
            5..=8 => Some(self.dice.between(1, authorized)),
            _ => Some(authorized + 1),
        };
        Input::Merchant(MerchantRequest::Capture {
            amount: amount.map(|a| AmountMinor::new(a).expect("amount")),
            key: self.key(),
        })
    }

    /// A merchant's refund of up to what was captured (refused beyond what is left).
    fn refund(&mut self, p: Uuid) -> Input {
        let captured = self.payments[&p].state.to_capture().get();
        Input::Merchant(MerchantRequest::Refund {
            refund_id: Uuid::from_u64_pair(self.dice.next(), self.dice.next()),
            amount: AmountMinor::new(self.dice.between(1, captured)).expect("amount"),
            reason: "requested_by_customer".into(),
        })
    }

    /// A reviewer decides a payment risk sent for review.
    fn review(&mut self, p: Uuid) {
        let approve = self.dice.chance(70);
        self.trace.push(format!(
            "t={} a reviewer decides {p}: approve={approve}",
            self.now
        ));
        if let Some(ev) = self.risk.review(p, approve) {
            self.send(p, To::Risk, Body::Event(ev));
        }
    }

    /// The orchestrator decides `input` for payment `p` with the real core and commits it.
    pub(super) fn orchestrate(&mut self, p: Uuid, input: Input) {
        let tracked = self.payments[&p].clone();
        let mut state = tracked.state.clone();
        state.due = tracked
            .due
            .map(|d| self.clock() + chrono::Duration::milliseconds(d as i64 - self.now as i64));
        let decision = match decide(&state, &input, self.clock(), &self.deadlines) {
            Ok(d) => d,
            Err(r) if r.kind == RefusalKind::Broken => {
                let why = format!("{p}: the saga refused {input:?} as broken: {r}");
                self.breaches.push((Invariant::DecisionsApply, why));
                return;
            }
            Err(r) => {
                self.trace.push(format!("  refused: {}", r.code));
                return;
            }
        };
        self.summary.decisions += 1;
        self.trace
            .push(format!("  decided: {}", summarize(&decision)));
        if state.status().is_terminal() {
            for c in &decision.send {
                if !refund_work(c) {
                    let why = format!("{p} is {} and sent {:?}", state.status(), c.event_type());
                    self.breaches.push((Invariant::NothingSentAfterEnd, why));
                }
            }
        }
        if let Err(e) = self.commit(p, &state, &decision) {
            let why = format!("{p}: the decision does not apply: {e}");
            self.breaches.push((Invariant::DecisionsApply, why));
            return;
        }
        // Admission follows the payment as the shell does once the decision commits.
        let after = &self.payments[&p].state;
        let delta = i64::from(after.holds_place()) - i64::from(state.holds_place());
        *self.admission.entry(state.terms.merchant_id).or_insert(0) += delta;
        for c in decision.send {
            self.send(p, To::Orchestrator, Body::Command(c));
        }
    }

    /// Writes the decision as the shell does: the state, and each deadline.
    fn commit(&mut self, p: Uuid, before: &PaymentState, d: &Decision) -> Result<(), String> {
        let now = self.now;
        let dl = self.deadlines.clone();
        let ms = |d: Duration| now + d.as_millis() as u64;
        let mut s = before.clone();
        let t = self.payments.get_mut(&p).expect("tracked");
        for effect in &d.effects {
            s = apply(&s, &Decision::of(effect.clone()))?;
            let after = dl.after(s.status(), s.compensation(), s.awaits_merchant());
            match effect {
                Effect::Move { .. } => t.due = after.map(ms),
                Effect::Compensate { .. } => t.due = Some(ms(dl.compensating)),
                Effect::Act { .. } | Effect::Resend { .. } => {
                    t.due = Some(ms(after.unwrap_or(dl.compensating)))
                }
                Effect::ClearDeadline => t.due = None,
                Effect::Refund(r) => refund_due(t, r, ms(dl.refund), now),
                Effect::Flag { kind, .. } => t.flag = Some(*kind),
                Effect::Ignore(_) | Effect::Step { .. } | Effect::Mismatch(_) => {}
            }
        }
        s.due = None;
        if !s.attention {
            t.flag = None;
        }
        t.state = s;
        Ok(())
    }
}

fn refund_due(t: &mut Tracked, r: &RefundEffect, later: u64, now: u64) {
    match r {
        RefundEffect::Admit { refund_id, .. }
        | RefundEffect::Processed { refund_id, .. }
        | RefundEffect::Resend { refund_id, .. } => {
            t.refund_due.insert(*refund_id, Some(later));
            t.refund_flagged.remove(refund_id);
        }
        RefundEffect::Succeeded { refund_id, .. }
        | RefundEffect::Failed { refund_id, .. }
        | RefundEffect::ClearDeadline { refund_id } => {
            t.refund_due.insert(*refund_id, None);
        }
        RefundEffect::Rearm { refund_id } => {
            t.refund_due.insert(*refund_id, Some(now));
            t.refund_flagged.remove(refund_id);
        }
        RefundEffect::Flag { refund_id, .. } | RefundEffect::OutcomeUnknown { refund_id, .. } => {
            t.refund_flagged.insert(*refund_id);
        }
    }
}

/// Where a command goes.
fn route(c: &Command) -> To {
    match c {
        Command::Requested(_) => To::Risk,
        Command::Authorize(_) | Command::Capture(_) | Command::Void(_) | Command::Refund(_) => {
            To::Adapter
        }
        Command::Post(_) | Command::PostRefund(_) => To::Ledger,
        Command::Finalized(_)
        | Command::AwaitingCapture(_)
        | Command::RefundSucceeded(_)
        | Command::RefundFailed(_) => To::Notification,
    }
}

/// What a payment that ended may still send: its merchant refunds' work and their news.
fn refund_work(c: &Command) -> bool {
    match c {
        Command::Refund(r) => r.refund_id.is_some(),
        Command::PostRefund(_)
        | Command::RefundSucceeded(_)
        | Command::RefundFailed(_)
        | Command::Finalized(_) => true,
        _ => false,
    }
}

fn describe(body: &Body) -> String {
    match body {
        Body::Event(e) => format!("{e:?}"),
        Body::Command(c) => format!("{c:?}"),
    }
}

fn summarize(d: &Decision) -> String {
    let effects: Vec<String> = d
        .effects
        .iter()
        .map(|e| match e {
            Effect::Move { to, reason, .. } => format!("move to {to} ({reason})"),
            Effect::Ignore(why) => format!("ignored ({})", why.as_str()),
            other => format!("{other:?}"),
        })
        .collect();
    let sent: Vec<String> = d.send.iter().map(|c| c.event_type().to_string()).collect();
    format!("{} / sends {}", effects.join("; "), sent.join(", "))
}
