//! The chaos tests' measurements, pure: spans of time and outages on the stack's database
//! clock, the consumer gap less the outages that excuse it, each payment's time to terminal
//! from the end of the outage it lived through, percentiles and floors, and the checks that
//! refuse a vacuous report (see the parent module's header for what each means and why).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use uuid::Uuid;

/// A moment on the clock of the stack's PostgreSQL.
pub type Time = DateTime<Utc>;

/// A span of time, `from` to `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub from: Time,
    pub to: Time,
}

impl Interval {
    pub fn new(from: Time, to: Time) -> Interval {
        Interval { from, to }
    }

    /// Its length (zero when `to` is not after `from`).
    pub fn length(&self) -> Duration {
        since(self.from, self.to)
    }
}

/// `to - from`, zero when `to` is not after `from`.
fn since(from: Time, to: Time) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

/// The clock of the stack's PostgreSQL, read without a query: the local clock plus the offset
/// measured against `clock_timestamp()` ([`DbClock::calibrate`]). Outages are recorded on it
/// while PostgreSQL itself may be down, and from threads that block on a restart. (The
/// server runs on this machine, so the offset is the query's noise; measuring it keeps the
/// times comparable should it not be.)
#[derive(Debug, Clone, Copy)]
pub struct DbClock {
    /// Database clock minus local clock.
    pub(super) offset: chrono::TimeDelta,
    /// Half the round trip of the sample the offset came from.
    pub(super) uncertainty: chrono::TimeDelta,
}

impl DbClock {
    /// The offset of the best of five samples (the shortest round trip).
    pub async fn calibrate(pool: &PgPool) -> DbClock {
        let mut best: Option<DbClock> = None;
        for _ in 0..5 {
            let before = Utc::now();
            let db: Time = sqlx::query_scalar("SELECT clock_timestamp()")
                .fetch_one(pool)
                .await
                .expect("the database's clock");
            let after = Utc::now();
            let half = (after - before) / 2;
            let sample = DbClock {
                offset: db - (before + half),
                uncertainty: half,
            };
            if best.is_none_or(|b| sample.uncertainty < b.uncertainty) {
                best = Some(sample);
            }
        }
        best.expect("five samples")
    }

    /// Now, on the database's clock.
    pub fn now(&self) -> Time {
        Utc::now() + self.offset
    }
}

/// What a fault broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// A service's process, SIGKILLed and started again.
    Service(&'static str),
    /// Node `node` (0-based) of a Kafka cluster of `of` nodes, killed or stopped.
    Broker { node: usize, of: usize },
    /// The PostgreSQL server, restarted.
    Postgres,
}

impl Fault {
    /// Whether the fault takes away something payments cannot move without, so that a
    /// payment's time counts only from its end: a service, the only broker, PostgreSQL. Not
    /// one broker of three: the cluster is to serve on without it.
    pub fn excuses_payments(self) -> bool {
        !matches!(self, Fault::Broker { of, .. } if of > 1)
    }

    /// Whether `consumer` cannot consume during the fault: its own process gone, the only
    /// broker gone, or PostgreSQL (where it records what it consumed) gone.
    pub fn excuses_gap_of(self, consumer: &str) -> bool {
        match self {
            Fault::Service(s) => s == consumer,
            Fault::Broker { of, .. } => of == 1,
            Fault::Postgres => true,
        }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Service(s) => write!(f, "{s}"),
            Fault::Broker { node, of } => write!(f, "broker {} of {of}", node + 1),
            Fault::Postgres => write!(f, "PostgreSQL"),
        }
    }
}

/// A fault's outage: down from `down_at` (the kill, stop or restart) until `up_at` (back and
/// serving), on the [`DbClock`].
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    pub fault: Fault,
    pub down_at: Time,
    pub up_at: Time,
}

impl Outage {
    pub fn interval(&self) -> Interval {
        Interval::new(self.down_at, self.up_at)
    }
}

impl std::fmt::Display for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} down {} for {:.2} s",
            self.fault,
            self.down_at.format("%H:%M:%S%.3f"),
            self.interval().length().as_secs_f64()
        )
    }
}

/// The union of `spans`: sorted, disjoint, none empty.
pub fn union(spans: impl IntoIterator<Item = Interval>) -> Vec<Interval> {
    let mut spans: Vec<Interval> = spans.into_iter().filter(|s| s.from < s.to).collect();
    spans.sort_by_key(|s| s.from);
    let mut merged: Vec<Interval> = Vec::with_capacity(spans.len());
    for s in spans {
        match merged.last_mut() {
            Some(last) if s.from <= last.to => last.to = last.to.max(s.to),
            _ => merged.push(s),
        }
    }
    merged
}

