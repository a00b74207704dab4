//! Every action an operator takes through the console is written to `operator_actions`: who,
//! what, on what, why, and how it ended (the operation's answer or its refusal). The row is
//! written before the answer is shown; an action whose record cannot be written is reported
//! as such to the operator.

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

/// Records `action` on `target` by `operator`, and passes its result on.
pub async fn record<T>(
    pool: &PgPool,
    operator: &str,
    action: &str,
    target: &str,
    reason: &str,
    result: anyhow::Result<T>,
    describe: impl FnOnce(&T) -> String,
) -> anyhow::Result<T> {
    let (outcome, succeeded) = match &result {
        Ok(v) => (describe(v), true),
        Err(e) => (format!("{e:#}"), false),
    };
    sqlx::query(
        "INSERT INTO operator_actions (operator, action, target, reason, outcome, succeeded)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(operator)
    .bind(action)
    .bind(target)
    .bind(reason)
    .bind(&outcome)
    .bind(succeeded)
    .execute(pool)
    .await
    .map_err(|e| anyhow::anyhow!("the action ran ({outcome}) but could not be recorded: {e}"))?;
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
