//! Payments parked for an operator. A payment flagged for an operator (here: the provider
//! captured one less than asked) holds no place in admission control, so parked payments past
//! the limit never lock out new ones, another merchant's included; and an operator can end
//! every such payment: `fail` refunds exactly what the provider took (REVERSED), `accept`
//! keeps and posts it (SETTLED for what was captured). The books agree after either.

use sagapay_e2e::{eventually, StackOptions, TestStack, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// POST /payments with `key`, as a careful merchant does it: a 503 `overloaded` is retried with
/// the same idempotency key until `WAIT` runs out; the payment id, or the last refusal.
async fn create(stack: &TestStack, api_key: &str, body: &Value) -> Result<String, Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let resp = stack.post_payment_as(api_key, body).await;
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.expect("JSON body");
        if status == 201 {
            return Ok(answer["payment_id"].as_str().unwrap().to_owned());
        }
        assert_eq!(status, 503, "{answer}");
        if std::time::Instant::now() >= deadline {
            return Err(answer);
        }
        // The client's back-off (Retry-After is 1 s), not a synchronisation.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn mismatch(key: &str) -> Value {
    json!({
        "customer_id": format!("cust-{key}"), "amount_cents": 5000, "currency": "USD",
        "payment_method": "pm_card_amount_mismatch", "idempotency_key": key
    })
}

