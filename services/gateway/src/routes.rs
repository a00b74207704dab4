//! Public routes: `POST /payments`, `GET /payments`, `GET /payments/{payment_id}`,
//! `POST /payments/{payment_id}/refunds`, and `GET /openapi.json` describing them (the
//! webhook and event routes are `webhooks`'s).

use crate::auth::{KeyStore, Merchant};
use crate::idempotency::{self, Begin, CachedResponse, IdempotencyCache};
use crate::validate;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use sagapay_domain::events::CaptureMethod;
use sagapay_domain::AmountMinor;
use sagapay_service_kit::api_error::{ApiError, ErrorDocument, ErrorType};
use sagapay_service_kit::http::{RequestContext, CORRELATION_ID, TRACEPARENT};
use sagapay_service_kit::ServiceKeys;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub orchestrator_url: String,
    pub notification_url: String,
    pub service_keys: ServiceKeys,
    pub max_amount: sagapay_domain::PerCurrency,
    pub rate_limit: std::sync::Arc<crate::ratelimit::RateLimit>,
    pub key_cache: std::sync::Arc<crate::keycache::KeyCache>,
    pub lookup_budget: std::sync::Arc<crate::ratelimit::RateLimit<std::net::IpAddr>>,
    pub production: bool,
    pub idempotency: std::sync::Arc<IdempotencyCache>,
}

impl KeyStore for AppState {
    fn key_pool(&self) -> &PgPool {
        &self.pool
    }
    fn rate_limit(&self) -> &crate::ratelimit::RateLimit {
        &self.rate_limit
    }
    fn key_cache(&self) -> &crate::keycache::KeyCache {
        &self.key_cache
    }
    fn lookup_budget(&self) -> &crate::ratelimit::RateLimit<std::net::IpAddr> {
        &self.lookup_budget
    }
    fn production(&self) -> bool {
        self.production
    }
}

pub fn routes(state: AppState, body_limit_bytes: usize) -> Router {
    Router::new()
        .route("/payments", post(create_payment).get(list_payments))
        .route("/payments/{payment_id}", get(get_payment))
        .route("/payments/{payment_id}/refunds", post(create_refund))
        .route("/payments/{payment_id}/capture", post(capture_payment))
        .route("/payments/{payment_id}/cancel", post(cancel_payment))
        .merge(crate::webhooks::routes())
        .layer(DefaultBodyLimit::max(body_limit_bytes))
        .layer(axum::middleware::from_fn(crate::ratelimit::quota_headers))
        .layer(axum::middleware::from_fn_with_state(
            body_limit_bytes,
            refuse_oversized,
        ))
        .route("/openapi.json", get(crate::openapi::document))
        .with_state(state)
}

/// Bodies up to this size are read to the end before a 413 is sent.
const DRAIN_MAX_BYTES: u64 = 1 << 20;

/// A body announced larger than the limit gets 413 before anything else runs. The body is read
/// and discarded first (up to 1 MiB, for at most a second): closing the connection with the
/// client still sending makes its kernel reset the connection, and the client may never read
/// the 413 (the "lingering close" of HTTP servers).
async fn refuse_oversized(
    State(limit_bytes): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match announced {
        Some(len) if len > limit_bytes as u64 => {
            if len <= DRAIN_MAX_BYTES {
                use futures::StreamExt;
                let mut stream = req.into_body().into_data_stream();
                let drain = async { while let Some(Ok(_)) = stream.next().await {} };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), drain).await;
            }
            ApiError::body_too_large(limit_bytes).into_response()
        }
        _ => next.run(req).await,
    }
}

pub(crate) fn require_json(headers: &HeaderMap) -> Result<(), ApiError> {
    let ct = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = ct.split(';').map(str::trim);
    let mime = parts.next().unwrap_or("");
    // JSON is UTF-8 (RFC 8259); a charset, if named, must say so.
    let utf8 = parts.all(|p| {
        p.split_once('=').is_none_or(|(k, v)| {
            !k.trim().eq_ignore_ascii_case("charset")
                || v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        })
    });
    if mime.eq_ignore_ascii_case("application/json") && utf8 {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorType::InvalidRequestError,
            "unsupported_media_type",
            "send the body as application/json (UTF-8)",
        ))
    }
}

