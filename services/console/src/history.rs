//! The last hour of the services' own metrics, for the health page's charts: every few
//! seconds each service's `/metrics` is read and the series the console draws are kept
//! (720 samples: an hour at 5 s). No Prometheus is needed; the rates and quantiles are
//! computed here the way Prometheus computes them (counter deltas; a histogram's quantile
//! from its buckets' deltas, linear within a bucket).

use crate::config::ServiceUrls;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Samples kept: an hour at the production interval.
const KEPT: usize = 720;

/// The metrics kept from each service's exposition.
const KEPT_METRICS: [&str; 13] = [
    "payment_e2e_seconds_bucket",
    "payment_e2e_seconds_count",
    "http_requests_total",
    "handler_retries_total",
    "deadline_nudges_total",
    "dlq_published_total",
    "consumer_lag_messages",
    "consumer_stalled_seconds",
    "outbox_pending_total",
    "webhook_backlog",
    "admission_payments_in_flight",
    "admission_refused_total",
    "admission_merchant_refused_total",
];

/// One reading of every service: `service` → `name{labels}` → value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub at: DateTime<Utc>,
    pub values: HashMap<&'static str, HashMap<String, f64>>,
}

impl Sample {
    /// The sum of the series of metric `name` of `service` (any service when `None`) whose
    /// labels pass `labels`.
    pub fn sum(&self, service: Option<&str>, name: &str, labels: impl Fn(&str) -> bool) -> f64 {
        self.values
            .iter()
            .filter(|(s, _)| service.is_none_or(|want| want == **s))
            .flat_map(|(_, series)| series.iter())
            .filter(|(key, _)| metric_name(key) == name && labels(key))
            .map(|(_, v)| v)
            .sum()
    }

    /// The largest value of metric `name` of `service`, 0 without one.
    pub fn max(&self, service: &str, name: &str) -> f64 {
        self.values
            .get(service)
            .into_iter()
            .flat_map(|series| series.iter())
            .filter(|(key, _)| metric_name(key) == name)
            .map(|(_, v)| *v)
            .fold(0.0, f64::max)
    }
}

fn metric_name(key: &str) -> &str {
    key.split('{').next().unwrap_or(key)
}

/// The kept lines of a Prometheus text exposition, as `name{labels}` → value.
pub fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| KEPT_METRICS.contains(&metric_name(key)))
        .filter_map(|(key, v)| v.parse::<f64>().ok().map(|v| (key.to_owned(), v)))
        .collect()
}

/// The shared history.
#[derive(Clone)]
pub struct History {
    services: ServiceUrls,
    http: reqwest::Client,
    samples: Arc<Mutex<VecDeque<Sample>>>,
}

impl History {
    pub fn new(services: ServiceUrls, http: reqwest::Client) -> Self {
        Self {
            services,
            http,
            samples: Arc::default(),
        }
    }

    /// A copy of the samples, oldest first.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .expect("history lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Reads every service. A service that does not answer keeps its last values (a gap,
    /// not a fall to zero that the next answer would draw as a spike of everything it ever
    /// counted).
    async fn sample(&self) -> Sample {
        let reads = self.services.0.iter().map(|(service, url)| async move {
            let text = match self.http.get(format!("{url}/metrics")).send().await {
                Ok(r) if r.status().is_success() => r.text().await.ok(),
                _ => None,
            };
            (*service, text.map(|t| parse(&t)))
        });
        let read = futures::future::join_all(reads).await;
        let last = self.samples.lock().expect("history lock").back().cloned();
        let values = read
            .into_iter()
            .map(|(service, values)| {
                let kept = || last.as_ref().and_then(|l| l.values.get(service).cloned());
                (service, values.or_else(kept).unwrap_or_default())
            })
            .collect();
        Sample {
            at: Utc::now(),
            values,
        }
    }

    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().expect("history lock");
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Samples every `every` until shutdown.
pub async fn run(
    history: History,
    every: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let sample = history.sample().await;
        history.push(sample);
    }
}

/// A point of a chart: when, and the value over the window ending then.
pub type Point = (DateTime<Utc>, f64);

