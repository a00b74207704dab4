//! What every service's HTTP server bounds: how long a request may take, how large a body it
//! reads, and whose request id an answer carries.

use sagapay_e2e::{StackOptions, TestStack, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_stuck_past_its_timeout_is_answered_503_and_changes_nothing() {
    let timeout = Duration::from_secs(1);
    let stack = TestStack::spawn_with(StackOptions {
        orchestrator_request_timeout: Some(timeout),
        ..Default::default()
    })
    .await;
    let pid = stack.settled_payment("timeout-refund", 5_000, "EUR").await;
    let orchestrator = stack.db("orchestrator").await;

    // Another transaction holds the payment's row: admitting a refund waits for it.
    let mut holder = orchestrator.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM payments WHERE payment_id = $1::uuid FOR UPDATE")
        .bind(&pid)
        .execute(&mut *holder)
        .await
        .unwrap();
    let refund = || {
        stack
            .http
            .post(format!("{}/payments/{pid}/refunds", stack.gateway_url()))
            .header("x-api-key", DEV_API_KEY)
            .json(&json!({"amount_cents": 1_000, "idempotency_key": "stuck", "reason": "r"}))
            .send()
    };
    let started = Instant::now();
    let resp = refund().await.unwrap();
    let waited = started.elapsed();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    assert!(
        body["request_id"].as_str().unwrap().starts_with("req_"),
        "{body}"
    );
    // Answered at the timeout, not at the statement timeout (30 s) nor the gateway's (10 s).
    assert!(
        waited >= timeout && waited < Duration::from_secs(8),
        "answered after {waited:?}"
    );
    holder.rollback().await.unwrap();

    let refunds = || {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM refunds WHERE payment_id = $1::uuid")
            .bind(&pid)
            .fetch_one(&orchestrator)
    };
    // The dropped handler's transaction never committed.
    assert_eq!(refunds().await.unwrap(), 0);
    // The same request again, now the row is free, is admitted once.
    let resp = refund().await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(refunds().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_refuses_a_body_over_its_limit_and_sets_its_own_request_id() {
    let stack = TestStack::spawn().await;
    let big = vec![b'{'; (1 << 20) + 1];
    for service in [
        "orchestrator",
        "notification",
        "risk",
        "ledger",
        "provider-adapter",
    ] {
        let resp = stack
            .http
            .post(format!("{}/internal/payments", stack.service_url(service)))
            .header("content-type", "application/json")
            .header("x-request-id", "chosen-by-the-client")
            .body(big.clone())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let request_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        let body: Value = resp.json().await.unwrap();
        assert_eq!(status, 413, "{service}: {body}");
        assert_eq!(body["error"]["code"], "body_too_large", "{service}: {body}");
        assert!(request_id.starts_with("req_"), "{service}: {request_id}");
        assert_eq!(body["request_id"], request_id.as_str(), "{service}");
    }
    // A client's request id is never taken as ours, on a success either.
    let resp = stack
        .http
        .get(format!("{}/health", stack.gateway_url()))
        .header("x-request-id", "chosen-by-the-client")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let request_id = resp.headers()["x-request-id"].to_str().unwrap();
    assert!(request_id.starts_with("req_"), "{request_id}");
}
