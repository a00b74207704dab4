//! The operation worker: performs due provider operations, each bounded by a timeout, and
//! retries timeouts and errors on a back-off schedule (1 s, 2 s, 4 s by default). Operations
//! run concurrently, so a payment stuck in retries never holds up the others.
//!
//! Every attempt is persisted with its outcome and timing, in the same transaction as the
//! operation's new state and, when it is final, the event that reports it.

use crate::provider::{PaymentProvider, ProviderError, ProviderOutcome, ProviderRequest};
use anyhow::Context;
use chrono::{DateTime, Utc};
use prometheus::{IntCounter, IntCounterVec};
use sagapay_domain::events::{
    PaymentAuthorized, PaymentCaptured, PaymentFailed, PaymentRefunded, PaymentReversed,
    ProviderOperation, ProviderRetriesExhausted,
};
use sagapay_domain::{AmountMinor, Currency, Envelope};
use sagapay_messaging::deadletter::Origin;
use sagapay_messaging::wakeup::Wakeup;
use sagapay_messaging::{Classification, DeadLetter, MessageHeaders, MessagingMetrics, Outbox};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

pub const NOTIFY_CHANNEL: &str = "sagapay_provider_operations";

#[derive(Debug, Clone)]
pub struct RetrySettings {
    /// Bound on one provider call.
    pub call_timeout: Duration,
    /// Waits before the 2nd, 3rd, ... attempt; attempts allowed = `backoff.len() + 1`.
    pub backoff: Vec<Duration>,
    /// Operations in flight at once.
    pub max_in_flight: usize,
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
            max_in_flight: 64,
            claim_timeout: Duration::from_secs(60),
        }
    }
}

/// What an operation needs to call the provider; stored as JSON in `provider_operations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OperationRequest {
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub payment_method: String,
    pub reference: Option<String>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone)]
struct Claimed {
    operation_id: Uuid,
    payment_id: Uuid,
    operation: ProviderOperation,
    /// The refund id for merchant refunds, else empty.
    operation_key: String,
    request: OperationRequest,
    attempts: i32,
    token: Uuid,
    source_event_id: Uuid,
    correlation_id: String,
    headers: MessageHeaders,
}

impl Claimed {
    /// The merchant refund this operation performs, if it is one.
    fn refund_id(&self) -> Option<Uuid> {
        match self.operation {
            ProviderOperation::Refund => Uuid::parse_str(&self.operation_key).ok(),
            _ => None,
        }
    }
}

/// The operation's row was no longer ours (claimed with our token, at the attempt count we
/// read) when we came to write its outcome: another worker took over an expired claim. The
/// transaction is dropped, attempt row included.
#[derive(Debug, thiserror::Error)]
#[error("the claim on the operation was lost to another worker; outcome discarded")]
struct ClaimLost;

/// `rows` rows of the claimed operation were updated: one while the claim holds.
fn still_ours(rows: u64) -> anyhow::Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(ClaimLost.into())
    }
}

fn parse_operation(s: &str) -> anyhow::Result<ProviderOperation> {
    Ok(match s {
        "AUTHORIZE" => ProviderOperation::Authorize,
        "CAPTURE" => ProviderOperation::Capture,
        "VOID" => ProviderOperation::Void,
        "REFUND" => ProviderOperation::Refund,
        other => anyhow::bail!("unknown operation {other}"),
    })
}

pub struct Worker<P> {
    pub pool: PgPool,
    pub provider: Arc<P>,
    pub outbox: Outbox,
    pub settings: RetrySettings,
    pub retries_total: IntCounterVec,
    /// `dlq_published_total{classification="RETRY_EXHAUSTED"}` of the service.
    pub dead_letters_total: IntCounter,
    pub messaging_metrics: MessagingMetrics,
}

