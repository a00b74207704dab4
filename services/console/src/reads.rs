//! The console's reads of the services' databases, read only: payments and what happened to
//! them (the orchestrator's timeline and refunds, the provider adapter's attempts, the
//! ledger's postings, the notification service's deliveries), merchants' webhook endpoints and
//! admission counts. Every change goes through an operation instead ([`sagapay_operations`]).

use crate::state::ServiceDbs;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// A payment as the lists show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub customer_id: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub capture_method: String,
    pub payment_method: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub failure_reason: Option<String>,
    pub attention_reason: Option<String>,
    pub attention_kind: Option<String>,
}

const PAYMENT_COLUMNS: &str = "payment_id, merchant_id, customer_id, amount_minor, \
    currency::text AS currency, status, capture_method, payment_method, created_at, updated_at, \
    failure_reason, attention_reason, attention_kind";

/// Which payments to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct PaymentFilter {
    pub payment_id: Option<Uuid>,
    pub merchant_id: Option<Uuid>,
    pub customer_id: Option<String>,
    pub status: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// The newest 100 payments matching `f`.
pub async fn search(db: &PgPool, f: &PaymentFilter) -> sqlx::Result<Vec<PaymentRow>> {
    sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments
          WHERE ($1::uuid IS NULL OR payment_id = $1)
            AND ($2::uuid IS NULL OR merchant_id = $2)
            AND ($3::text IS NULL OR customer_id = $3)
            AND ($4::text IS NULL OR status = $4)
            AND ($5::timestamptz IS NULL OR created_at >= $5)
            AND ($6::timestamptz IS NULL OR created_at < $6)
          ORDER BY created_at DESC, payment_id DESC LIMIT 100"
    ))
    .bind(f.payment_id)
    .bind(f.merchant_id)
    .bind(f.customer_id.as_deref())
    .bind(f.status.as_deref())
    .bind(f.since)
    .bind(f.until)
    .fetch_all(db)
    .await
}

/// The payments among `ids`, by id.
pub async fn payments(db: &PgPool, ids: &[Uuid]) -> sqlx::Result<Vec<PaymentRow>> {
    sqlx::query_as(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = ANY($1)"
    ))
    .bind(ids)
    .fetch_all(db)
    .await
}

/// A step of a payment's timeline.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Step {
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
    pub event_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
}

/// A refund of a payment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefundRow {
    pub refund_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub reason: String,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A call to the provider.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Attempt {
    pub operation: String,
    pub attempt_no: i32,
    pub outcome: String,
    pub provider_reference: Option<String>,
    pub decline_code: Option<String>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub latency_ms: i32,
}

/// A line of a ledger posting.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PostingLine {
    pub transaction_id: Uuid,
    pub posting_kind: String,
    pub account_id: String,
    pub direction: String,
    pub amount_minor: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
}

/// A webhook delivery of an event of the payment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentDelivery {
    pub delivery_id: Uuid,
    pub event_type: String,
    pub url: String,
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
}

/// Everything the services know of one payment.
#[derive(Debug, Clone)]
pub struct PaymentDetail {
    pub payment: PaymentRow,
    pub timeline: Vec<Step>,
    pub refunds: Vec<RefundRow>,
    pub attempts: Vec<Attempt>,
    pub postings: Vec<PostingLine>,
    pub deliveries: Vec<PaymentDelivery>,
}

/// The payment `id` and what happened to it, or `None` if the orchestrator does not know it.
pub async fn payment_detail(dbs: &ServiceDbs, id: Uuid) -> anyhow::Result<Option<PaymentDetail>> {
    let Some(payment) = payments(&dbs.orchestrator, &[id]).await?.pop() else {
        return Ok(None);
    };
    let (timeline, refunds, attempts, postings, deliveries) = tokio::try_join!(
        sqlx::query_as::<_, Step>(
            "SELECT kind, from_state, to_state, reason, event_id, occurred_at
               FROM payment_timeline WHERE payment_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&dbs.orchestrator),
        sqlx::query_as::<_, RefundRow>(
            "SELECT refund_id, amount_minor, currency::text AS currency, status, reason,
                    failure_reason, created_at
               FROM refunds WHERE payment_id = $1 ORDER BY created_at",
        )
        .bind(id)
        .fetch_all(&dbs.orchestrator),
        sqlx::query_as::<_, Attempt>(
            "SELECT operation, attempt_no, outcome, provider_reference, decline_code, error,
                    started_at, latency_ms
               FROM provider_attempts WHERE payment_id = $1 ORDER BY attempt_id",
        )
        .bind(id)
        .fetch_all(&dbs.provider),
        sqlx::query_as::<_, PostingLine>(
            "SELECT t.transaction_id, t.posting_kind, e.account_id, e.direction, e.amount_minor,
                    e.currency::text AS currency, t.created_at
               FROM journal_transactions t JOIN ledger_entries e USING (transaction_id)
              WHERE t.payment_id = $1 ORDER BY t.created_at, e.entry_id",
        )
        .bind(id)
        .fetch_all(&dbs.ledger),
        sqlx::query_as::<_, PaymentDelivery>(
            "SELECT d.delivery_id, ev.event_type, e.url, d.status::text AS status, d.attempts,
                    d.last_status_code, d.last_error
               FROM merchant_events ev
               JOIN webhook_deliveries d USING (event_id)
               JOIN webhook_endpoints e USING (endpoint_id)
              WHERE ev.payment_id = $1 ORDER BY d.created_at",
        )
        .bind(id)
        .fetch_all(&dbs.notification),
    )?;
    Ok(Some(PaymentDetail {
        payment,
        timeline,
        refunds,
        attempts,
        postings,
        deliveries,
    }))
}

/// A merchant's webhook endpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Endpoint {
    pub endpoint_id: Uuid,
    pub merchant_id: Uuid,
    pub url: String,
    pub enabled_events: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub disabled: bool,
}

/// The endpoints of every merchant (deleted ones left out).
pub async fn endpoints(db: &PgPool) -> sqlx::Result<Vec<Endpoint>> {
    sqlx::query_as(
        "SELECT endpoint_id, merchant_id, url, enabled_events, created_at,
                (to_jsonb(e) ->> 'disabled_at') IS NOT NULL AS disabled
           FROM webhook_endpoints e WHERE deleted_at IS NULL
          ORDER BY merchant_id, created_at",
    )
    .fetch_all(db)
    .await
}

/// What the database says of a merchant's place in admission control: its payments parked
/// for an operator and its own limit (none: the default share). Its payments in flight are
/// the orchestrator's to count (`GET /ops/admission`: the one rule of what holds a place).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Admission {
    pub merchant_id: Uuid,
    pub parked: i64,
    pub max_in_flight: Option<i32>,
}

/// Every merchant with payments parked or a limit of its own.
pub async fn admission(db: &PgPool) -> sqlx::Result<Vec<Admission>> {
    sqlx::query_as(
        "WITH parked AS (
             SELECT merchant_id, count(*) AS parked FROM payments
              WHERE attention_since IS NOT NULL
                AND status IN ('CREATED', 'RISK_REVIEW', 'APPROVED', 'AUTHORIZED', 'CAPTURED')
              GROUP BY merchant_id)
         SELECT merchant_id, coalesce(p.parked, 0) AS parked, l.max_in_flight
           FROM parked p FULL JOIN merchant_limits l USING (merchant_id)
          ORDER BY merchant_id",
    )
    .fetch_all(db)
    .await
}
