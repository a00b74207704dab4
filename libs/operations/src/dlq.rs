//! Dead letters: the namespace's dead-letter topic read whole, and letters replayed to their
//! original topic byte for byte (so with their original `event_id`): a replayed event that was
//! already processed is skipped by the consumer's inbox and changes nothing.

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use sagapay_domain::Namespace;
use sagapay_messaging::{Classification, DeadLetter, KafkaSettings, MessageHeaders};
use serde::Serialize;
use std::time::{Duration, Instant};

/// A dead letter and where it sits in the dead-letter topic (`partition:offset`).
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub position: String,
    pub letter: DeadLetter,
}

/// Which dead letters a command applies to. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub classification: Option<Classification>,
    pub service: Option<String>,
    pub event_type: Option<String>,
    pub position: Option<String>,
}

impl Filter {
    /// A filter from an operator's words: a classification (`NON_RETRYABLE` or
    /// `RETRY_EXHAUSTED`), a failing service, an event type and a position; empty words match
    /// everything.
    pub fn parse(
        classification: Option<&str>,
        service: Option<&str>,
        event_type: Option<&str>,
        position: Option<&str>,
    ) -> anyhow::Result<Self> {
        let word = |w: Option<&str>| {
            w.map(str::trim)
                .filter(|w| !w.is_empty())
                .map(str::to_owned)
        };
        let classification = match word(classification).as_deref() {
            None => None,
            Some(c) => Some(
                Classification::ALL
                    .into_iter()
                    .find(|k| k.as_str() == c)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "unknown classification {c:?}: NON_RETRYABLE or RETRY_EXHAUSTED"
                        )
                    })?,
            ),
        };
        Ok(Self {
            classification,
            service: word(service),
            event_type: word(event_type),
            position: word(position),
        })
    }

    pub fn matches(&self, e: &Entry) -> bool {
        self.classification
            .is_none_or(|c| c == e.letter.classification)
            && self
                .service
                .as_deref()
                .is_none_or(|s| s == e.letter.failing_service)
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| Some(t) == e.letter.event_type.as_deref())
            && self.position.as_deref().is_none_or(|p| p == e.position)
    }
}

/// Reads every dead letter of the namespace, up to the end of the topic as it is now.
pub async fn read_all(kafka: &KafkaSettings, ns: &Namespace) -> anyhow::Result<Vec<Entry>> {
    let topic = ns.dead_letter_topic();
    let consumer: StreamConsumer = kafka.consumer(
        &format!("{}.sagapayctl.{}", ns, uuid::Uuid::new_v4()),
        "sagapayctl",
    )?;
    let (consumer, ends) = tokio::task::spawn_blocking({
        let topic = topic.clone();
        move || -> anyhow::Result<(StreamConsumer, Vec<(i32, i64)>)> {
            let md = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .context("reading the dead-letter topic's metadata")?;
            let partitions: Vec<i32> = md
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect();
            let mut ends = Vec::new();
            let mut tpl = TopicPartitionList::new();
            for p in partitions {
                let (low, high) = consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .context("reading watermarks")?;
                if high > low {
                    ends.push((p, high));
                    tpl.add_partition_offset(&topic, p, Offset::Offset(low))?;
                }
            }
            consumer.assign(&tpl)?;
            Ok((consumer, ends))
        }
    })
    .await??;
    let mut remaining: std::collections::HashMap<i32, i64> = ends.into_iter().collect();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !remaining.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        anyhow::ensure!(!left.is_zero(), "timed out reading the dead-letter topic");
        let msg = match tokio::time::timeout(left, consumer.recv()).await {
            Ok(m) => m.context("reading a dead letter")?,
            Err(_) => anyhow::bail!("timed out reading the dead-letter topic"),
        };
        let (p, o) = (msg.partition(), msg.offset());
        if let Some(letter) = msg
            .payload()
            .and_then(|b| serde_json::from_slice::<DeadLetter>(b).ok())
        {
            out.push(Entry {
                position: format!("{p}:{o}"),
                letter,
            });
        }
        if remaining.get(&p).is_some_and(|end| o + 1 >= *end) {
            remaining.remove(&p);
        }
    }
    out.sort_by_key(|a| a.letter.failed_at);
    Ok(out)
}

/// Publishes each entry's original bytes, key and headers to its original topic.
/// With `dry_run`, only says what it would do.
pub async fn replay(
    kafka: &KafkaSettings,
    entries: &[Entry],
    dry_run: bool,
) -> anyhow::Result<usize> {
    if dry_run {
        return Ok(entries.len());
    }
    let producer: FutureProducer = kafka.producer("sagapayctl")?;
    for e in entries {
        let l = &e.letter;
        anyhow::ensure!(
            !l.original_topic.is_empty(),
            "dead letter {} has no original topic",
            e.position
        );
        let value = l.original_value();
        let key = l.original_key.clone().unwrap_or_default();
        let headers = MessageHeaders(l.original_headers.clone()).to_kafka();
        producer
            .send(
                FutureRecord::to(&l.original_topic)
                    .key(&key)
                    .payload(&value)
                    .headers(headers),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .with_context(|| format!("replaying {} to {}", e.position, l.original_topic))?;
    }
    Ok(entries.len())
}
