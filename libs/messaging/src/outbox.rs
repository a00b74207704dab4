//! The transactional outbox: `Outbox::enqueue` inside the business transaction, and the
//! `OutboxRelay` that moves committed rows to Kafka.
//!
//! Relay algorithm, safe with any number of relay instances per database:
//! 1. claim up to `batch_size` pending rows whose claim is free or expired
//!    (`FOR UPDATE SKIP LOCKED`, in id order) and commit the claim;
//! 2. hand them all to the idempotent producer, then await every delivery report;
//! 3. mark the delivered rows published (only while our claim token still holds);
//!    a row whose delivery failed gets its claim released after a short back-off.
//!    The running relay does step 3 in the same statement as the next step 1, which follows
//!    the next commit's notification or, when none comes, `mark_delay`: one statement per
//!    batch under load instead of two.
//!
//! A relay that dies between 1 and 3 leaves rows claimed; another relay (or itself, restarted)
//! takes them once `claimed_until` passes and publishes them again. Consumers' inboxes absorb
//! that duplicate. Nothing is lost, because a row leaves the pending set only in step 3.
//!
//! A row the broker refuses for good (larger than the broker accepts: retrying cannot help) is
//! parked instead (`parked_at`, `last_error`), logged as an error and counted
//! (`outbox_parked_total`, `outbox_parked_rows`); it is never claimed again, so it cannot hold
//! up the relay. Every other delivery failure is retried.

use crate::headers::{self, MessageHeaders};
use crate::metrics::MessagingMetrics;
use crate::relay_producer::RelayProducer;
use crate::wakeup::Wakeup;
use anyhow::Context;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sagapay_domain::{Envelope, Namespace};
use sqlx::{PgConnection, PgPool, Row};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

macro_rules! outbox_columns {
    () => {
        "event_id, event_type, topic, message_key, payload, headers"
    };
}

/// The channel the outbox trigger notifies on commit.
pub const NOTIFY_CHANNEL: &str = "sagapay_outbox";

/// Writes events into the outbox of the current transaction.
#[derive(Debug, Clone)]
pub struct Outbox {
    namespace: Namespace,
}

impl Outbox {
    pub fn new(namespace: Namespace) -> Self {
        Self { namespace }
    }

    /// Inserts `envelope` for publication to its event type's topic, keyed by payment id.
    /// Call it with the connection of the transaction that makes the business change.
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        inherited: &MessageHeaders,
    ) -> sqlx::Result<()> {
        let row = self.row(envelope, inherited);
        let sql = concat!(
            "INSERT INTO outbox (",
            outbox_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6)"
        );
        row.bind(sqlx::query(sql)).execute(conn).await?;
        Ok(())
    }

    /// The topic `envelope` is published to: its event type's channel.
    pub fn topic(&self, envelope: &Envelope) -> String {
        self.namespace.topic(&envelope.event_type)
    }

    /// The outbox row of `envelope`, for a statement that inserts it together with the change
    /// that causes it (one round trip instead of two): list [`OUTBOX_COLUMNS`] and give the
    /// row's values with [`OutboxRow::bind`].
    pub fn row<'a>(&self, envelope: &'a Envelope, inherited: &MessageHeaders) -> OutboxRow<'a> {
        let mut headers = inherited.clone();
        headers.set(headers::EVENT_ID, envelope.event_id.to_string());
        headers.set(headers::EVENT_TYPE, envelope.event_type.clone());
        headers.set(headers::CORRELATION_ID, envelope.correlation_id.clone());
        OutboxRow {
            envelope,
            topic: self.namespace.topic(&envelope.event_type),
            headers,
        }
    }
}

/// The columns [`OutboxRow::bind`] gives values for, in its order.
pub const OUTBOX_COLUMNS: &str = outbox_columns!();

/// One outbox row to insert (see [`Outbox::row`]).
#[derive(Debug)]
pub struct OutboxRow<'a> {
    envelope: &'a Envelope,
    topic: String,
    headers: MessageHeaders,
}

impl<'a> OutboxRow<'a> {
    /// Binds the row's six values, in the order of [`OUTBOX_COLUMNS`], as the query's next
    /// parameters.
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(self.envelope.event_id)
            .bind(&self.envelope.event_type)
            .bind(&self.topic)
            .bind(self.envelope.payment_id.to_string())
            .bind(sqlx::types::Json(self.envelope))
            .bind(sqlx::types::Json(&self.headers))
    }
}

