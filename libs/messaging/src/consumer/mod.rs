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

//!
//! One file a job: this module reads Kafka, spreads messages over the lanes and stores
//! offsets; [`batch`] is a lane's batch in one transaction (split on failure), [`retry`] one
//! message alone (retried in place or dead-lettered), [`parse`] what a message is (an
//! envelope this consumer handles or not), its lane and its span.

use crate::handler::Handler;
use crate::kafka::KafkaSettings;
use crate::lag::LagReporter;
use crate::metrics::MessagingMetrics;
use crate::partitions::{ConsumerHealth, PartitionKey, PartitionTable, RunState, Tracking};
use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::producer::FutureProducer;
use sagapay_domain::EventType;
use sqlx::PgPool;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod batch;
mod membership;
mod parse;
mod retry;

use parse::lane_of;

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
    /// How long a lane that found a backlog (more than one message waiting) waits for more
    /// before it starts the batch: a busy lane pays its transaction's fixed costs for more
    /// messages. A lane that found one message never waits. Zero: never.
    pub linger: Duration,
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
    kafka: KafkaSettings,
    /// The Kafka client of the first session, made by `new` (so a configuration it refuses
    /// fails the service's start); later sessions make their own.
    first: Option<StreamConsumer<Tracking>>,
    partitions: Arc<PartitionTable>,
    producer: FutureProducer,
    pool: PgPool,
    handler: Arc<H>,
    settings: ConsumerSettings,
    metrics: MessagingMetrics,
    /// What `/ready` sees of this consumer (registered by [`InboxConsumer::report_to`]).
    state: Arc<Mutex<RunState>>,
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

/// How one Kafka client's life ended.
enum SessionEnd {
    /// Shutdown: offsets stored and committed.
    Shutdown,
    /// librdkafka raised a fatal error, or the client was left outside its group
    /// ([`membership`]): this client will never consume again.
    Fatal(String),
}

