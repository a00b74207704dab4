//! The refund route: a refund of a settled payment, requested through the internal API, then carried by the
//! saga (provider refund, then ledger posting). The payment row is locked while a refund is
//! admitted, so concurrent requests can never refund more than was captured.

use crate::store::{self, PaymentRow};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sagapay_domain::events::RefundRequested;
use sagapay_domain::{AmountMinor, Envelope, IdempotencyKey, PaymentStatus, RefundReason};
use sagapay_messaging::headers::TRACEPARENT;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::{replayed, ApiError, ErrorType};
use sagapay_service_kit::http::RequestContext;
use sagapay_service_kit::VerifiedCaller;
use serde::Deserialize;
use uuid::Uuid;

use super::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    pub amount_cents: AmountMinor,
    pub idempotency_key: IdempotencyKey,
    pub reason: RefundReason,
}

pub async fn create(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(payment_id): Path<Uuid>,
    Json(req): Json<CreateRefund>,
) -> Result<Response, ApiError> {
    let merchant_id = caller.acting_merchant()?;
    let not_found = || {
        ApiError::not_found("payment_not_found", format!("no payment {payment_id}"))
            .with_param("payment_id")
    };
    let fingerprint = sagapay_domain::request_fingerprint(&[
        &merchant_id.to_string(),
        &req.amount_cents.to_string(),
        req.reason.as_str(),
    ]);
    let mut tx = state.pool.begin().await?;
    // The lock that makes admission safe under concurrency.
    let payment: PaymentRow = store::load_for_update(&mut tx, payment_id)
        .await?
        .filter(|p| p.merchant_id == merchant_id)
        .ok_or_else(not_found)?;

    if let Some(existing) =
        store::refunds::by_idempotency_key(&mut tx, payment_id, &req.idempotency_key).await?
    {
        if existing.request_fingerprint != fingerprint {
            return Err(ApiError::idempotency_key_reused("refund"));
        }
        return Ok(replayed(
            (StatusCode::CREATED, Json(existing.view)).into_response(),
        ));
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
    let committed = store::refunds::committed_minor(&mut tx, payment_id).await?;
    let remaining = payment.captured_minor().get() - committed;
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
    let currency = payment.currency;
    let refund = store::refunds::insert(
        &mut tx,
        store::refunds::NewRefund {
            payment_id,
            merchant_id,
            amount: req.amount_cents,
            currency,
            reason: &req.reason,
            idempotency_key: &req.idempotency_key,
            request_fingerprint: &fingerprint,
            deadline: state.deadlines.refund,
        },
    )
    .await?;
    let refund_id = refund.refund_id;
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
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(refund)).into_response())
}
