//! What an operator does to a payment: `retry` sends its outstanding command again; `fail`
//! ends it as the saga would (voiding or refunding what was taken); `accept` keeps a capture
//! the provider made of another amount. Each is decided by the saga's own `decide` and
//! written in one transaction with what it sends.

use super::super::state::AppState;
use super::{field_code, not_found, operator, payment_path};
use crate::saga::decide::decide;
use crate::saga::decision::{Decision, Effect, Input, OperatorRequest, RefundEffect};
use crate::saga::shell::Origin;
use crate::store::Compensation;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use sagapay_domain::{OperatorName, OperatorReason, PaymentStatus};
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::ApiError;
use sagapay_service_kit::json_body::parse_body;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryRequest {
    /// Who asks (default "an operator").
    requested_by: Option<OperatorName>,
}

/// An operator's request that ends a payment (fail, accept): why, and who asks.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EndRequest {
    reason: OperatorReason,
    /// Who asks (default "an operator").
    requested_by: Option<OperatorName>,
}

impl EndRequest {
    /// Who asks and why.
    fn who_and_why(self) -> (String, String) {
        (operator(self.requested_by), self.reason.trim().to_owned())
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Action {
    payment_id: Uuid,
    status: PaymentStatus,
    /// What was done: `resent`, `failed`, `voiding`, `refunding`, `accepted`.
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

/// An operator's request that ends the payment of path `raw` (fail, accept), made by
/// `request` from who asks and why: parsed, decided and written. The payment, who asked, the
/// status it was in and the decision.
async fn end(
    state: &AppState,
    raw: &str,
    body: &[u8],
    request: fn(String, String) -> OperatorRequest,
) -> Result<(Uuid, String, PaymentStatus, Decision), ApiError> {
    let payment_id = payment_path(raw)?;
    let req: EndRequest = parse_body(body, field_code)?;
    let (who, why) = req.who_and_why();
    let (status, decision) = act(state, payment_id, request(who.clone(), why)).await?;
    Ok((payment_id, who, status, decision))
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

/// Sends the payment's outstanding command (and its refunds' in flight) again now, with a
/// fresh count of re-sends and the flag cleared. The body is optional.
#[utoipa::path(post, path = "/ops/payments/{payment_id}/retry", tag = "payments",
    params(("payment_id" = String, Path, format = Uuid, description = "The payment")),
    request_body(content = RetryRequest, description = "Optional"),
    security(("ops_key" = [])),
    responses(
        (status = 200, description = "Sent again", body = Action),
        (status = 404, description = "No such payment", body = sagapay_service_kit::api_error::ErrorDocument),
        (status = 409, description = "Nothing to retry in this state", body = sagapay_service_kit::api_error::ErrorDocument),
        (status = 422, description = "Refused with these values", body = sagapay_service_kit::api_error::ErrorDocument),
    ))]
pub(super) async fn retry(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let payment_id = payment_path(&raw)?;
    let req: RetryRequest = parse_body(&body, field_code)?;
    let who = operator(req.requested_by);
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

/// Ends the payment as the saga would: before a risk decision it fails at once; an
/// authorization is voided and a capture refunded (REVERSED when the provider confirms); a
/// payment whose void the provider refused ends FAILED.
#[utoipa::path(post, path = "/ops/payments/{payment_id}/fail", tag = "payments",
    params(("payment_id" = String, Path, format = Uuid, description = "The payment")),
    request_body = EndRequest,
    security(("ops_key" = [])),
    responses(
        (status = 200, description = "Failed, or being undone", body = Action),
        (status = 404, description = "No such payment", body = sagapay_service_kit::api_error::ErrorDocument),
        (status = 409, description = "Not in a state an operator can end", body = sagapay_service_kit::api_error::ErrorDocument),
        (status = 422, description = "Refused with these values", body = sagapay_service_kit::api_error::ErrorDocument),
    ))]
pub(super) async fn fail(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (payment_id, who, status, decision) = end(&state, &raw, &body, |who, why| {
        OperatorRequest::Fail { who, why }
    })
    .await?;
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

/// Keeps a capture the provider made of another amount than was asked: posted for what was
/// captured, the payment settles for it.
#[utoipa::path(post, path = "/ops/payments/{payment_id}/accept", tag = "payments",
    params(("payment_id" = String, Path, format = Uuid, description = "The payment")),
    request_body = EndRequest,
    security(("ops_key" = [])),
    responses(
        (status = 200, description = "Accepted", body = Action),
        (status = 404, description = "No such payment", body = sagapay_service_kit::api_error::ErrorDocument),
        (status = 409, description = "No capture of another amount to accept", body = sagapay_service_kit::api_error::ErrorDocument),
        (status = 422, description = "Refused with these values", body = sagapay_service_kit::api_error::ErrorDocument),
    ))]
pub(super) async fn accept(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (payment_id, who, status, decision) = end(&state, &raw, &body, |who, why| {
        OperatorRequest::Accept { who, why }
    })
    .await?;
    tracing::warn!(%payment_id, operator = %who, "operator accepted the capture");
    Ok(Json(Action::ended(payment_id, status, "accepted", &decision)).into_response())
}