impl<P: PaymentProvider> Worker<P> {
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut wakeup = Wakeup::listen(&self.pool, NOTIFY_CHANNEL, &self.messaging_metrics).await;
        let mut in_flight: JoinSet<()> = JoinSet::new();
        // Claim when something may have become due (a notification, the timer) or when a
        // finished operation frees room while the last claim left due operations behind.
        // Nothing is queried for an operation that finishes with nothing waiting.
        let mut claim_now = true;
        let mut backlog = false;
        let mut wake_at = tokio::time::Instant::now();
        loop {
            let room = self.settings.max_in_flight.saturating_sub(in_flight.len());
            if claim_now && room > 0 {
                claim_now = false;
                let wait = match self.claim(room as i64).await {
                    Ok((ops, wait)) => {
                        backlog = ops.len() == room;
                        for op in ops {
                            let me = self.clone();
                            in_flight.spawn(async move { me.perform(op).await });
                        }
                        wait
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), "claiming provider operations failed");
                        Duration::from_millis(250)
                    }
                };
                wake_at = tokio::time::Instant::now() + wait;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {
                    claim_now |= backlog;
                }
                // A burst of notifications, or the listener back after a PostgreSQL restart
                // (what it missed may be due): one claim answers either.
                _ = wakeup.next() => claim_now = true,
                // With no room, only a finished operation can let a claim run; the timer
                // (possibly already past) would spin.
                _ = tokio::time::sleep_until(wake_at),
                    if in_flight.len() < self.settings.max_in_flight => claim_now = true,
            }
        }
        // Unfinished attempts are abandoned; their claims expire and they run again.
        in_flight.abort_all();
        Ok(())
    }

    /// Claims up to `limit` due operations and, in the same statement, finds when the earliest
    /// operation left unclaimed is due: the wait before the next claim, capped at 250 ms
    /// (the polling fallback).
    async fn claim(&self, limit: i64) -> anyhow::Result<(Vec<Claimed>, Duration)> {
        let token = Uuid::new_v4();
        let rows = sqlx::query(
            "WITH due AS (
                 SELECT operation_id FROM provider_operations
                  WHERE status = 'PENDING' AND next_attempt_at <= now()
                    AND (claimed_until IS NULL OR claimed_until < now())
                  ORDER BY next_attempt_at
                  LIMIT $1
                  FOR UPDATE SKIP LOCKED),
             claimed AS (
                 UPDATE provider_operations o
                    SET claimed_until = now() + make_interval(secs => $2), claim_token = $3
                   FROM due WHERE o.operation_id = due.operation_id
                 RETURNING o.operation_id, o.payment_id, o.operation, o.operation_key, o.request,
                           o.attempts, o.source_event_id, o.correlation_id, o.headers),
             next AS (
                 SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))::float8 AS next_due_s
                   FROM provider_operations
                  WHERE status = 'PENDING' AND (claimed_until IS NULL OR claimed_until < now())
                    AND operation_id NOT IN (SELECT operation_id FROM due))
             SELECT next.next_due_s, claimed.* FROM next LEFT JOIN claimed ON true",
        )
        .bind(limit)
        .bind(self.settings.claim_timeout.as_secs_f64())
        .bind(token)
        .fetch_all(&self.pool)
        .await
        .context("claiming due operations")?;
        let cap = Duration::from_millis(250);
        let next_due_s: Option<f64> = match rows.first() {
            Some(r) => r.try_get("next_due_s")?,
            None => None,
        };
        let wait = match next_due_s {
            Some(s) if s <= 0.0 => Duration::from_millis(1),
            Some(s) => Duration::from_secs_f64(s).min(cap),
            None => cap,
        };
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(operation_id) = r.try_get::<Option<Uuid>, _>("operation_id")? else {
                continue; // nothing was claimed: the one row carries only the next due time
            };
            let request: sqlx::types::Json<OperationRequest> = r.try_get("request")?;
            let headers: sqlx::types::Json<MessageHeaders> = r.try_get("headers")?;
            claimed.push(Claimed {
                operation_id,
                payment_id: r.try_get("payment_id")?,
                operation: parse_operation(r.try_get("operation")?)?,
                operation_key: r.try_get("operation_key")?,
                request: request.0,
                attempts: r.try_get("attempts")?,
                token,
                source_event_id: r.try_get("source_event_id")?,
                correlation_id: r.try_get("correlation_id")?,
                headers: headers.0,
            });
        }
        Ok((claimed, wait))
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

    async fn attempt(&self, op: &Claimed) -> anyhow::Result<()> {
        let req = ProviderRequest {
            payment_id: op.payment_id,
            operation: op.operation,
            idempotency_key: if op.operation_key.is_empty() {
                format!(
                    "{}:{}",
                    op.operation.as_str().to_ascii_lowercase(),
                    op.payment_id
                )
            } else {
                format!(
                    "{}:{}:{}",
                    op.operation.as_str().to_ascii_lowercase(),
                    op.payment_id,
                    op.operation_key
                )
            },
            amount_minor: op.request.amount_minor,
            currency: op.request.currency,
            payment_method: op.request.payment_method.clone(),
            reference: op.request.reference.clone(),
        };
        let started_at: DateTime<Utc> = Utc::now();
        let clock = Instant::now();
        let result = match tokio::time::timeout(
            self.settings.call_timeout,
            self.provider.call(&req),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(ProviderError::Timeout),
        };
        let latency_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let attempt_no = op.attempts + 1;
        let (outcome, reference, decline_code, error) = match &result {
            Ok(ProviderOutcome::Succeeded { reference }) => {
                ("SUCCEEDED", Some(reference.clone()), None, None)
            }
            Ok(ProviderOutcome::Declined { code }) => ("DECLINED", None, Some(code.clone()), None),
            Err(e) => (
                if matches!(e, ProviderError::Timeout) {
                    "TIMEOUT"
                } else {
                    "ERROR"
                },
                None,
                None,
                Some(e.to_string()),
            ),
        };

        // The operation's row is updated only while our claim holds (`ClaimLost` otherwise).
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO provider_attempts (payment_id, operation, attempt_no, provider, idempotency_key,
                 outcome, provider_reference, decline_code, error, started_at, finished_at, latency_ms,
                 operation_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), $11, $12)",
        )
        .bind(op.payment_id)
        .bind(op.operation.as_str())
        .bind(attempt_no)
        .bind(self.provider.name())
        .bind(&req.idempotency_key)
        .bind(outcome)
        .bind(&reference)
        .bind(&decline_code)
        .bind(&error)
        .bind(started_at)
        .bind(latency_ms)
        .bind(op.operation_id)
        .execute(&mut *tx)
        .await?;

        // Counted once the retry is committed, so a failed commit does not count it twice.
        let mut retry_scheduled = false;
        let mut dead_lettered = false;
        let max_attempts = self.settings.backoff.len() as i32 + 1;
        let provider = self.provider.name().to_owned();
        let reason = op.request.reason.clone().unwrap_or_default();
        let event = match (result, op.operation) {
            (Ok(ProviderOutcome::Succeeded { reference }), operation) => {
                self.finish(&mut tx, op, attempt_no, "SUCCEEDED", Some(&reference), None)
                    .await?;
                let a = op.request.amount_minor;
                let c = op.request.currency;
                Some(match operation {
                    ProviderOperation::Authorize => self.reply(
                        op,
                        &PaymentAuthorized {
                            provider,
                            authorization_id: reference,
                            amount_minor: a,
                            currency: c,
                        },
                    ),
                    ProviderOperation::Capture => self.reply(
                        op,
                        &PaymentCaptured {
                            provider,
                            capture_id: reference,
                            amount_minor: a,
                            currency: c,
                        },
                    ),
                    ProviderOperation::Refund if op.refund_id().is_some() => self.reply(
                        op,
                        &PaymentRefunded {
                            refund_id: op.refund_id().expect("checked"),
                            provider,
                            reference,
                            amount_minor: a,
                            currency: c,
                        },
                    ),
                    ProviderOperation::Void | ProviderOperation::Refund => self.reply(
                        op,
                        &PaymentReversed {
                            provider,
                            operation,
                            reference,
                            reason,
                        },
                    ),
                })
            }
            (Ok(ProviderOutcome::Declined { code }), ProviderOperation::Authorize) => {
                self.finish(&mut tx, op, attempt_no, "DECLINED", None, Some(&code))
                    .await?;
                Some(self.reply(
                    op,
                    &PaymentFailed {
                        provider,
                        reason: format!("authorization declined: {code}"),
                        decline_code: code,
                    },
                ))
            }
            (failure, operation) => {
                let last_error = match failure {
                    Ok(ProviderOutcome::Declined { code }) => format!("declined: {code}"),
                    Err(e) => e.to_string(),
                    Ok(ProviderOutcome::Succeeded { .. }) => unreachable!("handled above"),
                };
                if attempt_no < max_attempts {
                    let wait = self.settings.backoff[(attempt_no - 1) as usize];
                    let updated = sqlx::query(
                        "UPDATE provider_operations
                            SET attempts = $2, next_attempt_at = now() + make_interval(secs => $3),
                                claimed_until = NULL, claim_token = NULL, last_error = $4, updated_at = now()
                          WHERE operation_id = $1 AND claim_token = $5 AND status = 'PENDING'
                            AND attempts = $6",
                    )
                    .bind(op.operation_id)
                    .bind(attempt_no)
                    .bind(wait.as_secs_f64())
                    .bind(&last_error)
                    .bind(op.token)
                    .bind(op.attempts)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    still_ours(updated)?;
                    retry_scheduled = true;
                    tracing::warn!(payment_id = %op.payment_id, operation = operation.as_str(), attempt_no,
                        retry_in_ms = wait.as_millis() as u64, error = %last_error, "provider attempt failed; retry scheduled");
                    None
                } else {
                    self.finish(
                        &mut tx,
                        op,
                        attempt_no,
                        "EXHAUSTED",
                        None,
                        Some(&last_error),
                    )
                    .await?;
                    self.dead_letter(&mut tx, op, attempt_no, &last_error)
                        .await?;
                    dead_lettered = true;
                    tracing::error!(payment_id = %op.payment_id, operation = operation.as_str(), attempts = attempt_no,
                        error = %last_error, "provider retries exhausted");
                    Some(self.reply(
                        op,
                        &ProviderRetriesExhausted {
                            operation,
                            attempts: attempt_no as u32,
                            last_error,
                            refund_id: op.refund_id(),
                        },
                    ))
                }
            }
        };
        if let Some(event) = event {
            self.outbox.enqueue(&mut tx, &event, &op.headers).await?;
        }
        tx.commit().await?;
        if dead_lettered {
            self.dead_letters_total.inc();
        }
        if retry_scheduled {
            self.retries_total
                .with_label_values(&[op.operation.as_str()])
                .inc();
        }
        Ok(())
    }

    /// Dead-letters the command whose operation ran out of attempts (RETRY_EXHAUSTED), so
    /// operators see it next to every other failed message and can replay it.
    async fn dead_letter(
        &self,
        tx: &mut sqlx::PgConnection,
        op: &Claimed,
        attempts: i32,
        last_error: &str,
    ) -> anyhow::Result<()> {
        let row = sqlx::query(
            "SELECT source_envelope::text AS envelope, source_topic, source_partition, source_offset
               FROM provider_operations WHERE operation_id = $1",
        )
        .bind(op.operation_id)
        .fetch_one(&mut *tx)
        .await?;
        let envelope: Option<String> = row.try_get("envelope")?;
        let envelope = envelope.unwrap_or_default();
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
                value: envelope.as_bytes(),
            },
            crate::SERVICE,
            &format!(
                "{} failed on all {attempts} attempts: {last_error}",
                op.operation.as_str()
            ),
            Classification::RetryExhausted,
        );
        letter.event_id = Some(op.source_event_id.to_string());
        letter.event_type = Envelope::from_json(envelope.as_bytes())
            .ok()
            .map(|e| e.event_type);
        letter.attempts = Some(attempts as u32);
        self.outbox.enqueue_dead_letter(tx, &letter).await?;
        Ok(())
    }

    fn reply<T: sagapay_domain::events::EventPayload>(
        &self,
        op: &Claimed,
        payload: &T,
    ) -> Envelope {
        Envelope::new(
            op.payment_id,
            Some(op.source_event_id),
            &op.correlation_id,
            payload,
        )
    }

    async fn finish(
        &self,
        tx: &mut sqlx::PgConnection,
        op: &Claimed,
        attempts: i32,
        status: &str,
        reference: Option<&str>,
        error: Option<&str>,
    ) -> anyhow::Result<()> {
        let updated = sqlx::query(
            "UPDATE provider_operations
                SET status = $2, attempts = $3, result_reference = $4, last_error = $5,
                    claimed_until = NULL, claim_token = NULL, updated_at = now()
              WHERE operation_id = $1 AND claim_token = $6 AND status = 'PENDING'
                AND attempts = $7",
        )
        .bind(op.operation_id)
        .bind(status)
        .bind(attempts)
        .bind(reference)
        .bind(error)
        .bind(op.token)
        .bind(op.attempts)
        .execute(tx)
        .await?
        .rows_affected();
        still_ours(updated)
    }
}
