//! The provider worker is fair: one merchant whose cards all time out (each attempt holds a
//! place of the worker for the whole call timeout) never takes every place. Merchant A has
//! twenty authorizations due at once, older than merchant B's, on a worker of four places;
//! A holds at most its cap of two, so B's authorization is attempted as soon as it is due,
//! with no attempt of A's going first. Claimed first-due first-served, B's authorization
//! waited behind every one of A's still due.

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
        .post_payment_as(
            &b_key,
            &json!({"customer_id": "b-1", "amount_cents": 1200, "currency": "USD",
                      "idempotency_key": "good-1"}),
        )
        .await;
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
    // Attempts are recorded when they end: wait until one of A's started well after B's
    // first attempt (A's calls end within their 1 s timeout), so every attempt of A's that
    // started before B's is recorded and counted below.
    eventually(WAIT, "A's attempts recorded past B's first", || async {
        let later: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM provider_attempts
              WHERE payment_id <> $1 AND started_at > (
                    SELECT min(started_at) + interval '1.5 seconds' FROM provider_attempts
                     WHERE payment_id = $1 AND operation = 'AUTHORIZE')",
        )
        .bind(b)
        .fetch_one(&provider)
        .await
        .unwrap();
        (later > 0).then_some(())
    })
    .await;
    // How many of A's attempts the worker started between B's authorization becoming due
    // (its operation scheduled) and B's first attempt: with A at its cap and places free,
    // none but what claims already under way took (A's two places, a cycle or two). First
    // due, first served, B waited behind every one of A's authorizations still due. Counted
    // from the operation's scheduling, not from the payment's creation, so a slow pipeline
    // before the adapter (a busy machine) cannot change the count.
    let overtaking: i64 = sqlx::query_scalar(
        "WITH b AS (
             SELECT o.created_at AS due_at,
                    (SELECT min(a.started_at) FROM provider_attempts a
                      WHERE a.operation_id = o.operation_id) AS first_attempt
               FROM provider_operations o
              WHERE o.payment_id = $1 AND o.operation = 'AUTHORIZE')
         SELECT count(*) FROM provider_attempts a, b
          WHERE a.payment_id <> $1 AND a.started_at > b.due_at
            AND a.started_at < b.first_attempt",
    )
    .bind(b)
    .fetch_one(&provider)
    .await
    .unwrap();
    assert!(
        overtaking <= 4,
        "{overtaking} of A's attempts started while B's authorization was due \
         (A's cap is 2 of 4 places)"
    );
    // The cap held: never more than two of A's calls at once (over every attempt recorded,
    // several rounds of A's two places by now).
    let (attempts, most_at_once): (i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*), max(n) FROM (
             SELECT (SELECT count(*) FROM provider_attempts o
                      WHERE o.payment_id <> $1 AND o.started_at <= a.started_at
                        AND o.finished_at > a.started_at) AS n
               FROM provider_attempts a WHERE a.payment_id <> $1) t",
    )
    .bind(b)
    .fetch_one(&provider)
    .await
    .unwrap();
    eprintln!("fairness: {overtaking} of A's attempts went before B's; {attempts} of A's recorded, at most {most_at_once:?} at once");
    assert!(attempts >= 2, "A's attempts recorded: {attempts}");
    assert!(
        most_at_once.is_some_and(|n| n <= 2),
        "A held {most_at_once:?} places at once"
    );
    stack.teardown().await;
}
