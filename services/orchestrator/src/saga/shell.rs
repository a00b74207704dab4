//! The I/O shell around [`super::decide`]: loads the payment (locked) and its refunds as a
//! [`PaymentState`], and writes a [`Decision`] in the caller's transaction, each effect with
//! its timeline row and the commands in the outbox, so a step's effect, its inbox row (for an
//! event) and what it sends commit together or not at all. One shell for every input: the
//! consumer's events, the API's merchant and operator requests, the sweeper's deadlines.

use super::apply;
use super::deadlines::Deadlines;
use super::decision::{Decision, Effect, FlagKind, RefundEffect};
use super::state::{PaymentState, Refund};
use crate::store::staged::StagedMoves;
use crate::store::{self, PaymentRow, Transition, TransitionFailure};
use crate::SagaMetrics;
use sagapay_domain::{Envelope, PaymentStatus};
use sagapay_messaging::{MessageHeaders, Outbox};
use sqlx::PgConnection;
use uuid::Uuid;

/// What the shell needs of the orchestrator.
#[derive(Clone)]
pub struct Shell {
    pub outbox: Outbox,
    pub(crate) metrics: SagaMetrics,
    pub deadlines: Deadlines,
    /// Follows the transitions this instance commits between its samples.
    pub(crate) admission: crate::admission::Admission,
}

/// Where an input came from: what its commands follow and the headers they carry.
pub struct Origin<'a> {
    /// The event that caused the decision (its commands are its follow-ups).
    pub cause: Option<&'a Envelope>,
    pub correlation_id: &'a str,
    pub headers: MessageHeaders,
    /// A merchant refund being admitted: its idempotency key and request fingerprint.
    pub refund_request: Option<(&'a sagapay_domain::IdempotencyKey, &'a str)>,
}

