//! The provider worker is fair: one merchant whose cards all time out (each attempt holds a
//! place of the worker for the whole call timeout) never takes every place. Merchant A has
//! twenty authorizations due at once, older than merchant B's, on a worker of four places;
//! A holds at most its cap of two, so B's authorization is attempted at once and B settles
//! while A's first attempts are still being made. Claimed first-due first-served, B's
//! authorization waited behind all twenty of A's.

use sagapay_e2e::{eventually, StackOptions, TestStack};
use sagapay_provider_adapter::policy::RetrySettings;
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merchant_whose_cards_hang_holds_its_share_of_the_provider_not_all_of_it() {
    let stack = TestStack::spawn_with(StackOptions {
        provider_retry: Some(RetrySettings {
            call_timeout: Duration::from_secs(1),
            max_in_flight: 4,
            max_in_flight_per_merchant: 2,
            ..RetrySettings::default()
        }),
        ..StackOptions::default()
    })
    .await;
    let provider = stack.db("provider-adapter").await;
    for i in 0..20 {
        let body = json!({
            "customer_id": format!("slow-{i}"), "amount_cents": 900, "currency": "USD",
            "payment_method": "pm_card_timeout", "idempotency_key": format!("slow-{i}")
        });
        let (status, answer) = stack.create_payment(body).await;
        assert_eq!(status, 201, "{answer}");
    }
    // A's twenty authorizations are due (older than anything B will ask).
    eventually(WAIT, "A's twenty authorizations scheduled", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM provider_operations WHERE operation = 'AUTHORIZE'",
        )
        .fetch_one(&provider)
        .await
        .unwrap();
        (n == 20).then_some(())
    })
    .await;
    let (_, b_key) = stack.merchant("Good Cards Ltd").await;
    let resp = stack
        .http
        .post(format!("{}/payments", stack.gateway_url()))
        .header("x-api-key", &b_key)
        .json(
            &json!({"customer_id": "b-1", "amount_cents": 1200, "currency": "USD",
                      "idempotency_key": "good-1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let b: Uuid = resp.json::<serde_json::Value>().await.unwrap()["payment_id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let orchestrator = stack.db("orchestrator").await;
    eventually(WAIT, "B's payment SETTLED", || async {
        let status: String =
            sqlx::query_scalar("SELECT status FROM payments WHERE payment_id = $1")
                .bind(b)
                .fetch_one(&orchestrator)
                .await
                .unwrap();
        (status == "SETTLED").then_some(())
    })
    .await;
    // How many of A's attempts had started when B's authorization was attempted.
    let before_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provider_attempts a
          WHERE a.payment_id <> $1 AND a.started_at < (
                SELECT min(started_at) FROM provider_attempts
                 WHERE payment_id = $1 AND operation = 'AUTHORIZE')",
    )
    .bind(b)
    .fetch_one(&provider)
    .await
    .unwrap();
    let first_attempts_of_a: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provider_attempts WHERE payment_id <> $1 AND attempt_no = 1",
    )
    .bind(b)
    .fetch_one(&provider)
    .await
    .unwrap();
    assert!(
        before_b <= 6,
        "B's authorization waited for {before_b} of A's attempts (A's cap is 2 of 4 places)"
    );
    assert!(
        first_attempts_of_a < 20,
        "B settled only after all of A's first attempts ({first_attempts_of_a})"
    );
    // The cap held: never more than two of A's calls at once.
    let most_at_once: i64 = sqlx::query_scalar(
        "SELECT max(n) FROM (
             SELECT (SELECT count(*) FROM provider_attempts o
                      WHERE o.payment_id <> $1 AND o.started_at <= a.started_at
                        AND o.finished_at > a.started_at) AS n
               FROM provider_attempts a WHERE a.payment_id <> $1) t",
    )
    .bind(b)
    .fetch_one(&provider)
    .await
    .unwrap();
    assert!(most_at_once <= 2, "A held {most_at_once} places at once");
    stack.teardown().await;
}
