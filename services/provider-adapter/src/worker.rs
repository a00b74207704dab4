//! The operation worker: performs due provider operations, each bounded by a timeout, and
//! decides after every attempt what comes next ([`crate::policy`]): the short retry schedule,
//! a status query when the outcome is unknown, the long schedule for what must happen
//! (captures, voids, refunds), or the end. Operations run concurrently, so a payment stuck in
//! retries never holds up the others.
//!
//! Every attempt (call or status query) is persisted with its outcome and timing in one
//! statement with the operation's new state and, when it is final, the event that reports it
//! (`record`), written only while the worker's claim holds.
//! A void waits while an authorization or a capture of its payment is still pending, so it can
//! never run before what it must undo; and a void of a payment whose capture went through
//! refunds that capture instead (an authorization that was captured can only be refunded).
//!
//! Under a backlog, operations that finish a payment (captures, voids, refunds, and status
//! queries) are claimed before authorizations, which start one: otherwise new authorizations
//! starve the captures of payments already authorized, settlement collapses and cards stay on
//! hold. And the worker's places are shared among merchants ([`claim`]): one merchant whose
//! calls all hang holds at most its cap of them, and the others keep going.

use crate::policy::{self, idempotency_key, Answer, Next, Progress, Taken};
use crate::provider::{
    PaymentProvider, ProviderError, ProviderOutcome, ProviderRequest, ProviderStatus,
};
use crate::records::{AttemptKind, AttemptOutcome, OperationKey, OperationStatus};
use crate::replies::{Answering, Ending};
use chrono::{DateTime, Utc};
use claim::{Backlog, MerchantPlaces};
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use sagapay_domain::events::{CaptureMethod, CaptureRequested, ProviderOperation};
use sagapay_domain::{AmountMinor, Currency, Envelope};
use sagapay_messaging::deadletter::Origin;
use sagapay_messaging::wakeup::Wakeup;
use sagapay_messaging::{
    Classification, DeadLetter, GroupCommit, MessageHeaders, MessagingMetrics, Outbox, OutboxRow,
    OUTBOX_COLUMNS,
};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

mod claim;

pub const NOTIFY_CHANNEL: &str = "sagapay_provider_operations";

pub use crate::policy::RetrySettings;

/// What an operation needs to call the provider; stored as JSON in `provider_operations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperationRequest {
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub payment_method: String,
    pub reference: Option<String>,
    pub reason: Option<String>,
    /// For an authorization: whether the adapter captures it right after.
    #[serde(default)]
    pub capture_method: CaptureMethod,
}

#[derive(Debug, Clone)]
struct Claimed {
    operation_id: Uuid,
    payment_id: Uuid,
    /// None for an operation recorded before merchants were.
    merchant_id: Option<Uuid>,
    operation: ProviderOperation,
    operation_key: OperationKey,
    request: OperationRequest,
    attempts: i32,
    token: Uuid,
    source_event_id: Uuid,
    correlation_id: String,
    headers: MessageHeaders,
    /// The next attempt is a status query.
    resolving: bool,
    /// An earlier attempt may have been performed.
    outcome_unknown: bool,
    give_up_at: Option<DateTime<Utc>>,
}

impl Claimed {
    /// The merchant whose share of the worker's places the operation takes (one anonymous
    /// merchant for the operations recorded before merchants were, as the claim counts them).
    fn merchant(&self) -> Uuid {
        self.merchant_id.unwrap_or(Uuid::nil())
    }

    /// The merchant refund this operation performs, if it is one.
    fn refund_id(&self) -> Option<Uuid> {
        match self.operation {
            ProviderOperation::Refund => self.operation_key.0,
            _ => None,
        }
    }

    fn answering<'a>(&'a self, provider: &'a str) -> Answering<'a> {
        Answering {
            payment_id: self.payment_id,
            causation_id: self.source_event_id,
            correlation_id: &self.correlation_id,
            operation: self.operation,
            refund_id: self.refund_id(),
            reason: self.request.reason.as_deref().unwrap_or_default(),
            provider,
            authorization_id: match self.operation {
                ProviderOperation::Capture => self.request.reference.as_deref(),
                _ => None,
            },
            attempts: u32::try_from(self.attempts).unwrap_or(0),
        }
    }
}

