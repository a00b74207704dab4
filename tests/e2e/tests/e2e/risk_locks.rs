//! Risk decides a customer's payments one at a time: an advisory lock per merchant and
//! customer, held until the consumer's transaction commits. A transaction holds a whole batch
//! of payments (up to 32 per lane), and the consumer runs several lanes at once, so two
//! lanes whose batches reach the same customers in different orders ([X, Y] and [Y, X]) wait
//! for each other until PostgreSQL's deadlock detector kills one (after `deadlock_timeout`,
//! a second); the batch is then split and done again. Risk takes a batch's locks up front,
//! all in one order, so lanes can wait for each other but never in a circle.
//!
//! How the test makes crossing batches: risk is stopped while 240 payments of six customers
//! (two merchants' `cust-a`, `cust-b`, `cust-c`) are created, so their `payments.requested`
//! wait on the risk topic; the risk started again finds the backlog and its three lanes (the
//! test configuration's) take it in batches of up to 32, each batch with all six customers in
//! an order of its own (a payment's lane is its id's hash). The deadlocks are PostgreSQL's
//! count for risk's database (`pg_stat_database`), read before and after; its sessions are
//! ended before the second read, since a session reports its counts when it ends at the
//! latest. With locks taken per payment in arrival order, every run of this test counted
//! deadlocks (3 to 10 in each of six runs); a check that batches did mix customers guards
//! against a test that passes because nothing crossed.

use futures::StreamExt;
use sagapay_e2e::{eventually, metric_at, TestStack};
use serde_json::json;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(120);
const CUSTOMERS: [&str; 3] = ["cust-a", "cust-b", "cust-c"];
const PER_CUSTOMER: usize = 40;

/// Deadlocks PostgreSQL counted in database `db` (read from the server's `postgres` database).
async fn deadlocks(admin: &PgPool, db: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(deadlocks, 0)::bigint FROM pg_stat_database WHERE datname = $1",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .expect("pg_stat_database")
}

/// Ends every session on `db` and waits until none is left: a session flushes its statistics
/// (the deadlocks it hit among them) before it leaves `pg_stat_activity`.
async fn end_sessions(admin: &PgPool, db: &str) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(db)
    .execute(admin)
    .await
    .expect("terminate risk's sessions");
    eventually(WAIT, "no session left on risk's database", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = $1")
                .bind(db)
                .fetch_one(admin)
                .await
                .ok()?;
        (left == 0).then_some(())
    })
    .await;
}

/// Creates a payment for the merchant of `api_key`; its id.
async fn create(stack: &TestStack, api_key: &str, customer: &str, key: &str) -> Uuid {
    let resp = stack
        .http
        .post(format!("{}/payments", stack.gateway_url()))
        .header("x-api-key", api_key)
        .json(&json!({
            "customer_id": customer, "amount_cents": 1500, "currency": "USD",
            "idempotency_key": key
        }))
        .send()
        .await
        .expect("POST /payments");
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.expect("JSON body");
    assert_eq!(status, 201, "{body}");
    body["payment_id"].as_str().unwrap().parse().unwrap()
}

