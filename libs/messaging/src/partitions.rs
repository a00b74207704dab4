//! The inbox consumer's view of its partitions: which it owns (and since which rebalance),
//! how far each is finished, and which are stuck on a message.
//!
//! Why generations: a partition can be revoked while a lane is still working on one of its
//! messages, and assigned again (to this consumer or another) before that work ends. Each
//! assignment gets a new generation number; a message carries the generation it was received
//! in, and its outcome counts only while that generation is current. So work that finishes
//! after its partition moved can never store an offset for the new owner's progress (which
//! could skip a message) or rewind it; it is simply dropped, and the message is redelivered
//! to the partition's owner, whose inbox absorbs a repeat.
//!
//! Invariants:
//! - `OFFSET_CONTIGUOUS`: the offset stored for a partition is never past a message of the
//!   current generation that is unfinished;
//! - `GENERATION_FENCED`: an outcome of an older generation changes nothing;
//! - `STALL_VISIBLE`: a message that failed and is being retried shows in [`ConsumerHealth`]
//!   (and so in `/ready` and `consumer_stalled_seconds`) until it finishes or its partition is
//!   revoked.

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A partition of a topic.
pub(crate) type PartitionKey = (String, i32);

/// Per partition: offsets received and not finished, and what may be stored.
#[derive(Debug)]
pub(crate) struct Progress {
    pending: BTreeSet<i64>,
    highest_seen: i64,
    stored: i64,
}

impl Progress {
    /// Progress of a partition whose first message in this generation is at `offset`.
    pub(crate) fn starting_at(offset: i64) -> Self {
        Self {
            pending: BTreeSet::new(),
            highest_seen: offset - 1,
            stored: offset - 1,
        }
    }

    pub(crate) fn received(&mut self, offset: i64) {
        self.pending.insert(offset);
        self.highest_seen = self.highest_seen.max(offset);
    }

    /// Marks `offset` finished; returns the last offset before which everything is finished
    /// (what may be stored), if it moved.
    pub(crate) fn finished(&mut self, offset: i64) -> Option<i64> {
        self.pending.remove(&offset);
        let done_through = match self.pending.first() {
            Some(first) => first - 1,
            None => self.highest_seen,
        };
        (done_through > self.stored).then(|| {
            self.stored = done_through;
            done_through
        })
    }

    /// The next offset to process: everything before it is finished.
    fn next_offset(&self) -> i64 {
        self.stored + 1
    }
}

/// A message that failed and is being retried in place.
#[derive(Debug, Clone)]
pub(crate) struct Stall {
    pub event_type: Option<String>,
    pub first_failure: Instant,
    pub attempts: u32,
    pub last_error: String,
}

#[derive(Debug)]
struct Assigned {
    generation: u64,
    progress: Option<Progress>,
    stalls: BTreeMap<i64, Stall>,
    /// The group's committed offset when the partition was assigned (read once, for lag
    /// while nothing of the partition was received yet).
    committed: Option<i64>,
}

#[derive(Debug, Default)]
struct Inner {
    next_generation: u64,
    assigned: HashMap<PartitionKey, Assigned>,
}

/// The partitions one consumer owns. Shared by the poll loop, the lanes, the rebalance
/// callbacks and the lag reporter; every lock is held for a few map operations only.
#[derive(Debug, Default)]
pub(crate) struct PartitionTable {
    inner: Mutex<Inner>,
}

/// One partition as the lag reporter sees it.
#[derive(Debug, Clone)]
pub(crate) struct PartitionSnapshot {
    pub key: PartitionKey,
    pub generation: u64,
    /// From this consumer's own progress, when it received anything in this generation.
    pub next_offset: Option<i64>,
    pub committed: Option<i64>,
    /// The longest a message of the partition has been failing.
    pub stalled_for: Option<Duration>,
}

impl PartitionTable {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the maps consistent; a panic elsewhere cannot corrupt them.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The partitions were assigned to this consumer: each starts a new generation.
    pub(crate) fn assign(&self, keys: impl IntoIterator<Item = PartitionKey>) {
        let mut inner = self.lock();
        for key in keys {
            inner.next_generation += 1;
            let generation = inner.next_generation;
            inner.assigned.insert(
                key,
                Assigned {
                    generation,
                    progress: None,
                    stalls: BTreeMap::new(),
                    committed: None,
                },
            );
        }
    }

    /// The partitions were taken away: their progress and stalls are forgotten.
    pub(crate) fn revoke(&self, keys: impl IntoIterator<Item = PartitionKey>) {
        let mut inner = self.lock();
        for key in keys {
            inner.assigned.remove(&key);
        }
    }

