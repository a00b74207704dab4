//! Every action an operator takes through the console is written to `operator_actions`: who,
//! what, on what, why, and how it ended (the operation's answer or its refusal). The row is
//! written before the action runs (an action that cannot be recorded is not done) and
//! completed after it; the table keeps rows as written (a trigger refuses deletes and any
//! change but the completion of a started row).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One recorded action.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Action {
    pub operator: String,
    pub action: String,
    pub target: String,
    pub reason: String,
    pub outcome: String,
    pub succeeded: bool,
    pub at: DateTime<Utc>,
}

/// Records `action` on `target` by `operator` as started, runs `run`, then records how it
/// ended, and passes its result on. Nothing runs if the start cannot be recorded; an ending
/// that cannot be recorded is logged (the row stays `started`) and the result still shown
/// (a key just made must reach its operator).
pub async fn record<T>(
    pool: &PgPool,
    operator: &str,
    action: &str,
    target: &str,
    reason: &str,
    run: impl std::future::Future<Output = anyhow::Result<T>>,
    describe: impl FnOnce(&T) -> String,
) -> anyhow::Result<T> {
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO operator_actions (operator, action, target, reason, outcome, succeeded)
         VALUES ($1, $2, $3, $4, 'started', false) RETURNING action_id",
    )
    .bind(operator)
    .bind(action)
    .bind(target)
    .bind(reason)
    .fetch_one(pool)
    .await
    .map_err(|e| anyhow::Error::new(e).context("not done: the action could not be recorded"))?;
    let result = run.await;
    let (outcome, succeeded) = match &result {
        Ok(v) => (describe(v), true),
        Err(e) => (format!("{e:#}"), false),
    };
    let ended = sqlx::query(
        "UPDATE operator_actions SET outcome = $2, succeeded = $3 WHERE action_id = $1",
    )
    .bind(id)
    .bind(&outcome)
    .bind(succeeded)
    .execute(pool)
    .await;
    if let Err(e) = ended {
        tracing::error!(action_id = id, operator, action, target, outcome, error = %e,
            "an operator's action ran but its ending could not be recorded");
    }
    result
}

/// The newest recorded actions, optionally of one target.
pub async fn recent(
    pool: &PgPool,
    target: Option<&str>,
    limit: i64,
) -> anyhow::Result<Vec<Action>> {
    Ok(sqlx::query_as(
        "SELECT operator, action, target, reason, outcome, succeeded, at FROM operator_actions
          WHERE ($1::text IS NULL OR target = $1)
          ORDER BY action_id DESC LIMIT $2",
    )
    .bind(target)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}
