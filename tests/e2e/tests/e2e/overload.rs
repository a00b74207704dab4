//! Under overload. Admission control: while the pipeline holds its limit of payments in
//! flight, a new payment is refused at once with 503 `overloaded` and `Retry-After`, and
//! changes nothing; what was already accepted (reads, idempotent replays) still passes; once
//! the pipeline drains, the same request with the same key is accepted and settles; right
//! after the orchestrator's refusal the gateway refuses new payments itself; a merchant that
//! keeps exactly the limit in flight is never refused. Finish
//! before you start: with authorizations and a capture due at once, the provider worker
//! performs the capture first, whatever their due times.

use sagapay_e2e::{eventually, StackOptions, TestStack, DEV_API_KEY};
use sagapay_provider_adapter::policy::RetrySettings;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Authorizations retried every second for a minute, so an outage holds payments APPROVED.
fn patient_authorizations() -> RetrySettings {
    RetrySettings {
        call_timeout: Duration::from_secs(1),
        backoff: vec![Duration::from_secs(1); 60],
        ..RetrySettings::default()
    }
}

fn payment(key: &str) -> Value {
    json!({
        "customer_id": format!("cust-{key}"), "amount_cents": 1500, "currency": "USD",
        "idempotency_key": key
    })
}

/// POST /payments: the status, the `Retry-After` header and the body.
async fn post(stack: &TestStack, body: &Value) -> (u16, Option<String>, Value) {
    let resp = stack
        .http
        .post(format!("{}/payments", stack.gateway_url()))
        .header("x-api-key", DEV_API_KEY)
        .json(body)
        .send()
        .await
        .expect("POST /payments");
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, resp.json().await.expect("JSON body"))
}

