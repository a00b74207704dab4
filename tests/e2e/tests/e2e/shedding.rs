//! Shedding at the gateway. Once the orchestrator answers 503 `overloaded`, the gateway
//! refuses new payments itself for a moment (`Shedding::WINDOW`); the orchestrator's header
//! `sagapay-overload-scope` says whose: `merchant` (that merchant is at its own limit: only
//! its new payments are refused) or `pipeline` (everyone's). And a retry whose key the
//! orchestrator may already hold (its first attempt timed out there, the outcome unknown at
//! the gateway) is never shed: it goes to the orchestrator, which answers it as a replay.
//!
//! Both tests need a request to land inside a window that lasts 100 ms. They tell the rounds
//! that did from the gateway's own counters, and try again when one did not (the first test
//! until its deadline, the second with each of its few timed-out keys, failing if none did:
//! a test that never reached a window would prove nothing). Against the gateway that shed
//! everyone and knew no forwarded keys, both failed in each of four runs, each at the
//! assertion it is about (B refused; the retry refused).

use sagapay_e2e::{eventually, StackOptions, TestStack, DEV_OPS_KEY};
use sagapay_provider_adapter::policy::RetrySettings;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const SHED: &str = "payments_shed_total{service=\"gateway\"}";
const SHED_MERCHANT: &str = "payments_shed_merchant_total{service=\"gateway\"}";
const BYPASSED: &str = "payments_shed_bypassed_total{service=\"gateway\"}";

/// Admission by merchants' own limits only (the pipeline's is far away), and authorizations
/// that wait out an outage, so a payment stays in flight as long as the test needs.
fn options() -> StackOptions {
    StackOptions {
        admission_max_in_flight: Some(100),
        admission_merchant_max_in_flight: Some(0),
        provider_retry: Some(RetrySettings {
            call_timeout: Duration::from_secs(1),
            backoff: vec![Duration::from_secs(1); 60],
            ..RetrySettings::default()
        }),
        ..StackOptions::default()
    }
}

fn payment(key: &str) -> Value {
    json!({
        "customer_id": format!("cust-{key}"), "amount_cents": 1500, "currency": "USD",
        "idempotency_key": key
    })
}

/// POST /payments for the merchant of `api_key`: the status and the body.
async fn post(stack: &TestStack, api_key: &str, body: &Value) -> (u16, Value) {
    let resp = stack.post_payment_as(api_key, body).await;
    let status = resp.status().as_u16();
    (status, resp.json().await.expect("JSON body"))
}

fn assert_overloaded(status: u16, body: &Value) {
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
}

/// Gives `merchant` a limit of its own (the orchestrator's ops route).
async fn set_limit(stack: &TestStack, merchant: Uuid, max_in_flight: i32) {
    let resp = stack
        .http
        .put(format!(
            "{}/ops/merchants/{merchant}/limits",
            stack.service_url("orchestrator")
        ))
        .header("x-ops-key", DEV_OPS_KEY)
        .json(&json!({ "max_in_flight": max_in_flight, "requested_by": "e2e" }))
        .send()
        .await
        .expect("PUT limits");
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
}

/// Waits until the orchestrator refuses the merchant's new payments: it reads limits at its
/// next sample, and a payment it accepts before that only adds to what is in flight.
async fn wait_refused(stack: &TestStack, api_key: &str, prefix: &str) {
    let tried = std::sync::atomic::AtomicUsize::new(0);
    eventually(WAIT, "the merchant refused at its limit", || async {
        let n = tried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = post(stack, api_key, &payment(&format!("{prefix}-{n}"))).await;
        (status == 503 && body["error"]["code"] == "overloaded").then_some(())
    })
    .await;
}

/// Merchant A at its own limit: the orchestrator refuses A's new payments with scope
/// `merchant`, and the gateway then sheds A's new payments, never B's. A round is A, B, A:
/// when the second A is shed by the gateway, the window A's refusal opened was open while B
/// was answered (a window is one interval, opened before B was sent, and nothing but A's
/// forwarded refusals opens it). Before, the gateway shed everyone: B was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merchant_at_its_limit_is_shed_alone() {
    let stack = TestStack::spawn_with(options()).await;
    stack.provider_outage(120, Some(&["AUTHORIZE"])).await;
    let (busy, busy_key) = stack.merchant("Busy Ltd").await;
    let (_, calm_key) = stack.merchant("Calm Ltd").await;
    set_limit(&stack, busy, 1).await;
    let (status, body) = post(&stack, &busy_key, &payment("busy-0")).await;
    assert_eq!(status, 201, "{body}");
    wait_refused(&stack, &busy_key, "busy-wait").await;

    let round = std::sync::atomic::AtomicUsize::new(0);
    eventually(WAIT, "B answered inside a window of A's", || async {
        let n = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = post(&stack, &busy_key, &payment(&format!("busy-{n}-a"))).await;
        assert_overloaded(status, &body);
        let (status, body) = post(&stack, &calm_key, &payment(&format!("calm-{n}"))).await;
        assert_eq!(
            status, 201,
            "B refused while only A is at its limit: {body}"
        );
        let shed_before = stack.metric("gateway", SHED).await;
        let (status, body) = post(&stack, &busy_key, &payment(&format!("busy-{n}-b"))).await;
        assert_overloaded(status, &body);
        (stack.metric("gateway", SHED).await > shed_before).then_some(())
    })
    .await;
    assert!(stack.metric("gateway", SHED_MERCHANT).await >= 1.0);
    stack.teardown().await;
}