/// The payments, created while risk is stopped: blocks of the six customers, every other
/// block in reverse, 8 requests at a time. Returns `(payment, merchant, customer)`.
async fn create_backlog(
    stack: &TestStack,
    merchants: &[(Uuid, String)],
) -> Vec<(Uuid, Uuid, &'static str)> {
    let mut pairs: Vec<(usize, &'static str)> = Vec::new();
    for m in 0..merchants.len() {
        pairs.extend(CUSTOMERS.iter().map(|c| (m, *c)));
    }
    let order: Vec<(usize, &'static str)> = (0..PER_CUSTOMER)
        .flat_map(|block| {
            let mut b = pairs.clone();
            if block % 2 == 1 {
                b.reverse();
            }
            b
        })
        .collect();
    futures::stream::iter(order.into_iter().enumerate())
        .map(|(i, (m, customer))| async move {
            let (merchant, key) = &merchants[m];
            let pid = create(stack, key, customer, &format!("lock-{i}")).await;
            (pid, *merchant, customer)
        })
        .buffer_unordered(8)
        .collect()
        .await
}

/// Stops the stack's risk service: what is sent to it waits on its topic.
async fn stop_risk(stack: &mut TestStack) {
    let at = stack
        .others
        .iter()
        .position(|h| h.service == sagapay_risk::SERVICE)
        .expect("risk running");
    let risk = stack.others.remove(at);
    risk.stop().await.expect("risk stops cleanly");
}

/// Waits until the orchestrator has published `total` payment requests.
async fn wait_published(stack: &TestStack, total: i64) {
    let orchestrator = stack.db("orchestrator").await;
    eventually(
        WAIT,
        "every payments.requested on the risk topic",
        || async {
            let published: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox
              WHERE event_type = 'payments.requested' AND published_at IS NOT NULL",
            )
            .fetch_one(&orchestrator)
            .await
            .ok()?;
            (published == total).then_some(())
        },
    )
    .await;
}

/// Waits for `total` decisions: `(payment, merchant, customer, payments_last_hour)` each.
async fn decisions(pool: &PgPool, total: i64) -> Vec<(Uuid, Uuid, String, i64)> {
    eventually(WAIT, "a risk decision for every payment", || async {
        let rows: Vec<(Uuid, Uuid, String, i64)> = sqlx::query_as(
            "SELECT payment_id, merchant_id, customer_id,
                    (inputs -> 'inputs' ->> 'payments_last_hour')::bigint
               FROM risk_decisions",
        )
        .fetch_all(pool)
        .await
        .ok()?;
        (rows.len() as i64 >= total).then_some(rows)
    })
    .await
}

/// What the test needs to mean anything: transactions that decided several customers'
/// payments (a transaction's decisions share its `now()`).
async fn assert_batches_crossed(pool: &PgPool) {
    let crossing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT decided_at FROM risk_decisions GROUP BY decided_at
                                HAVING count(DISTINCT (merchant_id, customer_id)) > 1) AS t",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(
        crossing >= 2,
        "only {crossing} transactions decided several customers at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crossing_batches_of_customers_never_deadlock() {
    let mut stack = TestStack::spawn_with(sagapay_e2e::StackOptions {
        // Every payment waits for risk at once: nothing of the pipeline may refuse them.
        admission_max_in_flight: Some(0),
        ..Default::default()
    })
    .await;
    let merchants = vec![stack.merchant("north").await, stack.merchant("south").await];
    let risk_db = stack.ns.database(sagapay_risk::SERVICE);
    let admin = stack.admin_pool().await;
    let before = deadlocks(&admin, &risk_db).await;
    stop_risk(&mut stack).await;
    let payments = create_backlog(&stack, &merchants).await;
    let total = payments.len() as i64;
    wait_published(&stack, total).await;

    let risk = sagapay_risk::start(sagapay_risk::Config::for_test(
        stack.options.config(sagapay_risk::SERVICE, &stack.ns),
    ))
    .await
    .expect("risk starts again");
    let pool = stack.db(sagapay_risk::SERVICE).await;
    let decided = decisions(&pool, total).await;
    assert_decided_once_each_in_turn(&payments, &decided);
    assert_batches_crossed(&pool).await;
    let counted = "risk_deadlocks_total{service=\"risk\"}";
    let counted = metric_at(&stack.http, &risk.base_url(), counted).await;
    assert_eq!(counted, 0.0, "deadlocks counted by risk");

    pool.close().await;
    risk.stop().await.expect("risk stops cleanly");
    end_sessions(&admin, &risk_db).await;
    let after = deadlocks(&admin, &risk_db).await;
    assert_eq!(
        after - before,
        0,
        "deadlocks in risk's database while it decided {total} payments"
    );
    stack.teardown().await;
}

/// Every payment has exactly one decision, and each customer's decisions counted
/// 1, 2, … n payments in the last hour: they were taken one at a time.
fn assert_decided_once_each_in_turn(
    payments: &[(Uuid, Uuid, &'static str)],
    decided: &[(Uuid, Uuid, String, i64)],
) {
    let created: BTreeSet<Uuid> = payments.iter().map(|p| p.0).collect();
    let decided_ids: Vec<Uuid> = decided.iter().map(|d| d.0).collect();
    let distinct: BTreeSet<Uuid> = decided_ids.iter().copied().collect();
    assert_eq!(distinct.len(), decided_ids.len(), "a payment decided twice");
    assert_eq!(
        distinct, created,
        "decided payments differ from those created"
    );
    let mut counts: BTreeMap<(Uuid, &str), Vec<i64>> = BTreeMap::new();
    for (_, merchant, customer, seen) in decided {
        counts
            .entry((*merchant, customer.as_str()))
            .or_default()
            .push(*seen);
    }
    assert_eq!(counts.len(), 6, "six customers: {:?}", counts.keys());
    for (customer, mut seen) in counts {
        seen.sort_unstable();
        let expected: Vec<i64> = (1..=PER_CUSTOMER as i64).collect();
        assert_eq!(seen, expected, "counts seen by {customer:?}'s decisions");
    }
}
