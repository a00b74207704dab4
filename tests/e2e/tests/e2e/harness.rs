//! The test harness itself: a stack whose test fails (or returns early) leaves nothing behind.

use sagapay_e2e::TestStack;
use sqlx::postgres::PgPoolOptions;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stack_dropped_without_teardown_leaves_no_database() {
    let stack = TestStack::spawn().await;
    let prefix = format!("{}_", stack.ns.as_str());
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&sagapay_messaging::postgres_url::with_database(
            &sagapay_e2e::postgres_server_url(),
            "postgres",
        ))
        .await
        .unwrap();
    let count = || {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_database WHERE starts_with(datname, $1)",
        )
        .bind(&prefix)
        .fetch_one(&admin)
    };
    assert_eq!(count().await.unwrap(), 6, "the stack's six databases");
    drop(stack);
    assert_eq!(count().await.unwrap(), 0, "left behind by a dropped stack");
}
