//! Rolling upgrades: an older consumer processes a newer producer's event (fields it does not
//! know), and a newer consumer processes an older producer's event (without the fields added
//! since), on the real stack.

use sagapay_e2e::{eventually, TestStack};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A newer producer's `ledger.post.requested`: the envelope and the payload carry fields this
/// ledger does not know. It posts the capture all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_older_consumer_processes_a_newer_producers_event() {
    let stack = TestStack::spawn().await;
    let payment_id = Uuid::now_v7();
    let newer = json!({
        "event_id": Uuid::now_v7(), "event_type": "ledger.post.requested", "schema_version": 1,
        "occurred_at": chrono::Utc::now(), "payment_id": payment_id, "correlation_id": "upgrade",
        "tenant": "eu-west",
        "payload": {"merchant_id": Uuid::now_v7(), "capture_id": "cap_new", "amount_minor": 4_200,
                    "currency": "USD", "captured_at": "2026-11-30T00:00:00Z",
                    "fees": {"scheme": 12}}
    });
    stack
        .publish_raw(
            "ledger.post.requested",
            &payment_id.to_string(),
            newer.to_string().as_bytes(),
        )
        .await;
    let ledger = stack.db("ledger").await;
    let posted: i64 = eventually(WAIT, "the posting", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM journal_transactions WHERE payment_id = $1 AND amount_minor = 4200",
        )
        .bind(payment_id)
        .fetch_one(&ledger)
        .await
        .unwrap();
        (n == 1).then_some(n)
    })
    .await;
    assert_eq!(posted, 1);
    stack.teardown().await;
}

/// An older producer's `provider.authorize.requested` (no `capture_method`, no
/// `causation_id`): this adapter reads the defaults, authorizes and captures automatically.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_consumer_processes_an_older_producers_event() {
    let stack = TestStack::spawn().await;
    let payment_id = Uuid::now_v7();
    let older = json!({
        "event_id": Uuid::now_v7(), "event_type": "provider.authorize.requested",
        "schema_version": 1, "occurred_at": chrono::Utc::now(), "payment_id": payment_id,
        "correlation_id": "upgrade",
        "payload": {"merchant_id": Uuid::now_v7(), "customer_id": "cust-old",
                    "amount_minor": 3_300, "currency": "USD"}
    });
    stack
        .publish_raw(
            "provider.authorize.requested",
            &payment_id.to_string(),
            older.to_string().as_bytes(),
        )
        .await;
    let provider = stack.db("provider-adapter").await;
    let booked: Vec<String> = eventually(WAIT, "the authorization and its capture", || async {
        let ops: Vec<String> = sqlx::query_scalar(
            "SELECT operation FROM simulated_provider_operations
              WHERE payment_id = $1 AND outcome = 'SUCCEEDED' ORDER BY created_at",
        )
        .bind(payment_id)
        .fetch_all(&provider)
        .await
        .unwrap();
        (ops.len() == 2).then_some(ops)
    })
    .await;
    assert_eq!(booked, ["AUTHORIZE", "CAPTURE"]);
    stack.teardown().await;
}
