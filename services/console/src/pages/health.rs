//! Health: each service's readiness (and the consumers it says are stalled), consumer lag,
//! outbox and webhook backlogs, admission (in flight and refused, per merchant), and charts
//! of the last hour drawn from the services' own metrics ([`crate::history`]): settled per
//! second, time to SETTLED p50 and p99, errors and retries per second. The live part is
//! `GET /system/live`, which the page's script fetches again every 5 s.

use crate::history::{self, Point, Sample};
use crate::layout::{badge, page};
use crate::reads;
use crate::session::Session;
use crate::state::Console;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use maud::{html, Markup};

/// Samples per window of a rate or quantile (30 s at 5 s).
const SPAN: usize = 6;

/// `GET /health`.
pub async fn page_route(State(state): State<Console>, session: Session) -> Response {
    let body = html! {
        div id="live" data-refresh="/system/live" { (live_part(&state).await) }
    };
    page(&session, "/system", "Health", body).into_response()
}

/// `GET /system/live`: the part of the page that is fetched again.
pub async fn live(State(state): State<Console>, _session: Session) -> Response {
    live_part(&state).await.into_response()
}

async fn live_part(state: &Console) -> Markup {
    let readiness = futures::future::join_all(state.services.0.iter().map(|(s, url)| async move {
        let r = state.http.get(format!("{url}/ready")).send().await;
        let (ready, body) = match r {
            Ok(r) => (r.status().is_success(), r.text().await.unwrap_or_default()),
            Err(e) => (false, e.to_string()),
        };
        (*s, ready, body)
    }))
    .await;
    let samples = state.history.samples();
    let (stored, live) = tokio::join!(
        reads::admission(&state.dbs.orchestrator),
        state.ops.admission()
    );
    html! {
        h2 { "Services" } (services(&readiness, samples.last()))
        h2 { "Admission" }
        @match (&stored, &live) {
            (Ok(stored), Ok(live)) => (admission_table(live, stored)),
            (Err(e), _) => p class="error" data-code="read_failed" { "Could not read the payments in flight: " (e) },
            (_, Err(e)) => p class="error" data-code="read_failed" { "Could not ask the orchestrator: " (format!("{e:#}")) },
        }
        h2 { "The last hour" }
        div class="charts" { (charts(&samples)) }
    }
}

fn services(readiness: &[(&str, bool, String)], last: Option<&Sample>) -> Markup {
    let gauge = |s: &str, name: &str| count(last.map_or(0.0, |l| l.sum(Some(s), name, |_| true)));
    html! {
        table class="services" {
            thead { tr { th { "Service" } th { "Ready" } th class="num" { "Consumer lag" } th class="num" { "Stalled s" }
                th class="num" { "Outbox backlog" } th class="num" { "Webhook backlog" } } }
            tbody { @for (s, ready, body) in readiness { tr data-service=(s) {
                td { (s) }
                td { (badge(if *ready { "ready" } else { "down" })) @if !*ready { " " small { (body.chars().take(200).collect::<String>()) } } }
                td class="num" { (gauge(s, "consumer_lag_messages")) }
                td class="num" { (count(last.map_or(0.0, |l| l.max(s, "consumer_stalled_seconds")))) }
                td class="num" { (gauge(s, "outbox_pending_total")) }
                td class="num" { (gauge(s, "webhook_backlog")) }
            } } }
        }
    }
}

