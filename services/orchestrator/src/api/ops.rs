//! Operators' routes for payments that stopped moving, behind the ops key
//! (`sagapayctl payments stuck|retry|fail` calls them):
//!
//! - `GET /ops/payments/stuck?limit=100`: payments and refunds past their deadline or flagged
//!   as needing attention, with state, age, re-sends and why, oldest deadline first;
//! - `POST /ops/payments/{id}/retry` `{"requested_by": "..."}`: sends the payment's
//!   outstanding command (and its refunds' in flight) again now, with a fresh count of re-sends
//!   and the flag cleared;
//! - `POST /ops/payments/{id}/fail` `{"reason": "...", "requested_by": "..."}`: ends the
//!   payment as the saga would: before a risk decision it fails at once; an authorization is
//!   voided and a capture refunded, and the payment ends REVERSED when the provider confirms;
//!   a payment whose capture of another amount is parked ends REVERSED once exactly what the
//!   provider took is refunded; one whose void the provider refused ends FAILED (nothing was
//!   captured; the hold lapses at the issuer);
//! - `POST /ops/payments/{id}/accept` `{"reason": "...", "requested_by": "..."}`: keeps a
//!   capture the provider made of another amount than was asked: posted for what was
//!   captured, the payment settles for it;
//! - `GET|PUT /ops/merchants/{id}/limits` `{"max_in_flight": N | null, "requested_by": "..."}`:
//!   a merchant's own share of admission control (null: the default share again).

use super::state::AppState;
use crate::saga::decide::decide;
use crate::saga::decision::{Decision, Effect, Input, OperatorRequest, RefundEffect};
use crate::saga::shell::Origin;
use crate::store::{self, Compensation, PaymentRow, PAYMENT_COLUMNS};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sagapay_domain::PaymentStatus;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::ApiError;
use sagapay_service_kit::ops_auth::{require_ops_key, OpsKey};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

pub fn routes(state: AppState, key: OpsKey) -> Router {
    let routes = Router::new()
        .route("/ops/payments/stuck", get(stuck))
        .route("/ops/payments/{payment_id}/retry", post(retry))
        .route("/ops/payments/{payment_id}/fail", post(fail))
        .route("/ops/payments/{payment_id}/accept", post(accept))
        .route(
            "/ops/merchants/{merchant_id}/limits",
            get(merchant_limits).put(set_merchant_limits),
        );
    require_ops_key(routes, key).with_state(state)
}

#[derive(Debug, Deserialize)]
struct StuckQuery {
    limit: Option<i64>,
}

#[derive(Debug, Serialize)]
struct StuckPayment {
    payment_id: Uuid,
    status: PaymentStatus,
    compensation: Option<&'static str>,
    /// Seconds since the payment last changed.
    age_seconds: i64,
    deadline_at: Option<DateTime<Utc>>,
    overdue_seconds: i64,
    nudges: i32,
    attention_since: Option<DateTime<Utc>>,
    attention_reason: Option<String>,
}

#[derive(Debug, Serialize)]
struct StuckRefund {
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

#[derive(Debug, Serialize)]
struct Stuck {
    payments: Vec<StuckPayment>,
    refunds: Vec<StuckRefund>,
}

fn seconds_since(t: Option<DateTime<Utc>>) -> i64 {
    t.map(|t| (Utc::now() - t).num_seconds().max(0))
        .unwrap_or(0)
}

async fn stuck(
    State(state): State<AppState>,
    Query(q): Query<StuckQuery>,
) -> Result<Json<Stuck>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryRequest {
    requested_by: Option<String>,
}

/// An operator's request that ends a payment (fail, accept): why, and who asks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndRequest {
    reason: String,
    requested_by: Option<String>,
}

impl EndRequest {
    /// Who asks and why, checked.
    fn who_and_why(self) -> Result<(String, String), ApiError> {
        let who = operator(self.requested_by)?;
        let why = self.reason.trim();
        if why.is_empty() || why.chars().count() > 500 || why.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "invalid_reason",
                "reason must be 1-500 printable characters",
            )
            .with_param("reason"));
        }
        Ok((who, why.to_owned()))
    }
}

#[derive(Debug, Serialize)]
struct Action {
    payment_id: Uuid,
    status: PaymentStatus,
    /// What was done: `resent`, `failed`, `voiding`, `refunding`.
    action: &'static str,
    /// The commands sent.
    sent: Vec<String>,
}

impl Action {
    /// What an operator's fail or accept did: the status it moved the payment to (or the
    /// one it stays in) and the commands it sent.
    fn ended(
        payment_id: Uuid,
        status: PaymentStatus,
        action: &'static str,
        decision: &Decision,
    ) -> Action {
        Action {
            payment_id,
            status: decision.moves_to().unwrap_or(status),
            action,
            sent: decision
                .send
                .iter()
                .map(|c| c.event_type().to_string())
                .collect(),
        }
    }
}

fn operator(requested_by: Option<String>) -> Result<String, ApiError> {
    let who = requested_by.unwrap_or_else(|| "an operator".to_owned());
    if who.trim().is_empty() || who.chars().count() > 100 || who.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid_requested_by",
            "requested_by must be 1-100 printable characters",
        )
        .with_param("requested_by"));
    }
    Ok(who)
}

fn not_found(payment_id: Uuid) -> ApiError {
    ApiError::not_found("payment_not_found", format!("no payment {payment_id}"))
        .with_param("payment_id")
}

