//! The inbox consumer: runs a handler for each Kafka message inside one database transaction
//! that also records `(event_id, consumer)` in `inbox`, and stores the message's offset only
//! after that transaction committed.
//!
//! Outcomes per message:
//! - the inbox already has the event: skipped and counted, offset stored;
//! - the handler succeeds: effect, inbox row and outbox rows commit together, offset stored;
//! - a failure [`crate::failure::classify`] calls transient (database unavailable, lost race):
//!   rolled back and retried in place with back-off, so the message keeps its place; nothing
//!   after it on the partition is processed first. The retries are bounded: once a message
//!   has failed `retry_attempts` times *and* for `retry_budget`, it is dead-lettered as
//!   RETRY_EXHAUSTED and the consumer moves on (see "Why moving on is safe" below);
//! - a permanent failure (the bytes are not an envelope, its text or payload is invalid, the
//!   handler refuses it, or the database refuses its data: SQLSTATE classes 22, 23, 42):
//!   published to the dead-letter topic as NON_RETRYABLE with the SQLSTATE, offset stored,
//!   consumer moves on.
//!
//! Why moving on is safe: the saga keeps at most one message outstanding per payment (each
//! step waits for the answer to the last), so a parked message holds up only its own
//! payment, whose later messages cannot exist yet. What it leaves is a payment that stopped
//! moving; its dead letter says why, `sagapayctl dlq replay` resumes it once the cause is
//! fixed (the inbox has no row for a message that never committed), and the saga's step
//! deadlines are what find such a payment when nobody looks.
//!
//! Concurrency: messages are spread over `lanes` workers by their key (the payment id), so the
//! events of one payment are handled one at a time and in partition order, while different
//! payments proceed in parallel (each in its own transaction; PostgreSQL's group commit lets
//! their commits share WAL flushes). Offsets are stored per partition only up to the first
//! message not yet finished, so a crash never skips a message: everything after it is
//! redelivered and the inbox skips what was already done. Rebalances are fenced by
//! generations ([`crate::partitions`]): work that finishes after its partition moved stores
//! nothing.
//!
//! Batching: a lane takes the messages already waiting for it (at most `max_batch`) and handles
//! them in one transaction, each with its own inbox row, so a burst costs one commit instead
//! of one per message and a hot row (a ledger balance) is locked once per batch. Nothing waits
//! to fill a batch: at low rates batches are single messages. If any message of a batch
//! fails, the whole transaction rolls back and the batch is split (see `process_batch`), so
//! the outcome of every message is exactly what it would be without batching.

use crate::deadletter::{self, Classification, DeadLetter, Origin};
use crate::failure::{self, Retry};
use crate::handler::{Handler, HandlerError, MessageContext};
use crate::headers::TRACEPARENT;
use crate::kafka::KafkaSettings;
use crate::lag::LagReporter;
use crate::metrics::MessagingMetrics;
use crate::partitions::{ConsumerHealth, PartitionKey, PartitionTable, Stall, Tracking};
use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use sagapay_domain::{Envelope, EventType};
use sqlx::{PgConnection, PgPool};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often lag and stalls are reported.
const LAG_REPORT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Name recorded in the inbox and in dead letters: the service name.
    pub consumer_name: String,
    pub group_id: String,
    /// The channels' topics (`<namespace>.<channel>`).
    pub topics: Vec<String>,
    /// The event types the handler handles. Another type on the service's own channel is
    /// dead-lettered; on a stream (the payments channel) it is passed over.
    pub handles: Vec<EventType>,
    pub dead_letter_topic: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// A message failing transiently is dead-lettered (RETRY_EXHAUSTED) once it has failed at
    /// least this many times and for at least `retry_budget`.
    pub retry_attempts: u32,
    pub retry_budget: Duration,
    /// Messages handled at once (by key, see the module documentation); at least 1.
    pub lanes: usize,
    /// Most messages a lane handles in one database transaction (those already waiting for it);
    /// 1 turns batching off.
    pub max_batch: usize,
}