/// Outbox rows gathered to be inserted together, one array per column: a statement that
/// writes a batch's changes inserts its outbox rows with
/// `INSERT INTO outbox (OUTBOX_COLUMNS) {OutboxBatch::rows(n)}` and [`OutboxBatch::bind`].
/// The rows are inserted in the order they were pushed in (their ids, and so the order they
/// are published in, follow it).
#[derive(Debug, Default)]
pub struct OutboxBatch {
    event_ids: Vec<Uuid>,
    event_types: Vec<String>,
    topics: Vec<String>,
    keys: Vec<String>,
    payloads: Vec<String>,
    headers: Vec<String>,
}

impl OutboxBatch {
    pub fn push(&mut self, row: &OutboxRow<'_>) {
        self.event_ids.push(row.envelope.event_id);
        self.event_types.push(row.envelope.event_type.clone());
        self.topics.push(row.topic.clone());
        self.keys.push(row.envelope.payment_id.to_string());
        self.payloads
            .push(String::from_utf8(row.envelope.to_json()).expect("JSON is UTF-8"));
        self.headers
            .push(serde_json::to_string(&row.headers).expect("headers serialize"));
    }

    pub fn len(&self) -> usize {
        self.event_ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.event_ids.is_empty()
    }

    /// A `SELECT` of the rows' [`OUTBOX_COLUMNS`] in the order they were pushed, from the
    /// query's parameters `$first` to `$first + 5`.
    pub fn rows(first: usize) -> String {
        let p: Vec<usize> = (first..first + 6).collect();
        format!(
            "SELECT e, t, tp, k, p, h
               FROM unnest(${}::uuid[], ${}::text[], ${}::text[], ${}::text[],
                           ${}::text[]::jsonb[], ${}::text[]::jsonb[])
                    WITH ORDINALITY AS r(e, t, tp, k, p, h, n)
              ORDER BY n",
            p[0], p[1], p[2], p[3], p[4], p[5]
        )
    }

    /// Binds the six arrays, in the order of [`OutboxBatch::rows`], as the query's next
    /// parameters.
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.event_ids)
            .bind(&self.event_types)
            .bind(&self.topics)
            .bind(&self.keys)
            .bind(&self.payloads)
            .bind(&self.headers)
    }
}

impl Outbox {
    /// Queues a dead letter for the namespace's dead-letter topic in the current transaction
    /// (for failures found by a service's own workers, outside any consumer).
    pub async fn enqueue_dead_letter(
        &self,
        conn: &mut PgConnection,
        letter: &crate::deadletter::DeadLetter,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO outbox (event_id, event_type, topic, message_key, payload, headers)
             VALUES ($1, 'deadletter', $2, $3, $4, '{}')",
        )
        .bind(Uuid::now_v7())
        .bind(self.namespace.dead_letter_topic())
        .bind(letter.original_key.clone().unwrap_or_default())
        .bind(sqlx::types::Json(letter))
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Most rows claimed and published at once.
    pub batch_size: i64,
    /// How long a claim protects rows from other relays; a crashed relay's rows wait this long.
    pub claim_timeout: Duration,
    /// Fallback poll when no notification arrives (lost connection, missed wake-up).
    pub poll_interval: Duration,
    /// Published rows are deleted after this long (they are kept for inspection until then).
    pub retention: Duration,
    /// Longest wait before delivered rows are marked published when no new commit brings a
    /// claim to carry the mark. A crash inside it publishes those rows again (inboxes absorb
    /// the duplicates); under load, marks ride on claims and cost no statement of their own.
    pub mark_delay: Duration,
    /// How long a busy relay (its last claim found more than one row) waits after a
    /// notification before it claims: the commits of that moment share one claim, one
    /// produce and one mark. A relay whose last claim found one row or none claims at once.
    pub linger: Duration,
}

impl Default for RelaySettings {
    fn default() -> Self {
        Self {
            batch_size: 500,
            claim_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            retention: Duration::from_secs(24 * 3600),
            mark_delay: Duration::from_millis(100),
            linger: Duration::from_millis(2),
        }
    }
}

/// A claimed, not yet published outbox row.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub id: i64,
    pub event_id: Uuid,
    pub topic: String,
    pub key: String,
    pub payload: String,
    pub headers: MessageHeaders,
}

/// Rows delivered to Kafka whose `published_at` is not written yet.
#[derive(Debug, Default)]
pub struct Delivered {
    token: Uuid,
    ids: Vec<i64>,
}

