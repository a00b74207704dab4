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
                // 1,000 payments at 25 requests at once outrun the pipeline: admission control
                // refuses some for a moment, and they are retried as a merchant would.
                let (status, body) = sagapay_e2e::create_payment_at(
                    &http,
                    &gateway,
                    &json!({
                        "customer_id": format!("mix-{i}"), "amount_cents": amount, "currency": "USD",
                        "idempotency_key": format!("mix-{i}"), "payment_method": method
                    }),
                )
                .await;
                assert_eq!(status, 201, "{body}");
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

    let (_, report) = stack.ledger_get("/reconciliation").await;
    let settled = (PAYMENTS - PAYMENTS / 10) as i64;
    assert_eq!(report["transactions_checked"], settled + n_refunds);
    assert_eq!(report["imbalanced_count"], 0);
    assert_eq!(report["imbalanced_transactions"], json!([]));
    assert_eq!(report["balance_mismatches"], json!([]));

    let cross = stack.reconcile().await;
    assert_eq!(cross.payments_checked, PAYMENTS);
    assert_eq!(cross.refunds_checked as i64, n_refunds);
    assert_eq!(cross.differences, vec![]);
    stack.teardown().await;
}

/// A money movement planted at the "provider", outside the saga.
async fn plant_at_provider(
    pool: &sqlx::PgPool,
    payment_id: uuid::Uuid,
    operation: &str,
    key: &str,
    amount: i64,
) {
    sqlx::query(
        "INSERT INTO simulated_provider_operations
                (idempotency_key, operation, payment_id, amount_minor, currency, reference)
         VALUES ($1, $2, $3, $4, 'USD', 'planted')",
    )
    .bind(key)
    .bind(operation)
    .bind(payment_id)
    .bind(amount)
    .execute(pool)
    .await
    .unwrap();
}

