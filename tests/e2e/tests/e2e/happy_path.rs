use sagapay_domain::PaymentStatus::{self, *};
use sagapay_e2e::{eventually, TestStack};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_settles_with_the_exact_timeline_balanced_ledger_and_one_notification() {
    let stack = TestStack::spawn().await;
    let (status, created) = stack
        .create_payment(json!({
            "customer_id": "cust-1", "amount_cents": 2500, "currency": "USD",
            "idempotency_key": "happy-1"
        }))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["status"], "CREATED");
    let payment_id = created["payment_id"]
        .as_str()
        .expect("payment_id")
        .to_owned();

    let payment = stack
        .wait_for(&payment_id, Settled, Duration::from_secs(30))
        .await;
    assert_eq!(payment.amount_cents.get(), 2500);
    assert_eq!(payment.currency.as_str(), "USD");
    let steps: Vec<(Option<PaymentStatus>, PaymentStatus)> = payment
        .timeline
        .iter()
        .map(|t| (t.from_state, t.to_state))
        .collect();
    let expected = [
        (None, Created),
        (Some(Created), Approved),
        (Some(Approved), Authorized),
        (Some(Authorized), Captured),
        (Some(Captured), Settled),
    ];
    assert_eq!(steps, expected);
    // Every transition after creation names the event that caused it.
    for t in &payment.timeline[1..] {
        assert!(t.event_id.is_some(), "{t:?}");
    }

    // Ledger: one journal transaction; debits equal credits equal the amount; the platform
    // fee (2.9 % rounded half up + 30) goes to fee revenue, the rest to the merchant.
    let pid = Uuid::parse_str(&payment_id).unwrap();
    let ledger = stack.db("ledger").await;
    let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT e.account_id, e.direction, e.amount_minor, e.currency
           FROM ledger_entries e JOIN journal_transactions t USING (transaction_id)
          WHERE t.payment_id = $1 ORDER BY e.account_id",
    )
    .bind(pid)
    .fetch_all(&ledger)
    .await
    .unwrap();
    let shape: Vec<(String, &str, i64)> = rows
        .iter()
        .map(|(a, d, m, _)| (a.split(':').nth(1).unwrap().to_owned(), d.as_str(), *m))
        .collect();
    assert_eq!(
        shape,
        vec![
            ("fee_revenue".to_owned(), "CREDIT", 103),
            ("merchant_payable".to_owned(), "CREDIT", 2397),
            ("provider_clearing".to_owned(), "DEBIT", 2500),
        ]
    );
    assert!(rows.iter().all(|r| r.3 == "USD"));
    let journal_count: i64 = sagapay_e2e::count_rows(
        &ledger,
        "SELECT count(*) FROM journal_transactions WHERE payment_id = $1",
        pid,
    )
    .await;
    assert_eq!(journal_count, 1);

    // Exactly one notification, once the finalized event has been handled.
    let notification = stack.db("notification").await;
    let count_notifications = || async {
        sagapay_e2e::count_rows(
            &notification,
            "SELECT count(*) FROM notifications WHERE payment_id = $1",
            pid,
        )
        .await
    };
    eventually(Duration::from_secs(15), "the notification", || async {
        (count_notifications().await > 0).then_some(())
    })
    .await;
    // Counted again once nothing is in flight: a duplicate a moment later would show.
    stack.wait_quiet().await;
    assert_eq!(count_notifications().await, 1);
    assert_eq!(
        sagapay_e2e::count_rows(
            &ledger,
            "SELECT count(*) FROM journal_transactions WHERE payment_id = $1",
            pid,
        )
        .await,
        1
    );
    let kind: String = sqlx::query_scalar("SELECT kind FROM notifications WHERE payment_id = $1")
        .bind(pid)
        .fetch_one(&notification)
        .await
        .unwrap();
    assert_eq!(kind, "payment.settled");

    // Risk consumed the settled payment's payments.finalized without a transaction: it feeds
    // only the failure counts, so it left no inbox row.
    eventually(
        Duration::from_secs(15),
        "risk to consume payments.finalized",
        || async {
            let consumed = stack
                .metric(
                    "risk",
                    "events_consumed_total{event_type=\"payments.finalized\",service=\"risk\"}",
                )
                .await;
            (consumed >= 1.0).then_some(())
        },
    )
    .await;
    let risk = stack.db("risk").await;
    let finalized_in_inbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_type = 'payments.finalized'")
            .fetch_one(&risk)
            .await
            .unwrap();
    assert_eq!(finalized_in_inbox, 0);

    // The same idempotency key answers the same payment.
    let (status, again) = stack
        .create_payment(json!({
            "customer_id": "cust-1", "amount_cents": 2500, "currency": "USD",
            "idempotency_key": "happy-1"
        }))
        .await;
    assert_eq!(status, 201);
    assert_eq!(again["payment_id"], payment_id.as_str());

    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_reports_health_readiness_and_metrics() {
    let stack = TestStack::spawn().await;
    for service in sagapay_e2e::SERVICES {
        let base = stack.service_url(service);
        for path in ["/health", "/ready"] {
            let resp = stack
                .http
                .get(format!("{base}{path}"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{service}{path}");
        }
        let metrics = sagapay_e2e::metrics_text(&stack.http, &base).await;
        assert!(
            metrics.contains("http_requests_total"),
            "{service} exposes HTTP metrics"
        );
    }
    stack.teardown().await;
}
