//! Percentiles and the run's summary.

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub struct Sample {
    /// POST round trip; `None` when the connection failed.
    pub api_ms: Option<f64>,
    /// POST sent → terminal state committed; `None` when it never got there.
    pub terminal_ms: Option<f64>,
    /// The terminal state, or what went wrong (`http_503`, `not_terminal`, …).
    pub status: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Nearest-rank percentiles.
pub fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| -> f64 {
        if v.is_empty() {
            return 0.0;
        }
        let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
        v[rank - 1]
    };
    Percentiles {
        count: v.len(),
        p50_ms: at(0.50),
        p95_ms: at(0.95),
        p99_ms: at(0.99),
        max_ms: v.last().copied().unwrap_or(0.0),
    }
}

#[derive(Debug, Serialize)]
pub struct Reconciliation {
    pub payments_checked: usize,
    pub postings_checked: usize,
    pub refunds_checked: usize,
    pub differences: usize,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub run: serde_json::Value,
    pub payments: usize,
    /// While payments were being started.
    pub load_s: f64,
    /// Until the last payment was terminal (or given up).
    pub elapsed_s: f64,
    /// Terminal payments per second over `elapsed_s`.
    pub throughput_per_s: f64,
    /// Payments that got an error answer or never reached a terminal state.
    pub errors: usize,
    pub error_rate: f64,
    pub api_latency: Percentiles,
    pub time_to_terminal: Percentiles,
    pub time_to_settled: Percentiles,
    pub by_status: BTreeMap<String, usize>,
    pub reconciliation: Option<Reconciliation>,
}

const TERMINAL: [&str; 3] = ["SETTLED", "FAILED", "REVERSED"];

impl Summary {
    pub fn new(
        run: serde_json::Value,
        samples: &[Sample],
        load_s: f64,
        elapsed_s: f64,
        reconciliation: Option<&sagapayctl::reconcile::Report>,
    ) -> Summary {
        let mut by_status = BTreeMap::new();
        for s in samples {
            *by_status.entry(s.status.clone()).or_insert(0) += 1;
        }
        let terminal: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.terminal_ms.is_some() && TERMINAL.contains(&s.status.as_str()))
            .collect();
        let errors = samples.len() - terminal.len();
        Summary {
            run,
            payments: samples.len(),
            load_s,
            elapsed_s,
            throughput_per_s: terminal.len() as f64 / elapsed_s.max(1e-9),
            errors,
            error_rate: errors as f64 / samples.len().max(1) as f64,
            api_latency: percentiles(samples.iter().filter_map(|s| s.api_ms).collect()),
            time_to_terminal: percentiles(terminal.iter().filter_map(|s| s.terminal_ms).collect()),
            time_to_settled: percentiles(
                terminal
                    .iter()
                    .filter(|s| s.status == "SETTLED")
                    .filter_map(|s| s.terminal_ms)
                    .collect(),
            ),
            by_status,
            reconciliation: reconciliation.map(|r| Reconciliation {
                payments_checked: r.payments_checked,
                postings_checked: r.postings_checked,
                refunds_checked: r.refunds_checked,
                differences: r.differences.len(),
            }),
        }
    }

    /// The summary for a terminal.
    pub fn text(&self) -> String {
        let line = |name: &str, p: &Percentiles| {
            format!(
                "{name:<18} n={:<7} p50 {:>8.1} ms  p95 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms\n",
                p.count, p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms
            )
        };
        let mut out = format!("run                {}\n", self.run);
        out += &format!(
            "payments           {} in {:.1} s (started over {:.1} s): {:.1} terminal/s, {} error(s) ({:.2}%)\n",
            self.payments,
            self.elapsed_s,
            self.load_s,
            self.throughput_per_s,
            self.errors,
            self.error_rate * 100.0
        );
        out += &line("API latency", &self.api_latency);
        out += &line("time to terminal", &self.time_to_terminal);
        out += &line("time to SETTLED", &self.time_to_settled);
        let statuses: Vec<String> = self
            .by_status
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        out += &format!("by status          {}\n", statuses.join(", "));
        let created = self.payments
            - self
                .by_status
                .keys()
                .filter(|k| {
                    k.starts_with("http_") || *k == "connection_error" || *k == "bad_response"
                })
                .map(|k| self.by_status[k])
                .sum::<usize>();
        if created > 0 && self.time_to_terminal.count == 0 {
            out += "hint               no payment of this run was seen terminal: does --namespace \
                    (SAGAPAY_NAMESPACE) match the services'?\n";
        }
        match &self.reconciliation {
            Some(r) => {
                out += &format!(
                    "reconciliation     {} payments, {} postings, {} refunds checked: {} difference(s)\n",
                    r.payments_checked, r.postings_checked, r.refunds_checked, r.differences
                )
            }
            None => out += "reconciliation     skipped\n",
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!(
            (p.p50_ms, p.p95_ms, p.p99_ms, p.max_ms),
            (50.0, 95.0, 99.0, 100.0)
        );
        let one = percentiles(vec![7.0]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
    }

    #[test]
    fn errors_are_what_did_not_end_terminal() {
        let s = |status: &str, terminal: Option<f64>| Sample {
            api_ms: Some(1.0),
            terminal_ms: terminal,
            status: status.into(),
        };
        let samples = vec![
            s("SETTLED", Some(100.0)),
            s("FAILED", Some(50.0)),
            s("http_503", None),
            s("not_terminal", None),
        ];
        let sum = Summary::new(serde_json::json!({}), &samples, 1.0, 2.0, None);
        assert_eq!(sum.errors, 2);
        assert_eq!(sum.time_to_terminal.count, 2);
        assert_eq!(sum.time_to_settled.count, 1);
        assert_eq!(sum.throughput_per_s, 1.0);
        assert!(sum.text().contains("SETTLED 1"));
    }
}