/// The operation's row was no longer ours (claimed with our token, at the attempt count we
/// read) when we came to write its outcome: another worker took over an expired claim. The
/// transaction is dropped, attempt row included.
#[derive(Debug, thiserror::Error)]
#[error("the claim on the operation was lost to another worker; outcome discarded")]
struct ClaimLost;

pub struct Worker<P> {
    pub pool: PgPool,
    pub provider: Arc<P>,
    pub outbox: Outbox,
    pub settings: RetrySettings,
    pub retries_total: IntCounterVec,
    /// `dlq_published_total{classification="RETRY_EXHAUSTED"}` of the service.
    pub dead_letters_total: IntCounter,
    /// Merchants whose due operations waited at the last claim because they held their cap.
    pub merchants_at_cap: IntGauge,
    pub messaging_metrics: MessagingMetrics,
    /// The transaction the attempts that end together are written in.
    pub writes: GroupCommit,
    /// Operations being performed (set by the worker's loop): an attempt that ends while it is
    /// the only one commits on its own, as a group of one would cost a BEGIN and a COMMIT more.
    pub in_flight: std::sync::atomic::AtomicUsize,
}

impl<P: PaymentProvider> Worker<P> {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut wakeup = Wakeup::listen(&self.pool, NOTIFY_CHANNEL, &self.messaging_metrics).await;
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // Whose operation each task performs: a merchant's share of the places.
        let mut places = MerchantPlaces::default();
        // Claim when something may have become due (a notification, the timer) or when a
        // finished operation frees a place the last claim's leftovers can take: it ran out of
        // room, or the operation's merchant had due operations waiting for its cap. Nothing is
        // queried for an operation that finishes with nothing waiting for its place.
        let mut claim_now = true;
        let mut backlog = Backlog::default();
        let mut wake_at = tokio::time::Instant::now();
        loop {
            // Every operation that finished frees its place now, not one per turn of the
            // loop: a set full of finished operations left room for one claim of one
            // operation per turn, and the worker performed one operation per claim's round
            // trip with 60 places free and hundreds of operations due.
            while let Some(done) = in_flight.try_join_next_with_id() {
                claim_now |= backlog.freed_by(places.finished(&task_of(done)));
            }
            self.in_flight.store(in_flight.len(), Ordering::Relaxed);
            let room = self.settings.max_in_flight.saturating_sub(in_flight.len());
            if claim_now && room > 0 {
                claim_now = false;
                let wait = match self.claim(room, &places).await {
                    Ok(claim) => {
                        backlog = Backlog::after(claim.ops.len(), room, &claim.deferred);
                        self.merchants_at_cap.set(claim.deferred.len() as i64);
                        for op in claim.ops {
                            let (merchant, me) = (op.merchant(), self.clone());
                            let task = in_flight.spawn(async move { me.perform(op).await });
                            places.started(task.id(), merchant);
                        }
                        self.in_flight.store(in_flight.len(), Ordering::Relaxed);
                        claim.wait
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "claiming provider operations failed");
                        Duration::from_millis(250)
                    }
                };
                wake_at = tokio::time::Instant::now() + wait;
            }
            let timer = (in_flight.len() < self.settings.max_in_flight).then_some(wake_at);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = in_flight.join_next_with_id(), if !in_flight.is_empty() => {
                    claim_now |= backlog.freed_by(places.finished(&task_of(done)));
                }
                // A burst of notifications, the listener back after a PostgreSQL restart (what
                // it missed may be due), or the next operation coming due: one claim answers
                // each. With no room, only a finished operation can let a claim run, so there
                // is no timer then (one already past would spin); nor for the due operations of
                // a merchant at its cap (the claim leaves them out of the wait).
                _ = wakeup.next_or(timer) => claim_now = true,
            }
        }
        // Unfinished attempts are abandoned; their claims expire and they run again.
        in_flight.abort_all();
        Ok(())
    }

    async fn perform(&self, mut op: Claimed) {
        // The provider call, in the payment's trace; the result event continues from it.
        let span = tracing::info_span!(
            "provider.call",
            otel.name = format!("provider {}", op.operation.as_str()),
            otel.kind = "client",
            payment_id = %op.payment_id,
            operation = op.operation.as_str(),
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        let tp = sagapay_telemetry::continue_trace(
            &span,
            op.headers.get(sagapay_messaging::headers::TRACEPARENT),
        );
        op.headers.set(sagapay_messaging::headers::TRACEPARENT, tp);
        match self.attempt(&op).instrument(span).await {
            Ok(()) => {}
            // The worker that took the operation over records its own attempt.
            Err(e) if e.is::<ClaimLost>() => {
                tracing::info!(payment_id = %op.payment_id, operation = op.operation.as_str(), "{e}");
            }
            // The claim expires and the operation is attempted again; the provider's
            // idempotency key makes the repeat safe.
            Err(e) => {
                tracing::warn!(payment_id = %op.payment_id, operation = op.operation.as_str(),
                error = %format!("{e:#}"), "recording a provider attempt failed")
            }
        }
    }

    /// What to ask the provider for `op`: the operation itself, except a void of a payment
    /// whose capture went through, which becomes the refund of that capture, for exactly what
    /// the capture took (a partial capture takes less than was authorized, and a provider
    /// refuses to pay back more than it captured).
    async fn request(&self, op: &Claimed) -> anyhow::Result<ProviderRequest> {
        let req = ProviderRequest {
            payment_id: op.payment_id,
            operation: op.operation,
            idempotency_key: idempotency_key(op.operation, op.payment_id, op.operation_key),
            amount_minor: op.request.amount_minor,
            currency: op.request.currency,
            payment_method: op.request.payment_method.clone(),
            reference: op.request.reference.clone(),
        };
        if op.operation != ProviderOperation::Void {
            return Ok(req);
        }
        let captured: Option<(Option<String>, Option<AmountMinor>, Option<Currency>)> =
            sqlx::query_as(
                "SELECT result_reference, result_amount_minor, result_currency
                   FROM provider_operations
                  WHERE payment_id = $1 AND operation = 'CAPTURE' AND status = 'SUCCEEDED'",
            )
            .bind(op.payment_id)
            .fetch_optional(&self.pool)
            .await?;
        let taken = match captured {
            None => None,
            Some((Some(reference), Some(amount_minor), Some(currency))) => Some(Taken {
                reference,
                amount_minor,
                currency,
            }),
            Some(_) => anyhow::bail!("a succeeded capture without its reference and amount"),
        };
        Ok(policy::performed(req, taken))
    }

    /// The provider's answer to `req`: the operation itself, or a status query when the
    /// outcome of an earlier attempt is unknown; bounded by the call timeout.
    async fn ask(&self, op: &Claimed, req: &ProviderRequest) -> Answer {
        let limit = self.settings.call_timeout;
        if op.resolving {
            match tokio::time::timeout(limit, self.provider.status(req)).await {
                Ok(Ok(ProviderStatus::Found(outcome))) => Answer::Outcome(outcome),
                Ok(Ok(ProviderStatus::NotFound)) => Answer::NotFound,
                Ok(Err(e)) => Answer::Error(e),
                Err(_) => Answer::Error(ProviderError::Timeout),
            }
        } else {
            match tokio::time::timeout(limit, self.provider.call(req)).await {
                Ok(Ok(outcome)) => Answer::Outcome(outcome),
                Ok(Err(e)) => Answer::Error(e),
                Err(_) => Answer::Error(ProviderError::Timeout),
            }
        }
    }

    /// One attempt: a call, or a status query when the outcome is unknown; then what the
    /// policy decides, written with the attempt in one transaction, which it shares with the
    /// attempts that end at the same moment ([`GroupCommit`]).
    async fn attempt(&self, op: &Claimed) -> anyhow::Result<()> {
        let req = self.request(op).await?;
        let started_at: DateTime<Utc> = Utc::now();
        let clock = Instant::now();
        let answer = self.ask(op, &req).await;
        let latency_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let attempt_no = op.attempts + 1;
        let seen = Seen::of(&answer);
        let last_error = seen.last_error();
        let progress = Progress {
            operation: op.operation,
            attempt_no,
            resolving: op.resolving,
            outcome_unknown: op.outcome_unknown,
            past_give_up: op.give_up_at.is_some_and(|t| Utc::now() >= t),
        };
        let provider = self.provider.name();
        let mut answering = op.answering(provider);
        // A void performed as the refund of a capture reports a refund.
        answering.operation = req.operation;
        answering.attempts = u32::try_from(attempt_no).unwrap_or(0);
        let decision = policy::decide(progress, answer, &self.settings);
        let (change, event) = consequence(&decision, &answering, &seen, &last_error);
        let attempt_row = AttemptRow {
            provider,
            idempotency_key: &req.idempotency_key,
            seen: &seen,
            started_at,
            latency_ms,
            kind: if op.resolving {
                AttemptKind::Status
            } else {
                AttemptKind::Call
            },
        };
        let queued = event.as_ref().map(|e| self.outbox.row(e, &op.headers));
        let written = Written {
            attempt: &attempt_row,
            change: &change,
            event: queued.as_ref(),
            last_error: &last_error,
        };
        if !self.write(op, &decision, &written).await? {
            return Err(ClaimLost.into());
        }
        // Counted once written, so a failed write does not count twice.
        self.counted(op, req.operation, &decision, attempt_no, &last_error);
        Ok(())
    }

    /// Writes an attempt in the group of the moment (alone, in one statement, when no other
    /// operation is in flight and there is nothing more to write): its row, the operation's
    /// change and the event, and with them an automatic capture after a successful
    /// authorization, or the dead letter of an operation given up. False, with nothing
    /// written, when the claim was lost.
    async fn write(&self, op: &Claimed, decision: &Next, w: &Written<'_>) -> anyhow::Result<bool> {
        // An automatic capture follows a successful authorization in its transaction.
        // Not when the provider authorized another amount than was asked: the saga flags that
        // payment for an operator, and a capture of the amount asked would be refused.
        let asked = (op.request.amount_minor, op.request.currency);
        let capture_after =
            policy::captures_after(decision, op.operation, op.request.capture_method, asked);
        let exhausted = matches!(decision, Next::Exhausted { .. });
        if capture_after.is_none() && !exhausted && self.in_flight.load(Ordering::Relaxed) <= 1 {
            // Alone: one statement, committed on its own (no group would form).
            let mut conn = self.pool.acquire().await?;
            return record(&mut conn, op, w.attempt, w.change, w.event).await;
        }
        let mut member = self.writes.join().await?;
        let write = async {
            let conn = member.conn();
            if !record(conn, op, w.attempt, w.change, w.event).await? {
                return Ok(false);
            }
            if let Some(authorization_id) = capture_after {
                self.capture_next(conn, op, authorization_id).await?;
            }
            if let Next::Exhausted { unknown } = decision {
                self.dead_letter(conn, op, op.attempts + 1, w.last_error, *unknown)
                    .await?;
            }
            Ok(true)
        }
        .await;
        member.written(write).await
    }

    /// The metrics and the log of an attempt's decision, once it is written. `operation` is
    /// what the provider was asked (a void after a capture is its refund).
    fn counted(
        &self,
        op: &Claimed,
        operation: ProviderOperation,
        decision: &Next,
        attempt_no: i32,
        last_error: &str,
    ) {
        match decision {
            Next::Done(ProviderOutcome::Declined { code })
                if operation != ProviderOperation::Authorize =>
            {
                tracing::warn!(payment_id = %op.payment_id, operation = operation.as_str(), attempts = attempt_no,
                    decline_code = %code, "the provider refused the operation: reported to the saga");
            }
            Next::Done(_) => {}
            Next::NotPerformed => {
                tracing::warn!(payment_id = %op.payment_id, attempts = attempt_no, error = %last_error,
                    "authorization never reached the provider: the payment fails");
            }
            Next::Again {
                wait, resolving, ..
            } => {
                self.retries_total
                    .with_label_values(&[op.operation.as_str()])
                    .inc();
                tracing::warn!(payment_id = %op.payment_id, operation = op.operation.as_str(), attempt_no,
                    retry_in_ms = wait.as_millis() as u64, status_query = resolving, error = %last_error,
                    "provider attempt failed; next one scheduled");
            }
            Next::Exhausted { unknown } => {
                self.dead_letters_total.inc();
                tracing::error!(payment_id = %op.payment_id, operation = op.operation.as_str(), attempts = attempt_no,
                    error = %last_error, outcome_unknown = unknown, "provider operation given up");
            }
        }
    }

    /// Automatic capture: schedules the capture of the authorization that just succeeded, in
    /// the authorization's transaction, so that `payments.captured` follows
    /// `payments.authorized` on the saga's channel with no command in between. Not when a void
    /// of the payment was asked for meanwhile. The capture's command is recorded as if the saga
    /// had sent it (a replay of its dead letter re-arms it). It is the authorization's merchant's.
    async fn capture_next(
        &self,
        tx: &mut sqlx::PgConnection,
        op: &Claimed,
        authorization_id: &str,
    ) -> anyhow::Result<()> {
        let command = Envelope::new(
            op.payment_id,
            Some(op.source_event_id),
            &op.correlation_id,
            &CaptureRequested {
                authorization_id: authorization_id.to_owned(),
                amount_minor: op.request.amount_minor,
                currency: op.request.currency,
            },
        );
        let request = OperationRequest {
            reference: Some(authorization_id.to_owned()),
            reason: None,
            capture_method: CaptureMethod::Automatic,
            ..op.request.clone()
        };
        sqlx::query(
            "INSERT INTO provider_operations (operation_id, payment_id, operation, request,
                                              source_event_id, correlation_id, headers,
                                              source_envelope, source_topic, operation_key, give_up_at,
                                              merchant_id)
             SELECT $1, $2, 'CAPTURE', $3, $4, $5, $6, $7, $8, '', now() + make_interval(secs => $9),
                    $10
              WHERE NOT EXISTS (SELECT 1 FROM provider_operations
                                 WHERE payment_id = $2 AND operation = 'VOID')
             ON CONFLICT (payment_id, operation, operation_key) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(op.payment_id)
        .bind(sqlx::types::Json(&request))
        .bind(command.event_id)
        .bind(&op.correlation_id)
        .bind(sqlx::types::Json(op.headers.propagated()))
        .bind(sqlx::types::Json(&command))
        .bind(self.outbox.topic(&command))
        .bind(
            self.settings
                .give_up_after(ProviderOperation::Capture)
                .as_secs_f64(),
        )
        .bind(op.merchant_id)
        .execute(tx)
        .await?;
        Ok(())
    }

    /// Dead-letters the command whose operation was given up (RETRY_EXHAUSTED), so operators
    /// see it next to every other failed message. The letter carries the command as a new
    /// event (same payload, a new `event_id`): replaying it reaches the adapter's handler
    /// (the original id is in its inbox) and re-arms the operation.
    async fn dead_letter(
        &self,
        tx: &mut sqlx::PgConnection,
        op: &Claimed,
        attempts: i32,
        last_error: &str,
        unknown: bool,
    ) -> anyhow::Result<()> {
        let row = sqlx::query(
            "SELECT source_envelope::text AS envelope, source_topic, source_partition, source_offset
               FROM provider_operations WHERE operation_id = $1",
        )
        .bind(op.operation_id)
        .fetch_one(&mut *tx)
        .await?;
        let envelope: Option<String> = row.try_get("envelope")?;
        let source = envelope
            .as_deref()
            .and_then(|e| Envelope::from_json(e.as_bytes()).ok());
        let again = source.as_ref().map(|e| {
            let mut again = e.clone();
            again.event_id = Uuid::now_v7();
            again.causation_id = Some(e.event_id);
            again.occurred_at = Utc::now();
            again
        });
        let value = again.as_ref().map(Envelope::to_json).unwrap_or_default();
        let key = op.payment_id.to_string();
        let mut letter = DeadLetter::new(
            &Origin {
                topic: &row
                    .try_get::<Option<String>, _>("source_topic")?
                    .unwrap_or_default(),
                partition: row
                    .try_get::<Option<i32>, _>("source_partition")?
                    .unwrap_or(-1),
                offset: row
                    .try_get::<Option<i64>, _>("source_offset")?
                    .unwrap_or(-1),
                key: Some(key.as_bytes()),
                headers: &op.headers.0,
                value: &value,
            },
            crate::SERVICE,
            &format!(
                "{} given up after {attempts} attempts ({}): {last_error}; replay to try again",
                op.operation.as_str(),
                if unknown {
                    "outcome unknown"
                } else {
                    "never performed"
                }
            ),
            Classification::RetryExhausted,
        );
        letter.event_id = again.as_ref().map(|e| e.event_id.to_string());
        letter.event_type = again.map(|e| e.event_type);
        letter.attempts = Some(attempts as u32);
        self.outbox.enqueue_dead_letter(tx, &letter).await?;
        Ok(())
    }
}

