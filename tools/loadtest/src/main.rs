//! `sagapay-loadtest`: closed-loop load against the gateway. Each worker creates a payment,
//! then polls it until it reaches a terminal state, and starts the next one. Reports API
//! latency (POST /payments) and time from POST to the terminal state.
//!
//!     sagapay-loadtest --total 100 --concurrency 1
//!
//! The terminal-state time is measured by polling every `--poll-ms` (default 5 ms), so it is
//! an upper bound accurate to about that interval.

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(about = "Load-test SagaPay through its gateway")]
struct Args {
    /// Gateway base URL.
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    #[arg(long, default_value = "dev-secret")]
    api_key: String,
    /// Payments to create in total.
    #[arg(long, default_value_t = 100)]
    total: usize,
    /// Payments in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 2500)]
    amount_cents: i64,
    /// Interval between status polls of one payment.
    #[arg(long, default_value_t = 5)]
    poll_ms: u64,
    /// Give up on a payment that is not terminal after this long.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Default)]
struct Sample {
    api_ms: Option<f64>,
    terminal_ms: Option<f64>,
    status: String,
}

#[derive(Debug, Serialize)]
struct Percentiles {
    count: usize,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.total_cmp(b));
    // Nearest-rank percentile.
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
struct Summary {
    total: usize,
    concurrency: usize,
    elapsed_s: f64,
    throughput_per_s: f64,
    errors: usize,
    error_rate: f64,
    api_latency: Percentiles,
    time_to_terminal: Percentiles,
    by_status: BTreeMap<String, usize>,
}

async fn one_payment(client: &reqwest::Client, args: &Args, run: &str, i: usize) -> Sample {
    let started = Instant::now();
    let resp = client
        .post(format!("{}/payments", args.base_url))
        .header("x-api-key", &args.api_key)
        .json(&json!({
            "customer_id": format!("load-{}", i % 1000),
            "amount_cents": args.amount_cents,
            "currency": "USD",
            "idempotency_key": format!("{run}-{i}"),
        }))
        .send()
        .await;
    let api_ms = started.elapsed().as_secs_f64() * 1e3;
    let body: serde_json::Value = match resp {
        Ok(r) if r.status().as_u16() == 201 => r.json().await.unwrap_or_default(),
        Ok(r) => {
            return Sample {
                status: format!("http_{}", r.status().as_u16()),
                ..Sample::default()
            }
        }
        Err(_) => {
            return Sample {
                status: "connection_error".into(),
                ..Sample::default()
            }
        }
    };
    let Some(payment_id) = body["payment_id"].as_str().map(str::to_owned) else {
        return Sample {
            status: "bad_response".into(),
            ..Sample::default()
        };
    };
    let deadline = started + Duration::from_millis(args.timeout_ms);
    loop {
        if let Ok(r) = client
            .get(format!("{}/payments/{payment_id}", args.base_url))
            .header("x-api-key", &args.api_key)
            .send()
            .await
        {
            if let Ok(p) = r.json::<serde_json::Value>().await {
                let status = p["status"].as_str().unwrap_or("").to_owned();
                if matches!(status.as_str(), "SETTLED" | "FAILED" | "REVERSED") {
                    return Sample {
                        api_ms: Some(api_ms),
                        terminal_ms: Some(started.elapsed().as_secs_f64() * 1e3),
                        status,
                    };
                }
            }
        }
        if Instant::now() > deadline {
            return Sample {
                api_ms: Some(api_ms),
                terminal_ms: None,
                status: "timeout".into(),
            };
        }
        tokio::time::sleep(Duration::from_millis(args.poll_ms)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.total > 0 && args.concurrency > 0,
        "--total and --concurrency must be positive"
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency * 2)
        .tcp_nodelay(true)
        .build()?;
    let run = format!("load-{}", uuid::Uuid::now_v7().simple());
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, args, run, next) = (client.clone(), args.clone(), run.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= args.total {
                    return samples;
                }
                samples.push(one_payment(&client, &args, &run, i).await);
            }
        }));
    }
    let mut samples = Vec::new();
    for w in workers {
        samples.extend(w.await.context("worker panicked")?);
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let mut by_status = BTreeMap::new();
    for s in &samples {
        *by_status.entry(s.status.clone()).or_insert(0) += 1;
    }
    let errors = samples.iter().filter(|s| s.terminal_ms.is_none()).count();
    let summary = Summary {
        total: samples.len(),
        concurrency: args.concurrency,
        elapsed_s,
        throughput_per_s: samples.len() as f64 / elapsed_s,
        errors,
        error_rate: errors as f64 / samples.len() as f64,
        api_latency: percentiles(samples.iter().filter_map(|s| s.api_ms).collect()),
        time_to_terminal: percentiles(samples.iter().filter_map(|s| s.terminal_ms).collect()),
        by_status,
    };
    let text = serde_json::to_string_pretty(&summary)?;
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::percentiles;

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
}
