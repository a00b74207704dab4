//! Manual capture and cancel: what a merchant may do with a payment created with
//! `capture_method` MANUAL once it is AUTHORIZED. A capture (all or part of the authorized
//! amount) sends the capture command, and the saga goes on as for an automatic payment with
//! the captured amount (the ledger posts it, refunds are bounded by it; the rest of the hold
//! lapses at the provider). A cancel voids the authorization and ends CANCELED. Either is
//! recorded on the payment once, with its idempotency key (`record_merchant_action`): the
//! same request again is answered as the first, any other is refused with 409. Nothing acted
//! on within the authorization's expiry is voided by the sweeper (also CANCELED).

use super::state::AppState;
use crate::saga::commands;
use crate::store::{self, MerchantAction, PaymentRow};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sagapay_domain::events::CaptureMethod;
use sagapay_domain::{AmountMinor, IdempotencyKey, PaymentStatus};
use sagapay_messaging::headers::TRACEPARENT;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::{json_body, replayed, ApiError, ErrorType};
use sagapay_service_kit::http::RequestContext;
use sagapay_service_kit::service_auth::VerifiedCaller;
use serde::Deserialize;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureBody {
    /// At most the authorized amount; absent: all of it.
    #[serde(default)]
    pub amount_cents: Option<AmountMinor>,
    pub idempotency_key: IdempotencyKey,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    pub idempotency_key: IdempotencyKey,
}

fn conflict(code: &str, message: String) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        ErrorType::InvalidRequestError,
        code,
        message,
    )
}

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

/// Whether `payment` allows `action` now: 409 with why when not.
fn allowed(payment: &PaymentRow, action: MerchantAction) -> Result<(), ApiError> {
    let verb = match action {
        MerchantAction::Capture => "captured",
        MerchantAction::Cancel | MerchantAction::Expire => "canceled",
    };
    if payment.capture_method != CaptureMethod::Manual {
        return Err(conflict(
            "payment_not_manual",
            format!("the payment is captured automatically; it cannot be {verb} by request"),
        ));
    }
    if let Some(taken) = payment.merchant_action {
        return Err(conflict(
            "payment_action_taken",
            format!(
                "the payment was already {} ; it cannot be {verb} now",
                match taken {
                    MerchantAction::Capture => "captured",
                    MerchantAction::Cancel => "canceled",
                    MerchantAction::Expire => "voided (its authorization expired)",
                }
            ),
        ));
    }
    if payment.status != PaymentStatus::Authorized || payment.compensation.is_some() {
        return Err(conflict(
            "payment_not_authorized",
            format!(
                "the payment is {}; it can be {verb} only while AUTHORIZED",
                payment.status
            ),
        ));
    }
    Ok(())
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
    let payment = store::load_for_update(&mut tx, payment_id)
        .await?
        .filter(|p| p.merchant_id == merchant_id)
        .ok_or_else(not_found)?;
    let amount_minor = amount.unwrap_or(payment.amount_minor);
    // The same request again (same action, key and amount): answered as the first was.
    let replay = payment.merchant_action == Some(action)
        && payment.merchant_action_key.as_deref() == Some(key.as_str())
        && (action != MerchantAction::Capture || payment.captured_minor() == amount_minor);
    if !replay {
        allowed(&payment, action)?;
        let mut headers = MessageHeaders::default();
        headers.set(TRACEPARENT, ctx.traceparent.clone());
        match action {
            MerchantAction::Capture => {
                if amount_minor > payment.amount_minor {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        ErrorType::InvalidRequestError,
                        "capture_exceeds_authorized",
                        format!(
                            "the capture of {amount_minor} exceeds the authorized {} {}",
                            payment.amount_minor, payment.currency
                        ),
                    )
                    .with_param("amount_cents"));
                }
                let authorization_id = payment.authorization_id.clone().ok_or_else(|| {
                    ApiError::internal("an authorized payment without its authorization id")
                })?;
                let capturing = PaymentRow {
                    capture_amount_minor: Some(amount_minor),
                    ..payment.clone()
                };
                let command = commands::fresh(
                    &capturing,
                    &commands::capture(&capturing, &authorization_id),
                );
                let reason = format!(
                    "capture of {amount_minor} of {} {} requested by the merchant",
                    payment.amount_minor, payment.currency
                );
                store::record_merchant_action(
                    &mut tx,
                    &payment,
                    action,
                    Some(key.as_str()),
                    Some(amount_minor),
                    &reason,
                    state.deadlines.authorized,
                    &state.outbox.row(&command, &headers),
                )
                .await?;
            }
            MerchantAction::Cancel | MerchantAction::Expire => {
                let reason = "canceled by the merchant: voiding the authorization";
                let command = commands::fresh(&payment, &commands::void(&payment, reason));
                store::record_merchant_action(
                    &mut tx,
                    &payment,
                    action,
                    Some(key.as_str()),
                    None,
                    reason,
                    state.deadlines.compensating,
                    &state.outbox.row(&command, &headers),
                )
                .await?;
            }
        }
    }
    let mut view = store::view(&mut tx, payment_id, merchant_id)
        .await?
        .ok_or_else(not_found)?;
    view.refunds = store::refunds::list(&mut tx, payment_id).await?;
    tx.commit().await?;
    let resp = (StatusCode::OK, Json(view)).into_response();
    Ok(if replay { replayed(resp) } else { resp })
}
