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
//!   voided and a capture refunded, and the payment ends REVERSED when the provider confirms.

use super::state::AppState;
use crate::saga::commands::{self, Outstanding};
use crate::store::{self, Compensation, PaymentRow, Transition, PAYMENT_COLUMNS};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sagapay_domain::PaymentStatus;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::{ApiError, ErrorType};
use sagapay_service_kit::ops_auth::{require_ops_key, OpsKey};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use uuid::Uuid;

pub fn routes(state: AppState, key: OpsKey) -> Router {
    let routes = Router::new()
        .route("/ops/payments/stuck", get(stuck))
        .route("/ops/payments/{payment_id}/retry", post(retry))
        .route("/ops/payments/{payment_id}/fail", post(fail));
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailRequest {
    reason: String,
    requested_by: Option<String>,
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

fn conflict(code: &str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorType::ConflictError,
        code,
        message,
    )
}

async fn retry(
    State(state): State<AppState>,
    Path(payment_id): Path<Uuid>,
    body: Option<Json<RetryRequest>>,
) -> Result<Response, ApiError> {
    let req = body.map(|Json(b)| b).unwrap_or_default();
    let who = operator(req.requested_by)?;
    let mut tx = state.pool.begin().await?;
    let payment = store::load_for_update(&mut tx, payment_id)
        .await?
        .ok_or_else(|| not_found(payment_id))?;
    let mut sent = Vec::new();
    if let Outstanding::Command(command) =
        commands::outstanding(&payment).map_err(|e| ApiError::internal(e.to_string()))?
    {
        let reason = format!(
            "{who} asked to retry: {} sent again in {}",
            command.event_type, payment.status
        );
        let deadline = state
            .deadlines
            .after(
                payment.status,
                payment.compensation,
                payment.awaits_merchant(),
            )
            .unwrap_or(state.deadlines.compensating);
        let row = state.outbox.row(&command, &MessageHeaders::default());
        store::resend(
            &mut tx,
            payment_id,
            payment.status,
            &reason,
            deadline,
            &row,
            true,
        )
        .await?;
        sent.push(command.event_type.clone());
    }
    // Refunds of the payment still in flight go again too.
    let refunds = store::refunds::lock_in_flight(&mut tx, payment_id).await?;
    for refund_id in refunds {
        sqlx::query(
            "UPDATE refunds SET nudges = 0, attention_since = NULL, attention_reason = NULL,
                                deadline_at = now()
              WHERE refund_id = $1",
        )
        .bind(refund_id)
        .execute(&mut *tx)
        .await?;
        sent.push(format!("refund {refund_id} (by the next sweep)"));
    }
    if sent.is_empty() {
        return Err(conflict(
            "nothing_to_retry",
            format!(
                "payment {payment_id} is {} and waits for nothing",
                payment.status
            ),
        ));
    }
    tx.commit().await?;
    tracing::warn!(%payment_id, operator = %who, ?sent, "operator retry");
    Ok(Json(Action {
        payment_id,
        status: payment.status,
        action: "resent",
        sent,
    })
    .into_response())
}

async fn fail(
    State(state): State<AppState>,
    Path(payment_id): Path<Uuid>,
    Json(req): Json<FailRequest>,
) -> Result<Response, ApiError> {
    let who = operator(req.requested_by)?;
    let why = req.reason.trim();
    if why.is_empty() || why.chars().count() > 500 || why.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "invalid_reason",
            "reason must be 1-500 printable characters",
        )
        .with_param("reason"));
    }
    let mut tx = state.pool.begin().await?;
    let payment = store::load_for_update(&mut tx, payment_id)
        .await?
        .ok_or_else(|| not_found(payment_id))?;
    if payment.status.is_terminal() {
        return Err(conflict(
            "payment_not_failable",
            format!("payment {payment_id} is already {}", payment.status),
        ));
    }
    if let Some(kind) = payment.compensation {
        return Err(conflict(
            "payment_not_failable",
            format!(
                "payment {payment_id} is already being compensated ({})",
                kind.as_str()
            ),
        ));
    }
    let reason = format!("failed by {who}: {why}");
    let internal = |e: anyhow::Error| ApiError::internal(e.to_string());
    let (action, sent) = match payment.status {
        // Nothing happened at the provider yet: the payment fails now.
        PaymentStatus::Created | PaymentStatus::RiskReview => {
            let event = commands::fresh(
                &payment,
                &commands::finalized(&payment, PaymentStatus::Failed, &reason),
            );
            let row = state.outbox.row(&event, &MessageHeaders::default());
            store::transition(
                &mut tx,
                &payment,
                &Transition {
                    to: PaymentStatus::Failed,
                    reason: &reason,
                    event_id: None,
                    facts: store::Facts::default(),
                    deadline: None,
                    then: Some(&row),
                },
            )
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
            ("failed", event.event_type.clone())
        }
        // An authorization may exist (or be in flight): void it.
        PaymentStatus::Approved | PaymentStatus::Authorized => {
            let command = commands::fresh(&payment, &commands::void(&payment, &reason));
            start(
                &state,
                &mut tx,
                &payment,
                Compensation::Void,
                &reason,
                &command,
            )
            .await?;
            ("voiding", command.event_type.clone())
        }
        PaymentStatus::Captured => {
            let refund = commands::refund_capture(&payment, &reason).map_err(internal)?;
            let command = commands::fresh(&payment, &refund);
            start(
                &state,
                &mut tx,
                &payment,
                Compensation::Refund,
                &reason,
                &command,
            )
            .await?;
            ("refunding", command.event_type.clone())
        }
        terminal => unreachable!("{terminal} is terminal, checked above"),
    };
    tx.commit().await?;
    if action == "failed" {
        state
            .metrics
            .transitions_total
            .with_label_values(&[payment.status.as_str(), PaymentStatus::Failed.as_str()])
            .inc();
    }
    tracing::warn!(%payment_id, operator = %who, action, "operator failed the payment");
    Ok(Json(Action {
        payment_id,
        status: if action == "failed" {
            PaymentStatus::Failed
        } else {
            payment.status
        },
        action,
        sent: vec![sent],
    })
    .into_response())
}

async fn start(
    state: &AppState,
    conn: &mut sqlx::PgConnection,
    payment: &PaymentRow,
    kind: Compensation,
    reason: &str,
    command: &sagapay_domain::Envelope,
) -> Result<(), ApiError> {
    let row = state.outbox.row(command, &MessageHeaders::default());
    store::start_compensation(
        conn,
        payment,
        kind,
        reason,
        None,
        state.deadlines.compensating,
        &row,
    )
    .await?;
    Ok(())
}