/// Creates a payment. The answer is `201` with the payment id, also for a retry with the
/// same key and body (then with `idempotent-replayed: true`).
#[utoipa::path(
    post,
    path = "/payments",
    tag = "payments",
    request_body = crate::openapi::CreatePaymentBody,
    params(crate::openapi::IdempotencyKeyHeader),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created, or the replay of an earlier identical request", body = crate::openapi::PaymentCreated),
        (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked API key", body = crate::openapi::ErrorResponse),
        (status = 409, description = "The same request is still in flight", body = crate::openapi::ErrorResponse),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorResponse),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorResponse),
        (status = 422, description = "Idempotency key reused with a different request", body = crate::openapi::ErrorResponse),
        (status = 429, description = "Rate limited", body = crate::openapi::ErrorResponse),
        (status = 503, description = "Try again with the same idempotency key", body = crate::openapi::ErrorResponse),
    )
)]
pub(crate) async fn create_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let header_key = header_idempotency_key(&headers)?;
    let req = validate::payment_request(&body, header_key, &state.max_amount)?;
    let amount = req.amount.get().to_string();
    let mut fingerprint_parts: Vec<&str> = vec![
        &req.customer_id,
        &amount,
        req.currency.as_str(),
        &req.payment_method,
    ];
    // Only when not the default: automatic payments keep their fingerprints.
    if req.capture_method == CaptureMethod::Manual {
        fingerprint_parts.push("manual");
    }
    let fingerprint = idempotency::fingerprint(&fingerprint_parts);
    let forwarded = json!({
        "customer_id": req.customer_id,
        "amount_cents": req.amount.get(),
        "currency": req.currency.as_str(),
        "idempotency_key": req.idempotency_key,
        "payment_method": req.payment_method,
        "capture_method": req.capture_method,
    });
    let call = internal(
        &state,
        &ctx,
        reqwest::Method::POST,
        "/internal/payments".to_owned(),
        merchant.merchant_id,
        Some(&forwarded),
    );
    idempotent(
        &state,
        merchant,
        "payments",
        &req.idempotency_key,
        &fingerprint,
        call,
    )
    .await
}

/// A payment of the calling merchant, with its timeline and refunds. Another merchant's
/// payment is answered exactly like one that does not exist.
#[utoipa::path(
    get,
    path = "/payments/{payment_id}",
    tag = "payments",
    params(("payment_id" = String, Path, description = "The payment's id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The payment", body = crate::openapi::Payment),
        (status = 401, description = "Missing, invalid or revoked API key", body = crate::openapi::ErrorResponse),
        (status = 404, description = "No such payment for this merchant", body = crate::openapi::ErrorResponse),
        (status = 429, description = "Rate limited", body = crate::openapi::ErrorResponse),
    )
)]
pub(crate) async fn get_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(payment_id): Path<String>,
) -> Result<Response, ApiError> {
    // Not a UUID: it cannot name a payment of this merchant.
    let payment_id = Uuid::parse_str(&payment_id).map_err(|_| {
        ApiError::not_found("payment_not_found", "no such payment").with_param("payment_id")
    })?;
    forward(
        &state,
        Peer::Orchestrator,
        &ctx,
        merchant,
        reqwest::Method::GET,
        format!("/internal/payments/{payment_id}"),
        None,
    )
    .await
}

