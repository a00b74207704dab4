//! Manual capture and cancel: what a merchant may do with a payment created with
//! `capture_method` MANUAL once it is AUTHORIZED. A capture (all or part of the authorized
//! amount) sends the capture command, and the saga goes on as for an automatic payment with
//! the captured amount (the ledger posts it, refunds are bounded by it; the rest of the hold
//! lapses at the provider). A cancel voids the authorization and ends CANCELED. Either is
//! recorded on the payment once, with its idempotency key (`record_merchant_action`): the
//! same request again is answered as the first, any other is refused with 409. Nothing acted
//! on within the authorization's expiry is voided by the sweeper (also CANCELED).

use super::state::AppState;
use crate::saga::decide::decide;
use crate::saga::decision::{Input, MerchantRequest};
use crate::saga::shell::Origin;
use crate::store::{self, MerchantAction};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sagapay_domain::{AmountMinor, IdempotencyKey};
use sagapay_messaging::headers::TRACEPARENT;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::{replayed, ApiError};
use sagapay_service_kit::http::RequestContext;
use sagapay_service_kit::json_body::json_body;
use sagapay_service_kit::service_auth::VerifiedCaller;
use uuid::Uuid;

/// The public API's own types, as the gateway forwards them, parsed again.
pub use sagapay_api_models::{CancelRequest as CancelBody, CaptureRequest as CaptureBody};

pub async fn capture(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(payment_id): Path<Uuid>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: CaptureBody = json_body(&body)?;
    act(
        &state,
        &ctx,
        caller.acting_merchant()?,
        payment_id,
        MerchantAction::Capture,
        &req.idempotency_key,
        req.amount_cents,
    )
    .await
}

pub async fn cancel(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(payment_id): Path<Uuid>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let req: CancelBody = json_body(&body)?;
    act(
        &state,
        &ctx,
        caller.acting_merchant()?,
        payment_id,
        MerchantAction::Cancel,
        &req.idempotency_key,
        None,
    )
    .await
}

async fn act(
    state: &AppState,
    ctx: &RequestContext,
    merchant_id: Uuid,
    payment_id: Uuid,
    action: MerchantAction,
    key: &IdempotencyKey,
    amount: Option<AmountMinor>,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::not_found("payment_not_found", format!("no payment {payment_id}"))
            .with_param("payment_id")
    };
    let mut tx = state.pool.begin().await?;
    let (row, payment) = state
        .shell
        .load(&mut tx, payment_id)
        .await?
        .filter(|(row, _)| row.merchant_id == merchant_id)
        .ok_or_else(not_found)?;
    // The same request again (same action, key and amount): answered as the first was.
    let replay = payment.manual.as_ref().is_some_and(|m| {
        m.action == action
            && m.key.as_deref() == Some(key.as_str())
            && (action != MerchantAction::Capture
                || payment.to_capture() == amount.unwrap_or(payment.terms.amount))
    });
    let mut after = Vec::new();
    if !replay {
        let request = match action {
            MerchantAction::Capture => MerchantRequest::Capture {
                amount,
                key: key.as_str().to_owned(),
            },
            MerchantAction::Cancel | MerchantAction::Expire => MerchantRequest::Cancel {
                key: key.as_str().to_owned(),
            },
        };
        let input = Input::Merchant(request);
        let decision = decide(&payment, &input, chrono::Utc::now(), &state.shell.deadlines)?;
        let mut headers = MessageHeaders::default();
        headers.set(TRACEPARENT, ctx.traceparent.clone());
        let origin = Origin {
            cause: None,
            correlation_id: &payment.terms.correlation_id,
            headers,
            refund_request: None,
        };
        after = state
            .shell
            .commit(&mut tx, &row, &payment, &decision, &origin)
            .await?;
    }
    let mut view = store::view(&mut tx, payment_id, merchant_id)
        .await?
        .ok_or_else(not_found)?;
    view.refunds = store::refunds::list(&mut tx, payment_id).await?;
    tx.commit().await?;
    after.into_iter().for_each(|f| f());
    let resp = (StatusCode::OK, Json(view)).into_response();
    Ok(if replay { replayed(resp) } else { resp })
}