/// A decision could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// Another writer changed the payment since it was read: read again and decide again.
    #[error("payment {0} changed concurrently")]
    Conflict(Uuid),
    /// The decision and the store disagree: a bug.
    #[error("{0}")]
    Broken(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Effects for after the commit (metrics), run by the caller once it committed.
pub type AfterCommit = Vec<Box<dyn FnOnce() + Send>>;

impl Shell {
    /// The payment, locked, and its state; `None` when it does not exist.
    pub async fn load(
        &self,
        conn: &mut PgConnection,
        payment_id: Uuid,
    ) -> Result<Option<(PaymentRow, PaymentState)>, CommitError> {
        let Some(row) = store::load_for_update(conn, payment_id).await? else {
            return Ok(None);
        };
        self.state_of(conn, row).await.map(Some)
    }

    /// The state of the payment `row` (read and locked by the caller): the row and, once the
    /// payment is settled, its refunds.
    pub async fn state_of(
        &self,
        conn: &mut PgConnection,
        row: PaymentRow,
    ) -> Result<(PaymentRow, PaymentState), CommitError> {
        let payment_id = row.payment_id;
        let refunds = if matches!(
            row.status,
            PaymentStatus::Settled | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
        ) {
            store::refunds::rows(conn, payment_id)
                .await?
                .into_iter()
                .map(|r| Refund {
                    refund_id: r.refund_id,
                    status: r.status,
                    amount: r.amount_minor,
                    currency: r.currency,
                    reason: r.reason,
                    nudges: r.nudges,
                })
                .collect()
        } else {
            Vec::<Refund>::new()
        };
        let state = PaymentState::from_row(&row, refunds).map_err(CommitError::Broken)?;
        Ok((row, state))
    }

    /// Writes `d` for the payment read as `row` / `s`.
    pub async fn commit(
        &self,
        conn: &mut PgConnection,
        row: &PaymentRow,
        s: &PaymentState,
        d: &Decision,
        origin: &Origin<'_>,
    ) -> Result<AfterCommit, CommitError> {
        self.commit_staged(conn, row, s, d, origin, None).await
    }

    /// Writes the transitions staged in `staged`, in one statement.
    pub async fn write_staged(
        &self,
        conn: &mut PgConnection,
        staged: &mut StagedMoves,
    ) -> Result<(), CommitError> {
        staged.write(conn).await.map_err(CommitError::from)
    }

    /// Writes `d` as [`Shell::commit`] does, except that with `staged` its transition is
    /// staged there (after what was staged for the same payment is written) and written with
    /// the batch's others by [`Shell::write_staged`], which the caller must call before it
    /// commits.
    pub async fn commit_staged(
        &self,
        conn: &mut PgConnection,
        row: &PaymentRow,
        s: &PaymentState,
        d: &Decision,
        origin: &Origin<'_>,
        staged: Option<&mut StagedMoves>,
    ) -> Result<AfterCommit, CommitError> {
        let envelopes: Vec<Envelope> = d
            .send
            .iter()
            .map(|c| c.envelope(row.payment_id, origin.cause, origin.correlation_id))
            .collect();
        let mut carried = false;
        let mut w = Writer {
            shell: self,
            conn,
            row: row.clone(),
            state: s.clone(),
            event_id: origin.cause.map(|e| e.event_id),
            after: AfterCommit::new(),
            staged,
        };
        for effect in &d.effects {
            let carrier = !carried && carries(effect);
            let command = envelopes
                .first()
                .filter(|_| carrier)
                .map(|env| self.outbox.row(env, &origin.headers));
            carried |= carrier && command.is_some();
            w.write(effect, command.as_ref(), origin).await?;
            w.state = apply::apply(&w.state, &Decision::of(effect.clone()))
                .map_err(CommitError::Broken)?;
        }
        let rest = if carried {
            &envelopes[1..]
        } else {
            &envelopes[..]
        };
        if !rest.is_empty() {
            // After the staged rows: a payment's commands are published in the order decided.
            w.write_staged().await?;
        }
        for env in rest {
            self.outbox.enqueue(w.conn, env, &origin.headers).await?;
        }
        // Admission follows the payment in or out of the pipeline (a move, a flag, an
        // operator's retry) once this commits.
        let delta = i64::from(w.state.holds_place()) - i64::from(s.holds_place());
        if delta != 0 {
            let (admission, merchant) = (self.admission.clone(), s.terms.merchant_id);
            w.after
                .push(Box::new(move || admission.moved(merchant, delta)));
        }
        Ok(w.after)
    }
}

impl From<TransitionFailure> for CommitError {
    fn from(e: TransitionFailure) -> Self {
        match e {
            TransitionFailure::Illegal(e) => CommitError::Broken(e.to_string()),
            TransitionFailure::Conflict(id) => CommitError::Conflict(id),
            TransitionFailure::Db(e) => e.into(),
        }
    }
}

/// Effects whose statement inserts the decision's first command with it.
fn carries(effect: &Effect) -> bool {
    matches!(
        effect,
        Effect::Move { .. }
            | Effect::Compensate { .. }
            | Effect::Act { .. }
            | Effect::Resend { .. }
            | Effect::Refund(RefundEffect::Resend { .. })
    )
}

/// Writes one decision's effects, keeping the row as the store now holds it (or will, once
/// what is staged is written).
struct Writer<'s, 'c, 'm> {
    shell: &'s Shell,
    conn: &'c mut PgConnection,
    row: PaymentRow,
    state: PaymentState,
    event_id: Option<Uuid>,
    after: AfterCommit,
    /// Where a consumer's batch gathers its transitions; none: each is written at once.
    staged: Option<&'m mut StagedMoves>,
}