/// What publishing a batch did.
#[derive(Debug)]
pub struct Published {
    pub delivered: Delivered,
    /// Rows whose delivery failed; their claim is released for a retry soon.
    pub failed: usize,
    /// Rows the broker refused for good; they are parked.
    pub parked: usize,
}

/// Whether a delivery failure can never succeed for the same row.
fn refused_for_good(e: &KafkaError) -> bool {
    matches!(
        e,
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
    )
}

/// One claimed batch, owned by the claim token until published or expired.
#[derive(Debug)]
pub struct ClaimedBatch {
    pub token: Uuid,
    pub rows: Vec<ClaimedRow>,
}

pub struct OutboxRelay {
    pool: PgPool,
    producer: RelayProducer,
    settings: RelaySettings,
    metrics: MessagingMetrics,
}

impl OutboxRelay {
    /// A relay publishing with `producer`, which it never replaces (see
    /// [`OutboxRelay::with_producer`]).
    pub fn new(
        pool: PgPool,
        producer: FutureProducer,
        settings: RelaySettings,
        metrics: MessagingMetrics,
    ) -> Self {
        Self::with_producer(pool, RelayProducer::fixed(producer), settings, metrics)
    }

    /// A relay publishing with `producer` (replaced when it fails or stalls, if it is
    /// [`RelayProducer::replaceable`]).
    pub fn with_producer(
        pool: PgPool,
        producer: RelayProducer,
        settings: RelaySettings,
        metrics: MessagingMetrics,
    ) -> Self {
        Self {
            pool,
            producer,
            settings,
            metrics,
        }
    }

    /// The producer the relay sends with now.
    pub fn producer(&self) -> FutureProducer {
        self.producer.get()
    }

