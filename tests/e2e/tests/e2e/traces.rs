//! One payment is one trace across all six services: the services run as real processes
//! exporting OTLP/HTTP (JSON) over https to a receiver in this test (behind a CA of the test's
//! own, trusted through `SSL_CERT_FILE` as a host's trust store would trust it; the exporter
//! could not speak TLS before), and the trace id the client sent in
//! `traceparent` must come back in spans from every service. Their JSON logs carry the same
//! trace id and the payment id at the top level.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use sagapay_e2e::{cleanup_namespace, eventually, fresh_namespace, Processes, DEV_API_KEY};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A span as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    service: String,
    trace_id: String,
    name: String,
}

type Spans = Arc<Mutex<Vec<Seen>>>;

/// `POST /v1/traces` with an OTLP `ExportTraceServiceRequest` in its JSON encoding.
async fn receive(State(spans): State<Spans>, Json(req): Json<Value>) -> Json<Value> {
    let mut seen = spans.lock().unwrap();
    for rs in req["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or("")
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for span in ss["spans"].as_array().into_iter().flatten() {
                seen.push(Seen {
                    service: service.clone(),
                    trace_id: span["traceId"].as_str().unwrap_or("").to_ascii_lowercase(),
                    name: span["name"].as_str().unwrap_or("").to_owned(),
                });
            }
        }
    }
    Json(json!({}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_payment_is_one_trace_across_all_six_services() {
    let spans: Spans = Arc::default();
    let ca = sagapay_e2e::tls::TestCa::new("collector CA");
    let ca_dir = std::env::temp_dir().join(format!("sagapay-otlp-ca-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&ca_dir).unwrap();
    let ca_file = ca.write(&ca_dir, "ca.pem");
    let app = Router::new()
        .route("/v1/traces", post(receive))
        .with_state(spans.clone());
    let endpoint = sagapay_e2e::tls::serve_https(app, &ca.server(&["127.0.0.1"])).await;

    let ns = fresh_namespace();
    let mut procs = Processes::in_namespace(
        ns.clone(),
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("SSL_CERT_FILE", ca_file.to_str().unwrap()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
            // The per-payment lines (created, each transition) are logged at debug.
            ("RUST_LOG", "info,sagapay_orchestrator=debug"),
        ],
    );
    let http = reqwest::Client::new();
    procs.start_all();
    procs.wait_all_ready(&http).await;

    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let resp = http
        .post(format!("{}/payments", procs.url("gateway")))
        .header("x-api-key", DEV_API_KEY)
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(
            &json!({"customer_id": "cust-trace", "amount_cents": 4200, "currency": "USD",
                      "idempotency_key": "trace-1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let payment_id = resp.json::<Value>().await.unwrap()["payment_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let services: BTreeSet<String> = sagapay_e2e::SERVICES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let in_trace = eventually(
        Duration::from_secs(60),
        "spans of the payment's trace from all six services",
        || {
            let spans = spans.clone();
            let (trace_id, services) = (trace_id.clone(), services.clone());
            async move {
                let spans = spans.lock().unwrap().clone();
                let in_trace: Vec<Seen> = spans
                    .into_iter()
                    .filter(|s| s.trace_id == trace_id)
                    .collect();
                let from: BTreeSet<String> = in_trace.iter().map(|s| s.service.clone()).collect();
                (from == services).then_some(in_trace)
            }
        },
    )
    .await;
    let names: BTreeSet<&str> = in_trace.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "POST /payments",
        "consume payments.requested",
        "consume payments.finalized",
        "provider AUTHORIZE",
        "provider CAPTURE",
        "db.transaction",
    ] {
        assert!(
            names.contains(expected),
            "no {expected:?} span in {names:?}"
        );
    }
    assert!(
        names.iter().any(|n| n.starts_with("produce ")),
        "no produce span in {names:?}"
    );

    // The logs carry the trace and the payment at the top level.
    let orchestrator_log = std::fs::read_to_string(procs.log_dir.join("orchestrator.log")).unwrap();
    let line = orchestrator_log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["payment_id"] == payment_id.as_str() && l["trace_id"] == trace_id.as_str())
        .unwrap_or_else(|| panic!("no orchestrator log line with the payment and its trace"));
    assert_eq!(line["service_name"], "orchestrator");
    assert!(line["span_id"].as_str().is_some_and(|s| s.len() == 16));
    assert!(line["event_id"].is_string() || line["request_id"].is_string());

    drop(procs);
    cleanup_namespace(&ns).await;
}
