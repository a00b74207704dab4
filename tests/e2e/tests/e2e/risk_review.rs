use sagapay_e2e::{eventually, TestStack, TimelineRow, DEV_API_KEY, DEV_OPS_KEY};
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

async fn create(stack: &TestStack, customer: &str, amount: i64, key: &str) -> String {
    stack
        .create_payment_id(json!({
            "customer_id": customer, "amount_cents": amount, "currency": "USD", "idempotency_key": key
        }))
        .await
}

async fn pending_reviews(stack: &TestStack) -> serde_json::Value {
    stack
        .http
        .get(format!("{}/ops/reviews", stack.service_url("risk")))
        .header("x-ops-key", DEV_OPS_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn transitions(t: &[TimelineRow]) -> Vec<String> {
    t.iter().map(|r| r.to_state.clone()).collect()
}

async fn notification_kinds(pool: &PgPool, payment_id: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT kind FROM notifications WHERE payment_id = $1 ORDER BY created_at")
        .bind(Uuid::parse_str(payment_id).unwrap())
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_then_approve_settles_and_a_second_decision_is_refused() {
    let stack = TestStack::spawn().await;
    let pid = create(&stack, "cust-big", 150_000, "review-approve").await;
    stack.wait_for_status(&pid, "RISK_REVIEW", WAIT).await;

    let page = pending_reviews(&stack).await;
    let listed: Vec<&str> = page["reviews"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["payment_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![pid.as_str()]);
    assert!(page["reviews"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("review threshold"));

    let (status, decision) = stack.review(&pid, "approve", "ops-ann").await;
    assert_eq!(status, 200, "{decision}");
    assert_eq!(decision["status"], "APPROVED");
    assert_eq!(decision["decided_by"], "ops-ann");

    stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    let timeline = stack.timeline(&pid).await;
    assert_eq!(
        transitions(&timeline),
        [
            "CREATED",
            "RISK_REVIEW",
            "APPROVED",
            "AUTHORIZED",
            "CAPTURED",
            "SETTLED"
        ]
    );
    assert!(timeline[2].reason.contains("ops-ann"), "{:?}", timeline[2]);

    for action in ["approve", "deny"] {
        let (status, body) = stack.review(&pid, action, "ops-bob").await;
        assert_eq!(status, 409, "{body}");
        assert_eq!(body["error"]["code"], "review_already_decided");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("APPROVED by ops-ann"));
    }
    // Nothing pending any more.
    let page = pending_reviews(&stack).await;
    assert_eq!(page["reviews"].as_array().unwrap().len(), 0);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn review_then_deny_fails_the_payment_and_notifies_once() {
    let stack = TestStack::spawn().await;
    let pid = create(&stack, "cust-big", 150_000, "review-deny").await;
    stack.wait_for_status(&pid, "RISK_REVIEW", WAIT).await;
    let (status, decision) = stack.review(&pid, "deny", "ops-cy").await;
    assert_eq!(status, 200, "{decision}");
    stack.wait_for_status(&pid, "FAILED", WAIT).await;
    let timeline = stack.timeline(&pid).await;
    assert_eq!(transitions(&timeline), ["CREATED", "RISK_REVIEW", "FAILED"]);
    assert!(
        timeline[2].reason.contains("denied by ops-cy"),
        "{:?}",
        timeline[2]
    );
    let notifications = stack.db("notification").await;
    eventually(WAIT, "the failure notification", || async {
        let k = notification_kinds(&notifications, &pid).await;
        (!k.is_empty()).then_some(k)
    })
    .await;
    // Once: counted when nothing is left in flight, not the moment the first arrived.
    stack.wait_quiet().await;
    let kinds = notification_kinds(&notifications, &pid).await;
    assert_eq!(kinds, ["payment.failed"]);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ops_endpoints_require_the_ops_key_and_know_their_payments() {
    let stack = TestStack::spawn().await;
    let url = format!("{}/ops/reviews", stack.service_url("risk"));
    for (header, value) in [
        (None, ""),
        (Some("x-ops-key"), "wrong"),
        (Some("x-api-key"), DEV_API_KEY),
    ] {
        let mut req = stack.http.get(&url);
        if let Some(h) = header {
            req = req.header(h, value);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{header:?}={value}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["type"], "authentication_error");
    }
    let unknown = Uuid::now_v7().to_string();
    let (status, body) = stack.review(&unknown, "approve", "ops-ann").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["code"], "review_not_found");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_provider_decline_fails_the_payment_with_its_decline_code() {
    let stack = TestStack::spawn().await;
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-dec", "amount_cents": 4_200, "currency": "USD",
            "idempotency_key": "decline-1", "payment_method": "pm_card_insufficient_funds"
        }))
        .await;
    stack.wait_for_status(&pid, "FAILED", WAIT).await;
    let timeline = stack.timeline(&pid).await;
    assert_eq!(transitions(&timeline), ["CREATED", "APPROVED", "FAILED"]);
    assert!(
        timeline[2].reason.contains("insufficient_funds"),
        "{:?}",
        timeline[2]
    );
    // Nothing was posted for a declined payment.
    let ledger = stack.db("ledger").await;
    let postings: i64 = sagapay_e2e::count_rows(
        &ledger,
        "SELECT count(*) FROM journal_transactions WHERE payment_id = $1",
        Uuid::parse_str(&pid).unwrap(),
    )
    .await;
    assert_eq!(postings, 0);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn velocity_rules_review_then_deny_a_busy_customer() {
    let stack = TestStack::spawn().await;
    // Defaults: more than 10 payments in an hour -> review, more than 20 -> deny.
    let mut ids = Vec::new();
    for i in 0..21 {
        ids.push(create(&stack, "cust-busy", 100, &format!("velocity-{i}")).await);
    }
    let risk = stack.db("risk").await;
    let decisions: Vec<(String, i64)> = eventually(WAIT, "21 risk decisions", || async {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT decision, count(*) FROM risk_decisions WHERE customer_id = 'cust-busy'
              GROUP BY decision ORDER BY decision",
        )
        .fetch_all(&risk)
        .await
        .unwrap();
        (rows.iter().map(|r| r.1).sum::<i64>() == 21).then_some(rows)
    })
    .await;
    assert_eq!(
        decisions,
        vec![
            ("APPROVE".into(), 10),
            ("DENY".into(), 1),
            ("REVIEW".into(), 10)
        ]
    );
    let denied: Uuid = sqlx::query_scalar(
        "SELECT payment_id FROM risk_decisions WHERE customer_id = 'cust-busy' AND decision = 'DENY'",
    )
    .fetch_one(&risk)
    .await
    .unwrap();
    stack
        .wait_for_status(&denied.to_string(), "FAILED", WAIT)
        .await;
    stack.teardown().await;
}
