//! How far behind, and how stuck, a consumer is: every `interval`, for each partition it owns,
//! `consumer_lag_messages` (the partition's high watermark minus the next offset to process)
//! and `consumer_stalled_seconds` (how long its oldest failing message has been retried).
//!
//! Why a timer and not the message path: a stuck lane stops the message path, and a gauge
//! updated only when a message finishes would freeze at its last, healthy value (it showed 0
//! while a ledger retried one message for minutes). The next offset comes from the
//! consumer's own progress (what it may store), or, for a partition it has received nothing
//! of since its assignment, from the group's committed offset, read once per assignment.

use crate::metrics::MessagingMetrics;
use crate::partitions::{PartitionKey, PartitionTable, Tracking};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) struct LagReporter {
    pub consumer: Arc<StreamConsumer<Tracking>>,
    pub table: Arc<PartitionTable>,
    pub metrics: MessagingMetrics,
    pub interval: Duration,
}

impl LagReporter {
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let mut reported: HashSet<PartitionKey> = HashSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.interval) => {}
            }
            self.read_committed_offsets().await;
            reported = self.report(reported);
        }
        for (topic, partition) in reported {
            self.forget(&topic, partition);
        }
    }

    /// Reads, once per assignment, the committed offset of partitions that received nothing.
    async fn read_committed_offsets(&self) {
        let wanted: Vec<_> = self
            .table
            .snapshot()
            .into_iter()
            .filter(|p| p.next_offset.is_none() && p.committed.is_none())
            .collect();
        if wanted.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::new();
        for p in &wanted {
            list.add_partition(&p.key.0, p.key.1);
        }
        let consumer = self.consumer.clone();
        let read = tokio::task::spawn_blocking(move || {
            consumer.committed_offsets(list, Duration::from_secs(5))
        })
        .await;
        let Ok(Ok(committed)) = read else {
            return; // tried again next time
        };
        for p in wanted {
            let offset = committed
                .find_partition(&p.key.0, p.key.1)
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    // Nothing committed yet: the group starts at the low watermark.
                    _ => NOTHING_COMMITTED,
                });
            if let Some(offset) = offset {
                self.table.set_committed(&p.key, p.generation, offset);
            }
        }
    }

    /// Sets both gauges for every owned partition and removes those of partitions gone since
    /// the last report; returns the partitions reported.
    fn report(&self, before: HashSet<PartitionKey>) -> HashSet<PartitionKey> {
        let mut now = HashSet::new();
        for p in self.table.snapshot() {
            let (topic, partition) = (&p.key.0, p.key.1);
            let label = partition.to_string();
            self.metrics
                .consumer_stalled_seconds
                .with_label_values(&[topic, &label])
                .set(p.stalled_for.map_or(0.0, |d| d.as_secs_f64()));
            if let Some((low, high)) = cached_watermarks(&self.consumer, topic, partition) {
                let next = p
                    .next_offset
                    .or(p.committed.filter(|&c| c != NOTHING_COMMITTED))
                    .unwrap_or(low);
                self.metrics
                    .consumer_lag_messages
                    .with_label_values(&[topic, &label])
                    .set((high - next).max(0));
            }
            now.insert(p.key);
        }
        for (topic, partition) in before.difference(&now) {
            self.forget(topic, *partition);
        }
        now
    }

    fn forget(&self, topic: &str, partition: i32) {
        let label = partition.to_string();
        let _ = self
            .metrics
            .consumer_stalled_seconds
            .remove_label_values(&[topic, &label]);
        let _ = self
            .metrics
            .consumer_lag_messages
            .remove_label_values(&[topic, &label]);
    }
}

/// Marks "the group has no committed offset for the partition".
const NOTHING_COMMITTED: i64 = -1;

/// The low and high watermarks librdkafka last saw for the partition (kept from fetch
/// responses, so this costs no request); `None` before the first fetch.
fn cached_watermarks(
    consumer: &StreamConsumer<Tracking>,
    topic_name: &str,
    partition: i32,
) -> Option<(i64, i64)> {
    let topic = std::ffi::CString::new(topic_name).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client handle lives as long as `consumer`; `topic` outlives the call; `low`
    // and `high` are valid for writes. The call reads librdkafka's cached watermarks and does
    // not block. (rdkafka 0.38 has no safe wrapper for it.)
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some((low.max(0), high))
}
