use sagapay_api_models::TimelineKind;
use sagapay_domain::{PaymentStatus, RefundStatus};
use sagapay_e2e::{TestStack, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);

async fn refund(stack: &TestStack, pid: &str, amount: i64, key: &str) -> (u16, Value) {
    let resp = stack
        .http
        .post(format!("{}/payments/{pid}/refunds", stack.gateway_url()))
        .header("x-api-key", DEV_API_KEY)
        .json(&json!({"amount_cents": amount, "idempotency_key": key, "reason": "customer asked"}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partial_then_a_full_refund_post_reversals_and_end_refunded() {
    let stack = TestStack::spawn().await;
    let pid = stack.settled_payment("refund-pf", 10_000, "USD").await;

    let (status, first) = refund(&stack, &pid, 3_000, "r1").await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "REQUESTED");
    let p = stack
        .wait_for_status(&pid, "PARTIALLY_REFUNDED", WAIT)
        .await;
    assert_eq!(p["refunds"][0]["status"], "SUCCEEDED");
    assert_eq!(p["refunds"][0]["amount_cents"], 3_000);

    // Same key, same refund.
    let (status, again) = refund(&stack, &pid, 3_000, "r1").await;
    assert_eq!(status, 201);
    assert_eq!(again["refund_id"], first["refund_id"]);
    // More than what is left: 422, and nothing is created.
    let (status, over) = refund(&stack, &pid, 7_001, "r-over").await;
    assert_eq!(status, 422, "{over}");
    assert_eq!(over["error"]["code"], "refund_exceeds_captured");

    let (status, second) = refund(&stack, &pid, 7_000, "r2").await;
    assert_eq!(status, 201, "{second}");
    let p = stack.wait_for(&pid, PaymentStatus::Refunded, WAIT).await;
    assert_eq!(p.refunds.len(), 2);
    assert!(p
        .refunds
        .iter()
        .all(|r| r.status == RefundStatus::Succeeded));
    let transitions: Vec<PaymentStatus> = p
        .timeline
        .iter()
        .filter(|t| t.kind == TimelineKind::Transition)
        .map(|t| t.to_state)
        .collect();
    assert_eq!(
        &transitions[transitions.len() - 2..],
        [PaymentStatus::PartiallyRefunded, PaymentStatus::Refunded]
    );

    // Ledger: one posting per refund, and the provider's clearing account is back to zero.
    let ledger = stack.db("ledger").await;
    let postings: Vec<(String, i64)> = sqlx::query_as(
        "SELECT posting_kind, amount_minor FROM journal_transactions WHERE payment_id = $1 ORDER BY created_at",
    )
    .bind(Uuid::parse_str(&pid).unwrap())
    .fetch_all(&ledger)
    .await
    .unwrap();
    assert_eq!(postings.len(), 3);
    assert_eq!(postings[0], ("CAPTURE".to_owned(), 10_000));
    assert!(postings[1].0.starts_with("REFUND:") && postings[1].1 == 3_000);
    assert!(postings[2].0.starts_with("REFUND:") && postings[2].1 == 7_000);
    let (_, clearing) = stack
        .ledger_get("/accounts/USD:provider_clearing/balance")
        .await;
    assert_eq!(clearing["balance_minor"], 0);
    let (_, report) = stack.ledger_get("/reconciliation").await;
    assert_eq!(report["imbalanced_count"], 0);
    assert_eq!(report["balance_mismatches"], json!([]));
    let provider = stack.db("provider-adapter").await;
    let refunds_at_provider: i64 = sagapay_e2e::count_rows(&provider, "SELECT count(*) FROM simulated_provider_operations WHERE payment_id = $1 AND operation = 'REFUND'", Uuid::parse_str(&pid).unwrap()).await;
    assert_eq!(refunds_at_provider, 2);
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_refunds_never_exceed_the_captured_amount() {
    let stack = TestStack::spawn().await;
    let pid = stack.settled_payment("refund-race", 10_000, "USD").await;
    let attempts = (0..20).map(|i| {
        let stack = &stack;
        let pid = pid.clone();
        async move { refund(stack, &pid, 1_000, &format!("race-{i}")).await }
    });
    let results = futures::future::join_all(attempts).await;
    let accepted = results.iter().filter(|(s, _)| *s == 201).count();
    let refused = results
        .iter()
        .filter(|(s, b)| *s == 422 && b["error"]["code"] == "refund_exceeds_captured")
        .count();
    assert_eq!((accepted, refused), (10, 10), "{results:?}");
    let p = stack.wait_for_status(&pid, "REFUNDED", WAIT).await;
    let total: i64 = p["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["amount_cents"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 10_000);
    // What the API says is what moved: ten refunds at the provider and ten postings in the
    // ledger, 10,000 each, counted once nothing is in flight.
    stack.wait_quiet().await;
    let id = Uuid::parse_str(&pid).unwrap();
    let provider = stack.db("provider-adapter").await;
    let (at_provider, refunded): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), sum(amount_minor)::bigint FROM simulated_provider_operations
          WHERE payment_id = $1 AND operation = 'REFUND' AND outcome = 'SUCCEEDED'",
    )
    .bind(id)
    .fetch_one(&provider)
    .await
    .unwrap();
    assert_eq!(
        (at_provider, refunded),
        (10, Some(10_000)),
        "the provider's refunds"
    );
    let ledger = stack.db("ledger").await;
    let postings: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM journal_transactions
          WHERE payment_id = $1 AND posting_kind LIKE 'REFUND:%'",
    )
    .bind(id)
    .fetch_one(&ledger)
    .await
    .unwrap();
    assert_eq!(postings, 10, "one refund posting each");
    stack.reconciled(1).await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunding_a_payment_that_is_not_settled_is_a_conflict() {
    let stack = TestStack::spawn().await;
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-nr", "amount_cents": 150_000, "currency": "USD",
            "idempotency_key": "not-settled"
        }))
        .await;
    stack.wait_for_status(&pid, "RISK_REVIEW", WAIT).await;
    let (status, err) = refund(&stack, &pid, 100, "nr-1").await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["code"], "payment_not_refundable");
    let (status, _) = refund(&stack, &Uuid::now_v7().to_string(), 100, "nr-2").await;
    assert_eq!(status, 404);
    let p = stack.get_payment(&pid).await;
    assert_eq!(p["refunds"], json!([]));
    stack.teardown().await;
}