impl Writer<'_, '_, '_> {
    /// Writes what is staged: before any write other than a transition, so that every write
    /// finds the payment as the decision left it and rows keep the order they were decided in.
    async fn write_staged(&mut self) -> Result<(), CommitError> {
        match self.staged.as_deref_mut() {
            Some(staged) => self.shell.write_staged(self.conn, staged).await,
            None => Ok(()),
        }
    }

    /// How long the payment may wait once `effect` applied.
    fn deadline_after(&self, effect: &Effect) -> Result<Option<std::time::Duration>, CommitError> {
        let next = apply::apply(&self.state, &Decision::of(effect.clone()))
            .map_err(CommitError::Broken)?;
        Ok(self
            .shell
            .deadlines
            .after(next.status(), next.compensation(), next.awaits_merchant()))
    }

    async fn write(
        &mut self,
        effect: &Effect,
        command: Option<&sagapay_messaging::OutboxRow<'_>>,
        origin: &Origin<'_>,
    ) -> Result<(), CommitError> {
        if !matches!(effect, Effect::Move { .. } | Effect::Ignore(_)) {
            self.write_staged().await?;
        }
        let required = || CommitError::Broken(format!("{effect:?} without its command"));
        let d = &self.shell.deadlines;
        match effect {
            Effect::Ignore(why) => self.ignored(*why, origin),
            Effect::Step { reason } => {
                store::record_step(self.conn, &self.row, reason, self.event_id).await?
            }
            Effect::Move { to, reason, facts } => {
                self.transition(*to, reason, facts, effect, command).await?
            }
            Effect::Compensate { kind, reason } => {
                let command = command.ok_or_else(required)?;
                let row = &self.row;
                store::start_compensation(
                    self.conn,
                    row,
                    *kind,
                    reason,
                    self.event_id,
                    d.compensating,
                    command,
                )
                .await?
            }
            Effect::Act { manual, reason } => {
                let command = command.ok_or_else(required)?;
                let deadline = self.deadline_after(effect)?.unwrap_or(d.compensating);
                store::record_merchant_action(
                    self.conn,
                    &self.row,
                    manual.action,
                    manual.key.as_deref(),
                    manual.capture_amount,
                    reason,
                    deadline,
                    command,
                )
                .await?
            }
            Effect::Resend { reason, reset } => {
                let command = command.ok_or_else(required)?;
                let deadline = self.deadline_after(effect)?.unwrap_or(d.compensating);
                let (id, status) = (self.row.payment_id, self.row.status);
                store::resend(self.conn, id, status, reason, deadline, command, *reset).await?;
                let nudges = self
                    .shell
                    .metrics
                    .deadline_nudges_total
                    .with_label_values(&[status.as_str()]);
                if !*reset {
                    self.after.push(Box::new(move || nudges.inc()));
                }
            }
            Effect::Flag { reason, kind } => self.flag(reason, *kind).await?,
            Effect::Mismatch(m) => {
                store::record_mismatch(self.conn, self.row.payment_id, m).await?
            }
            Effect::ClearDeadline => store::clear_deadline(self.conn, self.row.payment_id).await?,
            Effect::Refund(r) => self.refund(r, command, origin).await?,
        }
        Ok(())
    }

    fn ignored(&mut self, why: super::decision::Ignored, origin: &Origin<'_>) {
        let event_type = origin
            .cause
            .map(|e| e.event_type.clone())
            .unwrap_or_default();
        tracing::info!(payment_id = %self.row.payment_id, %event_type, status = %self.row.status,
            why = why.as_str(), "event not applied");
        let ignored = self
            .shell
            .metrics
            .events_ignored_total
            .with_label_values(&[&event_type, why.as_str()]);
        self.after.push(Box::new(move || ignored.inc()));
    }

    async fn transition(
        &mut self,
        to: PaymentStatus,
        reason: &str,
        facts: &super::decision::Facts,
        effect: &Effect,
        then: Option<&sagapay_messaging::OutboxRow<'_>>,
    ) -> Result<(), CommitError> {
        let t = Transition {
            to,
            reason,
            event_id: self.event_id,
            facts: store::Facts {
                authorization_id: facts.authorization_id.as_deref(),
                capture_id: facts.capture_id.as_deref(),
                journal_transaction_id: facts.journal_transaction_id,
            },
            deadline: self.deadline_after(effect)?,
            then,
        };
        if self
            .staged
            .as_deref()
            .is_some_and(|s| s.holds(self.row.payment_id))
        {
            self.write_staged().await?;
        }
        match self.staged.as_deref_mut() {
            Some(staged) => staged.stage(&self.row, &t)?,
            None => store::transition(self.conn, &self.row, &t).await?,
        }
        let from = self.row.status;
        self.row.status = to;
        self.row.state_version += 1;
        self.count_move(from, to);
        Ok(())
    }

    fn count_move(&mut self, from: PaymentStatus, to: PaymentStatus) {
        let m = &self.shell.metrics;
        let moved = m
            .transitions_total
            .with_label_values(&[from.as_str(), to.as_str()]);
        self.after.push(Box::new(move || moved.inc()));
        if !to.is_terminal() {
            return;
        }
        // A payment that kept its capture moved what was captured; the others what was asked.
        let amount = self
            .state
            .captured_in(to)
            .unwrap_or(self.state.terms.amount);
        let elapsed_s = (chrono::Utc::now() - self.state.terms.created_at)
            .to_std()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let e2e = m.payment_e2e_seconds.with_label_values(&[to.as_str()]);
        let finalized = m
            .finalized_amount_minor_total
            .with_label_values(&[to.as_str(), self.state.terms.currency.as_str()]);
        let minor = amount.get().unsigned_abs();
        self.after.push(Box::new(move || {
            e2e.observe(elapsed_s);
            finalized.inc_by(minor);
        }));
    }

    async fn flag(&mut self, reason: &str, kind: FlagKind) -> Result<(), CommitError> {
        let (id, status) = (self.row.payment_id, self.row.status);
        tracing::error!(payment_id = %id, %reason, ?kind, "payment needs attention");
        let why = (kind.as_str(), reason);
        store::flag_attention(self.conn, id, status, why, self.event_id).await?;
        let m = &self.shell.metrics;
        let counter = match kind {
            FlagKind::Overdue => m
                .attention_flagged_total
                .with_label_values(&[status.as_str()]),
            FlagKind::AmountMismatch(what) => m
                .provider_amount_mismatches_total
                .with_label_values(&[what]),
            FlagKind::CompensationFailed(op) => m
                .compensations_failed_total
                .with_label_values(&[op.as_str()]),
            FlagKind::VoidDeclined => m
                .compensations_failed_total
                .with_label_values(&[sagapay_domain::events::ProviderOperation::Void.as_str()]),
            FlagKind::CaptureUnresolved => return Ok(()),
        };
        self.after.push(Box::new(move || counter.inc()));
        Ok(())
    }

    /// A merchant refund admitted: stored REQUESTED with its request's key and fingerprint.
    async fn admit(
        &mut self,
        refund_id: Uuid,
        amount: sagapay_domain::AmountMinor,
        reason: &str,
        origin: &Origin<'_>,
    ) -> Result<(), CommitError> {
        let (key, fingerprint) = origin
            .refund_request
            .ok_or_else(|| CommitError::Broken("a refund admitted without its request".into()))?;
        let reason = sagapay_domain::RefundReason::parse(reason.to_owned())
            .map_err(|e| CommitError::Broken(e.to_string()))?;
        let new = store::refunds::NewRefund {
            refund_id,
            payment_id: self.row.payment_id,
            merchant_id: self.row.merchant_id,
            amount,
            currency: self.row.currency,
            reason: &reason,
            idempotency_key: key,
            request_fingerprint: fingerprint,
            deadline: self.shell.deadlines.refund,
        };
        store::refunds::insert(self.conn, new).await?;
        Ok(())
    }

    async fn refund(
        &mut self,
        effect: &RefundEffect,
        command: Option<&sagapay_messaging::OutboxRow<'_>>,
        origin: &Origin<'_>,
    ) -> Result<(), CommitError> {
        use store::refunds;
        let conn = &mut *self.conn;
        let d = &self.shell.deadlines;
        match effect {
            RefundEffect::Admit {
                refund_id,
                amount,
                reason,
            } => self.admit(*refund_id, *amount, reason, origin).await?,
            RefundEffect::Processed {
                refund_id,
                reference,
            } => refunds::mark_processed(conn, *refund_id, reference, d.refund).await?,
            RefundEffect::Succeeded {
                refund_id,
                journal_transaction_id,
            } => {
                let payment_id = self.row.payment_id;
                if !refunds::mark_succeeded(conn, *refund_id, payment_id, *journal_transaction_id)
                    .await?
                {
                    return Err(CommitError::Broken(format!(
                        "refund {refund_id} was not PROCESSED"
                    )));
                }
            }
            RefundEffect::Failed { refund_id, reason } => {
                refunds::mark_failed(conn, *refund_id, reason).await?
            }
            RefundEffect::OutcomeUnknown { refund_id, reason } => {
                refunds::flag_outcome_unknown(conn, *refund_id, reason).await?
            }
            RefundEffect::Rearm { refund_id } => refunds::rearm(conn, *refund_id).await?,
            RefundEffect::Resend { refund_id, reason } => {
                let command = command.ok_or_else(|| {
                    CommitError::Broken("a refund resent without its command".into())
                })?;
                refunds::resend(conn, *refund_id, reason, d.refund, command).await?
            }
            RefundEffect::Flag { refund_id, reason } => {
                tracing::error!(payment_id = %self.row.payment_id, %reason, "refund needs attention");
                refunds::flag(conn, *refund_id, reason).await?
            }
            RefundEffect::ClearDeadline { refund_id } => {
                refunds::clear_deadline(conn, *refund_id).await?
            }
        }
        Ok(())
    }
}
