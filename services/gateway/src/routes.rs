//! Public routes: `POST /payments` and `GET /payments/{payment_id}`.

use crate::auth::{KeyStore, Merchant};
use crate::validate;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use sagapay_service_kit::api_error::{ApiError, ErrorDocument, ErrorType};
use sagapay_service_kit::http::{RequestContext, CORRELATION_ID, TRACEPARENT};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub orchestrator_url: String,
    pub max_amount_minor: i64,
    pub rate_limit: std::sync::Arc<crate::ratelimit::RateLimit>,
}

impl KeyStore for AppState {
    fn key_pool(&self) -> &PgPool {
        &self.pool
    }
    fn rate_limit(&self) -> &crate::ratelimit::RateLimit {
        &self.rate_limit
    }
}

pub fn routes(state: AppState, body_limit_bytes: usize) -> Router {
    Router::new()
        .route("/payments", post(create_payment))
        .route("/payments/{payment_id}", get(get_payment))
        .route("/payments/{payment_id}/refunds", post(create_refund))
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(axum::middleware::from_fn(crate::ratelimit::quota_headers))
        .with_state(state)
}

fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::InvalidRequestError,
            "unsupported_media_type",
            "send the body as application/json",
        ))
    }
}

async fn create_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let header_key = header_idempotency_key(&headers)?;
    let req = validate::payment_request(&body, header_key, state.max_amount_minor)?;
    let forwarded = json!({
        "merchant_id": merchant.merchant_id,
        "customer_id": req.customer_id,
        "amount_cents": req.amount.get(),
        "currency": req.currency.as_str(),
        "idempotency_key": req.idempotency_key,
        "payment_method": req.payment_method,
    });
    let resp = state
        .client
        .post(format!("{}/internal/payments", state.orchestrator_url))
        .header(CORRELATION_ID, &ctx.correlation_id)
        .header(TRACEPARENT, &ctx.traceparent)
        .json(&forwarded)
        .send()
        .await
        .map_err(upstream_unavailable)?;
    relay(resp).await
}

async fn get_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(payment_id): Path<String>,
) -> Result<Response, ApiError> {
    // Not a UUID: it cannot name a payment of this merchant.
    let payment_id = Uuid::parse_str(&payment_id).map_err(|_| {
        ApiError::not_found("payment_not_found", "no such payment").with_param("payment_id")
    })?;
    let resp = state
        .client
        .get(format!(
            "{}/internal/payments/{payment_id}",
            state.orchestrator_url
        ))
        .query(&[("merchant_id", merchant.merchant_id.to_string())])
        .header(CORRELATION_ID, &ctx.correlation_id)
        .header(TRACEPARENT, &ctx.traceparent)
        .send()
        .await
        .map_err(upstream_unavailable)?;
    relay(resp).await
}

async fn create_refund(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let payment_id = Uuid::parse_str(&payment_id).map_err(|_| {
        ApiError::not_found("payment_not_found", "no such payment").with_param("payment_id")
    })?;
    require_json(&headers)?;
    let header_key = header_idempotency_key(&headers)?;
    let req = validate::refund_request(&body, header_key)?;
    let resp = state
        .client
        .post(format!(
            "{}/internal/payments/{payment_id}/refunds",
            state.orchestrator_url
        ))
        .header(CORRELATION_ID, &ctx.correlation_id)
        .header(TRACEPARENT, &ctx.traceparent)
        .json(&json!({
            "merchant_id": merchant.merchant_id,
            "amount_cents": req.amount.get(),
            "idempotency_key": req.idempotency_key,
            "reason": req.reason,
        }))
        .send()
        .await
        .map_err(upstream_unavailable)?;
    relay(resp).await
}

/// The `Idempotency-Key` header, if sent (validated with the body by `validate`).
fn header_idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|v| {
            v.to_str().map_err(|_| {
                ApiError::invalid(
                    "invalid_idempotency_key",
                    "the idempotency key must be printable ASCII",
                )
                .with_param("Idempotency-Key")
            })
        })
        .transpose()
}

fn upstream_unavailable(e: reqwest::Error) -> ApiError {
    tracing::error!(error = %e, "orchestrator unreachable");
    ApiError::unavailable(
        "upstream_unavailable",
        "the payment service is unavailable; retry with the same idempotency key",
    )
}

/// Passes the orchestrator's answer on. Errors are re-issued as the gateway's own, so they
/// carry the gateway's request id.
async fn relay(resp: reqwest::Response) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let replayed = resp.headers().get("idempotent-replayed").cloned();
    let bytes = resp.bytes().await.map_err(upstream_unavailable)?;
    if status.is_client_error() || status.is_server_error() {
        return Err(match serde_json::from_slice::<ErrorDocument>(&bytes) {
            Ok(doc) => ApiError {
                status,
                body: doc.error,
            },
            Err(_) => {
                ApiError::unavailable("upstream_error", "the payment service failed; retry later")
            }
        });
    }
    let mut out = (status, bytes).into_response();
    out.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(v) = replayed {
        if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
            out.headers_mut().insert("idempotent-replayed", v);
        }
    }
    Ok(out)
}