async fn payments_with_key(stack: &TestStack, key: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM payments WHERE idempotency_key = $1")
        .bind(key)
        .fetch_one(&stack.db("orchestrator").await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_pipeline_refuses_new_payments_fast_and_accepts_them_once_drained() {
    let stack = TestStack::spawn_with(StackOptions {
        admission_max_in_flight: Some(2),
        // The pipeline's limit alone (merchants' shares have tests of their own: parked.rs).
        admission_merchant_max_in_flight: Some(0),
        provider_retry: Some(patient_authorizations()),
        ..StackOptions::default()
    })
    .await;
    stack.provider_outage(120, Some(&["AUTHORIZE"])).await;
    let first = stack.create_payment_id(payment("adm-1")).await;
    let second = stack.create_payment_id(payment("adm-2")).await;

    // Two payments wait for their authorizations: the third is refused, and leaves nothing.
    let refused = payment("adm-3");
    let (status, retry_after, body) = eventually(WAIT, "a new payment refused", || async {
        let answer = post(&stack, &refused).await;
        (answer.0 == 503).then_some(answer)
    })
    .await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
    // Refused at once by the gateway itself for a moment after the orchestrator's refusal
    // (the same answer, without the internal call).
    let shed = "payments_shed_total{service=\"gateway\"}";
    eventually(WAIT, "a refusal made by the gateway", || async {
        let (status, retry_after, body) = post(&stack, &refused).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "overloaded", "{body}");
        assert_eq!(retry_after.as_deref(), Some("1"), "{body}");
        (stack.metric("gateway", shed).await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(payments_with_key(&stack, "adm-3").await, 0);
    let refusals = "admission_refused_total{service=\"orchestrator\"}";
    assert!(stack.metric("orchestrator", refusals).await >= 1.0);

    // What was accepted still answers: a replay of the first request, and a read.
    let (status, _, replay) = post(&stack, &payment("adm-1")).await;
    assert_eq!(status, 201, "{replay}");
    assert_eq!(replay["payment_id"], first.as_str());
    let waiting = stack.get_payment(&second).await;
    assert!(
        ["CREATED", "APPROVED"].contains(&waiting["status"].as_str().unwrap_or_default()),
        "{waiting}"
    );

    // The provider back, the pipeline drains; the refused request, retried with its key, is
    // accepted and settles, and so do the first two.
    stack.provider_outage(0, Some(&["AUTHORIZE"])).await;
    for pid in [&first, &second] {
        stack.wait_for_status(pid, "SETTLED", WAIT).await;
    }
    let (_, _, created) = eventually(WAIT, "the refused payment accepted", || async {
        let answer = post(&stack, &refused).await;
        (answer.0 == 201).then_some(answer)
    })
    .await;
    let third = created["payment_id"]
        .as_str()
        .expect("payment_id")
        .to_owned();
    stack.wait_for_status(&third, "SETTLED", WAIT).await;
    assert_eq!(payments_with_key(&stack, "adm-3").await, 1);
    stack.teardown().await;
}

/// A merchant that keeps exactly as many payments in flight as the limit allows is never
/// refused: four workers each make five payments one after another (the next as soon as the
/// last one is SETTLED) against a limit of four. The orchestrator lowers its count when it
/// commits a settlement, not only at its next sample (every 100 ms): before, the next payment
/// of a worker came within a sample of the last one's settlement and was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_closed_loop_as_deep_as_the_limit_is_never_refused() {
    let stack = TestStack::spawn_with(StackOptions {
        admission_max_in_flight: Some(4),
        admission_merchant_max_in_flight: Some(0),
        ..StackOptions::default()
    })
    .await;
    let worker = |w: usize| {
        let stack = &stack;
        async move {
            let mut refused = Vec::new();
            for i in 0..5 {
                let (status, _, body) = post(stack, &payment(&format!("loop-{w}-{i}"))).await;
                if status != 201 {
                    refused.push(body);
                    continue;
                }
                let pid = body["payment_id"].as_str().expect("payment_id");
                stack.wait_for_status(pid, "SETTLED", WAIT).await;
            }
            refused
        }
    };
    let refused: Vec<Value> = futures::future::join_all((0..4).map(worker))
        .await
        .into_iter()
        .flatten()
        .collect();
    assert!(
        refused.is_empty(),
        "refused at the limit's depth: {refused:#?}"
    );
    let refusals = "admission_refused_total{service=\"orchestrator\"}";
    assert_eq!(stack.metric("orchestrator", refusals).await, 0.0);
    stack.teardown().await;
}

/// Pending provider operations of kind `operation`.
async fn pending(adapter: &PgPool, operation: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM provider_operations WHERE status = 'PENDING' AND operation = $1",
    )
    .bind(operation)
    .fetch_one(adapter)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_due_capture_goes_before_older_authorizations() {
    let stack = TestStack::spawn_with(StackOptions {
        provider_retry: Some(RetrySettings {
            max_in_flight: 1,
            ..patient_authorizations()
        }),
        ..StackOptions::default()
    })
    .await;
    let adapter = stack.db("provider-adapter").await;
    // One payment authorized whose capture the provider refuses, then four whose
    // authorizations it refuses: all pending at once.
    stack.provider_outage(120, Some(&["CAPTURE"])).await;
    let first = stack.create_payment_id(payment("prio-a")).await;
    stack.wait_for_status(&first, "AUTHORIZED", WAIT).await;
    stack
        .provider_outage(120, Some(&["AUTHORIZE", "CAPTURE"]))
        .await;
    let mut later = Vec::new();
    for i in 0..4 {
        later.push(
            stack
                .create_payment_id(payment(&format!("prio-b{i}")))
                .await,
        );
    }
    eventually(WAIT, "four authorizations pending", || async {
        (pending(&adapter, "AUTHORIZE").await == 4).then_some(())
    })
    .await;
    // Parked (a claim in flight loses its token, so its outcome is not written), the outage
    // ended, then released at once with every authorization due before the capture.
    sqlx::query(
        "UPDATE provider_operations
            SET claim_token = gen_random_uuid(), claimed_until = now() + interval '1 hour'
          WHERE status = 'PENDING'",
    )
    .execute(&adapter)
    .await
    .unwrap();
    stack
        .provider_outage(0, Some(&["AUTHORIZE", "CAPTURE"]))
        .await;
    sqlx::query(
        "UPDATE provider_operations
            SET claim_token = NULL, claimed_until = NULL,
                next_attempt_at = now() - CASE operation WHEN 'AUTHORIZE' THEN interval '10 s'
                                                         ELSE interval '5 s' END
          WHERE status = 'PENDING'",
    )
    .execute(&adapter)
    .await
    .unwrap();
    for pid in later.iter().chain([&first]) {
        stack.wait_for_status(pid, "SETTLED", WAIT).await;
    }
    // The provider's own books: the capture was performed before any of the authorizations.
    let order: Vec<(String, uuid::Uuid)> = sqlx::query_as(
        "SELECT operation, payment_id FROM simulated_provider_operations
          WHERE operation IN ('AUTHORIZE', 'CAPTURE')
          ORDER BY created_at, operation",
    )
    .fetch_all(&adapter)
    .await
    .unwrap();
    let first_id: uuid::Uuid = first.parse().unwrap();
    let performed: Vec<(&str, bool)> = order
        .iter()
        .map(|(op, pid)| (op.as_str(), *pid == first_id))
        .collect();
    assert_eq!(
        &performed[..2],
        &[("AUTHORIZE", true), ("CAPTURE", true)],
        "the first payment's capture right after its authorization: {performed:?}"
    );
    stack.teardown().await;
}
