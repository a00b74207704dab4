//! The services' connection pools on a real PostgreSQL. They skip sqlx's ping before each
//! checkout and, with the vendored patch (`vendor/README.md`), on each release; a connection
//! that dies in the pool must still leave it instead of failing every statement it is given.

use sagapay_e2e::{cleanup_namespace, config, eventually, fresh_namespace};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use std::time::Duration;

async fn backend_pid(pool: &PgPool) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(pool)
        .await
}

/// The pool's only connection is terminated by the server (as a PostgreSQL restart or an
/// administrator would) while a statement runs on it: that statement fails with the server's
/// FATAL message. The next statement given the connection fails on its closed socket, and
/// then the pool connects anew. Before the patch's fix the dead connection went back to the
/// pool untested after each failure (nothing was left to send, no transaction was open) and
/// every statement failed on it until its idle timeout. (A connection terminated while idle
/// was always replaced: the next statement's write fails, and a connection with unsent bytes
/// is tested on release.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_died_in_the_pool_is_replaced() {
    let ns = fresh_namespace();
    let mut common = config("provider-adapter", &ns);
    common.db_pool_size = 1;
    let pool = sagapay_service_kit::db::prepare(&common, refinery::Runner::new(&[]))
        .await
        .unwrap();
    let admin = PgPool::connect(common.database_url().expose_secret())
        .await
        .unwrap();
    let dead = backend_pid(&pool).await.unwrap();
    let sleeping = tokio::spawn({
        let pool = pool.clone();
        async move { sqlx::query("SELECT pg_sleep(30)").execute(&pool).await }
    });
    eventually(Duration::from_secs(10), "the statement to run", || async {
        let running: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE pid = $1 AND state = 'active' AND query LIKE '%pg_sleep%')",
        )
        .bind(dead)
        .fetch_one(&admin)
        .await
        .unwrap();
        running.then_some(())
    })
    .await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(dead)
        .fetch_one(&admin)
        .await
        .unwrap();
    assert!(terminated);
    let interrupted = sleeping
        .await
        .unwrap()
        .expect_err("the statement was terminated");
    assert!(
        interrupted.to_string().contains("terminating connection"),
        "{interrupted}"
    );
    let mut failures = 0;
    let fresh = loop {
        match backend_pid(&pool).await {
            Ok(pid) => break pid,
            Err(error) => {
                failures += 1;
                assert!(
                    failures <= 2,
                    "the dead connection was handed out again: {error}"
                );
            }
        }
    };
    assert_ne!(fresh, dead);
    pool.close().await;
    admin.close().await;
    cleanup_namespace(&ns).await;
}