/// Waits until the payment is flagged for an operator.
async fn parked(stack: &TestStack, payment_id: &str) {
    let db = stack.db("orchestrator").await;
    let id: uuid::Uuid = payment_id.parse().unwrap();
    eventually(WAIT, "the payment parked for an operator", || async {
        let flagged: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT status, attention_reason FROM payments
              WHERE payment_id = $1 AND attention_since IS NOT NULL",
        )
        .bind(id)
        .fetch_optional(&db)
        .await
        .unwrap();
        flagged.filter(|(status, _)| status == "AUTHORIZED")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn payments_parked_for_an_operator_hold_no_admission_place() {
    let stack = TestStack::spawn_with(StackOptions {
        admission_max_in_flight: Some(3),
        admission_merchant_max_in_flight: Some(0),
        ..StackOptions::default()
    })
    .await;
    // Twice the limit, one after another: each parks before the next is asked for.
    let mut ids = Vec::new();
    for i in 0..6 {
        let id = create(&stack, DEV_API_KEY, &mismatch(&format!("parked-{i}")))
            .await
            .unwrap_or_else(|refusal| panic!("payment {i} refused for good: {refusal}"));
        parked(&stack, &id).await;
        ids.push(id);
    }
    let gauge = "admission_payments_in_flight{service=\"orchestrator\"}";
    eventually(WAIT, "no parked payment counted in flight", || async {
        (stack.metric("orchestrator", gauge).await == 0.0).then_some(())
    })
    .await;
    // Another merchant is served, and its payment settles.
    let (_, other_key) = stack.merchant("Other Ltd").await;
    let body = json!({
        "customer_id": "cust-b", "amount_cents": 1200, "currency": "USD",
        "idempotency_key": "other-1"
    });
    let other = create(&stack, &other_key, &body)
        .await
        .unwrap_or_else(|refusal| panic!("the other merchant refused: {refusal}"));
    eventually(WAIT, "the other merchant's payment SETTLED", || async {
        let resp = stack
            .http
            .get(format!("{}/payments/{other}", stack.gateway_url()))
            .header("x-api-key", &other_key)
            .send()
            .await
            .unwrap();
        let p: Value = resp.json().await.unwrap();
        (p["status"] == "SETTLED").then_some(())
    })
    .await;
    for id in &ids {
        assert_eq!(stack.get_payment(id).await["status"], "AUTHORIZED", "{id}");
    }
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merchant_at_its_share_is_refused_while_another_is_served() {
    let stack = TestStack::spawn_with(StackOptions {
        admission_max_in_flight: Some(10),
        admission_merchant_max_in_flight: Some(2),
        provider_retry: Some(sagapay_provider_adapter::policy::RetrySettings {
            call_timeout: Duration::from_secs(1),
            backoff: vec![Duration::from_secs(1); 60],
            ..Default::default()
        }),
        ..StackOptions::default()
    })
    .await;
    // The dev merchant's authorizations hang on an outage: two take its whole share.
    stack.provider_outage(120, Some(&["AUTHORIZE"])).await;
    for i in 0..2 {
        let body = json!({"customer_id": "c", "amount_cents": 700, "currency": "USD",
                          "idempotency_key": format!("share-{i}")});
        create(&stack, DEV_API_KEY, &body).await.unwrap();
    }
    let third = json!({"customer_id": "c", "amount_cents": 700, "currency": "USD",
                       "idempotency_key": "share-3"});
    let resp = eventually(
        WAIT,
        "the third refused at the merchant's share",
        || async {
            let resp = stack.post_payment_as(DEV_API_KEY, &third).await;
            (resp.status() == 503).then_some(resp)
        },
    )
    .await;
    assert!(resp.headers().contains_key("retry-after"));
    assert_eq!(resp.headers()["sagapay-overload-scope"], "merchant");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("this merchant"),
        "{body}"
    );
    // Another merchant is accepted at once, inside the pipeline's limit.
    let (_, other_key) = stack.merchant("Second Ltd").await;
    let resp = stack
        .post_payment_as(
            &other_key,
            &json!({"customer_id": "c", "amount_cents": 700, "currency": "USD",
                      "idempotency_key": "other-share"}),
        )
        .await;
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
    let refused = "admission_merchant_refused_total{service=\"orchestrator\"}";
    assert!(stack.metric("orchestrator", refused).await >= 1.0);
    stack.teardown().await;
}

async fn ops(stack: &TestStack, payment_id: &str, verb: &str, reason: &str) -> (u16, Value) {
    let resp = stack
        .http
        .post(format!(
            "{}/ops/payments/{payment_id}/{verb}",
            stack.service_url("orchestrator")
        ))
        .header("x-ops-key", "dev-ops-secret")
        .json(&json!({"reason": reason, "requested_by": "ops-ann"}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The provider's books of a payment: (operation, outcome, amount).
async fn books(stack: &TestStack, payment_id: &str) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT operation, outcome, amount_minor FROM simulated_provider_operations
          WHERE payment_id = $1 ORDER BY created_at",
    )
    .bind(payment_id.parse::<uuid::Uuid>().unwrap())
    .fetch_all(&stack.db("provider-adapter").await)
    .await
    .unwrap()
}

/// The ledger's postings of a payment: (kind, amount moved).
async fn postings(stack: &TestStack, payment_id: &str) -> Vec<(String, i64)> {
    sqlx::query_as(
        "SELECT t.posting_kind, sum(e.amount_minor) FILTER (WHERE e.direction = 'DEBIT')::bigint
           FROM journal_transactions t JOIN ledger_entries e USING (transaction_id)
          WHERE t.payment_id = $1 GROUP BY t.transaction_id, t.posting_kind ORDER BY 1",
    )
    .bind(payment_id.parse::<uuid::Uuid>().unwrap())
    .fetch_all(&stack.db("ledger").await)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_fails_or_accepts_a_capture_of_another_amount_and_the_books_agree() {
    let stack = TestStack::spawn().await;
    let failed = stack.create_payment_id(mismatch("mm-fail")).await;
    let accepted = stack.create_payment_id(mismatch("mm-accept")).await;
    parked(&stack, &failed).await;
    parked(&stack, &accepted).await;

    let (status, body) = ops(&stack, &failed, "fail", "customer asked").await;
    assert_eq!(status, 200, "{body}");
    stack.wait_for_status(&failed, "REVERSED", WAIT).await;
    let (status, body) = ops(&stack, &accepted, "accept", "the customer agreed").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["action"], "accepted", "{body}");
    stack.wait_for_status(&accepted, "SETTLED", WAIT).await;
    stack.wait_quiet().await;

    let settled = stack.get_payment(&accepted).await;
    assert_eq!(settled["amount_captured_cents"], 4999, "{settled}");
    let reversed = stack.get_payment(&failed).await;
    assert!(reversed["amount_captured_cents"].is_null(), "{reversed}");
    assert!(settled["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["reason"]
            .as_str()
            .unwrap()
            .contains("accepted by ops-ann")));
    let succeeded = |op: &str, amount: i64| (op.to_owned(), "SUCCEEDED".to_owned(), amount);
    assert_eq!(
        books(&stack, &failed).await,
        vec![
            succeeded("AUTHORIZE", 5000),
            succeeded("CAPTURE", 4999),
            succeeded("REFUND", 4999)
        ]
    );
    assert_eq!(
        books(&stack, &accepted).await,
        vec![succeeded("AUTHORIZE", 5000), succeeded("CAPTURE", 4999)]
    );
    assert_eq!(postings(&stack, &failed).await, vec![], "never posted");
    assert_eq!(
        postings(&stack, &accepted).await,
        vec![("CAPTURE".to_owned(), 4999)]
    );
    // Neither can be ended twice, and a payment with nothing to accept says so.
    let (status, body) = ops(&stack, &accepted, "accept", "again").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("payment_not_acceptable"))
    );
    let plain = stack.settled_payment("mm-plain", 1000, "USD").await;
    let (status, body) = ops(&stack, &plain, "accept", "why not").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (409, json!("nothing_to_accept"))
    );

    let report = stack.reconcile().await;
    assert!(report.differences.is_empty(), "{:#?}", report.differences);
    assert_eq!(
        (report.payments_checked, report.in_flight),
        (3, 0),
        "{report:?}"
    );
    stack.teardown().await;
}