/// Decides an operator's request for the payment and writes it; what was sent, and the
/// decision.
async fn act(
    state: &AppState,
    payment_id: Uuid,
    request: OperatorRequest,
) -> Result<(PaymentStatus, Decision), ApiError> {
    let mut tx = state.pool.begin().await?;
    let (row, payment) = state
        .shell
        .load(&mut tx, payment_id)
        .await?
        .ok_or_else(|| not_found(payment_id))?;
    let input = Input::Operator(request);
    let decision = decide(&payment, &input, Utc::now(), &state.shell.deadlines)?;
    let origin = Origin {
        cause: None,
        correlation_id: &payment.terms.correlation_id,
        headers: MessageHeaders::default(),
        refund_request: None,
    };
    let after = state
        .shell
        .commit(&mut tx, &row, &payment, &decision, &origin)
        .await?;
    tx.commit().await?;
    after.into_iter().for_each(|f| f());
    Ok((payment.status(), decision))
}

async fn retry(
    State(state): State<AppState>,
    Path(payment_id): Path<Uuid>,
    body: Option<Json<RetryRequest>>,
) -> Result<Response, ApiError> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let who = operator(req.requested_by)?;
    let (status, decision) = act(
        &state,
        payment_id,
        OperatorRequest::Retry { who: who.clone() },
    )
    .await?;
    let mut sent: Vec<String> = decision
        .send
        .iter()
        .map(|c| c.event_type().to_string())
        .collect();
    for effect in &decision.effects {
        if let Effect::Refund(RefundEffect::Rearm { refund_id }) = effect {
            sent.push(format!("refund {refund_id} (by the next sweep)"));
        }
    }
    tracing::warn!(%payment_id, operator = %who, ?sent, "operator retry");
    Ok(Json(Action {
        payment_id,
        status,
        action: "resent",
        sent,
    })
    .into_response())
}

async fn fail(
    State(state): State<AppState>,
    Path(payment_id): Path<Uuid>,
    Json(req): Json<EndRequest>,
) -> Result<Response, ApiError> {
    let (who, why) = req.who_and_why()?;
    let request = OperatorRequest::Fail {
        who: who.clone(),
        why,
    };
    let (status, decision) = act(&state, payment_id, request).await?;
    let action = match decision.effects.first() {
        Some(Effect::Compensate {
            kind: Compensation::Void,
            ..
        }) => "voiding",
        Some(Effect::Compensate {
            kind: Compensation::Refund,
            ..
        }) => "refunding",
        _ => "failed",
    };
    tracing::warn!(%payment_id, operator = %who, action, "operator failed the payment");
    Ok(Json(Action::ended(payment_id, status, action, &decision)).into_response())
}

async fn accept(
    State(state): State<AppState>,
    Path(payment_id): Path<Uuid>,
    Json(req): Json<EndRequest>,
) -> Result<Response, ApiError> {
    let (who, why) = req.who_and_why()?;
    let request = OperatorRequest::Accept {
        who: who.clone(),
        why,
    };
    let (status, decision) = act(&state, payment_id, request).await?;
    tracing::warn!(%payment_id, operator = %who, "operator accepted the capture");
    Ok(Json(Action::ended(payment_id, status, "accepted", &decision)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsRequest {
    /// The merchant's own limit of payments in flight (0: no limit of its own); null: the
    /// default share.
    max_in_flight: Option<i32>,
    requested_by: Option<String>,
}

#[derive(Debug, Serialize)]
struct Limits {
    merchant_id: Uuid,
    /// The merchant's own limit, when it has one.
    max_in_flight: Option<i32>,
    /// What applies when it has none.
    default_max_in_flight: i64,
    /// Its payments in flight now, as admission sees them.
    in_flight: i64,
}

async fn limits_of(state: &AppState, merchant_id: Uuid) -> Result<Limits, ApiError> {
    let own: Option<i32> =
        sqlx::query_scalar("SELECT max_in_flight FROM merchant_limits WHERE merchant_id = $1")
            .bind(merchant_id)
            .fetch_optional(&state.pool)
            .await?;
    let (in_flight, default_max_in_flight) = state.admission.merchant(merchant_id);
    Ok(Limits {
        merchant_id,
        max_in_flight: own,
        default_max_in_flight,
        in_flight,
    })
}

async fn merchant_limits(
    State(state): State<AppState>,
    Path(merchant_id): Path<Uuid>,
) -> Result<Json<Limits>, ApiError> {
    Ok(Json(limits_of(&state, merchant_id).await?))
}

async fn set_merchant_limits(
    State(state): State<AppState>,
    Path(merchant_id): Path<Uuid>,
    Json(req): Json<LimitsRequest>,
) -> Result<Json<Limits>, ApiError> {
    let who = operator(req.requested_by)?;
    if req.max_in_flight.is_some_and(|n| n < 0) {
        return Err(ApiError::invalid(
            "invalid_max_in_flight",
            "max_in_flight must be 0 (no limit of its own) or more, or null (the default share)",
        )
        .with_param("max_in_flight"));
    }
    crate::admission::set_merchant_limit(&state.pool, merchant_id, req.max_in_flight, &who).await?;
    tracing::warn!(%merchant_id, operator = %who, max_in_flight = ?req.max_in_flight,
        "merchant admission limit set");
    Ok(Json(limits_of(&state, merchant_id).await?))
}