impl ConsumerSettings {
    /// Retry settings of the services: back-off from 100 ms to 5 s, and a message is given up
    /// after 10 attempts and 2 minutes, whichever comes later (a PostgreSQL restart or
    /// failover passes within it; a message that keeps failing past it is not waiting for
    /// the world to change).
    pub const DEFAULT_RETRY_ATTEMPTS: u32 = 10;
    pub const DEFAULT_RETRY_BUDGET: Duration = Duration::from_secs(120);
}

pub struct InboxConsumer<H> {
    consumer: Arc<StreamConsumer<Tracking>>,
    partitions: Arc<PartitionTable>,
    producer: FutureProducer,
    pool: PgPool,
    handler: Arc<H>,
    settings: ConsumerSettings,
    metrics: MessagingMetrics,
}

/// What became of a message a lane took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Processed, skipped as a duplicate, or dead-lettered: its offset may be stored.
    Done,
    /// Its partition was revoked before it finished; the partition's owner redelivers it.
    Abandoned,
    /// Shutdown came first; it is redelivered after the restart.
    Stopped,
}

/// A message handed to a lane, with the generation of its partition's assignment.
struct Delivery {
    msg: OwnedMessage,
    generation: u64,
}

impl Delivery {
    fn key(&self) -> PartitionKey {
        (self.msg.topic().to_owned(), self.msg.partition())
    }
}

/// A lane's report on one message.
struct Finished {
    key: PartitionKey,
    generation: u64,
    offset: i64,
    outcome: Outcome,
}

impl<H: Handler> InboxConsumer<H> {
    /// A consumer of `settings.topics` in group `settings.group_id`.
    pub fn new(
        kafka: &KafkaSettings,
        producer: FutureProducer,
        pool: PgPool,
        handler: Arc<H>,
        settings: ConsumerSettings,
        metrics: MessagingMetrics,
    ) -> anyhow::Result<Self> {
        let partitions = Arc::new(PartitionTable::default());
        let consumer = kafka.consumer_with_context(
            &settings.group_id,
            &settings.consumer_name,
            Tracking {
                table: partitions.clone(),
            },
        )?;
        Ok(Self {
            consumer: Arc::new(consumer),
            partitions,
            producer,
            pool,
            handler,
            settings,
            metrics,
        })
    }