/// How many first attempts time out: each is one chance for its retry to land in a window.
const UNKNOWN: usize = 3;

/// Holds the keys `slow-0`… of `merchant` with rows of an open transaction (copies of its
/// payment `seed`), so that the orchestrator's insert of a payment with one of them waits for
/// that transaction to end, and then commits.
async fn hold_keys(
    orchestrator: &sqlx::PgPool,
    merchant: Uuid,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut blocker = orchestrator.begin().await.unwrap();
    let keys: Vec<String> = (0..UNKNOWN).map(|i| format!("slow-{i}")).collect();
    let held = sqlx::query(
        "INSERT INTO payments
         SELECT r.* FROM payments p, unnest($2::text[]) AS k,
                jsonb_populate_record(p, jsonb_build_object(
                    'payment_id', gen_random_uuid(), 'idempotency_key', k)) AS r
          WHERE p.merchant_id = $1 AND p.idempotency_key = 'seed'",
    )
    .bind(merchant)
    .bind(&keys)
    .execute(&mut *blocker)
    .await
    .unwrap();
    assert_eq!(held.rows_affected(), UNKNOWN as u64);
    blocker
}

/// A first attempt reaches the orchestrator, whose insert waits (for another transaction that
/// holds its key) past the orchestrator's request timeout: the gateway gets 503
/// `request_timeout` and cannot know whether the payment exists (it does: the insert commits
/// once the other transaction rolls back). The merchant is then at its limit; its new payment
/// is refused by the orchestrator, which opens the gateway's window, and the retry of the
/// first attempt follows at once. It is forwarded (the gateway remembered that the key went
/// to the orchestrator) and answered as the replay it is. Before, it was shed: no answer had
/// been cached for its key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_the_orchestrator_may_hold_is_never_shed() {
    let stack = TestStack::spawn_with(StackOptions {
        orchestrator_request_timeout: Some(Duration::from_secs(1)),
        ..options()
    })
    .await;
    stack.provider_outage(120, Some(&["AUTHORIZE"])).await;
    let (merchant, key) = stack.merchant("Slow Ltd").await;
    let (status, body) = post(&stack, &key, &payment("seed")).await;
    assert_eq!(status, 201, "{body}");
    let orchestrator = stack.db("orchestrator").await;
    let blocker = hold_keys(&orchestrator, merchant).await;
    let firsts: Vec<Value> = (0..UNKNOWN)
        .map(|i| payment(&format!("slow-{i}")))
        .collect();
    let answers = futures::future::join_all(firsts.iter().map(|b| post(&stack, &key, b))).await;
    for (status, body) in answers {
        assert_eq!(status, 503, "{body}");
        assert_eq!(body["error"]["code"], "request_timeout", "{body}");
    }
    blocker.rollback().await.unwrap();
    let created: Vec<(String, Uuid)> =
        eventually(WAIT, "the first attempts' payments created", || async {
            let rows: Vec<(String, Uuid)> = sqlx::query_as(
                "SELECT idempotency_key, payment_id FROM payments
                  WHERE merchant_id = $1 AND idempotency_key LIKE 'slow-%'
                  ORDER BY idempotency_key",
            )
            .bind(merchant)
            .fetch_all(&orchestrator)
            .await
            .unwrap();
            (rows.len() == UNKNOWN).then_some(rows)
        })
        .await;
    set_limit(&stack, merchant, UNKNOWN as i32 + 1).await;
    wait_refused(&stack, &key, "slow-wait").await;
    retry_inside_windows(&stack, &key, &firsts, &created).await;
    stack.teardown().await;
}

/// For each first attempt: a new payment (refused: it opens the merchant's window, or finds
/// it open), then the first attempt again at once. Every retry is answered as a replay of its
/// payment; at least one must have come inside a window (the gateway counted it as let
/// through), or nothing was tested.
async fn retry_inside_windows(
    stack: &TestStack,
    api_key: &str,
    firsts: &[Value],
    created: &[(String, Uuid)],
) {
    let mut inside = 0;
    for (i, (first, (_, payment_id))) in firsts.iter().zip(created).enumerate() {
        let bypassed_before = stack.metric("gateway", BYPASSED).await;
        let (status, body) = post(stack, api_key, &payment(&format!("slow-new-{i}"))).await;
        assert_overloaded(status, &body);
        let (status, body) = post(stack, api_key, first).await;
        assert_eq!(
            status, 201,
            "a retry the orchestrator holds was refused: {body}"
        );
        assert_eq!(body["payment_id"], payment_id.to_string(), "{body}");
        if stack.metric("gateway", BYPASSED).await > bypassed_before {
            inside += 1;
        }
    }
    assert!(
        inside >= 1,
        "none of the {UNKNOWN} retries came inside a shedding window: nothing was tested"
    );
}