/// How often the poll loop asks librdkafka whether the client failed fatally, also while it
/// waits for a full lane (a fatal error raised by a background commit or heartbeat reaches
/// `recv` only when the loop calls it).
const FATAL_CHECK_INTERVAL: Duration = Duration::from_millis(500);
/// The pause between attempts to create a client, and before a failed client is replaced when
/// the one before it failed too (the first replacement is at once). It doubles, up to
/// [`REPLACE_DELAY_MAX`], while replacements keep failing within [`HEALTHY_SESSION`] of their
/// start: two processes configured with the same instance id fence each other forever, and
/// must not do it in a tight loop.
const REPLACE_DELAY: Duration = Duration::from_secs(1);
const REPLACE_DELAY_MAX: Duration = Duration::from_secs(30);
const HEALTHY_SESSION: Duration = Duration::from_secs(60);

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
        let mut this = Self {
            kafka: kafka.clone(),
            first: None,
            partitions,
            producer,
            pool,
            handler,
            settings,
            metrics,
            state: Arc::new(Mutex::new(RunState::Consuming)),
        };
        this.first = Some(this.client()?);
        Ok(this)
    }

    /// A new Kafka client of the group, reporting rebalances to this consumer's table.
    fn client(&self) -> anyhow::Result<StreamConsumer<Tracking>> {
        self.kafka.consumer_with_context(
            &self.settings.group_id,
            &self.settings.consumer_name,
            Tracking {
                table: self.partitions.clone(),
            },
        )
    }

    /// Lets `health` (what `/ready` reads) see this consumer's stalls and whether it runs.
    pub fn report_to(mut self, health: &ConsumerHealth) -> Self {
        self.state = health.register(
            &self.settings.consumer_name,
            &self.settings.group_id,
            self.partitions.clone(),
        );
        self
    }

    fn set_state(&self, state: RunState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Consumes until shutdown. A Kafka client that fails fatally (librdkafka gives up on it
    /// for good: a static member fenced after a broker restart, see `docs/architecture.md`)
    /// is dropped with everything its lanes were doing, and a new client joins the group in
    /// its place; the partitions' generations fence the old lanes' late outcomes, and what
    /// they had not committed is redelivered (the inbox absorbs repeats). Returns an error
    /// only when a lane fails (the service then stops: its supervisor restarts it).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut client = self.first.take();
        let this = Arc::new(self);
        // The last replacement's pause, while replacements follow each other quickly.
        let mut last_delay: Option<Duration> = None;
        loop {
            let consumer = match client.take() {
                Some(c) => c,
                None => match this.client() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), group = %this.settings.group_id,
                            "creating a Kafka consumer failed; trying again");
                        if pause(&shutdown, REPLACE_DELAY).await {
                            return Ok(());
                        }
                        continue;
                    }
                },
            };
            this.set_state(RunState::Consuming);
            let started = std::time::Instant::now();
            match this.clone().session(Arc::new(consumer), &shutdown).await? {
                SessionEnd::Shutdown => {
                    this.set_state(RunState::Stopped);
                    return Ok(());
                }
                SessionEnd::Fatal(reason) => {
                    let delay = match last_delay {
                        Some(d) if started.elapsed() < HEALTHY_SESSION => {
                            (d * 2).clamp(REPLACE_DELAY, REPLACE_DELAY_MAX)
                        }
                        _ => Duration::ZERO,
                    };
                    last_delay = Some(delay);
                    tracing::error!(group = %this.settings.group_id, %reason,
                        replace_in_ms = delay.as_millis() as u64,
                        "Kafka consumer failed fatally; replacing it with a new one (if this \
                         repeats, another process may have the same SAGAPAY_INSTANCE_ID)");
                    this.metrics
                        .consumer_replacements_total
                        .with_label_values(&[&this.settings.group_id])
                        .inc();
                    this.set_state(RunState::Replacing {
                        since: std::time::Instant::now(),
                        reason,
                    });
                    if pause(&shutdown, delay).await {
                        this.set_state(RunState::Stopped);
                        return Ok(());
                    }
                }
            }
        }
    }

    /// One Kafka client's life: subscribes, spreads what it receives over the lanes and
    /// stores offsets, until shutdown or a fatal error of the client.
    async fn session(
        self: Arc<Self>,
        consumer: Arc<StreamConsumer<Tracking>>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<SessionEnd> {
        let topics: Vec<&str> = self.settings.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .context("subscribing to topics")?;
        // The session's own stop: shutdown, or the end of this client.
        let stop = shutdown.child_token();
        let reporter = tokio::spawn(
            LagReporter {
                consumer: consumer.clone(),
                table: self.partitions.clone(),
                metrics: self.metrics.clone(),
                interval: LAG_REPORT_INTERVAL,
            }
            .run(stop.clone()),
        );
        let lanes = self.settings.lanes.max(1);
        let (finished_tx, mut finished_rx) = tokio::sync::mpsc::unbounded_channel::<Finished>();
        let mut lane_txs = Vec::with_capacity(lanes);
        let mut lane_tasks = Vec::with_capacity(lanes);
        for _ in 0..lanes {
            let (tx, rx) = tokio::sync::mpsc::channel::<Delivery>(64);
            lane_txs.push(tx);
            lane_tasks.push(tokio::spawn(self.clone().lane(
                rx,
                finished_tx.clone(),
                stop.clone(),
            )));
        }
        drop(finished_tx);
        let mut fatal_check = tokio::time::interval(FATAL_CHECK_INTERVAL);
        let mut membership = membership::Watch::new(&self.settings.group_id);
        let end = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                Some(f) = finished_rx.recv() => self.finish(&consumer, f),
                _ = fatal_check.tick() => {
                    if let Some(reason) = fatal_error(&consumer) {
                        break SessionEnd::Fatal(reason);
                    }
                    if let Some(reason) = membership.tick(&consumer, self.partitions.holds_any()) {
                        break SessionEnd::Fatal(reason);
                    }
                }
                msg = consumer.recv() => {
                    let msg = match msg {
                        Ok(m) => m.detach(),
                        Err(KafkaError::MessageConsumptionFatal(code)) => {
                            break SessionEnd::Fatal(fatal_error(&consumer)
                                .unwrap_or_else(|| code.to_string()));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka consumer error");
                            continue;
                        }
                    };
                    let key = (msg.topic().to_owned(), msg.partition());
                    // A message of a partition revoked since it was fetched is not ours.
                    let Some(generation) = self.partitions.received(&key, msg.offset()) else {
                        continue;
                    };
                    let lane = lane_of(&msg, lanes);
                    // Waits while the lane is full: back-pressure on the partition reads.
                    let delivery = Delivery { msg, generation };
                    let sent = tokio::select! {
                        _ = shutdown.cancelled() => break SessionEnd::Shutdown,
                        sent = lane_txs[lane].send(delivery) => sent,
                        reason = wait_fatal(&consumer) => break SessionEnd::Fatal(reason),
                    };
                    if sent.is_err() {
                        break SessionEnd::Shutdown; // the lane stopped on an error; reported below
                    }
                }
            }
        };
        if matches!(end, SessionEnd::Fatal(_)) {
            // The client is dead: its partitions are no longer ours. Lanes abandon what they
            // retry, and outcomes still arriving count for nothing.
            self.partitions.revoke_all();
            stop.cancel();
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
            self.finish(&consumer, f);
        }
        stop.cancel();
        let _ = reporter.await;
        if let Some(e) = failure {
            return Err(e);
        }
        if matches!(end, SessionEnd::Shutdown) {
            // Commit what was stored; anything not committed is redelivered and deduplicated.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "final offset commit");
            }
        }
        Ok(end)
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
            take_waiting(&mut rx, &mut batch, max_batch);
            if batch.len() >= 2 && !self.settings.linger.is_zero() {
                // A backlog: what arrives within the linger joins it.
                let until = tokio::time::Instant::now() + self.settings.linger;
                while batch.len() < max_batch {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(d)) => {
                            batch.push(d);
                            take_waiting(&mut rx, &mut batch, max_batch);
                        }
                        Ok(None) | Err(_) => break,
                    }
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
    fn finish(&self, consumer: &StreamConsumer<Tracking>, f: Finished) {
        if f.outcome != Outcome::Done {
            return;
        }
        if let Some(through) = self.partitions.finished(&f.key, f.generation, f.offset) {
            // librdkafka commits `through + 1`, the next offset to read. Storing fails for a
            // partition no longer assigned; its messages are redelivered to the new owner.
            if let Err(e) = consumer.store_offset(&f.key.0, f.key.1, through) {
                tracing::debug!(error = %e, topic = %f.key.0, partition = f.key.1, "offset not stored");
            }
        }
    }
}

/// Moves the messages already waiting in `rx` into `batch`, up to `max_batch` in all.
fn take_waiting(
    rx: &mut tokio::sync::mpsc::Receiver<Delivery>,
    batch: &mut Vec<Delivery>,
    max_batch: usize,
) {
    while batch.len() < max_batch {
        match rx.try_recv() {
            Ok(d) => batch.push(d),
            Err(_) => break,
        }
    }
}

/// The fatal error librdkafka set on the client, if any, as text.
fn fatal_error(consumer: &StreamConsumer<Tracking>) -> Option<String> {
    consumer
        .client()
        .fatal_error()
        .map(|(code, reason)| format!("{code:?}: {reason}"))
}

/// Resolves once the client has a fatal error (checked every [`FATAL_CHECK_INTERVAL`]).
async fn wait_fatal(consumer: &StreamConsumer<Tracking>) -> String {
    loop {
        tokio::time::sleep(FATAL_CHECK_INTERVAL).await;
        if let Some(reason) = fatal_error(consumer) {
            return reason;
        }
    }
}

/// Sleeps `delay`; true when shutdown came first.
async fn pause(shutdown: &CancellationToken, delay: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(delay) => false,
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
