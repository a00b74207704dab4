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

/// A refund being admitted.
pub struct NewRefund<'a> {
    pub refund_id: Uuid,
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
    .bind(new.refund_id)
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

/// The ledger posted the PROCESSED refund: SUCCEEDED. False when it was not PROCESSED (a
/// stale or repeated posting).
pub async fn mark_succeeded(
    conn: &mut PgConnection,
    refund_id: Uuid,
    payment_id: Uuid,
    journal_transaction_id: Uuid,
) -> sqlx::Result<bool> {
    let row: Option<(Uuid,)> = sqlx::query_as(
        "UPDATE refunds SET status = $4, journal_transaction_id = $2, updated_at = now(),
                            deadline_at = NULL, attention_since = NULL, attention_reason = NULL
          WHERE refund_id = $1 AND payment_id = $3 AND status = $5
      RETURNING refund_id",
    )
    .bind(refund_id)
    .bind(journal_transaction_id)
    .bind(payment_id)
    .bind(RefundStatus::Succeeded)
    .bind(RefundStatus::Processed)
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
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

/// A refund as the saga decides on it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefundRow {
    pub refund_id: Uuid,
    pub status: RefundStatus,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub reason: String,
    pub nudges: i32,
}

/// The payment's refunds, oldest first (the caller holds the payment's lock, which every
/// writer of a refund takes first).
pub async fn rows(conn: &mut PgConnection, payment_id: Uuid) -> sqlx::Result<Vec<RefundRow>> {
    sqlx::query_as(
        "SELECT refund_id, status, amount_minor, currency, reason, nudges FROM refunds
          WHERE payment_id = $1 ORDER BY created_at, refund_id",
    )
    .bind(payment_id)
    .fetch_all(conn)
    .await
}

/// An operator's retry: due again now, its count of re-sends and any flag cleared.
pub async fn rearm(conn: &mut PgConnection, refund_id: Uuid) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refunds SET nudges = 0, attention_since = NULL, attention_reason = NULL,
                            deadline_at = now()
          WHERE refund_id = $1",
    )
    .bind(refund_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// The refund's step sent again after its deadline (`command`, into the outbox), timed
/// again, with the timeline's step, in one statement.
pub async fn resend(
    conn: &mut PgConnection,
    refund_id: Uuid,
    reason: &str,
    deadline: std::time::Duration,
    command: &sagapay_messaging::OutboxRow<'_>,
) -> sqlx::Result<()> {
    let sql = format!(
        "WITH nudged AS (
             UPDATE refunds SET nudges = nudges + 1,
                                deadline_at = now() + make_interval(secs => $2)
              WHERE refund_id = $1 RETURNING payment_id),
         timeline AS (
             INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, kind)
             SELECT n.payment_id, p.status, p.status, $3, 'STEP'
               FROM nudged n JOIN payments p USING (payment_id)),
         queued AS (
             INSERT INTO outbox ({})
             SELECT $4, $5, $6, $7, $8, $9 FROM nudged)
         SELECT count(*) FROM nudged",
        sagapay_messaging::OUTBOX_COLUMNS
    );
    let query = sqlx::query(&sql)
        .bind(refund_id)
        .bind(deadline.as_secs_f64())
        .bind(reason);
    command.bind(query).fetch_one(conn).await?;
    Ok(())
}

/// No answer after every re-send: the refund waits for an operator.
pub async fn flag(conn: &mut PgConnection, refund_id: Uuid, reason: &str) -> sqlx::Result<()> {
    sqlx::query(
        "WITH flagged AS (
             UPDATE refunds SET attention_since = now(), attention_reason = $2
              WHERE refund_id = $1 RETURNING payment_id)
         INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, kind)
         SELECT f.payment_id, p.status, p.status, 'needs attention: ' || $2, 'STEP'
           FROM flagged f JOIN payments p USING (payment_id)",
    )
    .bind(refund_id)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// The refund ended since its deadline was set: nothing waits.
pub async fn clear_deadline(conn: &mut PgConnection, refund_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE refunds SET deadline_at = NULL WHERE refund_id = $1")
        .bind(refund_id)
        .execute(conn)
        .await?;
    Ok(())
}
