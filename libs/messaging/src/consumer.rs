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

use crate::deadletter::{Classification, DeadLetter};
use crate::headers::MessageHeaders;
use crate::metrics::MessagingMetrics;
use anyhow::Context;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sagapay_domain::Envelope;
use sqlx::{PgConnection, PgPool};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Where a message came from, and its headers.
#[derive(Debug, Clone)]
pub struct MessageContext {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub headers: MessageHeaders,
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
        loop {
            let msg = tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.consumer.recv() => msg,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consumer error");
                    continue;
                }
            };
            match self.process(&msg, &shutdown).await? {
                Processed::Done => {
                    self.consumer
                        .store_offset_from_message(&msg)
                        .context("storing offset")?;
                    self.record_lag(&msg);
                }
                Processed::ShuttingDown => break,
            }
        }
        // Commit what was stored; anything not committed is redelivered and deduplicated.
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(error = %e, "final offset commit");
        }
        Ok(())
    }

    /// Lag from the high watermark the client last saw for the partition (kept by librdkafka
    /// from fetch responses, so this costs no request).
    fn record_lag(&self, msg: &BorrowedMessage<'_>) {
        let Ok(topic) = std::ffi::CString::new(msg.topic()) else {
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
                msg.partition(),
                &mut low,
                &mut high,
            )
        };
        if err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 {
            let partition = msg.partition().to_string();
            self.metrics
                .consumer_lag_messages
                .with_label_values(&[msg.topic(), &partition])
                .set((high - msg.offset() - 1).max(0));
        }
    }

    async fn process(
        &self,
        msg: &BorrowedMessage<'_>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Processed> {
        let ctx = MessageContext {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            headers: MessageHeaders::from_kafka(msg.headers()),
        };
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
        let span = tracing::info_span!(
            "consume",
            event_type = %envelope.event_type,
            event_id = %envelope.event_id,
            payment_id = %envelope.payment_id,
            topic = %ctx.topic,
            partition = ctx.partition,
            offset = ctx.offset,
        );
        async {
            let delay_s = (chrono::Utc::now() - envelope.occurred_at)
                .to_std()
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.metrics
                .event_queue_delay_seconds
                .with_label_values(&[&envelope.event_type])
                .observe(delay_s);
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
        let mut tx = self.pool.begin().await?;
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
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            self.metrics
                .duplicate_events_skipped_total
                .with_label_values(&[&envelope.event_type])
                .inc();
            tracing::info!("duplicate event skipped");
            return Ok(());
        }
        self.handler.handle(&mut tx, envelope, ctx).await?;
        tx.commit().await?;
        self.metrics
            .events_consumed_total
            .with_label_values(&[&envelope.event_type])
            .inc();
        Ok(())
    }

    /// Publishes a dead letter, retrying until the broker has it (the offset must not move
    /// past a message that is neither processed nor dead-lettered).
    async fn dead_letter(
        &self,
        msg: &BorrowedMessage<'_>,
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
