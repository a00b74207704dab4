//! What operators do with webhook deliveries (`sagapayctl webhooks`), on the notification
//! database directly: list them with their last attempt, and send one again.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

/// A delivery as operators read it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Delivery {
    pub delivery_id: Uuid,
    pub endpoint_id: Uuid,
    pub merchant_id: Uuid,
    pub url: String,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i32>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// Which deliveries to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub endpoint_id: Option<Uuid>,
    pub merchant_id: Option<Uuid>,
    /// PENDING, DELIVERED or FAILED.
    pub status: Option<String>,
    pub limit: i64,
}

/// The newest deliveries matching `filter`.
pub async fn list(pool: &PgPool, filter: &Filter) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as(
        "SELECT d.delivery_id, d.endpoint_id, e.merchant_id, e.url, d.event_id, ev.event_type,
                d.status::text AS status, d.attempts, d.last_status_code, d.last_error,
                d.last_latency_ms, d.last_attempt_at, d.next_attempt_at, d.created_at
           FROM webhook_deliveries d
           JOIN webhook_endpoints e USING (endpoint_id)
           JOIN merchant_events ev USING (event_id)
          WHERE ($1::uuid IS NULL OR d.endpoint_id = $1)
            AND ($2::uuid IS NULL OR e.merchant_id = $2)
            AND ($3::text IS NULL OR d.status::text = upper($3))
          ORDER BY d.created_at DESC, d.delivery_id DESC
          LIMIT $4",
    )
    .bind(filter.endpoint_id)
    .bind(filter.merchant_id)
    .bind(filter.status.as_deref())
    .bind(filter.limit.clamp(1, 10_000))
    .fetch_all(pool)
    .await
}

/// Sends a delivery again now, whatever became of it (the receiver sees the same event id
/// again); the dispatchers are woken. False when there is no such delivery, or its endpoint
/// was deleted.
pub async fn resend(pool: &PgPool, delivery_id: Uuid) -> sqlx::Result<bool> {
    let updated: Option<(Uuid,)> = sqlx::query_as(
        "WITH again AS (
             UPDATE webhook_deliveries d
                SET status = 'PENDING', next_attempt_at = now(), claimed_until = NULL,
                    delivered_at = NULL
               FROM webhook_endpoints e
              WHERE d.delivery_id = $1 AND e.endpoint_id = d.endpoint_id
                AND e.deleted_at IS NULL
          RETURNING d.delivery_id)
         SELECT delivery_id FROM again, pg_notify('webhook_deliveries', '') AS woken",
    )
    .bind(delivery_id)
    .fetch_optional(pool)
    .await?;
    Ok(updated.is_some())
}
