use futures::StreamExt;
use sagapay_e2e::{eventually, TestStack, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::Duration;

const PAYMENTS: usize = 1_000;
const IN_FLIGHT: usize = 25;

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// 1,000 payments (one in ten declined) and refunds of a third of the settled ones (full and
/// partial): the ledger's global reconciliation finds no imbalance and the cross-service
/// check (`sagapayctl reconcile`) finds no difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn after_a_thousand_mixed_payments_and_refunds_everything_reconciles() {
    let stack = TestStack::spawn().await;
    let gateway = stack.gateway_url();
    let created: Vec<(usize, String, i64)> = futures::stream::iter(0..PAYMENTS)
        .map(|i| {
            let (http, gateway) = (stack.http.clone(), gateway.clone());
            async move {
                let amount = 100 + (i as i64 * 7_919) % 50_000;
                let method = if i % 10 == 0 { "pm_card_declined" } else { "pm_card_ok" };
                let resp = http
                    .post(format!("{gateway}/payments"))
                    .header("x-api-key", DEV_API_KEY)
                    .json(&json!({
                        "customer_id": format!("mix-{i}"), "amount_cents": amount, "currency": "USD",
                        "idempotency_key": format!("mix-{i}"), "payment_method": method
                    }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
                let body: Value = resp.json().await.unwrap();
                (i, body["payment_id"].as_str().unwrap().to_owned(), amount)
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let orch = stack.db("orchestrator").await;
    eventually(Duration::from_secs(240), "every payment to end", || async {
        (count(
            &orch,
            "SELECT count(*) FROM payments WHERE status IN ('SETTLED', 'FAILED')",
        )
        .await
            == PAYMENTS as i64)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(
            &orch,
            "SELECT count(*) FROM payments WHERE status = 'FAILED'"
        )
        .await,
        (PAYMENTS / 10) as i64
    );

    // Refund a third of the settled payments: alternately in full and in half.
    let to_refund: Vec<(String, i64)> = created
        .iter()
        .filter(|(i, _, _)| i % 10 != 0 && i % 3 == 0)
        .map(|(i, pid, amount)| {
            (
                pid.clone(),
                if i % 2 == 0 {
                    *amount
                } else {
                    (amount / 2).max(1)
                },
            )
        })
        .collect();
    let n_refunds = to_refund.len() as i64;
    futures::stream::iter(to_refund)
        .map(|(pid, amount)| {
            let (http, gateway) = (stack.http.clone(), gateway.clone());
            async move {
                let resp = http
                    .post(format!("{gateway}/payments/{pid}/refunds"))
                    .header("x-api-key", DEV_API_KEY)
                    .json(&json!({"amount_cents": amount, "idempotency_key": format!("rf-{pid}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 201);
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect::<Vec<()>>()
        .await;
    eventually(
        Duration::from_secs(240),
        "every refund to be posted",
        || async {
            (count(
                &orch,
                "SELECT count(*) FROM refunds WHERE status = 'SUCCEEDED'",
            )
            .await
                == n_refunds)
                .then_some(())
        },
    )
    .await;
    // The payments' own status catches up with their refunds' postings.
    eventually(
        Duration::from_secs(60),
        "refunded payments' statuses",
        || async {
            (count(
                &orch,
                "SELECT count(*) FROM payments WHERE status IN ('REFUNDED', 'PARTIALLY_REFUNDED')",
            )
            .await
                == n_refunds)
                .then_some(())
        },
    )
    .await;

    let report: Value = stack
        .http
        .get(format!("{}/reconciliation", stack.service_url("ledger")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let settled = (PAYMENTS - PAYMENTS / 10) as i64;
    assert_eq!(report["transactions_checked"], settled + n_refunds);
    assert_eq!(report["imbalanced_count"], 0);
    assert_eq!(report["imbalanced_transactions"], json!([]));
    assert_eq!(report["balance_mismatches"], json!([]));

    let cross = sagapayctl::reconcile::run(
        &sagapayctl::reconcile::Databases::of(
            &sagapay_e2e::config("gateway", &stack.ns).postgres_url,
            &stack.ns,
        ),
        &sagapayctl::reconcile::Window {
            settling: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(cross.payments_checked, PAYMENTS);
    assert_eq!(cross.refunds_checked as i64, n_refunds);
    assert_eq!(cross.differences, vec![]);
    stack.teardown().await;
}