/// One attempt at an operation, as `provider_attempts` records it.
struct AttemptRow<'a> {
    provider: &'a str,
    idempotency_key: &'a str,
    seen: &'a Seen,
    started_at: DateTime<Utc>,
    latency_ms: i32,
    kind: AttemptKind,
}

/// What an attempt does to its operation.
enum Change<'a> {
    /// Ends it with `status` and, for a success, what the provider reports it did.
    Finish {
        status: OperationStatus,
        result: Option<(&'a str, AmountMinor, Currency)>,
        error: Option<&'a str>,
    },
    /// Schedules the next attempt (a status query when `resolving`).
    Again {
        wait: Duration,
        resolving: bool,
        unknown: bool,
        last_error: &'a str,
    },
}

/// What one answer says, as the attempt's row records it.
struct Seen {
    outcome: AttemptOutcome,
    reference: Option<String>,
    decline_code: Option<String>,
    error: Option<String>,
}

impl Seen {
    fn of(answer: &Answer) -> Self {
        let (outcome, reference, decline_code, error) = match answer {
            Answer::Outcome(ProviderOutcome::Succeeded { reference, .. }) => (
                AttemptOutcome::Succeeded,
                Some(reference.clone()),
                None,
                None,
            ),
            Answer::Outcome(ProviderOutcome::Declined { code }) => {
                (AttemptOutcome::Declined, None, Some(code.clone()), None)
            }
            Answer::NotFound => (AttemptOutcome::NotFound, None, None, None),
            Answer::Error(e) => (
                match e {
                    ProviderError::Timeout => AttemptOutcome::Timeout,
                    ProviderError::Unavailable(_) => AttemptOutcome::Unavailable,
                    ProviderError::Failed(_) => AttemptOutcome::Error,
                },
                None,
                None,
                Some(e.to_string()),
            ),
        };
        Self {
            outcome,
            reference,
            decline_code,
            error,
        }
    }

