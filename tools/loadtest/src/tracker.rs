//! Learns when payments reach a terminal state by reading `payments.finalized` from Kafka,
//! instead of polling the API (which at hundreds of payments per second would load the gateway
//! more than the payments do). The time to terminal is the event's `occurred_at` (when the
//! orchestrator committed the terminal state) minus the wall-clock time the POST was sent;
//! both clocks are this machine's.

use anyhow::Context;
use chrono::{DateTime, Utc};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sagapay_domain::{Envelope, EventType, Namespace};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use uuid::Uuid;

/// A payment's terminal state, as the orchestrator published it.
#[derive(Debug, Clone)]
pub struct Terminal {
    pub status: String,
    pub occurred_at: DateTime<Utc>,
}

enum Slot {
    Waiting(oneshot::Sender<Terminal>),
    /// Seen before anyone asked (the event can beat the POST's answer).
    Seen(Terminal),
}

#[derive(Clone, Default)]
pub struct Tracker {
    slots: Arc<Mutex<HashMap<Uuid, Slot>>>,
}

impl Tracker {
    /// Starts reading the namespace's `payments.finalized` (on the payments stream) from its
    /// current end; returns once
    /// the consumer is positioned, so no event of the run can be missed.
    pub async fn start(
        brokers: &str,
        security: &[(String, String)],
        ns: &Namespace,
    ) -> anyhow::Result<Tracker> {
        let topic = ns.topic(EventType::PaymentFinalized.as_str());
        let mut config = ClientConfig::new();
        // The cluster's connection security (`SAGAPAY_KAFKA_CLIENT_CONFIG`), as the services'.
        for (k, v) in security {
            config.set(k, v);
        }
        let consumer: StreamConsumer = config
            .set("bootstrap.servers", brokers)
            .set(
                "group.id",
                format!("{ns}.loadtest.{}", Uuid::new_v4().simple()),
            )
            .set("enable.auto.commit", "false")
            // Answered as soon as an event arrives: the wait only bounds idle fetches, which
            // would otherwise cost the broker CPU the measurement charges to the services.
            .set("fetch.wait.max.ms", "500")
            .set("socket.nagle.disable", "true")
            .set("isolation.level", "read_committed")
            .create()
            .context("creating the Kafka consumer")?;
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .context("reading topic metadata")?;
        let partitions = metadata
            .topics()
            .first()
            .map(|t| t.partitions().len())
            .filter(|n| *n > 0)
            .with_context(|| format!("topic {topic} not found: is the stack running?"))?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions as i32 {
            let (_low, high) = consumer
                .fetch_watermarks(&topic, p, Duration::from_secs(10))
                .context("reading watermarks")?;
            assignment.add_partition_offset(&topic, p, Offset::Offset(high))?;
        }
        consumer.assign(&assignment)?;
        let tracker = Tracker::default();
        let slots = tracker.slots.clone();
        tokio::spawn(async move {
            loop {
                let Ok(msg) = consumer.recv().await else {
                    continue;
                };
                // The payments stream carries other lifecycle events too.
                let Some(env) = msg
                    .payload()
                    .and_then(|b| serde_json::from_slice::<Envelope>(b).ok())
                    .filter(|e| e.event_type() == Some(EventType::PaymentFinalized))
                else {
                    continue;
                };
                let terminal = Terminal {
                    status: env.payload["status"].as_str().unwrap_or("").to_owned(),
                    occurred_at: env.occurred_at,
                };
                let mut slots = slots.lock().expect("lock");
                match slots.remove(&env.payment_id) {
                    Some(Slot::Waiting(tx)) => {
                        let _ = tx.send(terminal);
                    }
                    _ => {
                        slots.insert(env.payment_id, Slot::Seen(terminal));
                    }
                }
            }
        });
        Ok(tracker)
    }

    /// Resolves when `payment_id` is terminal.
    pub fn wait(&self, payment_id: Uuid) -> oneshot::Receiver<Terminal> {
        let (tx, rx) = oneshot::channel();
        let mut slots = self.slots.lock().expect("lock");
        match slots.remove(&payment_id) {
            Some(Slot::Seen(t)) => {
                let _ = tx.send(t);
            }
            _ => {
                slots.insert(payment_id, Slot::Waiting(tx));
            }
        }
        rx
    }
}