/// While payments are being made, the three-way reconciliation (with no settling margin:
/// payments still moving are left out by their deadlines) finds nothing; afterwards, one
/// difference of each kind is planted in the provider's books, the payments and the ledger,
/// and the reconciliation reports exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reconciliation_during_load_is_clean_and_catches_each_planted_difference() {
    use uuid::Uuid;
    let stack = TestStack::spawn().await;
    let load = {
        let (http, gateway) = (stack.http.clone(), stack.gateway_url());
        tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_millis(100));
            let mut made = Vec::new();
            for i in 0..80usize {
                pace.tick().await;
                let method = match i % 10 {
                    0 | 5 => "pm_card_declined",
                    3 => "pm_card_fail_twice",
                    _ => "pm_card_ok",
                };
                let resp = http
                    .post(format!("{gateway}/payments"))
                    .header("x-api-key", DEV_API_KEY)
                    .json(&json!({
                        "customer_id": format!("load-{i}"), "amount_cents": 500 + i as i64,
                        "currency": "USD", "idempotency_key": format!("load-{i}"),
                        "payment_method": method
                    }))
                    .send()
                    .await
                    .unwrap();
                let body: Value = resp.json().await.unwrap();
                made.push(body["payment_id"].as_str().unwrap().to_owned());
            }
            made
        })
    };
    // Reconciliations back to back while payments are made, and on while the last of them
    // are still moving: at least three, however slow each is on a busy machine.
    let mut runs = 0;
    while !load.is_finished() || runs < 3 {
        let report = stack.reconcile().await;
        assert_eq!(report.differences, vec![], "a false difference during load");
        runs += 1;
    }
    let made = load.await.unwrap();
    let orch = stack.db("orchestrator").await;
    let statuses: Vec<(Uuid, String, Uuid, i64)> = eventually(
        Duration::from_secs(60),
        "every payment of the load to end",
        || async {
            let rows: Vec<(Uuid, String, Uuid, i64)> = sqlx::query_as(
                "SELECT payment_id, status, merchant_id, amount_minor FROM payments",
            )
            .fetch_all(&orch)
            .await
            .unwrap();
            (rows.len() == made.len()
                && rows
                    .iter()
                    .all(|(_, s, _, _)| s == "SETTLED" || s == "FAILED"))
            .then_some(rows)
        },
    )
    .await;
    let amount: std::collections::HashMap<Uuid, i64> =
        statuses.iter().map(|(id, _, _, a)| (*id, *a)).collect();
    let clean = stack.reconcile().await;
    assert_eq!(clean.differences, vec![]);
    assert_eq!(clean.payments_checked, made.len());

    let of = |status: &str| -> Vec<Uuid> {
        statuses
            .iter()
            .filter(|(_, s, _, _)| s == status)
            .map(|(id, _, _, _)| *id)
            .collect()
    };
    let (failed, settled) = (of("FAILED"), of("SETTLED"));
    assert!(failed.len() >= 4 && settled.len() >= 3);
    let merchant = statuses[0].2;
    let a = |id: Uuid| amount[&id];
    let provider = stack.db("provider-adapter").await;
    let ledger = stack.db("ledger").await;
    let stranger = Uuid::now_v7();
    // A capture the saga never recorded; an authorization left open; a posting the provider
    // never captured; payments whose amount and currency were changed; a refund at the
    // provider nobody asked for; money of an unknown payment; a payment stuck in CAPTURED.
    plant_at_provider(
        &provider,
        failed[0],
        "AUTHORIZE",
        &format!("planted-authorize:{}", failed[0]),
        a(failed[0]),
    )
    .await;
    plant_at_provider(
        &provider,
        failed[0],
        "CAPTURE",
        &format!("planted-capture:{}", failed[0]),
        a(failed[0]),
    )
    .await;
    plant_at_provider(
        &provider,
        failed[1],
        "AUTHORIZE",
        &format!("planted-authorize:{}", failed[1]),
        a(failed[1]),
    )
    .await;
    let mut tx = ledger.begin().await.unwrap();
    let tid = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO journal_transactions (transaction_id, payment_id, posting_kind, currency,
                                           description, amount_minor, fee_minor)
         VALUES ($1, $2, 'CAPTURE', 'USD', 'planted', $3, 0)",
    )
    .bind(tid)
    .bind(failed[2])
    .bind(a(failed[2]))
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account_id, direction, amount_minor, currency)
         VALUES ($1, 'USD:provider_clearing', 'DEBIT', $3, 'USD'),
                ($1, $2, 'CREDIT', $3, 'USD')",
    )
    .bind(tid)
    .bind(format!("USD:merchant_payable:{merchant}"))
    .bind(a(failed[2]))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    sqlx::query("UPDATE payments SET amount_minor = amount_minor + 1 WHERE payment_id = $1")
        .bind(settled[0])
        .execute(&orch)
        .await
        .unwrap();
    sqlx::query("UPDATE payments SET currency = 'EUR' WHERE payment_id = $1")
        .bind(settled[1])
        .execute(&orch)
        .await
        .unwrap();
    plant_at_provider(
        &provider,
        settled[2],
        "REFUND",
        &format!("refund:{}:{}", settled[2], Uuid::now_v7()),
        100,
    )
    .await;
    plant_at_provider(
        &provider,
        stranger,
        "CAPTURE",
        &format!("capture:{stranger}"),
        700,
    )
    .await;
    sqlx::query(
        "UPDATE payments SET status = 'CAPTURED', deadline_at = now() - interval '1 hour'
          WHERE payment_id = $1",
    )
    .bind(failed[3])
    .execute(&orch)
    .await
    .unwrap();
    plant_at_provider(
        &provider,
        failed[3],
        "AUTHORIZE",
        &format!("planted-authorize:{}", failed[3]),
        a(failed[3]),
    )
    .await;
    plant_at_provider(
        &provider,
        failed[3],
        "CAPTURE",
        &format!("planted-capture:{}", failed[3]),
        a(failed[3]),
    )
    .await;

    let report = stack.reconcile().await;
    let mut found: Vec<(Uuid, &str)> = report
        .differences
        .iter()
        .map(|d| (d.payment_id, d.kind))
        .collect();
    found.dedup();
    let mut expected = vec![
        (failed[0], "capture_without_posting"),
        (failed[1], "authorization_open"),
        (failed[2], "posting_without_capture"),
        (failed[3], "captured_past_deadline"),
        (settled[0], "amount_differs"),
        (settled[1], "currency_differs"),
        (settled[2], "refund_unrecorded"),
        (stranger, "unknown_payment"),
    ];
    expected.sort();
    found.sort();
    assert_eq!(found, expected, "{:#?}", report.differences);
    stack.teardown().await;
}