    /// Lets `health` (what `/ready` reads) see this consumer's stalls.
    pub fn report_to(self, health: &ConsumerHealth) -> Self {
        health.register(&self.settings.consumer_name, self.partitions.clone());
        self
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .context("subscribing to topics")?;
        let this = Arc::new(self);
        // Stopped with the consumer, also when it stops on a lane's error.
        let reporter_stop = shutdown.child_token();
        let reporter = tokio::spawn(
            LagReporter {
                consumer: this.consumer.clone(),
                table: this.partitions.clone(),
                metrics: this.metrics.clone(),
                interval: LAG_REPORT_INTERVAL,
            }
            .run(reporter_stop.clone()),
        );
        let lanes = this.settings.lanes.max(1);
        let (finished_tx, mut finished_rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        let mut lane_txs = Vec::with_capacity(lanes);
        let mut lane_tasks = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let (tx, rx) = tokio::sync::mpsc::channel::<Delivery>(64);
            lane_txs.push(tx);
            lane_tasks.push(tokio::spawn(this.clone().lane(
                rx,
                finished_tx.clone(),
                shutdown.clone(),
            )));
        }
        drop(finished_tx);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(f) = finished_rx.recv() => this.finish(f),
                msg = this.consumer.recv() => {
                    let msg = match msg {
                        Ok(m) => m.detach(),
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka consumer error");
                            continue;
                        }
                    };
                    let key = (msg.topic().to_owned(), msg.partition());
                    // A message of a partition revoked since it was fetched is not ours.
                    let Some(generation) = this.partitions.received(&key, msg.offset()) else {
                        continue;
                    };
                    let lane = lane_of(&msg, lanes);
                    // Waits while the lane is full: back-pressure on the partition reads.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        sent = lane_txs[lane].send(Delivery { msg, generation }) => {
                            if sent.is_err() {
                                break; // the lane stopped on an error; reported below
                            }
                        }
                    }
                }
            }
        }
        // Let the lanes finish the message each is on, then store what finished.
        drop(lane_txs);
        let mut failure = None;
        for task in lane_tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failure = Some(e),
                Err(e) => failure = Some(anyhow::anyhow!("consumer lane panicked: {e}")),
            }
        }
        while let Ok(f) = finished_rx.try_recv() {
            this.finish(f);
        }
        reporter_stop.cancel();
        let _ = reporter.await;
        // Commit what was stored; anything not committed is redelivered and deduplicated.
        if let Err(e) = this.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final offset commit");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// One lane: takes the messages waiting for it, a batch at a time, until its channel
    /// closes or shutdown interrupts a message.
    async fn lane(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::Receiver<Delivery>,
        finished: tokio::sync::mpsc::UnboundedSender<Finished>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let max_batch = self.settings.max_batch.max(1);
        while let Some(first) = rx.recv().await {
            if shutdown.is_cancelled() {
                break;
            }
            // Whatever else already waits for this lane shares the transaction.
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            // Messages of partitions revoked while they waited are the new owner's.
            let (current, revoked): (Vec<Delivery>, Vec<Delivery>) = batch
                .into_iter()
                .partition(|d| self.partitions.is_current(&d.key(), d.generation));
            for d in &revoked {
                report(&finished, d, Outcome::Abandoned);
            }
            let outcomes = self.process_batch(&current, &shutdown).await?;
            let mut stopped = false;
            for (d, outcome) in current.iter().zip(outcomes) {
                report(&finished, d, outcome);
                stopped |= outcome == Outcome::Stopped;
            }
            if stopped {
                break;
            }
        }
        Ok(())
    }

    /// Records a finished message and stores the partition's offset as far as it is contiguous.
    fn finish(&self, f: Finished) {
        if f.outcome != Outcome::Done {
            return;
        }
        if let Some(through) = self.partitions.finished(&f.key, f.generation, f.offset) {
            // librdkafka commits `through + 1`, the next offset to read. Storing fails for a
            // partition no longer assigned; its messages are redelivered to the new owner.
            if let Err(e) = self.consumer.store_offset(&f.key.0, f.key.1, through) {
                tracing::debug!(error = %e, topic = %f.key.0, partition = f.key.1, "offset not stored");
            }
        }
    }

    /// Handles `batch` (messages of one lane, in arrival order) in as few transactions as it
    /// can: all of it at once when every handler succeeds. When a message fails, the batch is
    /// rolled back, the messages before it are committed as a batch again, the failing one is
    /// handled on its own (retried in place, dead-lettered or stopped at shutdown exactly as
    /// without batching), and the rest continue as a batch. Returns each message's outcome
    /// (`Stopped` from the first one interrupted by shutdown on).
    async fn process_batch(
        &self,
        batch: &[Delivery],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(batch.len());
        while outcomes.len() < batch.len() {
            let rest = &batch[outcomes.len()..];
            let committed = if rest.len() < 2 {
                0
            } else {
                match self.try_batch(rest).await {
                    Ok(()) => rest.len(),
                    Err(ok_before) if ok_before >= 2 => self
                        .try_batch(&rest[..ok_before])
                        .await
                        .map_or(0, |()| ok_before),
                    Err(_) => 0,
                }
            };
            if committed > 0 {
                outcomes.extend(std::iter::repeat_n(Outcome::Done, committed));
                continue;
            }
            let outcome = self.process(&rest[0], shutdown).await?;
            outcomes.push(outcome);
            if outcome == Outcome::Stopped {
                outcomes.resize(batch.len(), Outcome::Stopped);
            }
        }
        Ok(outcomes)
    }

    /// All of `batch` in one transaction, or nothing. On failure, returns how many messages
    /// at the start of the batch were applied before the one that failed (all rolled back).
    async fn try_batch(&self, batch: &[Delivery]) -> Result<(), usize> {
        let mut items = Vec::with_capacity(batch.len());
        let mut skipped = Vec::new();
        for (i, d) in batch.iter().enumerate() {
            let mut ctx = MessageContext::new(&d.msg);
            // A message that is not an envelope is dead-lettered by the one-by-one path.
            let parsed = parse(
                d.msg.payload().unwrap_or_default(),
                &ctx.topic,
                &self.settings.handles,
            )
            .map_err(|_| i)?;
            let Parsed::Handled(envelope) = parsed else {
                continue; // another party's event on a stream
            };
            if !self.handler.affects(&envelope) {
                skipped.push(envelope);
                continue;
            }
            let span = consume_span(&envelope, &ctx);
            let traceparent =
                sagapay_telemetry::continue_trace(&span, ctx.headers.get(TRACEPARENT));
            ctx.headers.set(TRACEPARENT, traceparent);
            items.push((i, envelope, ctx, span));
        }
        if items.is_empty() {
            self.count_unaffected(&skipped);
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(|_| 0usize)?;
        // Every event of the batch goes into the inbox in one statement; those it did not
        // insert were there already (or twice in the batch): duplicates, skipped.
        let mut recorded = self
            .record_batch_in_inbox(&mut tx, &items)
            .await
            .map_err(|_| 0usize)?;
        let mut fresh = Vec::with_capacity(items.len());
        for (i, envelope, ctx, span) in &items {
            let db_span = tracing::info_span!(
                parent: span,
                "db.transaction",
                otel.kind = "client",
                db.system = "postgresql",
                batch_size = batch.len()
            );
            let inserted = recorded.remove(&envelope.event_id);
            let applied = async {
                if inserted {
                    self.handler.handle(&mut tx, envelope, ctx).await?;
                }
                Ok::<bool, HandlerError>(inserted)
            }
            .instrument(db_span)
            .await;
            match applied {
                Ok(inserted) => fresh.push(inserted),
                Err(e) => {
                    let _entered = span.enter();
                    tracing::debug!(error = %e, batch_size = batch.len(),
                        "batch rolled back at this message");
                    return Err(*i);
                }
            }
        }
        if let Err(e) = tx.commit().await {
            tracing::debug!(error = %e, "batch commit failed");
            return Err(0);
        }
        self.count_unaffected(&skipped);
        for ((_, envelope, ctx, span), inserted) in items.iter().zip(fresh) {
            ctx.after_commit.run();
            self.observe_queue_delay(envelope);
            if inserted {
                self.count_consumed(envelope);
            } else {
                self.count_duplicate(envelope, span);
            }
        }
        self.metrics.consumer_batch_size.observe(batch.len() as f64);
        Ok(())
    }

    /// Events acknowledged without a transaction: the handler said they change nothing.
    fn count_unaffected(&self, skipped: &[Envelope]) {
        for envelope in skipped {
            self.observe_queue_delay(envelope);
            self.count_consumed(envelope);
        }
    }

    fn count_consumed(&self, envelope: &Envelope) {
        self.metrics
            .events_consumed_total
            .with_label_values(&[&envelope.event_type])
            .inc();
    }

    /// Records the events of a batch in the inbox, in one statement; returns the ids it
    /// inserted (the others were there already, or are repeated in the batch).
    async fn record_batch_in_inbox(
        &self,
        conn: &mut PgConnection,
        items: &[(usize, Envelope, MessageContext, tracing::Span)],
    ) -> sqlx::Result<std::collections::HashSet<uuid::Uuid>> {
        let mut ids = Vec::with_capacity(items.len());
        let mut types = Vec::with_capacity(items.len());
        let mut topics = Vec::with_capacity(items.len());
        let mut partitions = Vec::with_capacity(items.len());
        let mut offsets = Vec::with_capacity(items.len());
        for (_, envelope, ctx, _) in items {
            ids.push(envelope.event_id);
            types.push(envelope.event_type.as_str());
            topics.push(ctx.topic.as_str());
            partitions.push(ctx.partition);
            offsets.push(ctx.offset);
        }
        let inserted: Vec<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO inbox (event_id, consumer, event_type, topic, kafka_partition, kafka_offset)
             SELECT e, $2, t, tp, p, o
               FROM UNNEST($1::uuid[], $3::text[], $4::text[], $5::int[], $6::bigint[])
                    AS u(e, t, tp, p, o)
             ON CONFLICT (event_id, consumer) DO NOTHING
             RETURNING event_id",
        )
        .bind(&ids)
        .bind(&self.settings.consumer_name)
        .bind(&types)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(conn)
        .await?;
        Ok(inserted.into_iter().collect())
    }

    /// Records the event in the inbox; false when it was there already (a duplicate).
    async fn record_in_inbox(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        ctx: &MessageContext,
    ) -> Result<bool, HandlerError> {
        let inserted = sqlx::query(
            "INSERT INTO inbox (event_id, consumer, event_type, topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (event_id, consumer) DO NOTHING",
        )
        .bind(envelope.event_id)
        .bind(&self.settings.consumer_name)
        .bind(&envelope.event_type)
        .bind(&ctx.topic)
        .bind(ctx.partition)
        .bind(ctx.offset)
        .execute(conn)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    fn count_duplicate(&self, envelope: &Envelope, span: &tracing::Span) {
        self.metrics
            .duplicate_events_skipped_total
            .with_label_values(&[&envelope.event_type])
            .inc();
        let _entered = span.enter();
        tracing::info!("duplicate event skipped");
    }

    fn observe_queue_delay(&self, envelope: &Envelope) {
        let delay_s = (chrono::Utc::now() - envelope.occurred_at)
            .to_std()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics
            .event_queue_delay_seconds
            .with_label_values(&[&envelope.event_type])
            .observe(delay_s);
    }

    /// One message on its own: handled, retried in place while its failure is transient and
    /// the retry budget lasts, or dead-lettered.
    async fn process(&self, d: &Delivery, shutdown: &CancellationToken) -> anyhow::Result<Outcome> {
        let msg = &d.msg;
        let mut ctx = MessageContext::new(msg);
        let value = msg.payload().unwrap_or_default();
        let envelope = match parse(value, &ctx.topic, &self.settings.handles) {
            Ok(Parsed::Handled(env)) => env,
            Ok(Parsed::NotFollowed) => return Ok(Outcome::Done),
            Err(error) => {
                let mut letter = self.letter(msg, &ctx, None, &error, Classification::NonRetryable);
                (letter.event_id, letter.event_type) = identify(value);
                return self.dead_letter(letter, shutdown).await;
            }
        };
        if !self.handler.affects(&envelope) {
            self.count_unaffected(std::slice::from_ref(&envelope));
            return Ok(Outcome::Done);
        }
        let span = consume_span(&envelope, &ctx);
        // The handler's events continue the trace from this span.
        let traceparent = sagapay_telemetry::continue_trace(&span, ctx.headers.get(TRACEPARENT));
        ctx.headers.set(TRACEPARENT, traceparent);
        let key = d.key();
        let outcome = async {
            self.observe_queue_delay(&envelope);
            let mut delays =
                failure::retry_delays(self.settings.retry_initial, self.settings.retry_max);
            let mut attempts: u32 = 0;
            let mut first_failure: Option<Instant> = None;
            loop {
                if !self.partitions.is_current(&key, d.generation) {
                    tracing::info!("partition revoked while the message was retried; left to its new owner");
                    return Ok(Outcome::Abandoned);
                }
                attempts += 1;
                let Err(e) = self.handle_once(&envelope, &ctx).await else {
                    return Ok(Outcome::Done);
                };
                let classified = failure::classify(&e);
                let error = format!("{e:#}");
                let failing_since = *first_failure.get_or_insert_with(Instant::now);
                let exhausted = attempts >= self.settings.retry_attempts
                    && failing_since.elapsed() >= self.settings.retry_budget;
                let classification = match classified.retry {
                    Retry::Permanent => Classification::NonRetryable,
                    Retry::Transient if exhausted => Classification::RetryExhausted,
                    Retry::Transient => {
                        let backoff = delays.next().unwrap_or(self.settings.retry_max);
                        self.metrics
                            .handler_retries_total
                            .with_label_values(&[&envelope.event_type])
                            .inc();
                        tracing::warn!(%error, attempt = attempts, backoff_ms = backoff.as_millis() as u64,
                            sqlstate = classified.sqlstate.as_deref().unwrap_or(""),
                            "transient handler failure: retrying in place");
                        self.partitions.stalled(
                            &key,
                            d.generation,
                            ctx.offset,
                            Stall {
                                event_type: Some(envelope.event_type.clone()),
                                first_failure: failing_since,
                                attempts,
                                last_error: error,
                            },
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        continue;
                    }
                };
                let error = match classification {
                    Classification::RetryExhausted => format!(
                        "gave up after {attempts} attempts over {:.1} s: {error}",
                        failing_since.elapsed().as_secs_f64()
                    ),
                    Classification::NonRetryable => error,
                };
                tracing::warn!(%error, classification = classification.as_str(),
                    sqlstate = classified.sqlstate.as_deref().unwrap_or(""), "dead-lettering");
                let mut letter = self.letter(msg, &ctx, Some(&envelope), &error, classification);
                letter.sqlstate = classified.sqlstate;
                letter.attempts = Some(attempts);
                return self.dead_letter(letter, shutdown).await;
            }
        }
        .instrument(span)
        .await;
        if !matches!(outcome, Ok(Outcome::Done)) {
            self.partitions.unstalled(&key, d.generation, ctx.offset);
        }
        outcome
    }

    /// One attempt: inbox row + handler in one transaction.
    async fn handle_once(
        &self,
        envelope: &Envelope,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let span = tracing::info_span!(
            "db.transaction",
            otel.kind = "client",
            db.system = "postgresql"
        );
        // Whatever an earlier, rolled-back attempt left waiting never happened.
        ctx.after_commit.discard();
        async {
            let mut tx = self.pool.begin().await?;
            if !self.record_in_inbox(&mut tx, envelope, ctx).await? {
                tx.rollback().await?;
                self.count_duplicate(envelope, &tracing::Span::current());
                return Ok(());
            }
            self.handler.handle(&mut tx, envelope, ctx).await?;
            tx.commit().await?;
            ctx.after_commit.run();
            self.count_consumed(envelope);
            Ok(())
        }
        .instrument(span)
        .await
    }

    fn letter(
        &self,
        msg: &OwnedMessage,
        ctx: &MessageContext,
        envelope: Option<&Envelope>,
        error: &str,
        classification: Classification,
    ) -> DeadLetter {
        let mut letter = DeadLetter::new(
            &Origin {
                topic: &ctx.topic,
                partition: ctx.partition,
                offset: ctx.offset,
                key: msg.key(),
                headers: &ctx.headers.0,
                value: msg.payload().unwrap_or_default(),
            },
            &self.settings.consumer_name,
            error,
            classification,
        );
        letter.event_id = envelope.map(|e| e.event_id.to_string());
        letter.event_type = envelope.map(|e| e.event_type.clone());
        letter
    }

    /// Publishes a dead letter (retrying until the broker has it); the message is then done.
    async fn dead_letter(
        &self,
        letter: DeadLetter,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let retry = (self.settings.retry_initial, self.settings.retry_max);
        match deadletter::publish(
            &self.producer,
            &self.settings.dead_letter_topic,
            &letter,
            retry,
            shutdown,
        )
        .await
        {
            Ok(()) => {}
            Err(_) if shutdown.is_cancelled() => return Ok(Outcome::Stopped),
            Err(e) => return Err(e),
        }
        self.metrics
            .dlq_published_total
            .with_label_values(&[letter.classification.as_str()])
            .inc();
        tracing::warn!(topic = %letter.original_topic, offset = letter.original_offset,
            error = %letter.error, classification = letter.classification.as_str(),
            "message dead-lettered");
        Ok(Outcome::Done)
    }
}

fn report(finished: &tokio::sync::mpsc::UnboundedSender<Finished>, d: &Delivery, outcome: Outcome) {
    let _ = finished.send(Finished {
        key: d.key(),
        generation: d.generation,
        offset: d.msg.offset(),
        outcome,
    });
}

/// The span of one consumed event; it continues the trace the message's headers carry.
fn consume_span(envelope: &Envelope, ctx: &MessageContext) -> tracing::Span {
    tracing::info_span!(
        "consume",
        otel.name = format!("consume {}", envelope.event_type),
        otel.kind = "consumer",
        messaging.system = "kafka",
        event_type = %envelope.event_type,
        event_id = %envelope.event_id,
        payment_id = %envelope.payment_id,
        correlation_id = %envelope.correlation_id,
        topic = %ctx.topic,
        partition = ctx.partition,
        offset = ctx.offset,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    )
}

/// The lane of a message: by key, so one payment's events stay in order; messages without a
/// key go by partition.
fn lane_of(msg: &OwnedMessage, lanes: usize) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match msg.key() {
        Some(key) => key.hash(&mut h),
        None => (msg.topic(), msg.partition()).hash(&mut h),
    }
    (h.finish() % lanes as u64) as usize
}

