//! `GET /ops/payments/stuck`: payments and refunds past their deadline or flagged for an
//! operator, oldest first, with what an operator needs to decide.

use super::super::state::AppState;
use crate::store::{self, Compensation, PaymentRow, PAYMENT_COLUMNS};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use sagapay_domain::PaymentStatus;
use sagapay_service_kit::api_error::ApiError;
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct StuckQuery {
    /// At most this many payments and this many refunds: 1 to 1000, default 100.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StuckPayment {
    payment_id: Uuid,
    status: PaymentStatus,
    /// What the saga is undoing, if anything: `VOID` or `REFUND`.
    #[schema(value_type = Option<String>)]
    compensation: Option<&'static str>,
    /// Seconds since the payment last changed.
    age_seconds: i64,
    deadline_at: Option<DateTime<Utc>>,
    overdue_seconds: i64,
    /// Commands re-sent since the last step.
    nudges: i32,
    attention_since: Option<DateTime<Utc>>,
    attention_reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct StuckRefund {
    refund_id: Uuid,
    payment_id: Uuid,
    status: String,
    amount_minor: i64,
    currency: String,
    age_seconds: i64,
    deadline_at: Option<DateTime<Utc>>,
    overdue_seconds: i64,
    nudges: i32,
    attention_since: Option<DateTime<Utc>>,
    attention_reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Stuck {
    payments: Vec<StuckPayment>,
    refunds: Vec<StuckRefund>,
}

fn seconds_since(t: Option<DateTime<Utc>>) -> i64 {
    t.map(|t| (Utc::now() - t).num_seconds().max(0))
        .unwrap_or(0)
}

/// Payments and refunds past their deadline or flagged for an operator, oldest first.
#[utoipa::path(get, path = "/ops/payments/stuck", tag = "payments", params(StuckQuery),
    security(("ops_key" = [])),
    responses((status = 200, description = "What is stuck, oldest first", body = Stuck)))]
pub(super) async fn stuck(
    State(state): State<AppState>,
    query: Result<Query<StuckQuery>, QueryRejection>,
) -> Result<Json<Stuck>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(
            ApiError::invalid("invalid_limit", "limit must be from 1 to 1000").with_param("limit"),
        );
    }
    let mut conn = state.pool.acquire().await?;
    let payments = sqlx::query(&format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments
          WHERE attention_since IS NOT NULL OR deadline_at <= now()
          ORDER BY COALESCE(attention_since, deadline_at) LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(store::payment_from_row)
    .collect::<sqlx::Result<Vec<PaymentRow>>>()?
    .into_iter()
    .map(|p| StuckPayment {
        payment_id: p.payment_id,
        status: p.status,
        compensation: p.compensation.map(Compensation::as_str),
        age_seconds: seconds_since(Some(p.updated_at)),
        deadline_at: p.deadline_at,
        overdue_seconds: seconds_since(p.deadline_at.filter(|d| *d <= Utc::now())),
        nudges: p.nudges,
        attention_since: p.attention_since,
        attention_reason: p.attention_reason,
    })
    .collect();
    let refunds = sqlx::query(
        "SELECT refund_id, payment_id, status, amount_minor, currency, updated_at, deadline_at,
                nudges, attention_since, attention_reason
           FROM refunds
          WHERE attention_since IS NOT NULL OR deadline_at <= now()
          ORDER BY COALESCE(attention_since, deadline_at) LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        let deadline_at: Option<DateTime<Utc>> = r.try_get("deadline_at")?;
        Ok(StuckRefund {
            refund_id: r.try_get("refund_id")?,
            payment_id: r.try_get("payment_id")?,
            status: r.try_get("status")?,
            amount_minor: r.try_get("amount_minor")?,
            currency: r.try_get("currency")?,
            age_seconds: seconds_since(r.try_get("updated_at")?),
            deadline_at,
            overdue_seconds: seconds_since(deadline_at.filter(|d| *d <= Utc::now())),
            nudges: r.try_get("nudges")?,
            attention_since: r.try_get("attention_since")?,
            attention_reason: r.try_get("attention_reason")?,
        })
    })
    .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(Json(Stuck { payments, refunds }))
}
