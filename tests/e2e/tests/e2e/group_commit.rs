//! The group commit the provider worker writes its attempts with (`sagapay_messaging::
//! group_commit`), on a real PostgreSQL: writes that end together share one commit, and a
//! group is all or nothing.

use sagapay_e2e::{cleanup_namespace, config, fresh_namespace};
use sagapay_messaging::GroupCommit;
use sqlx::PgPool;

async fn database() -> (sagapay_domain::Namespace, PgPool) {
    let ns = fresh_namespace();
    let common = config("provider-adapter", &ns);
    let pool = sagapay_service_kit::db::prepare(&common, refinery::Runner::new(&[]))
        .await
        .unwrap();
    sqlx::query("CREATE TABLE written (member INTEGER PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    (ns, pool)
}

async fn insert(conn: &mut sqlx::PgConnection, member: i32) -> anyhow::Result<()> {
    sqlx::query("INSERT INTO written (member) VALUES ($1)")
        .bind(member)
        .execute(conn)
        .await?;
    Ok(())
}

async fn members_written(pool: &PgPool) -> Vec<i32> {
    sqlx::query_scalar("SELECT member FROM written ORDER BY member")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Twenty writers that end at once: every write is committed, in fewer commits than writers
/// (each row's `xmin` is the transaction that wrote it). Written one commit each, there would
/// be twenty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_that_end_together_share_a_commit() {
    let (ns, pool) = database().await;
    let group = GroupCommit::new(pool.clone());
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(20));
    let mut tasks = tokio::task::JoinSet::new();
    for member in 0..20 {
        let (group, barrier) = (group.clone(), barrier.clone());
        tasks.spawn(async move {
            barrier.wait().await;
            let mut m = group.join().await.unwrap();
            let write = insert(m.conn(), member).await;
            m.written(write).await
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap().expect("every write is committed");
    }
    assert_eq!(members_written(&pool).await, (0..20).collect::<Vec<_>>());
    let commits: i64 = sqlx::query_scalar("SELECT count(DISTINCT xmin::text) FROM written")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(commits < 20, "20 writes took {commits} commits");
    cleanup_namespace(&ns).await;
}

/// A member whose write fails fails its group: the other member's write in it is rolled back
/// and reported as not made, and the next group commits again. On one thread, so the order
/// is known: the second writer queues for the group while the first writes, before the
/// committer does.
#[tokio::test(flavor = "current_thread")]
async fn a_failed_write_rolls_back_its_whole_group() {
    let (ns, pool) = database().await;
    let group = GroupCommit::new(pool.clone());
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let group = group.clone();
        tokio::spawn(async move {
            let mut m = group.join().await.unwrap();
            let write = insert(m.conn(), 1).await;
            wait.await.unwrap();
            m.written(write).await
        })
    };
    let second = {
        let group = group.clone();
        tokio::spawn(async move {
            let mut m = group.join().await.unwrap();
            let write = async {
                insert(m.conn(), 2).await?;
                sqlx::query("SELECT 1 / 0").execute(m.conn()).await?;
                anyhow::Ok(())
            }
            .await;
            m.written(write).await
        })
    };
    // Both spawned tasks run up to their first wait: the first holds the group, the second
    // waits for it.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    go.send(()).unwrap();
    let second = second.await.unwrap().expect_err("division by zero");
    assert!(second.to_string().contains("division by zero"), "{second}");
    let first = first
        .await
        .unwrap()
        .expect_err("rolled back with its group");
    assert!(first.to_string().contains("rolled back"), "{first}");
    assert_eq!(members_written(&pool).await, Vec::<i32>::new());

    let mut m = group.join().await.unwrap();
    let write = insert(m.conn(), 3).await;
    m.written(write).await.expect("the next group commits");
    assert_eq!(members_written(&pool).await, vec![3]);
    cleanup_namespace(&ns).await;
}

/// A member dropped in the middle of its write (its task cancelled) leaves its connection in
/// an unknown state: its group is rolled back, not committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_abandoned_mid_write_rolls_back_its_group() {
    let (ns, pool) = database().await;
    let group = GroupCommit::new(pool.clone());
    {
        let mut m = group.join().await.unwrap();
        insert(m.conn(), 1).await.unwrap();
        // Dropped without `written`.
    }
    let mut m = group.join().await.unwrap();
    let write = insert(m.conn(), 2).await;
    m.written(write).await.expect("a new group commits");
    assert_eq!(members_written(&pool).await, vec![2]);
    cleanup_namespace(&ns).await;
}
