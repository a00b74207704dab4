//! `sagapay-loadtest`: load against the gateway, measured end to end.
//!
//! ```text
//! sagapay-loadtest --total 1000 --concurrency 32            # closed loop
//! sagapay-loadtest --rate 300 --duration-s 60               # open loop
//! sagapay-loadtest --rate 50 --duration-s 30 --scenario mix # review, decline, timeout too
//! sagapay-loadtest --rate 40 --api-key KEY --scenario timeout # a merchant whose cards hang
//! ```
//!
//! Closed loop: `--concurrency` workers each create a payment, wait for its terminal state and
//! start the next, until `--total`. Open loop: a payment starts every `1/--rate` seconds for
//! `--duration-s`, whether or not earlier ones finished (what a real arrival process does; a
//! slow system shows up as latency, not as a lower offered rate).
//!
//! API latency is the POST's round trip. Terminal states come from the `payments.finalized`
//! topic (see `tracker`), not from polling. Payments sent to manual review in the `mix`
//! scenario are approved through the risk service's ops API, as an operator would. At the
//! end the run waits for stragglers (`--drain-s`), reconciles payments against the ledger
//! (`sagapayctl reconcile`), prints a summary and, with `--json FILE`, writes it as JSON.

mod stats;
mod tracker;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use sagapay_domain::Namespace;
use serde_json::json;
use stats::{Sample, Summary};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracker::Tracker;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
enum Scenario {
    /// Every payment small, with a good card: all settle.
    Approve,
    /// 88% approve, 4% manual review (approved by the load test), 4% declined,
    /// 2% provider timeouts (retried, then voided), 2% failing twice then succeeding.
    Mix,
    /// Every payment with a card whose authorizations time out (retried, asked about, then
    /// voided: REVERSED): a merchant whose payments are slow, for fairness runs.
    Timeout,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Load-test SagaPay through its gateway")]
struct Args {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    #[arg(long, default_value = "dev-secret")]
    api_key: String,
    /// Risk service base URL, for approving manual reviews in the `mix` scenario.
    #[arg(long, default_value = "http://127.0.0.1:8002")]
    ops_url: String,
    #[arg(long, default_value = "dev-ops-secret")]
    ops_key: String,
    /// Closed loop: payments to create in total.
    #[arg(long, default_value_t = 100)]
    total: usize,
    /// Closed loop: payments in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Open loop: payments started per second (turns the open loop on).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: how long to keep starting payments.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    #[arg(long, value_enum, default_value_t = Scenario::Approve)]
    scenario: Scenario,
    /// Answer a 503 (`overloaded`) as a careful merchant does: the same request, same key,
    /// again after its `Retry-After`, until the payment's timeout. The payment's time to its
    /// terminal state counts from the first attempt. A closed loop then measures what the
    /// stack settles behind its admission control instead of what it refuses.
    #[arg(long)]
    retry_overloaded: bool,
    /// Give up on a payment that is not terminal this long after its POST.
    #[arg(long, default_value_t = 60_000)]
    timeout_ms: u64,
    #[arg(long, env = "SAGAPAY_NAMESPACE", default_value = "sagapay")]
    namespace: String,
    #[arg(long, env = "SAGAPAY_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// PostgreSQL server URL, for the reconciliation at the end.
    #[arg(
        long,
        env = "SAGAPAY_POSTGRES_URL",
        default_value = "postgres://sagapay:sagapay@127.0.0.1:5432"
    )]
    postgres_url: String,
    /// Skip the reconciliation at the end.
    #[arg(long)]
    no_reconcile: bool,
    /// No progress bar (it is also off when standard error is not a terminal).
    #[arg(long)]
    no_progress: bool,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// What the i-th payment of a run is: its amount and card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Approve,
    Review,
    Decline,
    Timeout,
    FailTwice,
}

impl Kind {
    /// Deterministic and evenly spread: payment `i` falls in bucket `(i * 37) % 100`.
    fn of(scenario: Scenario, i: usize) -> Kind {
        match scenario {
            Scenario::Approve => return Kind::Approve,
            Scenario::Timeout => return Kind::Timeout,
            Scenario::Mix => {}
        }
        match (i * 37) % 100 {
            0..=3 => Kind::Review,
            4..=7 => Kind::Decline,
            8..=9 => Kind::Timeout,
            10..=11 => Kind::FailTwice,
            _ => Kind::Approve,
        }
    }

