//! The `refunds` table: merchant refunds of a settled payment, read and admitted here (the
//! HTTP handler decides, this module only reads and writes).

use sagapay_domain::{AmountMinor, Currency, IdempotencyKey, RefundReason, RefundStatus};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// The API's view of a refund.
pub use sagapay_api_models::Refund as RefundView;

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
            status: r.try_get("status")?,
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
          WHERE payment_id = $1 AND status <> $2",
    )
    .bind(payment_id)
    .bind(RefundStatus::Failed)
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
    .bind(new.amount)
    .bind(new.currency)
    .bind(new.reason.as_str())
    .bind(new.idempotency_key.as_str())
    .bind(new.request_fingerprint)
    .bind(new.deadline.as_secs_f64())
    .fetch_one(conn)
    .await?;
    Ok(from_row(&row)?.view)
}

/// What the saga checks a provider's refund answer against.
pub struct RequestedRefund {
    pub status: RefundStatus,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

/// Locks the refund of `payment_id` and returns what was requested, if it exists.
pub async fn lock(
    conn: &mut PgConnection,
    refund_id: Uuid,
    payment_id: Uuid,
) -> sqlx::Result<Option<RequestedRefund>> {
    let row: Option<(RefundStatus, AmountMinor, Currency)> = sqlx::query_as(
        "SELECT status, amount_minor, currency FROM refunds
          WHERE refund_id = $1 AND payment_id = $2 FOR UPDATE",
    )
    .bind(refund_id)
    .bind(payment_id)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(status, amount_minor, currency)| RequestedRefund {
        status,
        amount_minor,
        currency,
    }))
}

/// The provider refunded it: PROCESSED, waiting for the ledger's posting until `deadline`.
pub async fn mark_processed(
    conn: &mut PgConnection,
    refund_id: Uuid,
    provider_reference: &str,
    deadline: std::time::Duration,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refunds SET status = $4, provider_reference = $2, updated_at = now(),
                            deadline_at = now() + make_interval(secs => $3), nudges = 0,
                            attention_since = NULL, attention_reason = NULL
          WHERE refund_id = $1",
    )
    .bind(refund_id)
    .bind(provider_reference)
    .bind(deadline.as_secs_f64())
    .bind(RefundStatus::Processed)
    .execute(conn)
    .await?;
    Ok(())
}

/// A refund posted in the ledger.
pub struct PostedRefund {
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub reason: String,
}

/// The ledger posted the PROCESSED refund: SUCCEEDED. `None` when it was not PROCESSED (a
/// stale or repeated posting).
pub async fn mark_succeeded(
    conn: &mut PgConnection,
    refund_id: Uuid,
    payment_id: Uuid,
    journal_transaction_id: Uuid,
) -> sqlx::Result<Option<PostedRefund>> {
    let row: Option<(AmountMinor, Currency, String)> = sqlx::query_as(
        "UPDATE refunds SET status = $4, journal_transaction_id = $2, updated_at = now(),
                            deadline_at = NULL, attention_since = NULL, attention_reason = NULL
          WHERE refund_id = $1 AND payment_id = $3 AND status = $5
      RETURNING amount_minor, currency, reason",
    )
    .bind(refund_id)
    .bind(journal_transaction_id)
    .bind(payment_id)
    .bind(RefundStatus::Succeeded)
    .bind(RefundStatus::Processed)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(amount_minor, currency, reason)| PostedRefund {
        amount_minor,
        currency,
        reason,
    }))
}

/// What the payment's succeeded refunds add up to.
pub async fn succeeded_minor(conn: &mut PgConnection, payment_id: Uuid) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM refunds
          WHERE payment_id = $1 AND status = $2",
    )
    .bind(payment_id)
    .bind(RefundStatus::Succeeded)
    .fetch_one(conn)
    .await
}

/// The provider never told whether a REQUESTED refund happened: flagged for an operator, left
/// REQUESTED (so it keeps counting against what is left to refund).
pub async fn flag_outcome_unknown(
    conn: &mut PgConnection,
    refund_id: Uuid,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refunds SET attention_since = COALESCE(attention_since, now()),
                            attention_reason = $2, updated_at = now()
          WHERE refund_id = $1 AND status = $3",
    )
    .bind(refund_id)
    .bind(reason)
    .bind(RefundStatus::Requested)
    .execute(conn)
    .await?;
    Ok(())
}

/// The provider refused a REQUESTED refund: it did not happen, so it fails and no longer
/// counts against what is left to refund.
pub async fn mark_failed(
    conn: &mut PgConnection,
    refund_id: Uuid,
    reason: &str,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refunds SET status = $3, failure_reason = $2, updated_at = now(),
                            deadline_at = NULL, attention_since = NULL, attention_reason = NULL
          WHERE refund_id = $1 AND status = $4",
    )
    .bind(refund_id)
    .bind(reason)
    .bind(RefundStatus::Failed)
    .bind(RefundStatus::Requested)
    .execute(conn)
    .await?;
    Ok(())
}

/// The payment's refunds still in flight (REQUESTED or PROCESSED), locked.
pub async fn lock_in_flight(conn: &mut PgConnection, payment_id: Uuid) -> sqlx::Result<Vec<Uuid>> {
    sqlx::query_scalar(
        "SELECT refund_id FROM refunds WHERE payment_id = $1 AND status IN ($2, $3)
          FOR UPDATE",
    )
    .bind(payment_id)
    .bind(RefundStatus::Requested)
    .bind(RefundStatus::Processed)
    .fetch_all(conn)
    .await
}