/// The merchant's payments, newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/payments",
    tag = "payments",
    params(
        ("limit" = Option<i64>, Query, description = "1 to 100, default 20"),
        ("starting_after" = Option<String>, Query, description = "The last payment id of the previous page"),
        ("status" = Option<String>, Query, description = "Only payments in this status"),
        ("created_gte" = Option<i64>, Query, description = "Created at or after (unix seconds)"),
        ("created_lt" = Option<i64>, Query, description = "Created before (unix seconds)"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "{\"data\": [payment without timeline], \"has_more\": bool}", content_type = "application/json"),
        (status = 400, description = "Invalid filter or cursor", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked API key", body = crate::openapi::ErrorResponse),
        (status = 429, description = "Rate limited", body = crate::openapi::ErrorResponse),
    )
)]
pub(crate) async fn list_payments(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let query = crate::webhooks::query_suffix(query)?;
    forward(
        &state,
        Peer::Orchestrator,
        &ctx,
        merchant,
        reqwest::Method::GET,
        format!("/internal/payments{query}"),
        None,
    )
    .await
}

/// Refunds all or part of a settled payment.
#[utoipa::path(
    post,
    path = "/payments/{payment_id}/refunds",
    tag = "refunds",
    request_body = crate::openapi::CreateRefundBody,
    params(
        ("payment_id" = String, Path, description = "The payment to refund"),
        crate::openapi::IdempotencyKeyHeader,
    ),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Refund accepted, or the replay of an earlier identical request", body = crate::openapi::Refund),
        (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked API key", body = crate::openapi::ErrorResponse),
        (status = 404, description = "No such payment for this merchant", body = crate::openapi::ErrorResponse),
        (status = 409, description = "The payment cannot be refunded now, or the same request is in flight", body = crate::openapi::ErrorResponse),
        (status = 413, description = "Body too large", body = crate::openapi::ErrorResponse),
        (status = 415, description = "Not application/json", body = crate::openapi::ErrorResponse),
        (status = 422, description = "Amount above what is left to refund, or idempotency key reused", body = crate::openapi::ErrorResponse),
        (status = 429, description = "Rate limited", body = crate::openapi::ErrorResponse),
        (status = 503, description = "Try again with the same idempotency key", body = crate::openapi::ErrorResponse),
    )
)]
pub(crate) async fn create_refund(
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
    // What is left to refund bounds the amount; the orchestrator checks it.
    let req = validate::refund_request(&body, header_key, AmountMinor::HARD_MAX_MINOR)?;
    let amount = req.amount.get().to_string();
    let fingerprint = idempotency::fingerprint(&[&amount, &req.reason]);
    let call = internal(
        &state,
        &ctx,
        reqwest::Method::POST,
        format!("/internal/payments/{payment_id}/refunds"),
        merchant.merchant_id,
        Some(&json!({
            "amount_cents": req.amount.get(),
            "idempotency_key": req.idempotency_key,
            "reason": req.reason,
        })),
    );
    idempotent(
        &state,
        merchant,
        &format!("refunds:{payment_id}"),
        &req.idempotency_key,
        &fingerprint,
        call,
    )
    .await
}

/// The services the gateway calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    Orchestrator,
    Notification,
}

/// What a merchant may do with an authorized manual payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ManualAction {
    Capture,
    Cancel,
}

impl ManualAction {
    /// Its path segment, and its name in the idempotency scope and fingerprint.
    fn as_str(self) -> &'static str {
        match self {
            ManualAction::Capture => "capture",
            ManualAction::Cancel => "cancel",
        }
    }
}

/// Captures an authorized manual payment, all or part (`amount_cents`, at most the
/// authorized amount); the rest of the hold is released.
#[utoipa::path(
    post,
    path = "/payments/{payment_id}/capture",
    tag = "payments",
    request_body = crate::openapi::CaptureBody,
    params(
        ("payment_id" = String, Path, description = "The payment to capture"),
        crate::openapi::IdempotencyKeyHeader,
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Capture accepted (the payment goes on to CAPTURED and SETTLED), or the replay of the same request", body = crate::openapi::Payment),
        (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse),
        (status = 404, description = "No such payment for this merchant", body = crate::openapi::ErrorResponse),
        (status = 409, description = "Not a manual payment, not AUTHORIZED, or already captured or canceled", body = crate::openapi::ErrorResponse),
        (status = 422, description = "Amount above the authorized amount", body = crate::openapi::ErrorResponse),
    )
)]
pub(crate) async fn capture_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    manual_action(
        &state,
        &ctx,
        merchant,
        &payment_id,
        &headers,
        &body,
        ManualAction::Capture,
    )
    .await
}

