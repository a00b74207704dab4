//! Process-level: the six services as real processes (the debug binaries, built by
//! `scripts/test.sh` before the tests). The orchestrator and the provider adapter are killed
//! with SIGKILL while payments are in flight, then restarted.

use sagapay_e2e::{
    cleanup_namespace, eventually, fresh_namespace, Processes, DEV_API_KEY, SERVICES,
};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_orchestrator_and_provider_adapter_loses_nothing_and_duplicates_nothing() {
    let ns = fresh_namespace();
    let mut procs = Processes::in_namespace(ns.clone(), &[]);
    let http = reqwest::Client::new();
    procs.start_all();
    for s in SERVICES {
        procs.wait_ready(&http, s).await;
    }

    let gateway = procs.url("gateway");
    let mut ids = Vec::new();
    for i in 0..60 {
        // One in six needs two retries at the provider: some are mid-back-off at the kill.
        let method = if i % 6 == 0 {
            "pm_card_fail_twice"
        } else {
            "pm_card_ok"
        };
        let resp = http
            .post(format!("{gateway}/payments"))
            .header("x-api-key", DEV_API_KEY)
            .json(&json!({
                "customer_id": format!("crash-{i}"), "amount_cents": 1_000 + i,
                "currency": "USD", "idempotency_key": format!("crash-{i}"),
                "payment_method": method
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: serde_json::Value = resp.json().await.unwrap();
        ids.push(body["payment_id"].as_str().unwrap().to_owned());
    }
    // Mid-flight: kill both without warning, then bring them back.
    let orch_url = sagapay_messaging::postgres_url::with_database(
        &sagapay_e2e::postgres_server_url(),
        &ns.database("orchestrator"),
    );
    let orch = PgPoolOptions::new()
        .max_connections(1)
        .connect(&orch_url)
        .await
        .unwrap();
    procs.kill("orchestrator");
    procs.kill("provider-adapter");
    let in_flight: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE status <> 'SETTLED'")
            .fetch_one(&orch)
            .await
            .unwrap();
    assert!(
        in_flight > 0,
        "the kill must happen with payments in flight"
    );
    orch.close().await;
    procs.start("orchestrator");
    procs.start("provider-adapter");
    procs.wait_ready(&http, "orchestrator").await;
    procs.wait_ready(&http, "provider-adapter").await;

    for id in &ids {
        eventually(
            Duration::from_secs(120),
            &format!("payment {id} to settle"),
            || async {
                let p: serde_json::Value = http
                    .get(format!("{gateway}/payments/{id}"))
                    .header("x-api-key", DEV_API_KEY)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (p["status"] == "SETTLED").then_some(())
            },
        )
        .await;
    }

    let db = |service: &str| {
        let url = sagapay_messaging::postgres_url::with_database(
            &sagapay_e2e::postgres_server_url(),
            &ns.database(service),
        );
        async move {
            PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap()
        }
    };
    // Counted once nothing is in flight any more: a duplicate arriving a moment after the
    // last payment settled would otherwise pass unseen.
    let mut services = Vec::new();
    for s in SERVICES {
        services.push((s, procs.url(s), db(s).await));
    }
    sagapay_e2e::wait_quiet(&http, &services).await;
    let provider = db("provider-adapter").await;
    let dup_charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT payment_id, operation FROM simulated_provider_operations
                                GROUP BY payment_id, operation HAVING count(*) > 1) d",
    )
    .fetch_one(&provider)
    .await
    .unwrap();
    assert_eq!(dup_charges, 0, "no duplicate provider operation");
    let captures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM simulated_provider_operations WHERE operation = 'CAPTURE'",
    )
    .fetch_one(&provider)
    .await
    .unwrap();
    assert_eq!(captures, 60, "exactly one capture per payment");
    let ledger = db("ledger").await;
    let (postings, payments_posted): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT payment_id) FROM journal_transactions")
            .fetch_one(&ledger)
            .await
            .unwrap();
    assert_eq!(
        (postings, payments_posted),
        (60, 60),
        "exactly one posting per payment"
    );
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY transaction_id
          HAVING sum(CASE direction WHEN 'DEBIT' THEN amount_minor ELSE -amount_minor END) <> 0) u",
    )
    .fetch_one(&ledger)
    .await
    .unwrap();
    assert_eq!(unbalanced, 0);
    let notification = db("notification").await;
    let notified: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
        .fetch_one(&notification)
        .await
        .unwrap();
    assert_eq!(notified, 60, "exactly one notification per payment");

    provider.close().await;
    ledger.close().await;
    notification.close().await;
    drop(procs);
    cleanup_namespace(&ns).await;
}