/// Admission now: the orchestrator's counts and refusals (`live`, `GET /ops/admission`) beside
/// what the database says of each merchant (parked payments, its own limit).
fn admission_table(live: &serde_json::Value, stored: &[reads::Admission]) -> Markup {
    let empty = Vec::new();
    let merchants = live["merchants"].as_array().unwrap_or(&empty);
    let mut ids: Vec<String> = merchants
        .iter()
        .filter_map(|m| m["merchant_id"].as_str().map(str::to_owned))
        .collect();
    for s in stored {
        let id = s.merchant_id.to_string();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let of = |id: &str| merchants.iter().find(|m| m["merchant_id"] == id);
    let row = |id: &str| stored.iter().find(|s| s.merchant_id.to_string() == id);
    html! {
        p class="meta" {
            "In flight: " (live["in_flight"]) " of " (live["max_in_flight"])
            " · a merchant's default share: " (live["default_max_in_flight"])
            " · refusals counted by the orchestrator since it started"
        }
        table { thead { tr { th { "Merchant" } th class="num" { "In flight" } th class="num" { "Parked" }
            th class="num" { "Refused" } th class="num" { "at its own limit" } th class="num" { "Own limit" } } }
            tbody { @for id in &ids { tr data-merchant=(id) {
                td class="id" { a href={ "/payments?merchant=" (id) } { (id) } }
                td class="num" { (of(id).map_or(0, |m| m["in_flight"].as_i64().unwrap_or(0))) }
                td class="num" { (row(id).map_or(0, |s| s.parked)) }
                td class="num" { (of(id).map_or(0, |m| m["refused"].as_u64().unwrap_or(0))) }
                td class="num" { (of(id).map_or(0, |m| m["refused_at_own_limit"].as_u64().unwrap_or(0))) }
                td class="num" { (row(id).and_then(|s| s.max_in_flight).map(|n| n.to_string()).unwrap_or_else(|| "default".into())) }
            } } } }
    }
}

/// A count as a whole number (a sum of nothing is 0, never -0).
fn count(v: f64) -> i64 {
    v.round() as i64
}

fn charts(samples: &[Sample]) -> Markup {
    let settled = |s: &Sample| {
        s.sum(Some("orchestrator"), "payment_e2e_seconds_count", |k| {
            k.contains("status=\"SETTLED\"")
        })
    };
    let errors = |s: &Sample| {
        s.sum(None, "http_requests_total", |k| k.contains("status=\"5"))
            + s.sum(None, "dlq_published_total", |_| true)
    };
    let retries = |s: &Sample| {
        s.sum(None, "handler_retries_total", |_| true)
            + s.sum(None, "deadline_nudges_total", |_| true)
    };
    let buckets = |s: &Sample| history::e2e_buckets(s, "SETTLED");
    html! {
        (chart("Settled per second", &history::rate(samples, SPAN, settled), "/s"))
        (chart("Time to SETTLED, p50", &history::quantile(samples, SPAN, 0.5, buckets), " s"))
        (chart("Time to SETTLED, p99", &history::quantile(samples, SPAN, 0.99, buckets), " s"))
        (chart("Errors per second (5xx answers, dead letters)", &history::rate(samples, SPAN, errors), "/s"))
        (chart("Retries per second (handlers, deadline re-sends)", &history::rate(samples, SPAN, retries), "/s"))
    }
}

/// A line chart of `points` as inline SVG (no script, no library).
fn chart(title: &str, points: &[Point], unit: &str) -> Markup {
    const W: f64 = 560.0;
    const H: f64 = 120.0;
    let last = points.last().map(|p| p.1);
    let max = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9);
    let (t0, t1) = match (points.first(), points.last()) {
        (Some(a), Some(b)) => (a.0.timestamp_millis() as f64, b.0.timestamp_millis() as f64),
        _ => (0.0, 1.0),
    };
    let span = (t1 - t0).max(1.0);
    let line: String = points
        .iter()
        .map(|(t, v)| {
            let x = (t.timestamp_millis() as f64 - t0) / span * W;
            let y = H - v / (max * 1.1) * H;
            format!("{x:.1},{y:.1} ")
        })
        .collect();
    html! {
        figure class="chart" {
            figcaption {
                (title) ": " strong { (last.map(|v| format!("{v:.2}{unit}")).unwrap_or_else(|| "no data yet".into())) }
                span class="meta" { " max " (format!("{max:.2}{unit}")) }
            }
            svg viewBox={ "0 0 " (W) " " (H) } width="100%" height="120" role="img" aria-label=(title) {
                line x1="0" y1=(H) x2=(W) y2=(H) stroke="#ccd" {}
                polyline points=(line) fill="none" stroke="#3a5fcd" stroke-width="2" {}
                @if let Some(end) = line.split_whitespace().last().and_then(|p| p.split_once(',')) {
                    circle cx=(end.0) cy=(end.1) r="3" fill="#3a5fcd" {}
                }
            }
        }
    }
}
