//! The inbox consumer: runs a handler for each Kafka message inside one database transaction
//! that also records `(event_id, consumer)` in `inbox`, and stores the message's offset only
//! after that transaction committed.
//!
//! Outcomes per message:
//! - the inbox already has the event: skipped and counted, offset stored;
//! - the handler succeeds: effect, inbox row and outbox rows commit together, offset stored;
//! - transient failure (database, conflict): rolled back and retried in place with back-off,
//!   so the message keeps its place; nothing after it on the partition is processed first;
//! - permanent failure (the bytes are not an envelope, or its payload is invalid): published to
//!   the dead-letter topic with classification NON_RETRYABLE, offset stored, consumer moves on.
//!
//! Concurrency: messages are spread over `lanes` workers by their key (the payment id), so the
//! events of one payment are handled one at a time and in partition order, while different
//! payments proceed in parallel (each in its own transaction; PostgreSQL's group commit lets
//! their commits share WAL flushes). Offsets are stored per partition only up to the first
//! message not yet finished, so a crash never skips a message: everything after it is
//! redelivered and the inbox skips what was already done.
//!
//! Batching: a lane takes the messages already waiting for it (at most `max_batch`) and handles
//! them in one transaction, each with its own inbox row, so a burst costs one commit instead
//! of one per message and a hot row (a ledger balance) is locked once per batch. Nothing waits
//! to fill a batch: at low rates batches are single messages. If any message of a batch
//! fails, the whole transaction rolls back and the batch is split (see `process_batch`), so
//! the outcome of every message is exactly what it would be without batching.

use crate::deadletter::{Classification, DeadLetter};
use crate::headers::{MessageHeaders, TRACEPARENT};
use crate::metrics::MessagingMetrics;
use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sagapay_domain::Envelope;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where a message came from, and its headers.
#[derive(Debug)]
pub struct MessageContext {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub headers: MessageHeaders,
    after_commit: AfterCommit,
}

impl MessageContext {
    fn new(msg: &OwnedMessage) -> Self {
        Self {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            headers: MessageHeaders::from_kafka(msg.headers()),
            after_commit: AfterCommit::default(),
        }
    }

    /// Runs `effect` once the transaction the handler ran in has committed, and never if it
    /// rolls back (a batch split after a later message failed, a retried attempt). For
    /// effects outside the database that must happen once per applied event: metrics, mostly.
    pub fn after_commit(&self, effect: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(effect));
    }
}

type Effect = Box<dyn FnOnce() + Send>;

/// Effects waiting for their transaction's commit.
#[derive(Default)]
struct AfterCommit(std::sync::Mutex<Vec<Effect>>);

impl std::fmt::Debug for AfterCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterCommit")
            .field("waiting", &self.lock().len())
            .finish()
    }
}

impl AfterCommit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Effect>> {
        // A panicking effect cannot leave the list half-changed: recover it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, effect: Effect) {
        self.lock().push(effect);
    }

    /// The transaction committed: run what waited for it.
    fn run(&self) {
        let effects = std::mem::take(&mut *self.lock());
        for effect in effects {
            effect();
        }
    }

    /// The transaction rolled back: forget what waited for it.
    fn discard(&self) {
        self.lock().clear();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: the same message may succeed later (database down, lost race).
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Never worth retrying: the message itself is wrong.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

impl HandlerError {
    pub fn permanent(e: impl Into<anyhow::Error>) -> Self {
        HandlerError::Permanent(e.into())
    }
    pub fn transient(e: impl Into<anyhow::Error>) -> Self {
        HandlerError::Transient(e.into())
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Transient(e.into())
    }
}

impl From<sagapay_domain::events::DecodeError> for HandlerError {
    fn from(e: sagapay_domain::events::DecodeError) -> Self {
        HandlerError::Permanent(e.into())
    }
}

/// A service's reaction to events. It runs inside the transaction that also records the
/// event in the inbox; it must do all its writes through `conn` (including outbox rows).
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        envelope: &'a Envelope,
        ctx: &'a MessageContext,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;

    /// Whether `envelope` would change anything in this service. One that would not is
    /// acknowledged without a transaction or an inbox row (handling nothing twice is still
    /// nothing). Say false only for events the handler is sure to ignore; when in doubt (an
    /// undecodable payload, say), true, so the handler sees it and refuses it properly.
    fn affects(&self, envelope: &Envelope) -> bool {
        let _ = envelope;
        true
    }
}