/// How much of `span` the sorted, disjoint `covered` (a [`union`]) covers.
pub fn covered(span: Interval, covered: &[Interval]) -> Duration {
    covered
        .iter()
        .map(|c| since(c.from.max(span.from), c.to.min(span.to)))
        .sum()
}

/// One consumer's longest time without consuming in a window.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// Inbox rows in the window.
    pub samples: usize,
    /// The longest gap, outages included (information).
    pub raw: Interval,
    /// The longest gap less its overlap with the outages that excuse it (the target's).
    pub net: Duration,
    /// Where that gap is.
    pub net_at: Interval,
}

/// The longest gap between consecutive `samples` (times a consumer consumed) in `window`,
/// the window's start and end counting as samples, so that a stall at either end is a gap
/// and a consumer without a sample has one gap, the whole window. `net` subtracts from each
/// gap its overlap with the union of `excused` (the outages that stop this consumer) before
/// the longest is chosen. Samples outside the window are left out.
pub fn longest_gap(samples: &[Time], window: Interval, excused: &[Interval]) -> Gap {
    let excused = union(excused.iter().copied());
    let mut points: Vec<Time> = samples
        .iter()
        .copied()
        .filter(|t| window.from <= *t && *t <= window.to)
        .collect();
    points.sort();
    let count = points.len();
    let mut bounds = Vec::with_capacity(count + 2);
    bounds.push(window.from);
    bounds.extend(points);
    bounds.push(window.to);
    let mut raw = Interval::new(window.from, window.from);
    let (mut net, mut net_at) = (Duration::ZERO, raw);
    for pair in bounds.windows(2) {
        let span = Interval::new(pair[0], pair[1]);
        if span.length() > raw.length() {
            raw = span;
        }
        let left = span.length().saturating_sub(covered(span, &excused));
        if left > net {
            (net, net_at) = (left, span);
        }
    }
    Gap {
        samples: count,
        raw,
        net,
        net_at,
    }
}

/// Where a payment's time to terminal starts: its creation, or the end of the last outage of
/// `outages` that overlapped its life (went down before it ended, came back after it was
/// created), whichever is later.
pub fn measured_from(created: Time, terminal: Time, outages: &[Interval]) -> Time {
    outages
        .iter()
        .filter(|o| o.from < terminal && o.to > created)
        .map(|o| o.to)
        .fold(created, Time::max)
}

/// The `p` quantile (nearest rank) of the sorted `sorted`. A quantile of nothing is not 0:
/// it panics, since a target held by no sample holds nothing.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    assert!(
        !sorted.is_empty(),
        "a percentile of an empty sample: nothing was measured"
    );
    assert!((0.0..=1.0).contains(&p), "a quantile in [0, 1]: {p}");
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The fewest payments a load of `rate` a second must have made in `over`: half of what it
/// sent (at least one).
pub fn payments_floor(rate: f64, over: Duration) -> usize {
    ((rate * over.as_secs_f64() / 2.0).floor() as usize).max(1)
}

/// `n` payments (`what`: accepted, created in the window) reach [`payments_floor`]: with
/// nothing accepted every exactly-once count holds, and with nothing measured every target.
pub fn check_payments(what: &str, n: usize, rate: f64, over: Duration) -> Result<(), String> {
    let floor = payments_floor(rate, over);
    if n < floor {
        return Err(format!(
            "{n} payments {what}, fewer than {floor} (half of {rate}/s for {:.1} s): the checks \
             would hold of too little",
            over.as_secs_f64()
        ));
    }
    Ok(())
}

/// The fewest inbox rows each consumer must have written in a window of `window` under a load
/// of `rate` a second: every consumer writes at least one per payment, and a quarter of that
/// leaves room for the outages.
pub fn min_samples(rate: f64, window: Duration) -> usize {
    ((rate * window.as_secs_f64() / 4.0).floor() as usize).max(1)
}

/// One accepted payment's times, on the database's clock.
#[derive(Debug, Clone, Copy)]
pub struct PaymentTimes {
    pub payment_id: Uuid,
    pub created_at: Time,
    /// Its one terminal timeline row.
    pub terminal_at: Time,
    /// [`measured_from`].
    pub from: Time,
}

impl PaymentTimes {
    /// What the target holds: from [`PaymentTimes::from`] to the terminal row.
    pub fn to_terminal(&self) -> Duration {
        since(self.from, self.terminal_at)
    }

