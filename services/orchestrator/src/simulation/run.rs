//! A run of the simulated world: faults for a while, then no faults until everything comes
//! to rest, then operators end what was parked; the invariants checked after every step and
//! at each phase's end. Kept apart from the world itself, so the world does not import the
//! rules that read it.

use super::invariants;
use super::verdict::{Checked, Invariant};
use super::world::World;
use super::{Failure, Summary};
use crate::saga::decide::decide;
use crate::saga::decision::{Input, OperatorRequest, RefusalKind};
use sagapay_domain::events::ProviderOperation;
use sagapay_provider_adapter::records::OperationStatus;
use uuid::Uuid;

impl World {
    pub fn run(mut self) -> Result<Summary, Box<Failure>> {
        for _ in 0..self.config.fault_steps {
            self.faulty_step();
            self.check(invariants::always)?;
        }
        self.faults = false;
        self.trace
            .push(format!("t={} faults stop; settling", self.now));
        self.replay_dead_letters();
        self.settle()?;
        self.check(invariants::at_rest)?;
        self.summary.flagged = self.payments.values().filter(|t| t.state.attention).count();
        self.end_parked()?;
        self.summarize();
        Ok(self.summary)
    }

    /// What the run reached, for the suite's report and its checks that the invariants did
    /// not hold vacuously.
    fn summarize(&mut self) {
        let terminal = (self.payments.values())
            .filter(|t| t.state.status().is_terminal())
            .count();
        let left_to_reconcile = (self.payments.iter())
            .filter(|(p, t)| invariants::left_to_reconcile(self, **p, t))
            .count();
        let void_declined = |p: Uuid| {
            self.adapter.ops.iter().any(|o| {
                o.payment() == p
                    && o.operation() == ProviderOperation::Void
                    && o.status == OperationStatus::Declined
            })
        };
        let holds_lapsed = (self.payments.values())
            .filter(|t| t.state.status() == sagapay_domain::PaymentStatus::Failed)
            .filter(|t| void_declined(t.state.terms.payment_id))
            .count();
        let s = &mut self.summary;
        s.steps = self.step;
        s.terminal = terminal;
        s.left_to_reconcile = left_to_reconcile;
        s.holds_lapsed = holds_lapsed;
        s.redeliveries_skipped = self.ledger.inbox.skipped() + self.notification.inbox.skipped();
        s.posted_again = self.ledger.answered_again;
    }

    /// Steps until nothing is left to do (no faults any more); a failure if that never comes.
    fn settle(&mut self) -> Result<(), Box<Failure>> {
        for _ in 0..self.config.settle_steps {
            if !self.settling_step() {
                return Ok(());
            }
            self.check(invariants::always)?;
        }
        let busy = self.busy();
        Err(self.failure(
            Invariant::Settles,
            format!("nothing settles: still busy after every settling step: {busy}"),
        ))
    }

    /// Once at rest, operators end every payment parked for one: a capture of another amount
    /// accepted or failed (at random), anything else failed, and what cannot be failed now
    /// (a compensation under way) retried; then everything settles again. A few rounds, since
    /// a retry can park a payment again on the way (its answer repeated); after them every
    /// payment must have ended, with the books agreeing.
    fn end_parked(&mut self) -> Result<(), Box<Failure>> {
        for round in 0..3 {
            let parked: Vec<Uuid> = (self.payments.iter())
                .filter(|(_, t)| t.state.attention && !t.state.status().is_terminal())
                .map(|(p, _)| *p)
                .collect();
            if parked.is_empty() {
                break;
            }
            self.trace.push(format!(
                "t={} operators end {} parked payment(s), round {}",
                self.now,
                parked.len(),
                round + 1
            ));
            for p in parked {
                self.end_one(p)?;
            }
            self.settle()?;
            self.check(invariants::always)?;
        }
        self.check(invariants::ended)
    }

    /// An operator ends parked payment `p` (see [`Self::end_parked`]).
    fn end_one(&mut self, p: Uuid) -> Result<(), Box<Failure>> {
        let s = self.payments[&p].state.clone();
        let captured_other = s.mismatch.as_ref().is_some_and(|m| m.captured().is_some());
        let who = "ops".to_owned();
        let why = "ending a parked payment".to_owned();
        let request = if captured_other && self.dice.chance(50) {
            OperatorRequest::Accept { who, why }
        } else {
            OperatorRequest::Fail { who, why }
        };
        let input = Input::Operator(request);
        match decide(&s, &input, self.clock(), &self.deadlines) {
            Ok(_) => {}
            Err(r) if r.kind == RefusalKind::Conflict => {
                self.trace.push(format!(
                    "  {p}: {} refused ({}), retried",
                    r.code, r.message
                ));
                let retry = OperatorRequest::Retry { who: "ops".into() };
                self.summary.ended_by_operators += 1;
                self.orchestrate(p, Input::Operator(retry));
                return Ok(());
            }
            Err(r) => {
                let why = format!(
                    "{p} parked in {}: an operator cannot end it: {r}",
                    s.status()
                );
                return Err(self.failure(Invariant::OperatorsEndParked, why));
            }
        }
        self.trace
            .push(format!("t={} an operator ends {p}: {input:?}", self.now));
        self.summary.ended_by_operators += 1;
        self.orchestrate(p, input);
        Ok(())
    }

    /// What is still going on (for a run that does not settle).
    fn busy(&self) -> String {
        let messages: Vec<String> = self
            .queue
            .iter()
            .take(5)
            .map(|m| format!("{} to {:?} due {}", m.id, m.to, m.due))
            .collect();
        let ops: Vec<String> = self
            .adapter
            .ops
            .iter()
            .filter(|o| o.status == OperationStatus::Pending)
            .map(|o| {
                format!(
                    "{:?} of {} next at {}",
                    o.operation(),
                    o.payment(),
                    o.next_at
                )
            })
            .collect();
        let due: Vec<String> = self
            .payments
            .iter()
            .filter(|(_, t)| t.due.is_some() && !t.state.attention)
            .map(|(p, t)| {
                format!(
                    "{p} {} due {:?} refunds {:?}",
                    t.state.status(),
                    t.due,
                    t.refund_due
                )
            })
            .collect();
        format!(
            "now {}; messages {messages:?}; operations {ops:?}; deadlines {due:?}",
            self.now
        )
    }

    fn check(&mut self, rule: fn(&World) -> Checked) -> Result<(), Box<Failure>> {
        rule(self).map_err(|v| self.failure(v.invariant, v.detail))
    }

    fn failure(&self, invariant: Invariant, violation: String) -> Box<Failure> {
        Box::new(Failure {
            seed: self.seed,
            step: self.step,
            invariant,
            violation,
            trace: self.trace.clone(),
        })
    }
}
