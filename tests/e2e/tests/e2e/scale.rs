//! Several instances of every service in one namespace: they share the work, and losing one
//! of each in the middle of a run loses nothing.

use sagapay_e2e::{eventually, fresh_namespace, Processes, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const CONSUMERS: [&str; 5] = [
    "orchestrator",
    "risk",
    "provider-adapter",
    "ledger",
    "notification",
];

/// Events a service instance consumed, all types together.
async fn consumed(http: &reqwest::Client, base: &str) -> f64 {
    let text = sagapay_e2e::metrics_text(http, base).await;
    sagapay_e2e::metric_samples(&text, "events_consumed_total", "")
        .iter()
        .sum()
}

/// Creates a payment through `gateway`, or through `fallback` when `gateway` does not answer
/// (the same idempotency key: one payment either way); its id.
async fn pay(http: &reqwest::Client, gateway: &str, fallback: &str, key: &str) -> String {
    let body = json!({"customer_id": format!("cust-{key}"), "amount_cents": 1_000,
                      "currency": "USD", "idempotency_key": key});
    for base in [gateway, fallback, fallback] {
        let sent = http
            .post(format!("{base}/payments"))
            .header("x-api-key", DEV_API_KEY)
            .json(&body)
            .send()
            .await;
        if let Ok(resp) = sent {
            if resp.status() == 201 {
                let created: Value = resp.json().await.unwrap();
                return created["payment_id"].as_str().unwrap().to_owned();
            }
        }
    }
    panic!("payment {key} could not be created");
}

async fn status(http: &reqwest::Client, gateway: &str, pid: &str) -> String {
    let p: Value = http
        .get(format!("{gateway}/payments/{pid}"))
        .header("x-api-key", DEV_API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    p["status"].as_str().unwrap_or_default().to_owned()
}

/// Two instances of every service, four partitions per channel. Under load each consuming
/// service's instances each handle at least a quarter of its events. Then instance 2 of every
/// service is killed (SIGKILL) in the middle of a run and started again: it is consuming again
/// within 3 s of being ready (static membership gives its partitions back), and every payment
/// ends SETTLED with one capture at the provider, one posting and one notification, counted
/// once the stack is quiet; the books balance and reconcile, every payment compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_the_work_and_losing_one_of_each_loses_nothing() {
    let ns = fresh_namespace();
    let http = reqwest::Client::new();
    let mut procs = Processes::with_instances(ns.clone(), &[("SAGAPAY_KAFKA_PARTITIONS", "4")], 2);
    procs.start_all();
    procs.wait_all_ready(&http).await;
    let (gw1, gw2) = (procs.url_of("gateway", 1), procs.url_of("gateway", 2));

    // Shared work.
    let mut pids = Vec::new();
    for i in 0..120 {
        let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
        pids.push(pay(&http, gw, &gw1, &format!("share-{i}")).await);
    }
    for pid in &pids {
        eventually(Duration::from_secs(60), "settled", || async {
            (status(&http, &gw1, pid).await == "SETTLED").then_some(())
        })
        .await;
    }
    for svc in CONSUMERS {
        let (a, b) = (
            consumed(&http, &procs.url_of(svc, 1)).await,
            consumed(&http, &procs.url_of(svc, 2)).await,
        );
        assert!(
            a >= 0.25 * (a + b) && b >= 0.25 * (a + b),
            "{svc}: instance 1 consumed {a}, instance 2 {b}"
        );
    }

    // Losing one of each in the middle of a run.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    let mut run = Vec::new();
    for i in 0..40 {
        pace.tick().await;
        run.push(
            pay(
                &http,
                if i % 2 == 0 { &gw1 } else { &gw2 },
                &gw1,
                &format!("kill-{i}"),
            )
            .await,
        );
    }
    for svc in sagapay_e2e::SERVICES {
        procs.kill_instance(svc, 2);
    }
    for i in 40..60 {
        pace.tick().await;
        run.push(pay(&http, &gw1, &gw1, &format!("kill-{i}")).await);
    }
    for svc in sagapay_e2e::SERVICES {
        procs.start_instance(svc, 2);
    }
    for svc in sagapay_e2e::SERVICES {
        procs.wait_ready_instance(&http, svc, 2).await;
    }
    let ready_at = Instant::now();
    let load = {
        let (http, gw1, gw2) = (http.clone(), gw1.clone(), gw2.clone());
        tokio::spawn(async move {
            let mut made = Vec::new();
            let mut pace = tokio::time::interval(Duration::from_millis(50));
            for i in 60..140 {
                pace.tick().await;
                let gw = if i % 2 == 0 { &gw1 } else { &gw2 };
                made.push(pay(&http, gw, &gw1, &format!("kill-{i}")).await);
            }
            made
        })
    };
    for svc in CONSUMERS {
        let url = procs.url_of(svc, 2);
        let consuming = eventually(
            Duration::from_secs(20),
            "instance 2 consuming again",
            || async { (consumed(&http, &url).await > 0.0).then(|| ready_at.elapsed()) },
        )
        .await;
        assert!(
            consuming <= Duration::from_secs(3),
            "{svc}/2 consumed its first event {consuming:?} after it was ready"
        );
    }
    run.extend(load.await.unwrap());
    for pid in &run {
        eventually(
            Duration::from_secs(90),
            "settled after the kill",
            || async { (status(&http, &gw1, pid).await == "SETTLED").then_some(()) },
        )
        .await;
    }
    let db = |service: &'static str| {
        let url = sagapay_e2e::config(service, &ns).database_url();
        async move {
            sqlx::postgres::PgPoolOptions::new()
                .max_connections(1)
                .connect(secrecy::ExposeSecret::expose_secret(&url))
                .await
                .unwrap()
        }
    };
    // Counted once the stack is quiet (every instance's outbox published, every consumer at
    // the end of its channels): a duplicate arriving a moment after the last payment settled
    // would otherwise pass unseen.
    let mut services = Vec::new();
    for i in 1..=2 {
        for s in sagapay_e2e::SERVICES {
            services.push((s, procs.url_of(s, i), db(s).await));
        }
    }
    sagapay_e2e::wait_quiet(&http, &services).await;
    let (provider, ledger, notification) = (
        db("provider-adapter").await,
        db("ledger").await,
        db("notification").await,
    );
    let ids: Vec<uuid::Uuid> = pids
        .iter()
        .chain(&run)
        .map(|p| uuid::Uuid::parse_str(p).unwrap())
        .collect();
    let once = |pool: &sqlx::PgPool, sql: &'static str| {
        let (ids, pool) = (ids.clone(), pool.clone());
        async move {
            let counts: Vec<(uuid::Uuid, i64)> = sqlx::query_as(sql)
                .bind(&ids)
                .fetch_all(&pool)
                .await
                .unwrap();
            assert_eq!(counts.len(), ids.len(), "{sql}");
            assert!(counts.iter().all(|(_, n)| *n == 1), "{sql}: {counts:?}");
        }
    };
    once(
        &provider,
        "SELECT payment_id, count(*) FROM simulated_provider_operations
          WHERE payment_id = ANY($1) AND operation = 'CAPTURE' GROUP BY payment_id",
    )
    .await;
    once(
        &ledger,
        "SELECT payment_id, count(*) FROM journal_transactions
          WHERE payment_id = ANY($1) AND posting_kind = 'CAPTURE' GROUP BY payment_id",
    )
    .await;
    once(
        &notification,
        "SELECT payment_id, count(*) FROM notifications
          WHERE payment_id = ANY($1) GROUP BY payment_id",
    )
    .await;
    // The books: every journal transaction balances, and each payment's capture moved its
    // amount once (entries written twice inside one posting balance too, so the amount is
    // counted, not only the postings).
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY transaction_id
          HAVING sum(CASE direction WHEN 'DEBIT' THEN amount_minor ELSE -amount_minor END) <> 0) u",
    )
    .fetch_one(&ledger)
    .await
    .unwrap();
    assert_eq!(unbalanced, 0, "every journal transaction balances");
    let moved: Vec<(uuid::Uuid, i64)> = sqlx::query_as(
        "SELECT t.payment_id, sum(e.amount_minor)::bigint
           FROM journal_transactions t JOIN ledger_entries e USING (transaction_id)
          WHERE t.payment_id = ANY($1) AND e.account_id = 'USD:provider_clearing'
            AND e.direction = 'DEBIT'
          GROUP BY t.payment_id",
    )
    .bind(&ids)
    .fetch_all(&ledger)
    .await
    .unwrap();
    assert_eq!(moved.len(), ids.len(), "every payment posted");
    let wrong: Vec<_> = moved
        .iter()
        .filter(|(_, amount)| *amount != 1_000)
        .collect();
    assert!(
        wrong.is_empty(),
        "each capture debits the provider's clearing account its amount (1,000) once; {} of {} \
         do not: {wrong:?}",
        wrong.len(),
        moved.len()
    );
    // Reconciliation compares every payment made, none left out as still moving.
    let report = sagapay_e2e::reconcile(&ns).await;
    sagapay_e2e::assert_reconciled(&report, ids.len());
    drop(procs);
    sagapay_e2e::cleanup_namespace(&ns).await;
}