#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Name recorded in the inbox and in dead letters: the service name.
    pub consumer_name: String,
    pub group_id: String,
    pub topics: Vec<String>,
    pub dead_letter_topic: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Messages handled at once (by key, see the module documentation); at least 1.
    pub lanes: usize,
    /// Most messages a lane handles in one database transaction (those already waiting for it);
    /// 1 turns batching off.
    pub max_batch: usize,
}

pub struct InboxConsumer<H> {
    consumer: StreamConsumer,
    producer: FutureProducer,
    pool: PgPool,
    handler: Arc<H>,
    settings: ConsumerSettings,
    metrics: MessagingMetrics,
}

enum Processed {
    Done,
    ShuttingDown,
}

/// A lane's report on one message.
struct Finished {
    topic: String,
    partition: i32,
    offset: i64,
    done: bool,
}

/// Per partition: offsets handed to lanes and not finished, and the highest offset seen.
struct PartitionProgress {
    pending: BTreeSet<i64>,
    highest_seen: i64,
    stored: i64,
}

impl PartitionProgress {
    /// Progress of a partition whose first message in this run is at `offset`.
    fn starting_at(offset: i64) -> Self {
        Self {
            pending: BTreeSet::new(),
            highest_seen: offset - 1,
            stored: offset - 1,
        }
    }

    /// The last offset before which everything is finished (what may be stored), if it moved.
    fn advance(&mut self) -> Option<i64> {
        let done_through = match self.pending.first() {
            Some(first) => first - 1,
            None => self.highest_seen,
        };
        (done_through > self.stored).then(|| {
            self.stored = done_through;
            done_through
        })
    }
}