    /// From creation to the terminal row, outages included (information).
    pub fn absolute(&self) -> Duration {
        since(self.created_at, self.terminal_at)
    }
}

/// A row of the terminal-times query: payment, `created_at`, the earliest terminal
/// transition's time and how many terminal transitions it has.
pub type TerminalRow = (Uuid, Time, Option<Time>, i64);

/// `(payment_id, created_at, terminal_at)` of every payment of `ids`, from `rows`
/// ([`TerminalRow`]); an error naming every payment without exactly one terminal transition
/// (no payment row, none, or several): no payment may drop out of the times.
pub fn terminal_times(
    ids: &[Uuid],
    rows: &[TerminalRow],
) -> Result<Vec<(Uuid, Time, Time)>, String> {
    let by_id: HashMap<Uuid, TerminalRow> = rows.iter().map(|r| (r.0, *r)).collect();
    let mut times = Vec::with_capacity(ids.len());
    let (mut missing, mut several) = (Vec::new(), Vec::new());
    for id in ids {
        match by_id.get(id).copied() {
            Some((_, created, Some(terminal), 1)) => times.push((*id, created, terminal)),
            Some((_, _, Some(_), n)) if n > 1 => several.push((*id, n)),
            _ => missing.push(*id),
        }
    }
    if !missing.is_empty() || !several.is_empty() || times.len() != ids.len() {
        return Err(format!(
            "{} accepted payments, {} with exactly one terminal transition; without one ({}): \
             {missing:?}; with several ({}): {several:?}",
            ids.len(),
            times.len(),
            missing.len(),
            several.len()
        ));
    }
    Ok(times)
}

/// Reconciliation compared every one of the `accepted` payments (the load's are the only
/// payments of the stack) and left none out as still moving: a clean report of fewer
/// payments would say nothing of the others.
pub fn check_reconciliation(
    report: &sagapayctl::reconcile::Report,
    accepted: usize,
) -> Result<(), String> {
    if !report.differences.is_empty() {
        return Err(format!(
            "three-way reconciliation is not clean: {:?}",
            report.differences
        ));
    }
    if report.payments_checked != accepted || report.in_flight != 0 {
        return Err(format!(
            "reconciliation checked {} payments ({} left out in flight) of {accepted} accepted",
            report.payments_checked, report.in_flight
        ));
    }
    Ok(())
}

/// `(group, replacements)` of every `consumer_replacements_total` sample of a service's
/// `/metrics` text (a group appears once its consumer was replaced).
pub fn replacements_by_group(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|l| {
            let labels = l.strip_prefix("consumer_replacements_total{")?;
            let group = labels.split("group=\"").nth(1)?.split('"').next()?;
            let value: f64 = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((group.to_owned(), value as u64))
        })
        .collect()
}

/// Where a consumer group stands on one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionProgress {
    pub topic: String,
    pub partition: i32,
    pub low: i64,
    pub high: i64,
    /// The group's committed offset (the next to read), if it committed one.
    pub committed: Option<i64>,
}

/// The high watermarks of a set of partitions: where each ended at some moment.
pub type Ends = HashMap<(String, i32), i64>;

/// That `group` read every topic it reads (those it committed an offset on) to the end, and
/// read past `ends_before` on one of them at least (it consumed something written after
/// that moment): a consumer that is back, not one that only counted its replacement.
pub fn read_to_end(
    group: &str,
    progress: &[PartitionProgress],
    ends_before: &Ends,
) -> Result<(), String> {
    let topics: BTreeSet<&str> = progress
        .iter()
        .filter(|p| p.committed.is_some())
        .map(|p| p.topic.as_str())
        .collect();
    if topics.is_empty() {
        return Err(format!("{group} has committed no offset on any topic"));
    }
    let mine: Vec<&PartitionProgress> = progress
        .iter()
        .filter(|p| topics.contains(p.topic.as_str()))
        .collect();
    let unread: Vec<String> = mine
        .iter()
        .filter_map(|p| {
            let next = p.committed.unwrap_or(p.low);
            (next < p.high).then(|| format!("{}[{}]: {} of {}", p.topic, p.partition, next, p.high))
        })
        .collect();
    if !unread.is_empty() {
        return Err(format!("{group} has not read to the end: {unread:?}"));
    }
    let after = mine.iter().any(|p| {
        let before = ends_before
            .get(&(p.topic.clone(), p.partition))
            .copied()
            .unwrap_or(0);
        p.committed.is_some_and(|c| c > before)
    });
    if !after {
        return Err(format!(
            "{group} read nothing written since {ends_before:?}: {mine:?}"
        ));
    }
    Ok(())
}