/// The per-second rate of `value` over each window of `span` samples.
pub fn rate(samples: &[Sample], span: usize, value: impl Fn(&Sample) -> f64) -> Vec<Point> {
    windows(samples, span)
        .map(|(a, b)| {
            let dt = (b.at - a.at).num_milliseconds() as f64 / 1000.0;
            // A counter that went down is a restarted service: its count since the restart.
            let d = value(b) - value(a);
            let d = if d < 0.0 { value(b) } else { d };
            (b.at, if dt > 0.0 { d / dt } else { 0.0 })
        })
        .collect()
}

/// Quantile `q` of a histogram's observations in each window, from its buckets.
pub fn quantile(
    samples: &[Sample],
    span: usize,
    q: f64,
    buckets: impl Fn(&Sample) -> Vec<(f64, f64)>,
) -> Vec<Point> {
    windows(samples, span)
        .filter_map(|(a, b)| {
            let before: HashMap<u64, f64> = buckets(a)
                .into_iter()
                .map(|(le, c)| (le.to_bits(), c))
                .collect();
            let mut delta: Vec<(f64, f64)> = buckets(b)
                .into_iter()
                .map(|(le, c)| (le, (c - before.get(&le.to_bits()).unwrap_or(&0.0)).max(0.0)))
                .collect();
            delta.sort_by(|x, y| x.0.total_cmp(&y.0));
            bucket_quantile(&delta, q).map(|v| (b.at, v))
        })
        .collect()
}

/// Prometheus's `histogram_quantile` over cumulative `(le, count)` buckets, sorted by `le`.
pub fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let inside = count - below;
            let share = if inside > 0.0 {
                (rank - below) / inside
            } else {
                0.0
            };
            return Some(lower + (le - lower) * share);
        }
        (lower, below) = (le, count);
    }
    Some(lower)
}

fn windows(samples: &[Sample], span: usize) -> impl Iterator<Item = (&Sample, &Sample)> {
    let span = span.max(1);
    (span..samples.len()).map(move |i| (&samples[i - span], &samples[i]))
}

/// The `(le, count)` buckets of `payment_e2e_seconds` for terminal `status`.
pub fn e2e_buckets(sample: &Sample, status: &str) -> Vec<(f64, f64)> {
    let want = format!("status=\"{status}\"");
    let mut by_le: HashMap<u64, f64> = HashMap::new();
    for series in sample.values.values() {
        for (key, v) in series {
            if metric_name(key) != "payment_e2e_seconds_bucket" || !key.contains(&want) {
                continue;
            }
            let le = key
                .split("le=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .and_then(|s| {
                    if s == "+Inf" {
                        Some(f64::INFINITY)
                    } else {
                        s.parse().ok()
                    }
                });
            if let Some(le) = le {
                *by_le.entry(le.to_bits()).or_default() += v;
            }
        }
    }
    by_le
        .into_iter()
        .map(|(le, c)| (f64::from_bits(le), c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_keeps_only_the_drawn_metrics() {
        let text = "# HELP x\nhttp_requests_total{route=\"/a\",status=\"500\"} 3\n\
                    other_total 9\nwebhook_backlog 2\n";
        let kept = parse(text);
        assert_eq!(kept.len(), 2);
        assert_eq!(
            kept["http_requests_total{route=\"/a\",status=\"500\"}"],
            3.0
        );
    }

    #[test]
    fn a_quantile_is_interpolated_within_its_bucket() {
        // 100 observations: 50 under 0.1 s, 40 more under 0.5 s, 10 more under 1 s.
        let b = [
            (0.1, 50.0),
            (0.5, 90.0),
            (1.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(bucket_quantile(&b, 0.5), Some(0.1));
        let p99 = bucket_quantile(&b, 0.99).unwrap();
        assert!((p99 - 0.95).abs() < 1e-9, "{p99}");
        assert_eq!(bucket_quantile(&[(0.1, 0.0)], 0.5), None);
    }

    #[test]
    fn a_restarted_counter_counts_from_zero() {
        let at = |s: i64, v: f64| Sample {
            at: DateTime::from_timestamp(s, 0).unwrap(),
            values: [("orchestrator", [("x_total".to_owned(), v)].into())].into(),
        };
        let samples = [at(0, 100.0), at(10, 150.0), at(20, 20.0)];
        let r = rate(&samples, 1, |s| s.sum(None, "x_total", |_| true));
        assert_eq!(r.iter().map(|p| p.1).collect::<Vec<_>>(), vec![5.0, 2.0]);
    }
}