/// The event id and type of bytes that are not a valid envelope, as far as they can be read
/// (for the dead letter): a UUID, and a type of at most 64 printable characters.
fn identify(value: &[u8]) -> (Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Ids {
        event_id: Option<uuid::Uuid>,
        event_type: Option<serde_json::Value>,
    }
    let Ok(ids) = serde_json::from_slice::<Ids>(value) else {
        return (None, None);
    };
    let event_type = ids
        .event_type
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .filter(|t| t.len() <= 64 && t.chars().all(|c| c.is_ascii_graphic()))
        .map(str::to_owned);
    (ids.event_id.map(|id| id.to_string()), event_type)
}

/// What a message is to this consumer.
enum Parsed {
    /// An envelope of a type it handles, on the right channel.
    Handled(Envelope),
    /// A type it does not follow, on a stream: passed over.
    NotFollowed,
}

/// Reads an envelope and checks it belongs on the topic it came from and to this consumer.
fn parse(value: &[u8], topic: &str, handles: &[EventType]) -> Result<Parsed, String> {
    let env = Envelope::from_json(value).map_err(|e| e.to_string())?;
    let Some(event_type) = env.event_type() else {
        return Err(format!("unknown event type {:?}", env.event_type));
    };
    let channel = event_type.channel();
    if !topic.ends_with(&format!(".{}", channel.as_str())) {
        return Err(format!(
            "event type {} travels on the {} channel, not on topic {topic}",
            env.event_type,
            channel.as_str()
        ));
    }
    if handles.contains(&event_type) {
        Ok(Parsed::Handled(env))
    } else if channel.is_stream() {
        Ok(Parsed::NotFollowed)
    } else {
        Err(format!("event type {} is not handled here", env.event_type))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagapay_domain::events::RiskApproved;

    #[test]
    fn parse_rejects_garbage_unknown_types_misrouted_and_unhandled_events() {
        let handles = [EventType::RiskApproved, EventType::PaymentFinalized];
        let ok = |r: Result<Parsed, String>| matches!(r, Ok(Parsed::Handled(_)));
        assert!(parse(b"not json", "ns.orchestrator", &handles).is_err());
        let env = Envelope::new(
            uuid::Uuid::now_v7(),
            None,
            "c",
            &RiskApproved { reason: "r".into() },
        );
        assert!(ok(parse(&env.to_json(), "ns.orchestrator", &handles)));
        assert!(
            parse(&env.to_json(), "ns.risk", &handles).is_err(),
            "misrouted"
        );
        assert!(
            parse(&env.to_json(), "ns.orchestrator", &[EventType::RiskDenied]).is_err(),
            "not handled on the service's own channel"
        );
        let mut unknown = env.clone();
        unknown.event_type = "risk.maybe".into();
        assert!(parse(&unknown.to_json(), "ns.orchestrator", &handles).is_err());
        let mut other = env.clone();
        other.event_type = "payments.finalized".into();
        assert!(
            matches!(
                parse(&other.to_json(), "ns.payments", &[EventType::RiskApproved]),
                Ok(Parsed::NotFollowed)
            ),
            "passed over on a stream"
        );
    }
}
