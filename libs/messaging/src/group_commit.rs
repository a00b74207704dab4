//! Group commit: the writes of concurrent tasks that finish at about the same moment share one
//! transaction and one commit, instead of one commit each.
//!
//! Why: a commit is a WAL flush, and a commit that inserts outbox or operation rows wakes a
//! relay or a worker, which then claims what that one commit wrote. The provider worker ends
//! its operations in up to 64 concurrent tasks; written one commit per result, the relay
//! claimed one row per claim (6,012 claims for 6,000 rows in a run of 3,000 payments).
//!
//! How: a task [`GroupCommit::join`]s the open group (beginning it when there is none), writes
//! with the group's connection while it holds it alone, and then awaits the group's commit
//! ([`Member::written`]). A committer takes the open group as soon as it can (writers queued
//! before it still join: the lock is fair) and commits it; writers that come while it commits
//! begin the next group. Under no load a group has one member and commits at once.
//!
//! All or nothing per group: a member whose write failed (or that was dropped mid-write, so
//! the connection's state is unknown) fails the group, which is rolled back, and every member
//! is told its write was not made. PostgreSQL would otherwise answer COMMIT of an aborted
//! transaction with a rollback and no error.

use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use std::sync::{Arc, Weak};
use tokio::sync::{watch, Mutex, MutexGuard, Notify};

/// What became of a group: `None` until it is committed or rolled back.
type Outcome = Option<Result<(), Arc<str>>>;

struct Open {
    tx: Transaction<'static, Postgres>,
    /// A member's write failed or was abandoned: the group is rolled back.
    failed: bool,
    done: watch::Sender<Outcome>,
}

struct Inner {
    pool: PgPool,
    open: Mutex<Option<Open>>,
    /// A member finished its write: a group is ready to commit.
    ready: Notify,
}

/// Shares one transaction among the writes of tasks that finish together (see the module).
#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<Inner>,
}

/// A task's place in the open group, holding its connection alone until
/// [`Member::written`] (or dropped: the group then fails).
pub struct Member<'a> {
    inner: &'a Inner,
    guard: Option<MutexGuard<'a, Option<Open>>>,
    done: watch::Receiver<Outcome>,
}

impl GroupCommit {
    /// Groups writes on connections of `pool`; spawns the committer, which ends when the last
    /// clone of this is dropped.
    pub fn new(pool: PgPool) -> Self {
        let inner = Arc::new(Inner {
            pool,
            open: Mutex::new(None),
            ready: Notify::new(),
        });
        tokio::spawn(commit_groups(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Joins the open group, beginning one when there is none.
    pub async fn join(&self) -> sqlx::Result<Member<'_>> {
        let mut guard = self.inner.open.lock().await;
        if guard.as_ref().is_some_and(|g| g.failed) {
            // Its members are told now; nobody joins a group that is rolled back.
            finish(guard.take().expect("checked")).await;
        }
        if guard.is_none() {
            let (done, _) = watch::channel(None);
            let tx = self.inner.pool.begin().await?;
            *guard = Some(Open {
                tx,
                failed: false,
                done,
            });
        }
        let done = guard.as_ref().expect("opened above").done.subscribe();
        Ok(Member {
            inner: &self.inner,
            guard: Some(guard),
            done,
        })
    }
}

impl Member<'_> {
    /// The group's connection, inside its transaction.
    pub fn conn(&mut self) -> &mut PgConnection {
        let open = self.guard.as_mut().and_then(|g| g.as_mut());
        &mut open.expect("a member holds an open group").tx
    }

    /// Ends this member's write: `Ok` if it succeeded, and then waits for the group's commit;
    /// an `Err` fails the whole group (rolled back) and is returned as it was.
    pub async fn written<T>(mut self, write: anyhow::Result<T>) -> anyhow::Result<T> {
        let mut guard = self.guard.take().expect("written once");
        if write.is_err() {
            if let Some(open) = guard.as_mut() {
                open.failed = true;
            }
        }
        drop(guard);
        self.inner.ready.notify_one();
        let value = write?;
        let outcome = self
            .done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| anyhow::anyhow!("the group's transaction was abandoned"))?
            .clone();
        match outcome.expect("waited for it") {
            Ok(()) => Ok(value),
            Err(e) => Err(anyhow::anyhow!("the group's transaction failed: {e}")),
        }
    }
}

impl Drop for Member<'_> {
    fn drop(&mut self) {
        // Dropped before `written` (cancelled mid-write): the connection's state is unknown.
        if let Some(mut guard) = self.guard.take() {
            if let Some(open) = guard.as_mut() {
                open.failed = true;
            }
            drop(guard);
            self.inner.ready.notify_one();
        }
    }
}

/// The committer: takes each group once its writers are done and commits (or rolls back) it.
async fn commit_groups(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        // Waking now and then to see whether the last handle was dropped (then this ends).
        tokio::select! {
            () = strong.ready.notified() => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => continue,
        }
        // Not under the timeout: a notification taken must lead to the group's commit.
        let open = strong.open.lock().await.take();
        drop(strong);
        if let Some(open) = open {
            finish(open).await;
        }
    }
}

/// Commits `open` (or rolls it back when it failed) and tells its members.
async fn finish(open: Open) {
    let outcome: Result<(), Arc<str>> = if open.failed {
        drop(open.tx);
        Err("a write of the group failed; rolled back".into())
    } else {
        open.tx.commit().await.map_err(|e| Arc::from(e.to_string()))
    };
    open.done.send_replace(Some(outcome));
}