    /// What the operation's `last_error` says after this answer.
    fn last_error(&self) -> String {
        self.error
            .clone()
            .or_else(|| self.decline_code.as_ref().map(|c| format!("declined: {c}")))
            .unwrap_or_else(|| "not found at the provider".to_owned())
    }
}

/// What becomes of the operation's row after `decision`, and the event that reports a final
/// outcome.
fn consequence<'a>(
    decision: &'a Next,
    answering: &Answering<'_>,
    seen: &'a Seen,
    last_error: &'a str,
) -> (Change<'a>, Option<Envelope>) {
    let finish = |status, result, error| Change::Finish {
        status,
        result,
        error,
    };
    match decision {
        Next::Done(outcome) => {
            let change = match outcome {
                ProviderOutcome::Succeeded {
                    reference,
                    amount_minor,
                    currency,
                } => finish(
                    OperationStatus::Succeeded,
                    Some((reference.as_str(), *amount_minor, *currency)),
                    None,
                ),
                ProviderOutcome::Declined { .. } => finish(
                    OperationStatus::Declined,
                    None,
                    seen.decline_code.as_deref(),
                ),
            };
            (change, Some(answering.event(Ending::Outcome(outcome))))
        }
        Next::NotPerformed => (
            finish(OperationStatus::NotPerformed, None, Some(last_error)),
            Some(answering.event(Ending::NotPerformed { last_error })),
        ),
        Next::Again {
            wait,
            resolving,
            unknown,
        } => (
            Change::Again {
                wait: *wait,
                resolving: *resolving,
                unknown: *unknown,
                last_error,
            },
            None,
        ),
        Next::Exhausted { .. } => (
            finish(OperationStatus::Exhausted, None, Some(last_error)),
            Some(answering.event(Ending::Exhausted {
                attempts: answering.attempts,
                last_error,
            })),
        ),
    }
}

