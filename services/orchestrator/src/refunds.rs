//! Refunds of a settled payment: requested through the internal API, then carried by the
//! saga (provider refund, then ledger posting). The payment row is locked while a refund is
//! admitted, so concurrent requests can never refund more than was captured.

use crate::store::{self, PaymentRow};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use sagapay_domain::events::RefundRequested;
use sagapay_domain::{
    AmountMinor, Currency, Envelope, IdempotencyKey, PaymentStatus, RefundReason, RefundStatus,
};
use sagapay_messaging::headers::TRACEPARENT;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::{ApiError, ErrorType};
use sagapay_service_kit::http::RequestContext;
use sagapay_service_kit::VerifiedCaller;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::api::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    pub amount_cents: AmountMinor,
    pub idempotency_key: IdempotencyKey,
    pub reason: RefundReason,
}

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

fn view_from_row(r: &sqlx::postgres::PgRow) -> sqlx::Result<RefundView> {
    Ok(RefundView {
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
    })
}

const REFUND_COLUMNS: &str = "refund_id, payment_id, amount_minor, currency, status, reason, \
     failure_reason, created_at, updated_at, request_fingerprint";

pub async fn list(conn: &mut PgConnection, payment_id: Uuid) -> sqlx::Result<Vec<RefundView>> {
    sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY created_at, refund_id"
    ))
    .bind(payment_id)
    .fetch_all(conn)
    .await?
    .iter()
    .map(view_from_row)
    .collect()
}

pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(payment_id): Path<Uuid>,
    Json(req): Json<CreateRefund>,
) -> Result<Response, ApiError> {
    let merchant_id = crate::api::merchant_of(&caller)?;
    let not_found = || {
        ApiError::not_found("payment_not_found", format!("no payment {payment_id}"))
            .with_param("payment_id")
    };
    let fingerprint = hex::encode(Sha256::digest(
        format!("{}\n{}\n{}", merchant_id, req.amount_cents, req.reason).as_bytes(),
    ));
    let mut tx = state.pool.begin().await?;
    // The lock that makes admission safe under concurrency.
    let payment: PaymentRow = store::load_for_update(&mut tx, payment_id)
        .await?
        .filter(|p| p.merchant_id == merchant_id)
        .ok_or_else(not_found)?;

    if let Some(existing) = sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 AND idempotency_key = $2"
    ))
    .bind(payment_id)
    .bind(req.idempotency_key.as_str())
    .fetch_optional(&mut *tx)
    .await?
    {
        let fp: String = existing.try_get("request_fingerprint")?;
        if fp != fingerprint {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorType::IdempotencyError,
                "idempotency_key_reused",
                "this idempotency key was already used for a different refund",
            )
            .with_param("idempotency_key"));
        }
        let mut resp = (StatusCode::CREATED, Json(view_from_row(&existing)?)).into_response();
        resp.headers_mut().insert(
            "idempotent-replayed",
            axum::http::HeaderValue::from_static("true"),
        );
        return Ok(resp);
    }

    if !matches!(
        payment.status,
        PaymentStatus::Settled | PaymentStatus::PartiallyRefunded
    ) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorType::ConflictError,
            "payment_not_refundable",
            format!(
                "only a settled payment can be refunded; this one is {}",
                payment.status
            ),
        ));
    }
    let committed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM refunds
          WHERE payment_id = $1 AND status <> 'FAILED'",
    )
    .bind(payment_id)
    .fetch_one(&mut *tx)
    .await?;
    let remaining = payment.captured_minor() - committed;
    if req.amount_cents.get() > remaining {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::InvalidRequestError,
            "refund_exceeds_captured",
            format!(
                "the refund of {} exceeds what is left to refund ({remaining} of {} {})",
                req.amount_cents,
                payment.captured_minor(),
                payment.currency
            ),
        )
        .with_param("amount_cents"));
    }
    let capture_id = payment
        .capture_id
        .clone()
        .ok_or_else(|| ApiError::internal("settled payment without capture"))?;
    let refund_id = Uuid::now_v7();
    let currency =
        Currency::parse(&payment.currency).map_err(|e| ApiError::internal(e.to_string()))?;
    sqlx::query(
        "INSERT INTO refunds (refund_id, payment_id, merchant_id, amount_minor, currency, reason,
                              idempotency_key, request_fingerprint, deadline_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))",
    )
    .bind(refund_id)
    .bind(payment_id)
    .bind(merchant_id)
    .bind(req.amount_cents.get())
    .bind(currency.as_str())
    .bind(req.reason.as_str())
    .bind(req.idempotency_key.as_str())
    .bind(&fingerprint)
    .bind(state.deadlines.refund.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    store::record_step(
        &mut tx,
        &payment,
        &format!(
            "refund {refund_id} of {} requested: {}",
            req.amount_cents, req.reason
        ),
        None,
    )
    .await?;
    let envelope = Envelope::new(
        payment_id,
        None,
        &ctx.correlation_id,
        &RefundRequested {
            capture_id,
            amount_minor: req.amount_cents,
            currency,
            reason: req.reason.to_string(),
            refund_id: Some(refund_id),
        },
    );
    let mut headers = MessageHeaders::default();
    headers.set(TRACEPARENT, ctx.traceparent.clone());
    state.outbox.enqueue(&mut tx, &envelope, &headers).await?;
    let row = sqlx::query(&format!(
        "SELECT {REFUND_COLUMNS} FROM refunds WHERE refund_id = $1"
    ))
    .bind(refund_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(view_from_row(&row)?)).into_response())
}