    fn amount_minor(self) -> i64 {
        match self {
            // Above the default review threshold of 100,000.
            Kind::Review => 150_000,
            _ => 2_500,
        }
    }

    fn payment_method(self) -> &'static str {
        match self {
            Kind::Approve | Kind::Review => "pm_card_ok",
            Kind::Decline => "pm_card_declined",
            Kind::Timeout => "pm_card_timeout",
            Kind::FailTwice => "pm_card_fail_twice",
        }
    }
}

struct Run {
    args: Args,
    client: reqwest::Client,
    tracker: Tracker,
    /// Distinct per run, so idempotency keys and customers never repeat across runs.
    tag: String,
    progress: ProgressBar,
}

impl Run {
    async fn one_payment(&self, i: usize) -> Sample {
        let kind = Kind::of(self.args.scenario, i);
        let sent_at = chrono::Utc::now();
        let first = Instant::now();
        let (resp, api_ms) = loop {
            let started = Instant::now();
            let resp = self.post_payment(kind, i).await;
            let api_ms = started.elapsed().as_secs_f64() * 1e3;
            match &resp {
                Ok(r) if r.status().as_u16() == 503 && self.args.retry_overloaded => {
                    let wait = retry_after(r);
                    if first.elapsed() + wait < Duration::from_millis(self.args.timeout_ms) {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                _ => {}
            }
            break (resp, api_ms);
        };
        let failed = |status: String| Sample {
            api_ms: Some(api_ms),
            terminal_ms: None,
            status,
        };
        let body: serde_json::Value = match resp {
            Ok(r) if r.status().as_u16() == 201 => r.json().await.unwrap_or_default(),
            Ok(r) => return failed(format!("http_{}", r.status().as_u16())),
            Err(_) => {
                return Sample {
                    api_ms: None,
                    terminal_ms: None,
                    status: "connection_error".into(),
                }
            }
        };
        let Some(payment_id) = body["payment_id"]
            .as_str()
            .and_then(|s| uuid::Uuid::parse_str(s).ok())
        else {
            return failed("bad_response".into());
        };
        let terminal = self.tracker.wait(payment_id);
        if kind == Kind::Review {
            self.approve_review(payment_id).await;
        }
        match tokio::time::timeout(Duration::from_millis(self.args.timeout_ms), terminal).await {
            Ok(Ok(t)) => Sample {
                api_ms: Some(api_ms),
                terminal_ms: Some(
                    ((t.occurred_at - sent_at).num_microseconds().unwrap_or(0) as f64 / 1e3)
                        .max(0.0),
                ),
                status: t.status,
            },
            _ => failed("not_terminal".into()),
        }
    }

    /// The i-th payment's POST (its idempotency key is the same on every attempt).
    async fn post_payment(&self, kind: Kind, i: usize) -> reqwest::Result<reqwest::Response> {
        self.client
            .post(format!("{}/payments", self.args.base_url))
            .header("x-api-key", &self.args.api_key)
            .header("idempotency-key", format!("{}-{i}", self.tag))
            .json(&json!({
                // A customer per payment: the velocity rules must not turn load into reviews.
                "customer_id": format!("{}-{i}", self.tag),
                "amount_cents": kind.amount_minor(),
                "currency": "USD",
                "payment_method": kind.payment_method(),
            }))
            .send()
            .await
    }

    /// Waits (polling the review queue's answer) until the review exists, then approves it.
    async fn approve_review(&self, payment_id: uuid::Uuid) {
        let deadline = Instant::now() + Duration::from_millis(self.args.timeout_ms);
        while Instant::now() < deadline {
            let resp = self
                .client
                .post(format!(
                    "{}/ops/reviews/{payment_id}/approve",
                    self.args.ops_url
                ))
                .header("x-ops-key", &self.args.ops_key)
                .json(&json!({"reviewed_by": "loadtest"}))
                .send()
                .await;
            match resp.map(|r| r.status().as_u16()) {
                Ok(200) | Ok(409) => return,
                // Not yet in review (404) or a transient error: ask again shortly.
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

/// The wait a 503 asks for (`Retry-After` in seconds), 1 s when it names none.
fn retry_after(r: &reqwest::Response) -> Duration {
    r.headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(1), Duration::from_secs)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ns = Namespace::parse(&args.namespace)?;
    let open_rate = args.rate;
    let planned = match open_rate {
        Some(rate) => {
            anyhow::ensure!(
                rate > 0.0 && args.duration_s > 0,
                "--rate and --duration-s must be positive"
            );
            (rate * args.duration_s as f64).round() as usize
        }
        None => {
            anyhow::ensure!(
                args.total > 0 && args.concurrency > 0,
                "--total and --concurrency must be positive"
            );
            args.total
        }
    };
    // Straight to the gateway (it carries the API key and the ops key), trusting the services'
    // CA alone when the stack serves HTTPS (`SAGAPAY_SERVICE_CA_FILE`).
    let ca = sagapay_service_kit::service_client::ca_file_from_env();
    let client = sagapay_service_kit::service_client::builder(ca.as_deref())?
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    let tracker = Tracker::start(
        &args.brokers,
        &sagapay_service_kit::config::kafka_client_overrides()?,
        &ns,
    )
    .await?;
    let progress = if args.no_progress {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(planned as u64)
    };
    progress.set_style(
        ProgressStyle::with_template(
            "{elapsed_precise} [{bar:40}] {pos}/{len} terminal, {per_sec} {msg}",
        )
        .expect("template")
        .progress_chars("=> "),
    );
    let run = Arc::new(Run {
        args: args.clone(),
        client,
        tracker,
        tag: format!("load-{}", uuid::Uuid::now_v7().simple()),
        progress,
    });

    let started = Instant::now();
    let mut tasks = Vec::with_capacity(planned);
    let mut late_starts = 0usize;
    match open_rate {
        Some(rate) => {
            let period = Duration::from_secs_f64(1.0 / rate);
            for i in 0..planned {
                let due = started + period.mul_f64(i as f64);
                if Instant::now() > due + Duration::from_millis(10) {
                    late_starts += 1;
                }
                tokio::time::sleep_until(due.into()).await;
                let run = run.clone();
                tasks.push(tokio::spawn(async move {
                    let s = run.one_payment(i).await;
                    run.progress.inc(1);
                    vec![s]
                }));
            }
        }
        None => {
            let next = Arc::new(AtomicUsize::new(0));
            for _ in 0..args.concurrency {
                let (run, next) = (run.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    let mut samples = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= run.args.total {
                            return samples;
                        }
                        samples.push(run.one_payment(i).await);
                        run.progress.inc(1);
                    }
                }));
            }
        }
    }
    // Closed loop: payments are started until the last worker finishes (measured below).
    let open_load_s = started.elapsed().as_secs_f64();
    let mut samples = Vec::with_capacity(planned);
    for t in tasks {
        samples.extend(t.await.context("a payment task panicked")?);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let load_s = if open_rate.is_some() {
        open_load_s
    } else {
        elapsed_s
    };
    run.progress.finish_and_clear();

    let reconciliation = if args.no_reconcile {
        None
    } else {
        // Every payment of the run is terminal: nothing needs a settling margin.
        Some(
            sagapayctl::reconcile::run(
                &sagapayctl::reconcile::Databases::of(&args.postgres_url, &ns),
                &sagapayctl::reconcile::Window {
                    settling: std::time::Duration::ZERO,
                    ..Default::default()
                },
            )
            .await
            .context("reconciling")?,
        )
    };
    let summary = Summary::new(
        json!({
            "mode": if open_rate.is_some() { "open" } else { "closed" },
            "scenario": args.scenario,
            "rate_per_s": open_rate,
            "duration_s": open_rate.map(|_| args.duration_s),
            "concurrency": open_rate.is_none().then_some(args.concurrency),
            "planned": planned,
            "late_starts": late_starts,
        }),
        &samples,
        load_s,
        elapsed_s,
        reconciliation.as_ref(),
    );
    print!("{}", summary.text());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(r) = &reconciliation {
        anyhow::ensure!(
            r.differences.is_empty(),
            "{} reconciliation difference(s)",
            r.differences.len()
        );
    }
    Ok(())
}
