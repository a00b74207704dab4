//! The `refunds` table: merchant refunds of a settled payment, read and admitted here (the
//! HTTP handler decides, this module only reads and writes).

use chrono::{DateTime, Utc};
use sagapay_domain::{AmountMinor, Currency, IdempotencyKey, RefundReason, RefundStatus};
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

#[derive(Debug, Serialize)]
pub struct RefundView {
    pub refund_id: Uuid,
    pub payment_id: Uuid,
    pub amount_cents: i64,
    pub currency: String,
    pub status: RefundStatus,
    pub reason: String,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A stored refund and the fingerprint of the request that created it.
pub struct StoredRefund {
    pub view: RefundView,
    pub request_fingerprint: String,
}

fn from_row(r: &sqlx::postgres::PgRow) -> sqlx::Result<StoredRefund> {
    Ok(StoredRefund {
        view: RefundView {
            refund_id: r.try_get("refund_id")?,
            payment_id: r.try_get("payment_id")?,
            amount_cents: r.try_get("amount_minor")?,
            currency: r.try_get("currency")?,
            status: {
                let s: String = r.try_get("status")?;
                s.parse()
                    .map_err(|e: sagapay_domain::refund::UnknownRefundStatus| {
                        sqlx::Error::Decode(e.into())
                    })?
            },
            reason: r.try_get("reason")?,
            failure_reason: r.try_get("failure_reason")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        },
        request_fingerprint: r.try_get("request_fingerprint")?,
    })
}

const REFUND_COLUMNS: &str = "refund_id, payment_id, amount_minor, currency, status, reason, \
     failure_reason, created_at, updated_at, request_fingerprint";

/// The payment's refunds, oldest first.
pub async fn list(conn: &mut PgConnection, payment_id: Uuid) -> sqlx::Result<Vec<RefundView>> {
    sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY created_at, refund_id"
    ))
    .bind(payment_id)
    .fetch_all(conn)
    .await?
    .iter()
    .map(|r| from_row(r).map(|s| s.view))
    .collect()
}

/// The refund of `payment_id` created with `key`, if any.
pub async fn by_idempotency_key(
    conn: &mut PgConnection,
    payment_id: Uuid,
    key: &IdempotencyKey,
) -> sqlx::Result<Option<StoredRefund>> {
    sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 AND idempotency_key = $2"
    ))
    .bind(payment_id)
    .bind(key.as_str())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(from_row)
    .transpose()
}

/// What the payment's refunds hold against its captured amount: all but the failed ones
/// (one whose outcome is unknown still counts).
pub async fn committed_minor(conn: &mut PgConnection, payment_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM refunds
          WHERE payment_id = $1 AND status <> 'FAILED'",
    )
    .bind(payment_id)
    .fetch_one(conn)
    .await
}

/// A refund being admitted.
pub struct NewRefund<'a> {
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub amount: AmountMinor,
    pub currency: Currency,
    pub reason: &'a RefundReason,
    pub idempotency_key: &'a IdempotencyKey,
    pub request_fingerprint: &'a str,
    /// When the refund is overdue if it has not succeeded.
    pub deadline: std::time::Duration,
}

/// Inserts the refund (REQUESTED) and returns it as stored.
pub async fn insert(conn: &mut PgConnection, new: NewRefund<'_>) -> sqlx::Result<RefundView> {
    let row = sqlx::query(&format!(
        "INSERT INTO refunds (refund_id, payment_id, merchant_id, amount_minor, currency, reason,
                              idempotency_key, request_fingerprint, deadline_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))
         RETURNING {REFUND_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(new.payment_id)
    .bind(new.merchant_id)
    .bind(new.amount.get())
    .bind(new.currency.as_str())
    .bind(new.reason.as_str())
    .bind(new.idempotency_key.as_str())
    .bind(new.request_fingerprint)
    .bind(new.deadline.as_secs_f64())
    .fetch_one(conn)
    .await?;
    Ok(from_row(&row)?.view)
}
