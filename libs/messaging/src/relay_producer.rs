//! The outbox relay's Kafka producer, and replacing it when it stops delivering.
//!
//! An idempotent producer can fail in two ways nothing else repairs: librdkafka raises a
//! *fatal* error (it cannot keep its sequence: every later send fails at once), or it stalls
//! after a broker restart, every message timing out (`message.timeout.ms`) while the broker
//! answers (seen once in about ten broker restarts of the chaos tests, with no fatal error and
//! no warning from librdkafka; upstream reports such as librdkafka #4976 describe the same).
//! Either way the outbox keeps every row until it is delivered, so the cure is a new producer,
//! with a new producer id: the relay's own producer is replaced in place, and the rows that
//! failed are claimed again a second later. A row delivered by the old producer whose report
//! was lost is published twice; the consumers' inboxes absorb it.
//!
//! A relay made with [`RelayProducer::fixed`] (tests) never replaces its producer.

use crate::kafka::{self, KafkaSettings};
use crate::metrics::MessagingMetrics;
use rdkafka::producer::{FutureProducer, Producer};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a producer may deliver nothing, while deliveries fail and the broker answers,
/// before it is replaced: two message timeouts (a broker outage ends well within one).
pub const STALL_AFTER: Duration = Duration::from_secs(60);

pub struct RelayProducer {
    current: Mutex<FutureProducer>,
    /// How to make a new one; `None`: never replaced.
    source: Option<(KafkaSettings, String)>,
    /// Since when every delivery failed (none succeeded).
    failing_since: Mutex<Option<Instant>>,
}

impl RelayProducer {
    /// A producer that is never replaced.
    pub fn fixed(producer: FutureProducer) -> Self {
        Self {
            current: Mutex::new(producer),
            source: None,
            failing_since: Mutex::new(None),
        }
    }

    /// A producer of `kafka` named `client_id`, replaced when it fails or stalls.
    pub fn replaceable(kafka: &KafkaSettings, client_id: &str) -> anyhow::Result<Self> {
        Ok(Self {
            current: Mutex::new(kafka.producer(client_id)?),
            source: Some((kafka.clone(), client_id.to_owned())),
            failing_since: Mutex::new(None),
        })
    }

    /// The producer to send with now.
    pub fn get(&self) -> FutureProducer {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records a batch's outcome: any delivery ends a stall; failures alone start one.
    pub fn outcome(&self, delivered: usize, failed: usize) {
        let mut since = self.failing_since.lock().unwrap_or_else(|p| p.into_inner());
        if delivered > 0 {
            *since = None;
        } else if failed > 0 {
            since.get_or_insert_with(Instant::now);
        }
    }

    /// Replaces the producer when it failed fatally, or stalled for [`STALL_AFTER`] while the
    /// broker answers. Returns whether it did.
    pub async fn replace_if_broken(&self, metrics: &MessagingMetrics) -> bool {
        let Some((kafka, client_id)) = &self.source else {
            return false;
        };
        let producer = self.get();
        let why = if let Some((code, reason)) = producer.client().fatal_error() {
            format!("it failed fatally ({code:?}: {reason})")
        } else {
            let since = *self.failing_since.lock().unwrap_or_else(|p| p.into_inner());
            match since {
                Some(t) if t.elapsed() >= STALL_AFTER => {
                    if !kafka::reachable(&producer, Duration::from_secs(2)).await {
                        return false; // the broker is away: nothing a new producer would fix
                    }
                    format!(
                        "it delivered nothing for {} s while the broker answers",
                        t.elapsed().as_secs()
                    )
                }
                _ => return false,
            }
        };
        drop(producer);
        let fresh = match kafka.producer(client_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "creating a new Kafka producer for the outbox relay failed; trying again");
                return false;
            }
        };
        tracing::error!(reason = %why, "replacing the outbox relay's Kafka producer");
        let old = std::mem::replace(
            &mut *self.current.lock().unwrap_or_else(|p| p.into_inner()),
            fresh,
        );
        *self.failing_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
        metrics.outbox_producer_replacements_total.inc();
        // Dropping a producer purges and flushes it (up to 500 ms): not on an async thread.
        tokio::task::spawn_blocking(move || drop(old));
        true
    }
}