/// Cancels an authorized manual payment: its authorization is voided and it ends CANCELED.
#[utoipa::path(
    post,
    path = "/payments/{payment_id}/cancel",
    tag = "payments",
    params(
        ("payment_id" = String, Path, description = "The payment to cancel"),
        crate::openapi::IdempotencyKeyHeader,
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Cancel accepted (the payment goes on to CANCELED), or the replay of the same request", body = crate::openapi::Payment),
        (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse),
        (status = 404, description = "No such payment for this merchant", body = crate::openapi::ErrorResponse),
        (status = 409, description = "Not a manual payment, not AUTHORIZED, or already captured or canceled", body = crate::openapi::ErrorResponse),
    )
)]
pub(crate) async fn cancel_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(payment_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    manual_action(
        &state,
        &ctx,
        merchant,
        &payment_id,
        &headers,
        &body,
        ManualAction::Cancel,
    )
    .await
}

/// A capture or cancel: checked here, sent through the idempotency fast path to the
/// orchestrator, which records it once.
async fn manual_action(
    state: &AppState,
    ctx: &RequestContext,
    merchant: Merchant,
    payment_id: &str,
    headers: &HeaderMap,
    body: &[u8],
    action: ManualAction,
) -> Result<Response, ApiError> {
    let payment_id = Uuid::parse_str(payment_id).map_err(|_| {
        ApiError::not_found("payment_not_found", "no such payment").with_param("payment_id")
    })?;
    if !body.is_empty() {
        require_json(headers)?;
    }
    let header_key = header_idempotency_key(headers)?;
    let req = validate::capture_request(body, header_key, action == ManualAction::Capture)?;
    let action = action.as_str();
    let amount = req.amount.map(|a| a.get().to_string()).unwrap_or_default();
    let fingerprint = idempotency::fingerprint(&[action, &amount]);
    let mut forwarded = json!({ "idempotency_key": req.idempotency_key });
    if let Some(a) = req.amount {
        forwarded["amount_cents"] = json!(a.get());
    }
    let call = internal(
        state,
        ctx,
        reqwest::Method::POST,
        format!("/internal/payments/{payment_id}/{action}"),
        merchant.merchant_id,
        Some(&forwarded),
    );
    idempotent(
        state,
        merchant,
        &format!("{action}:{payment_id}"),
        &req.idempotency_key,
        &fingerprint,
        call,
    )
    .await
}

/// A call to a peer's internal API for `merchant`, signed with the gateway's service
/// credential (the merchant travels as the signed claim, never in the body).
fn internal_to(
    state: &AppState,
    peer: Peer,
    ctx: &RequestContext,
    method: reqwest::Method,
    path_and_query: String,
    merchant: Uuid,
    body: Option<&serde_json::Value>,
) -> reqwest::RequestBuilder {
    let bytes = body
        .map(|b| serde_json::to_vec(b).expect("a JSON value serializes"))
        .unwrap_or_default();
    let signed = state.service_keys.sign(
        crate::SERVICE,
        method.as_str(),
        &path_and_query,
        Some(merchant),
        &bytes,
        chrono::Utc::now().timestamp(),
    );
    let mut call = state
        .client
        .request(
            method,
            format!(
                "{}{path_and_query}",
                match peer {
                    Peer::Orchestrator => &state.orchestrator_url,
                    Peer::Notification => &state.notification_url,
                }
            ),
        )
        .header(CORRELATION_ID, &ctx.correlation_id)
        .header(TRACEPARENT, &ctx.traceparent);
    for (name, value) in signed {
        call = call.header(name, value);
    }
    if body.is_some() {
        call = call
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes);
    }
    call
}

