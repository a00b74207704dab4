//! A refusal is an answer: the provider's decline of a capture, void or refund reaches the
//! saga at once, with its code, and each ends where the documentation says, with its events
//! and webhooks. The test cards: `pm_card_refund_fails` (a refund declined: FAILED, its amount
//! free again, `refund.failed`), `pm_card_capture_declined` (the authorization voided:
//! REVERSED, `payment.reversed`), `pm_card_void_declined` (parked for an operator, who fails
//! it: FAILED, `payment.failed`). None is retried: one attempt each at the provider.

use axum::routing::post;
use sagapay_e2e::{eventually, TestStack, DEV_API_KEY};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A webhook receiver on an ephemeral loopback port: what it got, and its URL.
async fn receiver() -> (Arc<Mutex<Vec<Value>>>, String) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |body: String| async move {
            sink.lock()
                .unwrap()
                .push(serde_json::from_str(&body).unwrap());
            axum::http::StatusCode::OK
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (got, url)
}

async fn call(stack: &TestStack, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let resp = stack
        .http
        .request(method, format!("{}{path}", stack.gateway_url()))
        .header("x-api-key", DEV_API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn subscribe(stack: &TestStack, url: &str, events: &[&str]) {
    let body = json!({"url": url, "enabled_events": events});
    let (status, answer) = call(stack, reqwest::Method::POST, "/webhook_endpoints", body).await;
    assert_eq!(status, 201, "{answer}");
}

/// The one webhook of `kind` about `id` (in the object's `field`) the receiver got, counted
/// once the stack is quiet and no delivery is pending (a second one would have arrived).
async fn one_webhook(
    stack: &TestStack,
    got: &Arc<Mutex<Vec<Value>>>,
    (kind, field, id): (&str, &str, &str),
) -> Value {
    let matching = || {
        got.lock()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == kind && e["data"]["object"][field] == id)
            .cloned()
            .collect::<Vec<_>>()
    };
    eventually(WAIT, &format!("{kind} of {id} delivered"), || async {
        (!matching().is_empty()).then_some(())
    })
    .await;
    stack.wait_quiet().await;
    let notification = stack.db("notification").await;
    eventually(WAIT, "no webhook delivery pending", || async {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE status = 'PENDING'")
                .fetch_one(&notification)
                .await
                .unwrap();
        (pending == 0).then_some(())
    })
    .await;
    let all = matching();
    assert_eq!(all.len(), 1, "{kind} of {id} delivered once: {all:?}");
    all[0].clone()
}

/// Reconciliation over the stack's one payment: `expected` differences (kinds), none else,
/// and the payment compared.
async fn reconciles(stack: &TestStack, expected: &[&str]) {
    let report = stack.reconcile().await;
    let kinds: Vec<&str> = report.differences.iter().map(|d| d.kind).collect();
    assert_eq!(kinds, expected, "{:#?}", report.differences);
    assert_eq!(
        (report.payments_checked, report.in_flight),
        (1, 0),
        "{report:?}"
    );
}

/// The provider's attempts at `operation` of the payment: (attempts, decline codes).
async fn attempts(stack: &TestStack, payment_id: &str, operation: &str) -> Vec<Option<String>> {
    sqlx::query_scalar(
        "SELECT decline_code FROM provider_attempts
          WHERE payment_id = $1 AND operation = $2 ORDER BY attempt_id",
    )
    .bind(payment_id.parse::<uuid::Uuid>().unwrap())
    .bind(operation)
    .fetch_all(&stack.db("provider-adapter").await)
    .await
    .unwrap()
}

fn payment(key: &str, card: &str, manual: bool) -> Value {
    json!({
        "customer_id": format!("cust-{key}"), "amount_cents": 3000, "currency": "USD",
        "payment_method": card, "idempotency_key": key,
        "capture_method": if manual { "manual" } else { "automatic" }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_refund_fails_frees_its_amount_and_is_announced() {
    let stack = TestStack::spawn().await;
    let (got, url) = receiver().await;
    subscribe(&stack, &url, &["refund.failed", "refund.succeeded"]).await;
    let id = stack
        .create_payment_id(payment("rf-1", "pm_card_refund_fails", false))
        .await;
    stack.wait_for_status(&id, "SETTLED", WAIT).await;
    let refund = json!({"amount_cents": 3000, "idempotency_key": "rf-r1", "reason": "damaged"});
    let path = format!("/payments/{id}/refunds");
    let (status, answer) = call(&stack, reqwest::Method::POST, &path, refund).await;
    assert!(status == 201 || status == 202, "{status} {answer}");
    let refund_id = answer["refund_id"].as_str().unwrap().to_owned();
    let failed = eventually(WAIT, "the refund FAILED", || async {
        let p = stack.get_payment(&id).await;
        let r = p["refunds"].as_array().unwrap().first().cloned()?;
        (r["status"] == "FAILED").then_some(p)
    })
    .await;
    assert_eq!(
        failed["status"], "SETTLED",
        "the payment keeps its capture: {failed}"
    );
    let reason = failed["refunds"][0]["failure_reason"].as_str().unwrap();
    assert!(reason.contains("charge_disputed"), "{reason}");
    let event = one_webhook(&stack, &got, ("refund.failed", "refund_id", &refund_id)).await;
    assert_eq!(
        event["data"]["object"]["failure_code"], "charge_disputed",
        "{event}"
    );
    assert_eq!(event["data"]["object"]["amount_cents"], 3000, "{event}");
    // One attempt: a refusal is not retried.
    assert_eq!(
        attempts(&stack, &id, "REFUND").await,
        vec![Some("charge_disputed".into())]
    );
    // What it held is free again: a refund of the whole capture is admitted (and refused
    // by this card's provider too).
    let again = json!({"amount_cents": 3000, "idempotency_key": "rf-r2", "reason": "again"});
    let (status, answer) = call(&stack, reqwest::Method::POST, &path, again).await;
    assert!(status == 201 || status == 202, "{status} {answer}");
    stack.wait_quiet().await;
    let (status, events) = call(&stack, reqwest::Method::GET, "/events?limit=100", json!({})).await;
    assert_eq!(status, 200, "{events}");
    let listed = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "refund.failed")
        .count();
    assert_eq!(listed, 2, "{events}");
    assert!(!got
        .lock()
        .unwrap()
        .iter()
        .any(|e| e["type"] == "refund.succeeded"));
    reconciles(&stack, &[]).await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_capture_releases_the_authorization() {
    let stack = TestStack::spawn().await;
    let (got, url) = receiver().await;
    subscribe(&stack, &url, &["payment.reversed", "payment.settled"]).await;
    let id = stack
        .create_payment_id(payment("cd-1", "pm_card_capture_declined", false))
        .await;
    let reversed = stack.wait_for_status(&id, "REVERSED", WAIT).await;
    assert!(reversed["amount_captured_cents"].is_null(), "{reversed}");
    let timeline: Vec<String> = reversed["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["reason"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        timeline
            .iter()
            .any(|r| r.contains("capture declined by the provider (authorization_expired)")),
        "{timeline:?}"
    );
    assert_eq!(
        attempts(&stack, &id, "CAPTURE").await,
        vec![Some("authorization_expired".into())]
    );
    assert_eq!(
        attempts(&stack, &id, "VOID").await,
        vec![None],
        "voided once"
    );
    one_webhook(&stack, &got, ("payment.reversed", "payment_id", &id)).await;
    reconciles(&stack, &[]).await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_void_is_parked_and_an_operator_ends_it() {
    let stack = TestStack::spawn().await;
    let (got, url) = receiver().await;
    subscribe(&stack, &url, &["payment.failed", "payment.canceled"]).await;
    let id = stack
        .create_payment_id(payment("vd-1", "pm_card_void_declined", true))
        .await;
    stack.wait_for_status(&id, "AUTHORIZED", WAIT).await;
    let cancel = format!("/payments/{id}/cancel");
    let body = json!({"idempotency_key": "vd-cancel"});
    let (status, answer) = call(&stack, reqwest::Method::POST, &cancel, body).await;
    assert!(status < 300, "{status} {answer}");
    let orchestrator = stack.db("orchestrator").await;
    let reason: String = eventually(WAIT, "the payment parked", || async {
        sqlx::query_scalar::<_, Option<String>>(
            "SELECT attention_reason FROM payments
              WHERE payment_id = $1 AND attention_kind = 'VOID_DECLINED'",
        )
        .bind(id.parse::<uuid::Uuid>().unwrap())
        .fetch_optional(&orchestrator)
        .await
        .unwrap()
        .flatten()
    })
    .await;
    assert!(reason.contains("reversal_not_supported"), "{reason}");
    assert_eq!(
        attempts(&stack, &id, "VOID").await,
        vec![Some("reversal_not_supported".into())]
    );
    let resp = stack
        .http
        .post(format!(
            "{}/ops/payments/{id}/fail",
            stack.service_url("orchestrator")
        ))
        .header("x-ops-key", "dev-ops-secret")
        .json(&json!({"reason": "the issuer takes no reversal", "requested_by": "ops-ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let failed = stack.wait_for_status(&id, "FAILED", WAIT).await;
    assert!(failed["amount_captured_cents"].is_null(), "{failed}");
    one_webhook(&stack, &got, ("payment.failed", "payment_id", &id)).await;
    // The hold the provider would not release is open at it, and reconciliation says so.
    reconciles(&stack, &["authorization_open"]).await;
    let captures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM simulated_provider_operations
          WHERE payment_id = $1 AND operation = 'CAPTURE'",
    )
    .bind(id.parse::<uuid::Uuid>().unwrap())
    .fetch_one(&stack.db("provider-adapter").await)
    .await
    .unwrap();
    assert_eq!(captures, 0, "nothing was captured");
    stack.teardown().await;
}
