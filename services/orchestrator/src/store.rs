//! The orchestrator's tables: payments (with compare-and-set transitions) and their timeline.

use chrono::{DateTime, Utc};
use sagapay_domain::{CustomerId, PaymentMethod, PaymentStatus, TextError, TransitionError};
use sagapay_messaging::{OutboxRow, OUTBOX_COLUMNS};
use serde::Serialize;
use sqlx::{PgConnection, Row};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub customer_id: CustomerId,
    pub amount_minor: i64,
    pub currency: String,
    pub status: PaymentStatus,
    pub state_version: i32,
    pub request_fingerprint: String,
    pub payment_method: PaymentMethod,
    pub authorization_id: Option<String>,
    pub capture_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const PAYMENT_COLUMNS: &str =
    "payment_id, merchant_id, customer_id, amount_minor, currency, status, \
     state_version, request_fingerprint, payment_method, authorization_id, capture_id, \
     created_at, updated_at";

/// A text column read as the domain type that parses it.
fn parsed<T>(
    r: &sqlx::postgres::PgRow,
    column: &str,
    parse: fn(String) -> Result<T, TextError>,
) -> sqlx::Result<T> {
    parse(r.try_get(column)?).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: e.into(),
    })
}

fn payment_from_row(r: &sqlx::postgres::PgRow) -> sqlx::Result<PaymentRow> {
    let status: String = r.try_get("status")?;
    Ok(PaymentRow {
        payment_id: r.try_get("payment_id")?,
        merchant_id: r.try_get("merchant_id")?,
        customer_id: parsed(r, "customer_id", CustomerId::parse)?,
        amount_minor: r.try_get("amount_minor")?,
        currency: r.try_get("currency")?,
        status: status
            .parse()
            .map_err(|e: sagapay_domain::state::UnknownStatus| sqlx::Error::Decode(e.into()))?,
        state_version: r.try_get("state_version")?,
        request_fingerprint: r.try_get("request_fingerprint")?,
        payment_method: parsed(r, "payment_method", PaymentMethod::parse)?,
        authorization_id: r.try_get("authorization_id")?,
        capture_id: r.try_get("capture_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    })
}

/// Locks and returns the payment (for a saga step inside a transaction).
pub async fn load_for_update(
    conn: &mut PgConnection,
    payment_id: Uuid,
) -> sqlx::Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1 FOR UPDATE");
    sqlx::query(&sql)
        .bind(payment_id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(payment_from_row)
        .transpose()
}

pub async fn load_by_idempotency_key(
    conn: &mut PgConnection,
    merchant_id: Uuid,
    idempotency_key: &str,
) -> sqlx::Result<Option<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE merchant_id = $1 AND idempotency_key = $2"
    );
    sqlx::query(&sql)
        .bind(merchant_id)
        .bind(idempotency_key)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(payment_from_row)
        .transpose()
}

pub struct NewPayment<'a> {
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub customer_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub idempotency_key: &'a str,
    pub request_fingerprint: &'a str,
    pub correlation_id: &'a str,
    pub payment_method: &'a str,
}

/// Inserts a CREATED payment, its timeline row and its first event's outbox row, in one
/// statement (atomic without a transaction of its own), unless the merchant already used the
/// idempotency key. Returns false when the key was taken (by this request's earlier try, or
/// another request); then nothing was written.
pub async fn insert_payment(
    conn: &mut PgConnection,
    p: &NewPayment<'_>,
    requested: &OutboxRow<'_>,
) -> sqlx::Result<bool> {
    let sql = format!(
        "WITH created AS (
             INSERT INTO payments (payment_id, merchant_id, customer_id, amount_minor, currency,
                                   status, idempotency_key, request_fingerprint, correlation_id,
                                   payment_method)
             VALUES ($1, $2, $3, $4, $5, 'CREATED', $6, $7, $8, $9)
             ON CONFLICT (merchant_id, idempotency_key) DO NOTHING
             RETURNING payment_id),
         timeline AS (
             INSERT INTO payment_timeline (payment_id, from_state, to_state, reason)
             SELECT payment_id, NULL, 'CREATED', 'payment created' FROM created),
         queued AS (
             INSERT INTO outbox ({OUTBOX_COLUMNS})
             SELECT $10, $11, $12, $13, $14, $15 FROM created)
         SELECT count(*) FROM created"
    );
    let query = sqlx::query(&sql)
        .bind(p.payment_id)
        .bind(p.merchant_id)
        .bind(p.customer_id)
        .bind(p.amount_minor)
        .bind(p.currency)
        .bind(p.idempotency_key)
        .bind(p.request_fingerprint)
        .bind(p.correlation_id)
        .bind(p.payment_method);
    let inserted: i64 = requested
        .bind(query)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    debug_assert!(inserted == 0 || inserted == 1);
    Ok(inserted == 1)
}