    /// Runs until `shutdown` is cancelled: drains the outbox whenever a commit notifies, and
    /// at least every `poll_interval`. Delivered rows are marked published by the next claim
    /// (one statement for both), which comes with the next notification, or after
    /// `mark_delay` when none comes.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut wakeup = Wakeup::listen(&self.pool, NOTIFY_CHANNEL, &self.metrics).await;
        let mut last_housekeeping = std::time::Instant::now() - Duration::from_secs(3600);
        let mut unmarked = Delivered::default();
        let mut busy = false;
        loop {
            match self.drain(&mut unmarked).await {
                Ok(last_claim) => busy = last_claim >= 2,
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "outbox relay pass failed"),
            }
            self.producer.replace_if_broken(&self.metrics).await;
            if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                self.housekeeping().await;
                last_housekeeping = std::time::Instant::now();
            }
            let wait = if unmarked.ids.is_empty() {
                self.settings.poll_interval
            } else {
                self.settings.mark_delay.min(self.settings.poll_interval)
            };
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Leave nothing to publish twice after a clean stop.
                    if let Err(e) = self.mark(&unmarked).await {
                        tracing::warn!(error = %format!("{e:#}"),
                            "marking delivered outbox rows at shutdown failed; they will be published again");
                    }
                    return Ok(());
                }
                // A notification, the listener back after a break, or the polling interval:
                // drain either way; a busy relay lets the commits of the next moment join in.
                _ = wakeup.next_or(Some(tokio::time::Instant::now() + wait)) => {
                    if busy && !self.settings.linger.is_zero() {
                        tokio::time::sleep(self.settings.linger).await;
                    }
                }
            }
        }
    }

    /// Publishes batches until a claim finds fewer rows than a full batch. Each claim also
    /// marks the rows of `unmarked`; the last batch's delivered rows are left in `unmarked` for
    /// the next claim. Returns how many rows the last claim found.
    async fn drain(&self, unmarked: &mut Delivered) -> anyhow::Result<usize> {
        loop {
            let claimed = self.step(unmarked).await?;
            if claimed < self.settings.batch_size as usize {
                return Ok(claimed);
            }
        }
    }

    /// Claims a batch (marking `unmarked` in the same statement) and publishes it; its
    /// delivered rows become `unmarked`. Returns the number of rows claimed.
    async fn step(&self, unmarked: &mut Delivered) -> anyhow::Result<usize> {
        let batch = self.claim(unmarked, self.settings.batch_size).await?;
        *unmarked = Delivered::default();
        let n = batch.rows.len();
        if n > 0 {
            self.metrics.outbox_relay_batch_size.observe(n as f64);
            let published = self.publish(batch).await?;
            *unmarked = published.delivered;
            if published.failed > 0 {
                anyhow::bail!("{} outbox rows could not be delivered", published.failed);
            }
        }
        Ok(n)
    }

    /// Claims, publishes and marks one batch, then returns the number of rows claimed.
    pub async fn relay_once(&self) -> anyhow::Result<usize> {
        let mut unmarked = Delivered::default();
        let claimed = self.step(&mut unmarked).await;
        self.mark(&unmarked).await?;
        claimed
    }

    /// Step 1: claims up to `batch_size` pending rows and commits the claim.
    pub async fn claim_batch(&self) -> anyhow::Result<ClaimedBatch> {
        self.claim(&Delivered::default(), self.settings.batch_size)
            .await
    }

    /// Step 3 alone (a claim of no rows): marks delivered rows published while our claim on
    /// them still holds.
    async fn mark(&self, delivered: &Delivered) -> anyhow::Result<()> {
        if !delivered.ids.is_empty() {
            self.claim(delivered, 0).await?;
        }
        Ok(())
    }

    /// Step 3 of the previous batch and step 1 of the next in one statement: marks `delivered`
    /// published, then claims up to `limit` pending rows. Marking and claiming never touch
    /// the same row (the claim skips `delivered`'s ids, which a claim that expired while they
    /// were being published could otherwise offer again).
    async fn claim(&self, delivered: &Delivered, limit: i64) -> anyhow::Result<ClaimedBatch> {
        let token = Uuid::new_v4();
        let rows = sqlx::query(
            "WITH marked AS (
                 UPDATE outbox SET published_at = now(), claimed_until = NULL, last_error = NULL
                  WHERE id = ANY($4) AND claim_token = $5 AND published_at IS NULL),
             batch AS (
                 SELECT id FROM outbox
                 WHERE published_at IS NULL AND parked_at IS NULL
                   AND (claimed_until IS NULL OR claimed_until < now())
                   AND id <> ALL($4)
                 ORDER BY id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbox o
                SET claimed_until = now() + make_interval(secs => $2),
                    claim_token = $3,
                    attempts = o.attempts + 1
               FROM batch
              WHERE o.id = batch.id
             RETURNING o.id, o.event_id, o.topic, o.message_key, o.payload::text AS payload,
                       o.headers",
        )
        .bind(limit)
        .bind(self.settings.claim_timeout.as_secs_f64())
        .bind(token)
        .bind(&delivered.ids)
        .bind(delivered.token)
        .fetch_all(&self.pool)
        .await
        .context("claiming outbox rows")?;
        let mut claimed = rows
            .into_iter()
            .map(|r| -> anyhow::Result<ClaimedRow> {
                let headers: sqlx::types::Json<MessageHeaders> = r.try_get("headers")?;
                Ok(ClaimedRow {
                    id: r.try_get("id")?,
                    event_id: r.try_get("event_id")?,
                    topic: r.try_get("topic")?,
                    key: r.try_get("message_key")?,
                    payload: r.try_get("payload")?,
                    headers: headers.0,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        // RETURNING does not keep the CTE's order; publication order must follow the outbox's.
        claimed.sort_by_key(|r| r.id);
        Ok(ClaimedBatch {
            token,
            rows: claimed,
        })
    }

    /// Step 2: publishes a claimed batch and awaits every delivery report. Rows whose delivery
    /// failed get their claim released after a short back-off; the delivered ones are returned
    /// for marking.
    pub async fn publish(&self, batch: ClaimedBatch) -> anyhow::Result<Published> {
        let producer = self.producer.get();
        let mut pending = Vec::with_capacity(batch.rows.len());
        for row in &batch.rows {
            // One produce span per message, in the trace the row was written in; the consumer
            // continues from it.
            let span = tracing::info_span!(
                "produce",
                otel.name = format!("produce {}", row.topic),
                otel.kind = "producer",
                messaging.system = "kafka",
                topic = %row.topic,
                event_id = %row.event_id,
                payment_id = %row.key,
                trace_id = tracing::field::Empty,
                span_id = tracing::field::Empty,
            );
            let mut headers = row.headers.clone();
            if headers.get(crate::headers::TRACEPARENT).is_some() {
                let tp = sagapay_telemetry::continue_trace(
                    &span,
                    headers.get(crate::headers::TRACEPARENT),
                );
                headers.set(crate::headers::TRACEPARENT, tp);
            }
            let record = FutureRecord::to(&row.topic)
                .key(&row.key)
                .payload(&row.payload)
                .headers(headers.to_kafka());
            // Enqueue everything before awaiting anything: librdkafka batches per partition
            // and the idempotent producer keeps their order.
            match producer.send_result(record) {
                Ok(delivery) => pending.push((row, Ok(delivery))),
                Err((e, _)) => {
                    tracing::warn!(error = %e, event_id = %row.event_id, "enqueue to producer failed");
                    pending.push((row, Err(e)));
                }
            }
        }
        let mut delivered = Vec::with_capacity(pending.len());
        let mut failed = Vec::new();
        let mut first_error: Option<String> = None;
        let mut parked: Vec<(&ClaimedRow, KafkaError)> = Vec::new();
        for (row, delivery) in pending {
            let outcome = match delivery {
                Ok(fut) => match fut.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(Some(e)),
                    Err(_canceled) => Err(None),
                },
                Err(e) => Err(Some(e)),
            };
            match outcome {
                Ok(()) => delivered.push(row.id),
                Err(Some(e)) if refused_for_good(&e) => parked.push((row, e)),
                Err(e) => {
                    first_error.get_or_insert_with(|| {
                        e.map_or("delivery canceled".to_owned(), |e| e.to_string())
                    });
                    failed.push(row.id);
                }
            }
        }
        self.producer.outcome(delivered.len(), failed.len());
        if let Some(error) = &first_error {
            tracing::warn!(%error, failed = failed.len(), delivered = delivered.len(),
                "outbox rows not delivered; they are retried");
        }
        self.park(&parked, batch.token).await?;
        self.metrics
            .outbox_published_total
            .inc_by(delivered.len() as u64);
        if !failed.is_empty() {
            self.metrics
                .outbox_publish_errors_total
                .inc_by(failed.len() as u64);
            // Let them be retried soon rather than after the full claim timeout.
            sqlx::query(
                "UPDATE outbox SET claimed_until = now() + interval '1 second',
                                   last_error = 'delivery failed'
                  WHERE id = ANY($1) AND claim_token = $2",
            )
            .bind(&failed)
            .bind(batch.token)
            .execute(&self.pool)
            .await
            .context("releasing failed outbox rows")?;
        }
        Ok(Published {
            delivered: Delivered {
                token: batch.token,
                ids: delivered,
            },
            failed: failed.len(),
            parked: parked.len(),
        })
    }

    /// Sets aside rows the broker refused for good, while our claim on them holds.
    async fn park(&self, rows: &[(&ClaimedRow, KafkaError)], token: Uuid) -> anyhow::Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = rows.iter().map(|(r, _)| r.id).collect();
        let errors: Vec<String> = rows
            .iter()
            .map(|(r, e)| {
                format!(
                    "refused by the broker, not retried: {e} ({} bytes)",
                    r.payload.len()
                )
            })
            .collect();
        sqlx::query(
            "UPDATE outbox o SET parked_at = now(), last_error = p.error, claimed_until = NULL
               FROM unnest($1::bigint[], $2::text[]) AS p(id, error)
              WHERE o.id = p.id AND o.claim_token = $3 AND o.published_at IS NULL",
        )
        .bind(&ids)
        .bind(&errors)
        .bind(token)
        .execute(&self.pool)
        .await
        .context("parking refused outbox rows")?;
        self.metrics.outbox_parked_total.inc_by(rows.len() as u64);
        for ((row, _), error) in rows.iter().zip(&errors) {
            tracing::error!(event_id = %row.event_id, topic = %row.topic, payment_id = %row.key,
                %error, "outbox row parked: the broker will never accept it");
        }
        Ok(())
    }

    /// Refreshes backlog gauges and deletes published rows past retention.
    async fn housekeeping(&self) {
        let stats = sqlx::query(
            "SELECT count(*) FILTER (WHERE parked_at IS NULL) AS pending,
                    COALESCE(EXTRACT(EPOCH FROM now() - min(created_at) FILTER (WHERE parked_at IS NULL)),
                             0)::bigint AS oldest_s,
                    count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked
               FROM outbox WHERE published_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await;
        if let Ok(row) = stats {
            self.metrics
                .outbox_pending_total
                .set(row.try_get::<i64, _>("pending").unwrap_or(0));
            self.metrics
                .outbox_oldest_pending_age_seconds
                .set(row.try_get::<i64, _>("oldest_s").unwrap_or(0));
            self.metrics
                .outbox_parked_rows
                .set(row.try_get::<i64, _>("parked").unwrap_or(0));
        }
        if let Err(e) =
            sqlx::query("DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)")
                .bind(self.settings.retention.as_secs_f64())
                .execute(&self.pool)
                .await
        {
            tracing::warn!(error = %e, "deleting published outbox rows past retention failed");
        }
    }
}