/// Everything an attempt writes.
struct Written<'a> {
    attempt: &'a AttemptRow<'a>,
    change: &'a Change<'a>,
    event: Option<&'a OutboxRow<'a>>,
    last_error: &'a str,
}

/// Records an attempt in one statement (one round trip): the operation's change, made only
/// while our claim holds (same token, the attempt count we read, still pending), and, only if
/// it was made, the attempt's row and the outbox row of the event that reports the outcome.
/// False when the claim no longer holds: nothing is written.
async fn record(
    conn: &mut sqlx::PgConnection,
    op: &Claimed,
    attempt: &AttemptRow<'_>,
    change: &Change<'_>,
    then: Option<&OutboxRow<'_>>,
) -> anyhow::Result<bool> {
    // $1-$3 the claim, $4-$14 the attempt, from $15 the change's values, then the event's.
    let (set, change_values) = match change {
        Change::Finish { .. } => (
            "status = $15, result_reference = $16, last_error = $17,
             result_amount_minor = $18, result_currency = $19",
            5,
        ),
        Change::Again { .. } => (
            "next_attempt_at = now() + make_interval(secs => $15), last_error = $16,
             resolving = $17, outcome_unknown = $18",
            4,
        ),
    };
    let queue = match then {
        Some(_) => {
            let first = 15 + change_values;
            let values: Vec<String> = (first..first + 6).map(|i| format!("${i}")).collect();
            format!(
                ", queued AS (INSERT INTO outbox ({OUTBOX_COLUMNS}) SELECT {} FROM updated)",
                values.join(", ")
            )
        }
        None => String::new(),
    };
    let sql = format!(
        "WITH updated AS (
             UPDATE provider_operations
                SET {set}, attempts = $3 + 1, claimed_until = NULL, claim_token = NULL,
                    updated_at = now()
              WHERE operation_id = $1 AND claim_token = $2 AND status = 'PENDING'
                AND attempts = $3
          RETURNING operation_id),
         attempt AS (
             INSERT INTO provider_attempts (payment_id, operation, attempt_no, provider,
                 idempotency_key, outcome, provider_reference, decline_code, error, started_at,
                 finished_at, latency_ms, operation_id, kind)
             SELECT $4, $5, $3 + 1, $6, $7, $8, $9, $10, $11, $12, now(), $13, operation_id, $14
               FROM updated){queue}
         SELECT count(*) FROM updated"
    );
    let query = sqlx::query(&sql)
        .bind(op.operation_id)
        .bind(op.token)
        .bind(op.attempts)
        .bind(op.payment_id)
        .bind(op.operation)
        .bind(attempt.provider)
        .bind(attempt.idempotency_key)
        .bind(attempt.seen.outcome)
        .bind(attempt.seen.reference.as_deref())
        .bind(attempt.seen.decline_code.as_deref())
        .bind(attempt.seen.error.as_deref())
        .bind(attempt.started_at)
        .bind(attempt.latency_ms)
        .bind(attempt.kind);
    let query = match change {
        Change::Finish {
            status,
            result,
            error,
        } => query
            .bind(*status)
            .bind(result.map(|r| r.0))
            .bind(*error)
            .bind(result.map(|r| r.1))
            .bind(result.map(|r| r.2)),
        Change::Again {
            wait,
            resolving,
            unknown,
            last_error,
        } => query
            .bind(wait.as_secs_f64())
            .bind(*last_error)
            .bind(*resolving)
            .bind(*unknown),
    };
    let query = match then {
        Some(row) => row.bind(query),
        None => query,
    };
    let updated: i64 = query.fetch_one(&mut *conn).await?.try_get(0)?;
    Ok(updated == 1)
}

/// The task an operation ran in, whether it ended or panicked.
fn task_of(done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((task, ())) => task,
        Err(e) => e.id(),
    }
}
