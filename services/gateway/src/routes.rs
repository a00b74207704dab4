//! Public routes: `POST /payments`, `GET /payments`, `GET /payments/{payment_id}`,
//! `POST /payments/{payment_id}/refunds`, capture and cancel (the webhook and event routes
//! are `webhooks`'s, `GET /openapi.json` describing them all is `openapi`'s).

use crate::auth::Merchant;
use crate::idempotency::{Begin, CachedResponse};
use crate::peer::{
    forward, internal_to, require_json, upstream, upstream_unavailable, Peer, Upstream,
};
use crate::shedding::Scope;
use crate::state::AppState;
use crate::validate;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use sagapay_api_models::requests::manual_action_fingerprint;
use sagapay_api_models::{
    CancelRequest, CaptureRequest, CreatePaymentRequest, CreateRefundRequest,
};
use sagapay_service_kit::api_error::{ApiError, ErrorType};
use sagapay_service_kit::http::RequestContext;
use uuid::Uuid;

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
            sagapay_service_kit::body_limit::refuse_oversized,
        ))
        .with_state(state)
}

/// Creates a payment. The answer is `201` with the payment id, also for a retry with the
/// same key and body (then with `idempotent-replayed: true`).
#[utoipa::path(
    post,
    path = "/payments",
    tag = "payments",
    request_body = CreatePaymentRequest,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created, or the replay of an earlier identical request", body = crate::schemas::PaymentCreated),
        (status = 400, description = "Invalid request", body = crate::schemas::ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked API key", body = crate::schemas::ErrorResponse),
        (status = 409, description = "The same request is still in flight", body = crate::schemas::ErrorResponse),
        (status = 413, description = "Body too large", body = crate::schemas::ErrorResponse),
        (status = 415, description = "Not application/json", body = crate::schemas::ErrorResponse),
        (status = 422, description = "Idempotency key reused with a different request, or the amount above its currency's limit (`invalid_amount`)", body = crate::schemas::ErrorResponse),
        (status = 429, description = "Rate limited", body = crate::schemas::ErrorResponse),
        (status = 503, description = "Try again with the same idempotency key after `Retry-After`: a service is unavailable, or the pipeline or this merchant's share of it is full (`overloaded`)", body = crate::schemas::ErrorResponse,
            headers(
                ("Retry-After" = u32, description = "Seconds to wait before the retry"),
                ("sagapay-overload-scope" = String, description = "With `overloaded`: `merchant` (this merchant's own limit of payments in flight) or `pipeline` (the platform's)"),
            )),
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
    let req: CreatePaymentRequest = validate::request(&body, header_key)?;
    validate::within_limit(req.amount_cents, req.currency, &state.max_amount)?;
    let fingerprint = req.fingerprint(merchant.merchant_id);
    let forwarded = serde_json::to_value(&req).expect("a request serializes");
    let call = internal_to(
        &state,
        Peer::Orchestrator,
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
        Work::NewPayment,
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
        (status = 200, description = "The payment", body = crate::schemas::Payment),
        (status = 401, description = "Missing, invalid or revoked API key", body = crate::schemas::ErrorResponse),
        (status = 404, description = "No such payment for this merchant", body = crate::schemas::ErrorResponse),
        (status = 429, description = "Rate limited", body = crate::schemas::ErrorResponse),
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
    params(sagapay_api_models::ListPaymentsQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of payments, newest first", body = crate::schemas::PaymentPage),
        (status = 400, description = "Invalid filter or cursor", body = crate::schemas::ErrorResponse),
        (status = 404, description = "The cursor names no payment of this merchant", body = crate::schemas::ErrorResponse),
    )
)]
pub(crate) async fn list_payments(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<Response, ApiError> {
    let query = crate::peer::query_suffix(query)?;
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
    request_body = CreateRefundRequest,
    params(("payment_id" = String, Path, description = "The payment to refund")),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Refund accepted, or the replay of an earlier identical request", body = crate::schemas::Refund),
        (status = 400, description = "Invalid request", body = crate::schemas::ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked API key", body = crate::schemas::ErrorResponse),
        (status = 404, description = "No such payment for this merchant", body = crate::schemas::ErrorResponse),
        (status = 409, description = "The payment cannot be refunded now, or the same request is in flight", body = crate::schemas::ErrorResponse),
        (status = 413, description = "Body too large", body = crate::schemas::ErrorResponse),
        (status = 415, description = "Not application/json", body = crate::schemas::ErrorResponse),
        (status = 422, description = "Amount above what is left to refund, or idempotency key reused", body = crate::schemas::ErrorResponse),
        (status = 429, description = "Rate limited", body = crate::schemas::ErrorResponse),
        (status = 503, description = "Try again with the same idempotency key", body = crate::schemas::ErrorResponse),
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
    let req: CreateRefundRequest = validate::request(&body, header_key)?;
    let fingerprint = req.fingerprint(merchant.merchant_id);
    let call = internal_to(
        &state,
        Peer::Orchestrator,
        &ctx,
        reqwest::Method::POST,
        format!("/internal/payments/{payment_id}/refunds"),
        merchant.merchant_id,
        Some(&serde_json::to_value(&req).expect("a request serializes")),
    );
    idempotent(
        &state,
        merchant,
        &format!("refunds:{payment_id}"),
        &req.idempotency_key,
        &fingerprint,
        call,
        Work::OnPayment,
    )
    .await
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
    request_body = CaptureRequest,
    params(("payment_id" = String, Path, description = "The payment to capture")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Capture accepted (the payment goes on to CAPTURED and SETTLED), or the replay of the same request", body = crate::schemas::Payment),
        (status = 400, description = "Invalid request", body = crate::schemas::ErrorResponse),
        (status = 404, description = "No such payment for this merchant", body = crate::schemas::ErrorResponse),
        (status = 409, description = "Not a manual payment, not AUTHORIZED, or already captured or canceled", body = crate::schemas::ErrorResponse),
        (status = 422, description = "Amount above the authorized amount", body = crate::schemas::ErrorResponse),
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
    request_body = CancelRequest,
    params(("payment_id" = String, Path, description = "The payment to cancel")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Cancel accepted (the payment goes on to CANCELED), or the replay of the same request", body = crate::schemas::Payment),
        (status = 400, description = "Invalid request", body = crate::schemas::ErrorResponse),
        (status = 404, description = "No such payment for this merchant", body = crate::schemas::ErrorResponse),
        (status = 409, description = "Not a manual payment, not AUTHORIZED, or already captured or canceled", body = crate::schemas::ErrorResponse),
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
    let (forwarded, amount, key) = match action {
        ManualAction::Capture => {
            let req: CaptureRequest = validate::request(body, header_key)?;
            (
                serde_json::to_value(&req),
                req.amount_cents,
                req.idempotency_key,
            )
        }
        ManualAction::Cancel => {
            let req: CancelRequest = validate::request(body, header_key)?;
            (serde_json::to_value(&req), None, req.idempotency_key)
        }
    };
    let forwarded = forwarded.expect("a request serializes");
    let action = action.as_str();
    let fingerprint = manual_action_fingerprint(action, amount);
    let call = internal_to(
        state,
        Peer::Orchestrator,
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
        &key,
        &fingerprint,
        call,
        Work::OnPayment,
    )
    .await
}

/// What a creating request asks for: new work, which may be shed under overload (see
/// `shedding`), or work on a payment already accepted, which never is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    NewPayment,
    OnPayment,
}

/// Sends a creating request through the idempotency fast path (see `idempotency`).
async fn idempotent(
    state: &AppState,
    merchant: Merchant,
    scope: &str,
    idempotency_key: &str,
    fingerprint: &str,
    call: reqwest::RequestBuilder,
    work: Work,
) -> Result<Response, ApiError> {
    let claim = match state
        .idempotency
        .begin(merchant.merchant_id, scope, idempotency_key, fingerprint)
        .await
    {
        Begin::Replay(cached) => return Ok(replay(cached)),
        Begin::Reused => return Err(key_reused()),
        Begin::InFlight => return Ok(in_flight()),
        Begin::Claimed(claim) if work == Work::NewPayment => {
            if let Err(window) = admit(state, merchant.merchant_id, &claim).await {
                // Refused here, key given back.
                state.idempotency.finish(claim, None).await;
                return Ok(window.mark(shed(window).into_response()));
            }
            Some(claim)
        }
        Begin::Claimed(claim) | Begin::Durable(Some(claim)) => Some(claim),
        Begin::Durable(None) => None,
    };
    let sent = send(call).await;
    if work == Work::NewPayment {
        if let Some(overload) = sent.overloaded {
            state.shedding.overloaded(overload, merchant.merchant_id);
        }
    }
    if let Some(claim) = claim {
        if work == Work::NewPayment && sent.unknown {
            state.idempotency.remember_forwarded(&claim).await;
        }
        let cached = sent.answer.as_ref().ok().and_then(|a| {
            Some(CachedResponse {
                status: a.status.as_u16(),
                body: String::from_utf8(a.body.to_vec()).ok()?,
            })
        });
        state.idempotency.finish(claim, cached).await;
    }
    match (sent.answer, sent.overloaded) {
        (Ok(answer), _) => Ok(answer.into_response()),
        // The merchant hears which limit it hit, as the orchestrator said it.
        (Err(e), Some(scope)) => Ok(scope.mark(e.into_response())),
        (Err(e), None) => Err(e),
    }
}

/// A new payment while this gateway sheds: refused here when a window covers its merchant,
/// unless an earlier attempt with its key reached the orchestrator with an unknown outcome.
/// Then the orchestrator may hold the payment and is asked (it answers replays even while
/// overloaded); a refusal here would turn a payment that exists into a 503 for every retry
/// of the window.
async fn admit(
    state: &AppState,
    merchant_id: Uuid,
    claim: &crate::idempotency::Claim,
) -> Result<(), Scope> {
    let Some(window) = state.shedding.window(merchant_id) else {
        return Ok(());
    };
    if state.idempotency.was_forwarded(claim).await {
        state.shedding.bypassed();
        return Ok(());
    }
    state.shedding.shed(window);
    Err(window)
}

/// An answer replayed from the fast path, as it was.
fn replay(cached: CachedResponse) -> Response {
    Upstream {
        status: StatusCode::from_u16(cached.status).unwrap_or(StatusCode::OK),
        body: Bytes::from(cached.body),
        replayed: true,
    }
    .into_response()
}

/// 409: the same request is still being processed.
fn in_flight() -> Response {
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
    resp
}

/// The orchestrator's answer to a creating request, and what the gateway learns from it.
struct Sent {
    answer: Result<Upstream, ApiError>,
    /// It answered 503 `overloaded`: whose limit it hit (its `sagapay-overload-scope`).
    overloaded: Option<Scope>,
    /// It may have acted on the request without the gateway knowing how (see
    /// [`outcome_unknown`]).
    unknown: bool,
}

async fn send(call: reqwest::RequestBuilder) -> Sent {
    match call.send().await {
        Ok(resp) => {
            let header = resp
                .headers()
                .get(Scope::HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let answer = upstream(resp).await;
            let (status, code) = match &answer {
                Ok(a) => (a.status, None),
                Err(e) => (e.status, Some(e.body.code.as_str())),
            };
            let unknown = outcome_unknown(status, code);
            let overloaded =
                (code == Some(OVERLOADED)).then(|| Scope::from_header(header.as_deref()));
            Sent {
                answer,
                overloaded,
                unknown,
            }
        }
        // A connection never made carried nothing; any other failure may have come after
        // the orchestrator read the request (a timeout, a connection lost).
        Err(e) => Sent {
            unknown: !e.is_connect(),
            answer: Err(upstream_unavailable(e)),
            overloaded: None,
        },
    }
}

/// Pure: whether an answer leaves the request's outcome unknown. An answer the orchestrator
/// gave (2xx, a 4xx refusal, 503 `overloaded`, which changes nothing) is known; a 5xx of
/// another kind (its own request timeout, an internal error, the answer unreadable) or a 408
/// may come after the payment was written.
fn outcome_unknown(status: StatusCode, code: Option<&str>) -> bool {
    let failed = status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT;
    failed && code != Some(OVERLOADED)
}

/// The orchestrator's code for a pipeline that is behind.
const OVERLOADED: &str = "overloaded";

/// 503 `overloaded`, answered by the gateway during a shedding window of `scope`.
fn shed(scope: Scope) -> ApiError {
    let message = match scope {
        Scope::Pipeline => "the payment pipeline is behind; retry with the same idempotency key",
        Scope::Merchant => {
            "this merchant has as many payments in flight as its limit allows; retry with the \
             same idempotency key"
        }
    };
    ApiError::unavailable(OVERLOADED, message)
}

fn key_reused() -> ApiError {
    ApiError::idempotency_key_reused("request")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_answers_that_may_follow_a_write_leave_the_outcome_unknown() {
        let unknown = |status: u16, code: Option<&str>| {
            outcome_unknown(StatusCode::from_u16(status).unwrap(), code)
        };
        // The orchestrator answered: known.
        assert!(!unknown(201, None));
        assert!(!unknown(200, None));
        assert!(!unknown(422, Some("idempotency_key_reused")));
        assert!(!unknown(409, Some("idempotency_request_in_progress")));
        assert!(!unknown(503, Some(OVERLOADED)));
        // It may have written the payment first.
        assert!(unknown(503, Some("request_timeout")));
        assert!(unknown(503, Some("upstream_unavailable")));
        assert!(unknown(503, Some("upstream_error")));
        assert!(unknown(500, Some("internal_error")));
        assert!(unknown(504, None));
        assert!(unknown(408, Some("request_timeout")));
    }

    #[test]
    fn a_shed_answer_is_overloaded_and_says_whose_limit() {
        for scope in [Scope::Pipeline, Scope::Merchant] {
            let e = shed(scope);
            assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(e.body.code, OVERLOADED);
        }
        assert!(shed(Scope::Merchant).body.message.contains("this merchant"));
        assert!(shed(Scope::Pipeline).body.message.contains("pipeline"));
    }
}