/// A read or write a peer answers for the merchant, its answer passed on (errors re-issued
/// as the gateway's own).
pub(crate) async fn forward(
    state: &AppState,
    peer: Peer,
    ctx: &RequestContext,
    merchant: Merchant,
    method: reqwest::Method,
    path_and_query: String,
    body: Option<&serde_json::Value>,
) -> Result<Response, ApiError> {
    let resp = internal_to(
        state,
        peer,
        ctx,
        method,
        path_and_query,
        merchant.merchant_id,
        body,
    )
    .send()
    .await
    .map_err(upstream_unavailable)?;
    Ok(upstream(resp).await?.into_response())
}

/// [`internal_to`] the orchestrator.
fn internal(
    state: &AppState,
    ctx: &RequestContext,
    method: reqwest::Method,
    path_and_query: String,
    merchant: Uuid,
    body: Option<&serde_json::Value>,
) -> reqwest::RequestBuilder {
    internal_to(
        state,
        Peer::Orchestrator,
        ctx,
        method,
        path_and_query,
        merchant,
        body,
    )
}

/// Sends a creating request through the idempotency fast path (see `idempotency`).
async fn idempotent(
    state: &AppState,
    merchant: Merchant,
    scope: &str,
    idempotency_key: &str,
    fingerprint: &str,
    call: reqwest::RequestBuilder,
) -> Result<Response, ApiError> {
    let claim = match state
        .idempotency
        .begin(merchant.merchant_id, scope, idempotency_key, fingerprint)
        .await
    {
        Begin::Replay(cached) => {
            return Ok(Upstream {
                status: StatusCode::from_u16(cached.status).unwrap_or(StatusCode::OK),
                body: Bytes::from(cached.body),
                replayed: true,
            }
            .into_response())
        }
        Begin::Reused => return Err(key_reused()),
        Begin::InFlight => {
            let mut resp = ApiError::new(
                StatusCode::CONFLICT,
                ErrorType::IdempotencyError,
                "idempotency_request_in_progress",
                "a request with this idempotency key is still being processed; retry shortly",
            )
            .with_param("idempotency_key")
            .into_response();
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return Ok(resp);
        }
        Begin::Claimed(claim) | Begin::Durable(Some(claim)) => Some(claim),
        Begin::Durable(None) => None,
    };
    let answer = match call.send().await {
        Ok(resp) => upstream(resp).await,
        Err(e) => Err(upstream_unavailable(e)),
    };
    if let Some(claim) = claim {
        let cached = answer.as_ref().ok().and_then(|a| {
            Some(CachedResponse {
                status: a.status.as_u16(),
                body: String::from_utf8(a.body.to_vec()).ok()?,
            })
        });
        state.idempotency.finish(claim, cached).await;
    }
    Ok(answer?.into_response())
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        ErrorType::IdempotencyError,
        "idempotency_key_reused",
        "this idempotency key was already used for a different request",
    )
    .with_param("idempotency_key")
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

/// A successful answer of the orchestrator, passed on as it is.
struct Upstream {
    status: StatusCode,
    body: Bytes,
    replayed: bool,
}

impl IntoResponse for Upstream {
    fn into_response(self) -> Response {
        let mut out = (self.status, self.body).into_response();
        out.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.replayed {
            out.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        out
    }
}

/// Reads the orchestrator's answer. Errors are re-issued as the gateway's own, so they carry
/// the gateway's request id.
async fn upstream(resp: reqwest::Response) -> Result<Upstream, ApiError> {
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let replayed = resp.headers().contains_key("idempotent-replayed");
    let body = resp.bytes().await.map_err(upstream_unavailable)?;
    if status.is_client_error() || status.is_server_error() {
        return Err(match serde_json::from_slice::<ErrorDocument>(&body) {
            Ok(doc) => ApiError {
                status,
                body: doc.error,
            },
            Err(_) => {
                ApiError::unavailable("upstream_error", "the payment service failed; retry later")
            }
        });
    }
    Ok(Upstream {
        status,
        body,
        replayed,
    })
}