    /// Every partition is gone at once (the consumer that owned them failed and is replaced):
    /// work still running on them finishes as abandoned, like after a revocation.
    pub(crate) fn revoke_all(&self) {
        self.lock().assigned.clear();
    }

    /// Whether any partition is assigned to this consumer now.
    pub(crate) fn holds_any(&self) -> bool {
        !self.lock().assigned.is_empty()
    }

    /// A message of `key` at `offset` was received: it is pending in the current generation,
    /// which is returned; `None` when the partition is not assigned (the message is dropped).
    pub(crate) fn received(&self, key: &PartitionKey, offset: i64) -> Option<u64> {
        let mut inner = self.lock();
        let a = inner.assigned.get_mut(key)?;
        a.progress
            .get_or_insert_with(|| Progress::starting_at(offset))
            .received(offset);
        Some(a.generation)
    }

    /// Whether `generation` is still the partition's current one.
    pub(crate) fn is_current(&self, key: &PartitionKey, generation: u64) -> bool {
        self.lock()
            .assigned
            .get(key)
            .is_some_and(|a| a.generation == generation)
    }

    /// A message finished (processed or dead-lettered). Returns the offset that may now be
    /// stored, if it moved; nothing for an older generation (`GENERATION_FENCED`).
    pub(crate) fn finished(&self, key: &PartitionKey, generation: u64, offset: i64) -> Option<i64> {
        let mut inner = self.lock();
        let a = inner.assigned.get_mut(key)?;
        if a.generation != generation {
            return None;
        }
        a.stalls.remove(&offset);
        a.progress.as_mut()?.finished(offset)
    }

    /// A message failed and will be retried: record (or update) its stall.
    pub(crate) fn stalled(&self, key: &PartitionKey, generation: u64, offset: i64, stall: Stall) {
        let mut inner = self.lock();
        if let Some(a) = inner.assigned.get_mut(key) {
            if a.generation == generation {
                a.stalls.insert(offset, stall);
            }
        }
    }

    /// The stall of a message ends without finishing it (abandoned at shutdown or revoke).
    pub(crate) fn unstalled(&self, key: &PartitionKey, generation: u64, offset: i64) {
        let mut inner = self.lock();
        if let Some(a) = inner.assigned.get_mut(key) {
            if a.generation == generation {
                a.stalls.remove(&offset);
            }
        }
    }

    pub(crate) fn set_committed(&self, key: &PartitionKey, generation: u64, committed: i64) {
        let mut inner = self.lock();
        if let Some(a) = inner.assigned.get_mut(key) {
            if a.generation == generation {
                a.committed = Some(committed);
            }
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<PartitionSnapshot> {
        let now = Instant::now();
        let inner = self.lock();
        let mut out: Vec<PartitionSnapshot> = inner
            .assigned
            .iter()
            .map(|(key, a)| PartitionSnapshot {
                key: key.clone(),
                generation: a.generation,
                next_offset: a.progress.as_ref().map(Progress::next_offset),
                committed: a.committed,
                stalled_for: a
                    .stalls
                    .values()
                    .map(|s| now.saturating_duration_since(s.first_failure))
                    .max(),
            })
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    fn stall_reports(&self, consumer: &str) -> Vec<StallReport> {
        let now = Instant::now();
        let inner = self.lock();
        let mut out: Vec<StallReport> = inner
            .assigned
            .iter()
            .flat_map(|((topic, partition), a)| {
                a.stalls.iter().map(move |(offset, s)| StallReport {
                    consumer: consumer.to_owned(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                    event_type: s.event_type.clone(),
                    stalled_seconds: now.saturating_duration_since(s.first_failure).as_secs_f64(),
                    attempts: s.attempts,
                    last_error: s.last_error.chars().take(300).collect(),
                })
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset))
        });
        out
    }
}

/// A message being retried in place, as `/ready` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct StallReport {
    pub consumer: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub event_type: Option<String>,
    pub stalled_seconds: f64,
    pub attempts: u32,
    pub last_error: String,
}

/// Whether a consumer is reading its channel (what `/ready` needs of it).
#[derive(Debug, Clone)]
pub(crate) enum RunState {
    /// Subscribed, polling, its lanes running (also while it waits for an assignment or
    /// for the broker: librdkafka reconnects by itself).
    Consuming,
    /// Its Kafka client failed for good (a fatal error) and is being replaced by a new one.
    Replacing { since: Instant, reason: String },
    /// Stopped at shutdown.
    Stopped,
}

/// A consumer that is not reading its channel, as `/ready` reports it.
#[derive(Debug, Clone, Serialize)]
pub struct NotConsuming {
    pub consumer: String,
    pub group: String,
    /// `replacing` or `stopped`.
    pub state: &'static str,
    pub seconds: f64,
    pub reason: String,
}

/// One consumer as [`ConsumerHealth`] sees it.
#[derive(Debug)]
pub(crate) struct Registered {
    name: String,
    group: String,
    table: Arc<PartitionTable>,
    state: Arc<Mutex<RunState>>,
}

/// The consumers of a service (their stalls and whether they run), for `/ready`. Cloning
/// shares the view.
#[derive(Debug, Clone, Default)]
pub struct ConsumerHealth {
    consumers: Arc<Mutex<Vec<Registered>>>,
}

impl ConsumerHealth {
    /// Adds a consumer; the returned state is what it updates as it runs.
    pub(crate) fn register(
        &self,
        consumer: &str,
        group: &str,
        table: Arc<PartitionTable>,
    ) -> Arc<Mutex<RunState>> {
        let state = Arc::new(Mutex::new(RunState::Consuming));
        self.consumers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Registered {
                name: consumer.to_owned(),
                group: group.to_owned(),
                table,
                state: state.clone(),
            });
        state
    }