impl<H: Handler> InboxConsumer<H> {
    pub fn new(
        consumer: StreamConsumer,
        producer: FutureProducer,
        pool: PgPool,
        handler: Arc<H>,
        settings: ConsumerSettings,
        metrics: MessagingMetrics,
    ) -> Self {
        Self {
            consumer,
            producer,
            pool,
            handler,
            settings,
            metrics,
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        self.consumer
            .subscribe(&topics)
            .context("subscribing to topics")?;
        let this = Arc::new(self);
        let lanes = this.settings.lanes.max(1);
        let (finished_tx, mut finished_rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        let mut lane_txs = Vec::with_capacity(lanes);
        let mut lane_tasks = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<OwnedMessage>(64);
            lane_txs.push(tx);
            let (this, finished_tx, shutdown) =
                (this.clone(), finished_tx.clone(), shutdown.clone());
            lane_tasks.push(tokio::spawn(async move {
                let max_batch = this.settings.max_batch.max(1);
                while let Some(first) = rx.recv().await {
                    if shutdown.is_cancelled() {
                        break;
                    }
                    // Whatever else already waits for this lane shares the transaction.
                    let mut batch = vec![first];
                    while batch.len() < max_batch {
                        match rx.try_recv() {
                            Ok(m) => batch.push(m),
                            Err(_) => break,
                        }
                    }
                    let outcomes = this.process_batch(&batch, &shutdown).await?;
                    let mut stopped = false;
                    for (msg, done) in batch.iter().zip(outcomes) {
                        let _ = finished_tx.send(Finished {
                            topic: msg.topic().to_owned(),
                            partition: msg.partition(),
                            offset: msg.offset(),
                            done,
                        });
                        stopped |= !done;
                    }
                    if stopped {
                        break;
                    }
                }
                anyhow::Ok(())
            }));
        }
        drop(finished_tx);
        let mut progress: HashMap<(String, i32), PartitionProgress> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(f) = finished_rx.recv() => this.finish(&mut progress, f),
                msg = this.consumer.recv() => {
                    let msg = match msg {
                        Ok(m) => m.detach(),
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka consumer error");
                            continue;
                        }
                    };
                    let p = progress
                        .entry((msg.topic().to_owned(), msg.partition()))
                        .or_insert_with(|| PartitionProgress::starting_at(msg.offset()));
                    p.pending.insert(msg.offset());
                    p.highest_seen = p.highest_seen.max(msg.offset());
                    let lane = lane_of(&msg, lanes);
                    // Waits while the lane is full: back-pressure on the partition reads.
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        sent = lane_txs[lane].send(msg) => {
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
            this.finish(&mut progress, f);
        }
        // Commit what was stored; anything not committed is redelivered and deduplicated.
        if let Err(e) = this.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final offset commit");
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Records a finished message and stores the partition's offset as far as it is contiguous.
    fn finish(&self, progress: &mut HashMap<(String, i32), PartitionProgress>, f: Finished) {
        if !f.done {
            return;
        }
        let Some(p) = progress.get_mut(&(f.topic.clone(), f.partition)) else {
            return;
        };
        p.pending.remove(&f.offset);
        if let Some(through) = p.advance() {
            // librdkafka commits `through + 1`, the next offset to read. Storing fails for a
            // partition no longer assigned; its messages are redelivered to the new owner.
            if let Err(e) = self.consumer.store_offset(&f.topic, f.partition, through) {
                tracing::debug!(error = %e, topic = %f.topic, partition = f.partition, "offset not stored");
            }
            self.record_lag(&f.topic, f.partition, through);
        }
    }

    /// Lag from the high watermark the client last saw for the partition (kept by librdkafka
    /// from fetch responses, so this costs no request).
    fn record_lag(&self, topic_name: &str, partition: i32, done_through: i64) {
        let Ok(topic) = std::ffi::CString::new(topic_name) else {
            return;
        };
        let (mut low, mut high) = (-1i64, -1i64);
        // SAFETY: the client handle lives as long as `self.consumer`; `topic` outlives the call;
        // `low` and `high` are valid for writes. The call reads librdkafka's cached watermarks
        // and does not block. (rdkafka 0.38 has no safe wrapper for it.)
        let err = unsafe {
            rdkafka::bindings::rd_kafka_get_watermark_offsets(
                self.consumer.client().native_ptr(),
                topic.as_ptr(),
                partition,
                &mut low,
                &mut high,
            )
        };
        if err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 {
            let partition = partition.to_string();
            self.metrics
                .consumer_lag_messages
                .with_label_values(&[topic_name, &partition])
                .set((high - done_through - 1).max(0));
        }
    }

    /// Handles `batch` (messages of one lane, in arrival order) in as few transactions as it
    /// can: all of it at once when every handler succeeds. When a message fails, the batch is
    /// rolled back, the messages before it are committed as a batch again, the failing one is
    /// handled on its own (retried in place, dead-lettered or stopped at shutdown exactly as
    /// without batching), and the rest continue as a batch. Returns whether each message is
    /// done (false from the first one interrupted by shutdown on).
    async fn process_batch(
        &self,
        batch: &[OwnedMessage],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<bool>> {
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
                outcomes.extend(std::iter::repeat_n(true, committed));
                continue;
            }
            let done = matches!(self.process(&rest[0], shutdown).await?, Processed::Done);
            outcomes.push(done);
            if !done {
                outcomes.resize(batch.len(), false);
            }
        }
        Ok(outcomes)
    }

    /// All of `batch` in one transaction, or nothing. On failure, returns how many messages
    /// at the start of the batch were applied before the one that failed (all rolled back).
    async fn try_batch(&self, batch: &[OwnedMessage]) -> Result<(), usize> {
        let mut items = Vec::with_capacity(batch.len());
        let mut skipped = Vec::new();
        for (i, msg) in batch.iter().enumerate() {
            let mut ctx = MessageContext::new(msg);
            // A message that is not an envelope is dead-lettered by the one-by-one path.
            let envelope = parse(msg.payload().unwrap_or_default(), &ctx.topic).map_err(|_| i)?;
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
        let mut fresh = Vec::with_capacity(items.len());
        for (i, envelope, ctx, span) in &items {
            let db_span = tracing::info_span!(
                parent: span,
                "db.transaction",
                otel.kind = "client",
                db.system = "postgresql",
                batch_size = batch.len()
            );
            let applied = async {
                let inserted = self.record_in_inbox(&mut tx, envelope, ctx).await?;
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

    async fn process(
        &self,
        msg: &OwnedMessage,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Processed> {
        let mut ctx = MessageContext::new(msg);
        let value = msg.payload().unwrap_or_default();
        let envelope = match parse(value, &ctx.topic) {
            Ok(env) => env,
            Err(error) => {
                self.dead_letter(
                    msg,
                    &ctx,
                    None,
                    &error,
                    Classification::NonRetryable,
                    shutdown,
                )
                .await?;
                return Ok(Processed::Done);
            }
        };
        if !self.handler.affects(&envelope) {
            self.count_unaffected(std::slice::from_ref(&envelope));
            return Ok(Processed::Done);
        }
        let span = consume_span(&envelope, &ctx);
        // The handler's events continue the trace from this span.
        let traceparent = sagapay_telemetry::continue_trace(&span, ctx.headers.get(TRACEPARENT));
        ctx.headers.set(TRACEPARENT, traceparent);
        async {
            self.observe_queue_delay(&envelope);
            let mut backoff = self.settings.retry_initial;
            let mut attempt: u32 = 0;
            loop {
                attempt += 1;
                match self.handle_once(&envelope, &ctx).await {
                    Ok(()) => return Ok(Processed::Done),
                    Err(HandlerError::Permanent(e)) => {
                        let error = format!("{e:#}");
                        tracing::warn!(%error, "permanent handler failure: dead-lettering");
                        self.dead_letter(
                            msg,
                            &ctx,
                            Some(&envelope),
                            &error,
                            Classification::NonRetryable,
                            shutdown,
                        )
                        .await?;
                        return Ok(Processed::Done);
                    }
                    Err(HandlerError::Transient(e)) => {
                        self.metrics
                            .handler_retries_total
                            .with_label_values(&[&envelope.event_type])
                            .inc();
                        tracing::warn!(error = %format!("{e:#}"), attempt, backoff_ms = backoff.as_millis() as u64,
                            "transient handler failure: retrying in place");
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(Processed::ShuttingDown),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(self.settings.retry_max);
                    }
                }
            }
        }
        .instrument(span)
        .await
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

    /// Publishes a dead letter, retrying until the broker has it (the offset must not move
    /// past a message that is neither processed nor dead-lettered).
    async fn dead_letter(
        &self,
        msg: &OwnedMessage,
        ctx: &MessageContext,
        envelope: Option<&Envelope>,
        error: &str,
        classification: Classification,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let mut letter = DeadLetter {
            original_topic: ctx.topic.clone(),
            original_partition: ctx.partition,
            original_offset: ctx.offset,
            original_key: msg.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            original_headers: ctx.headers.0.clone(),
            payload: None,
            payload_base64: None,
            event_id: envelope.map(|e| e.event_id.to_string()),
            event_type: envelope.map(|e| e.event_type.clone()),
            failing_service: self.settings.consumer_name.clone(),
            error: error.to_owned(),
            classification,
            failed_at: chrono::Utc::now(),
        };
        letter.set_payload(msg.payload().unwrap_or_default());
        let value = serde_json::to_vec(&letter)?;
        let key = letter.original_key.clone().unwrap_or_default();
        let mut backoff = self.settings.retry_initial;
        loop {
            let record = FutureRecord::to(&self.settings.dead_letter_topic)
                .key(&key)
                .payload(&value);
            match self
                .producer
                .send(record, Timeout::After(Duration::from_secs(10)))
                .await
            {
                Ok(_) => break,
                Err((e, _)) => {
                    tracing::warn!(error = %e, "dead-letter publish failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => anyhow::bail!("shutdown while dead-lettering"),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(self.settings.retry_max);
                }
            }
        }
        self.metrics
            .dlq_published_total
            .with_label_values(&[classification.as_str()])
            .inc();
        tracing::warn!(topic = %ctx.topic, offset = ctx.offset, %error, classification = classification.as_str(),
            "message dead-lettered");
        Ok(())
    }
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

/// Reads an envelope and checks it belongs on the topic it came from.
fn parse(value: &[u8], topic: &str) -> Result<Envelope, String> {
    let env = Envelope::from_json(value).map_err(|e| e.to_string())?;
    if env.event_type().is_none() {
        return Err(format!("unknown event type {:?}", env.event_type));
    }
    if !topic.ends_with(&format!(".{}", env.event_type)) {
        return Err(format!(
            "event type {} does not belong on topic {topic}",
            env.event_type
        ));
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagapay_domain::events::RiskApproved;

    #[test]
    fn offsets_are_stored_only_up_to_the_first_unfinished_message() {
        let mut p = PartitionProgress::starting_at(10);
        for o in 10..15 {
            p.pending.insert(o);
            p.highest_seen = o;
        }
        // 10 is still running: nothing may be stored, whatever else finished.
        p.pending.remove(&12);
        p.pending.remove(&11);
        assert_eq!(p.advance(), None);
        p.pending.remove(&10);
        assert_eq!(p.advance(), Some(12));
        assert_eq!(p.advance(), None, "stores only when it moves");
        p.pending.remove(&14);
        assert_eq!(p.advance(), None);
        p.pending.remove(&13);
        assert_eq!(p.advance(), Some(14));
    }

    #[test]
    fn parse_rejects_garbage_unknown_types_and_misrouted_events() {
        assert!(parse(b"not json", "ns.risk.approved").is_err());
        let env = Envelope::new(
            uuid::Uuid::now_v7(),
            None,
            "c",
            &RiskApproved { reason: "r".into() },
        );
        assert!(parse(&env.to_json(), "ns.risk.approved").is_ok());
        assert!(parse(&env.to_json(), "ns.payments.requested").is_err());
        let mut unknown = env.clone();
        unknown.event_type = "risk.maybe".into();
        assert!(parse(&unknown.to_json(), "ns.risk.maybe").is_err());
    }
}