/// Facts a transition records on the payment besides its status.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub authorization_id: Option<&'a str>,
    pub capture_id: Option<&'a str>,
    pub journal_transaction_id: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionFailure {
    #[error(transparent)]
    Illegal(#[from] TransitionError),
    /// Another writer changed the payment since it was read.
    #[error("payment {0} changed concurrently")]
    Conflict(Uuid),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// Moves `payment` to `to`: checked against the transition table, written with
/// compare-and-set on `(status, state_version)`, with its timeline row and, when given, the
/// outbox row of the event that follows, all in one statement (one round trip): the timeline
/// and outbox rows are inserted only if the compare-and-set matched.
pub async fn transition(
    conn: &mut PgConnection,
    payment: &PaymentRow,
    to: PaymentStatus,
    reason: &str,
    event_id: Option<Uuid>,
    facts: Facts<'_>,
    then: Option<&OutboxRow<'_>>,
) -> Result<(), TransitionFailure> {
    payment.status.transition_to(to)?;
    let queue = if then.is_some() {
        format!(
            ", queued AS (
                 INSERT INTO outbox ({OUTBOX_COLUMNS})
                 SELECT $10, $11, $12, $13, $14, $15 FROM moved)"
        )
    } else {
        String::new()
    };
    let sql = format!(
        "WITH moved AS (
             UPDATE payments
                SET status = $1,
                    state_version = state_version + 1,
                    updated_at = now(),
                    authorization_id = COALESCE($2, authorization_id),
                    capture_id = COALESCE($3, capture_id),
                    journal_transaction_id = COALESCE($4, journal_transaction_id)
              WHERE payment_id = $5 AND status = $6 AND state_version = $7
          RETURNING payment_id),
         timeline AS (
             INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, event_id)
             SELECT payment_id, $6, $1, $8, $9 FROM moved){queue}
         SELECT count(*) FROM moved"
    );
    let query = sqlx::query(&sql)
        .bind(to.as_str())
        .bind(facts.authorization_id)
        .bind(facts.capture_id)
        .bind(facts.journal_transaction_id)
        .bind(payment.payment_id)
        .bind(payment.status.as_str())
        .bind(payment.state_version)
        .bind(reason)
        .bind(event_id);
    let query = match then {
        Some(row) => row.bind(query),
        None => query,
    };
    let moved: i64 = query.fetch_one(&mut *conn).await?.try_get(0)?;
    if moved != 1 {
        return Err(TransitionFailure::Conflict(payment.payment_id));
    }
    Ok(())
}

/// Records a saga step that does not change the payment's status (kind `STEP`).
pub async fn record_step(
    conn: &mut PgConnection,
    payment: &PaymentRow,
    reason: &str,
    event_id: Option<Uuid>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, event_id, kind)
         VALUES ($1, $2, $2, $3, $4, 'STEP')",
    )
    .bind(payment.payment_id)
    .bind(payment.status.as_str())
    .bind(reason)
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct TimelineEntry {
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
    pub event_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// The public view of a payment.
#[derive(Debug, Serialize)]
pub struct PaymentView {
    pub payment_id: Uuid,
    pub status: PaymentStatus,
    pub amount_cents: i64,
    pub currency: String,
    pub customer_id: CustomerId,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub timeline: Vec<TimelineEntry>,
    pub refunds: Vec<crate::refunds::RefundView>,
}

/// The payment with its timeline, if it exists and belongs to `merchant_id`.
pub async fn view(
    conn: &mut PgConnection,
    payment_id: Uuid,
    merchant_id: Uuid,
) -> sqlx::Result<Option<PaymentView>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1 AND merchant_id = $2"
    );
    let Some(row) = sqlx::query(&sql)
        .bind(payment_id)
        .bind(merchant_id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let p = payment_from_row(&row)?;
    let timeline = sqlx::query(
        "SELECT kind, from_state, to_state, reason, event_id, occurred_at
           FROM payment_timeline WHERE payment_id = $1 ORDER BY id",
    )
    .bind(payment_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        Ok(TimelineEntry {
            kind: r.try_get("kind")?,
            from_state: r.try_get("from_state")?,
            to_state: r.try_get("to_state")?,
            reason: r.try_get("reason")?,
            event_id: r.try_get("event_id")?,
            occurred_at: r.try_get("occurred_at")?,
        })
    })
    .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(Some(PaymentView {
        payment_id: p.payment_id,
        status: p.status,
        amount_cents: p.amount_minor,
        currency: p.currency,
        customer_id: p.customer_id,
        created_at: p.created_at,
        updated_at: p.updated_at,
        timeline,
        refunds: Vec::new(),
    }))
}