    /// Every message currently failing and being retried, oldest partition first.
    pub fn stalls(&self) -> Vec<StallReport> {
        let consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        consumers
            .iter()
            .flat_map(|c| c.table.stall_reports(&c.name))
            .collect()
    }

    /// The consumers not reading their channel now (being replaced after a fatal error, or
    /// stopped). A service with any is not ready.
    pub fn not_consuming(&self) -> Vec<NotConsuming> {
        let now = Instant::now();
        let consumers = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        consumers
            .iter()
            .filter_map(|c| {
                let state = c.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let (state, seconds, reason) = match state {
                    RunState::Consuming => return None,
                    RunState::Replacing { since, reason } => (
                        "replacing",
                        now.saturating_duration_since(since).as_secs_f64(),
                        reason,
                    ),
                    RunState::Stopped => ("stopped", 0.0, String::new()),
                };
                Some(NotConsuming {
                    consumer: c.name.clone(),
                    group: c.group.clone(),
                    state,
                    seconds,
                    reason,
                })
            })
            .collect()
    }
}

/// The consumer's librdkafka context: keeps the partition table in step with rebalances.
pub(crate) struct Tracking {
    pub table: Arc<PartitionTable>,
}

impl ClientContext for Tracking {}

impl ConsumerContext for Tracking {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            // Hand over what is finished, so the next owner redelivers as little as possible.
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "offset commit before revocation");
            }
            self.table.revoke(keys(list));
            tracing::info!(partitions = list.count(), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            self.table.assign(keys(list));
            tracing::info!(partitions = list.count(), "partitions assigned");
        }
    }
}

fn keys(list: &rdkafka::TopicPartitionList) -> Vec<PartitionKey> {
    list.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PartitionKey {
        ("t".to_owned(), 0)
    }

    #[test]
    fn offsets_are_stored_only_up_to_the_first_unfinished_message() {
        let mut p = Progress::starting_at(10);
        for o in 10..15 {
            p.received(o);
        }
        // 10 is still running: nothing may be stored, whatever else finished.
        assert_eq!(p.finished(12), None);
        assert_eq!(p.finished(11), None);
        assert_eq!(p.finished(10), Some(12));
        assert_eq!(p.finished(14), None, "13 is unfinished");
        assert_eq!(p.finished(13), Some(14));
    }

    #[test]
    fn work_of_an_earlier_assignment_changes_nothing_after_a_rebalance() {
        let table = PartitionTable::default();
        assert_eq!(table.received(&key(), 5), None, "not assigned: dropped");
        table.assign([key()]);
        let first = table.received(&key(), 5).unwrap();
        table.received(&key(), 6);
        table.stalled(
            &key(),
            first,
            5,
            Stall {
                event_type: None,
                first_failure: Instant::now(),
                attempts: 1,
                last_error: "down".into(),
            },
        );
        assert_eq!(table.stall_reports("c").len(), 1);
        // Revoked and assigned again: 5 and 6 are redelivered in the new generation.
        table.revoke([key()]);
        assert!(
            table.stall_reports("c").is_empty(),
            "a revoked stall is gone"
        );
        table.assign([key()]);
        let second = table.received(&key(), 5).unwrap();
        assert_ne!(first, second);
        table.received(&key(), 6);
        assert!(!table.is_current(&key(), first));
        // The old lane finishes 6, then 5: neither may store anything now.
        assert_eq!(table.finished(&key(), first, 6), None);
        assert_eq!(table.finished(&key(), first, 5), None);
        // The new generation's own outcomes do.
        assert_eq!(table.finished(&key(), second, 6), None, "5 is unfinished");
        assert_eq!(table.finished(&key(), second, 5), Some(6));
        let snap = table.snapshot();
        assert_eq!(snap[0].next_offset, Some(7));
    }
}
