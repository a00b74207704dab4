//! The refund route: a refund of a settled payment, requested through the internal API, then carried by the
//! saga (provider refund, then ledger posting). The payment row is locked while a refund is
//! admitted, so concurrent requests can never refund more than was captured.

use crate::saga::decide::decide;
use crate::saga::decision::{Input, MerchantRequest};
use crate::saga::shell::Origin;
use crate::store;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sagapay_messaging::headers::TRACEPARENT;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::{replayed, ApiError};
use sagapay_service_kit::http::RequestContext;
use sagapay_service_kit::VerifiedCaller;
use uuid::Uuid;

use super::state::AppState;

/// A refund request as the gateway forwards it: the public API's own type, parsed again.
pub use sagapay_api_models::CreateRefundRequest as CreateRefund;

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
    let fingerprint = req.fingerprint(merchant_id);
    let mut tx = state.pool.begin().await?;
    // The lock that makes admission safe under concurrency.
    let (row, payment) = state
        .shell
        .load(&mut tx, payment_id)
        .await?
        .filter(|(row, _)| row.merchant_id == merchant_id)
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
    let refund_id = Uuid::now_v7();
    let input = Input::Merchant(MerchantRequest::Refund {
        refund_id,
        amount: req.amount_cents,
        reason: req.reason.to_string(),
    });
    let decision = decide(&payment, &input, chrono::Utc::now(), &state.shell.deadlines)?;
    let mut headers = MessageHeaders::default();
    headers.set(TRACEPARENT, ctx.traceparent.clone());
    let origin = Origin {
        cause: None,
        correlation_id: &ctx.correlation_id,
        headers,
        refund_request: Some((&req.idempotency_key, &fingerprint)),
    };
    let after = state
        .shell
        .commit(&mut tx, &row, &payment, &decision, &origin)
        .await?;
    let refund = store::refunds::list(&mut tx, payment_id)
        .await?
        .into_iter()
        .find(|r| r.refund_id == refund_id)
        .ok_or_else(|| ApiError::internal("the refund admitted is not stored"))?;
    tx.commit().await?;
    after.into_iter().for_each(|f| f());
    Ok((StatusCode::CREATED, Json(refund)).into_response())
}
