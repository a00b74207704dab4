//! HTTP plumbing every service shares: `/health`, `/ready`, `/metrics`, and the middleware that
//! gives each request an id, a correlation id and a trace context, bounds its body and its
//! time, measures it, and renders errors in the one error shape (see [`instrument`]).

use crate::api_error::{ErrorBody, ErrorDocument};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use sagapay_telemetry::HttpMetrics;
use serde_json::json;
use sqlx::PgPool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::PropagateRequestIdLayer;
use tower_http::set_header::SetRequestHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use uuid::Uuid;

pub const REQUEST_ID: &str = "x-request-id";
pub const CORRELATION_ID: &str = "x-correlation-id";
pub const TRACEPARENT: &str = "traceparent";

/// Per-request identifiers, available to handlers as `Extension<RequestContext>`.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
    /// W3C `traceparent` to pass on (to HTTP calls and events): this request's span, in the
    /// caller's trace or a new one.
    pub traceparent: String,
}

/// What `/ready` checks.
#[derive(Clone)]
pub struct Readiness {
    pub pool: PgPool,
    pub producer: FutureProducer,
    /// Stalls are reported in the body, never in the status code (see `ready`); a consumer
    /// that is not consuming (its client being replaced) makes the answer 503.
    pub consumers: sagapay_messaging::ConsumerHealth,
    /// A background task that ended makes the answer 503.
    pub tasks: crate::runtime::TaskHealth,
}

#[derive(Clone)]
struct OpsState {
    service: &'static str,
    registry: Registry,
    readiness: Readiness,
}

/// `/health`, `/ready` and `/metrics`.
pub fn ops_routes(service: &'static str, registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(OpsState {
            service,
            registry,
            readiness,
        })
}

async fn health(State(s): State<OpsState>) -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "service": s.service}))
}

/// 200 when the database and Kafka answer within 2 s, the Kafka producer has not failed
/// fatally, every background task runs and every consumer consumes; else 503, with what is
/// wrong in the body (`checks`, `ended_tasks`, `not_consuming`).
///
/// A consumer retrying a message in place is named in the body (`checks.consumer: "stalled"`
/// and `stalled_consumers`) but keeps the answer 200: what a stall needs is a person (alerts
/// fire on `consumer_stalled_seconds`), not fewer instances. A 503 would make a load balancer
/// take the orchestrator's API out of service because one payment's event is stuck, and a
/// restart (what an orchestrator does to an instance that stays unready) only redelivers the
/// same message to the same failure; every instance stuck on it would go down together.
async fn ready(State(s): State<OpsState>) -> Response {
    use rdkafka::producer::Producer;
    let timeout = Duration::from_secs(2);
    let db_ok = tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&s.readiness.pool))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    let producer_fatal = s.readiness.producer.client().fatal_error();
    let kafka_ok = producer_fatal.is_none()
        && sagapay_messaging::kafka::reachable(&s.readiness.producer, timeout).await;
    let ended = s.readiness.tasks.ended();
    let not_consuming = s.readiness.consumers.not_consuming();
    let running = ended.is_empty() && not_consuming.is_empty();
    let status = if db_ok && kafka_ok && running {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let stalls = s.readiness.consumers.stalls();
    let overall = match (status == StatusCode::OK, stalls.is_empty()) {
        (false, _) => "not_ready",
        (true, true) => "ready",
        (true, false) => "degraded",
    };
    let consumer = match (not_consuming.is_empty(), stalls.is_empty()) {
        (false, _) => "not_consuming",
        (true, false) => "stalled",
        (true, true) => "ok",
    };
    (
        status,
        Json(json!({
            "service": s.service,
            "status": overall,
            "checks": {
                "database": word(db_ok),
                "kafka": word(kafka_ok),
                "tasks": word(ended.is_empty()),
                "consumer": consumer,
            },
            "kafka_producer_fatal": producer_fatal.map(|(code, reason)| format!("{code:?}: {reason}")),
            "ended_tasks": ended,
            "not_consuming": not_consuming,
            "stalled_consumers": stalls,
        })),
    )
        .into_response()
}

async fn metrics(State(s): State<OpsState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        sagapay_telemetry::render(&s.registry),
    )
        .into_response()
}

/// Limits every service's HTTP server applies to every request.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request body read (`SAGAPAY_HTTP_BODY_LIMIT_BYTES`); larger: 413. A route may
    /// allow less (the gateway's 16 KiB).
    pub body_bytes: usize,
    /// Longest a request may take (`SAGAPAY_HTTP_REQUEST_TIMEOUT_MS`); longer: 503
    /// `request_timeout`, and the handler is dropped (its transaction rolls back).
    pub request_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Wraps `router` (all routes of the service) in the middleware every request passes, from
/// the outside in:
/// - a fresh request id (`req_<uuid v7>`) in `x-request-id`, replacing any the client sent (an
///   id in our logs and error bodies is always ours), and the same header on the answer
///   (tower-http's `set_header` and `request_id`);
/// - the request's span (tower-http's `trace`), continuing the caller's trace (`traceparent`);
/// - [`request_context`]: the correlation id, the [`RequestContext`] handlers read, the one
///   error shape for errors made outside the handlers, and the HTTP metrics;
/// - a request timeout and a body limit (tower-http's `timeout` and `limit`, and
///   [`crate::body_limit`] for a body announced too large), inside the above so their
///   refusals are measured and shaped like any other.
pub fn instrument(router: Router, metrics: HttpMetrics, limits: HttpLimits) -> Router {
    let request_id = HeaderName::from_static(REQUEST_ID);
    router
        .layer(RequestBodyLimitLayer::new(limits.body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            limits.body_bytes,
            crate::body_limit::refuse_oversized,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            limits.request_timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            request_context,
        ))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                // A 5xx is counted (`http_requests_total`) and logged by what caused it.
                .on_failure(())
                .on_response(
                    |resp: &Response, _latency: Duration, span: &tracing::Span| {
                        span.record("http.response.status_code", resp.status().as_u16());
                    },
                ),
        )
        .layer(axum::middleware::from_fn(trace_slot))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestHeaderLayer::overriding(
            request_id,
            |_: &Request| HeaderValue::from_str(&new_request_id()).ok(),
        ))
}

/// A request id of this service's own: `req_` and a UUID v7.
fn new_request_id() -> String {
    format!("req_{}", Uuid::now_v7().simple())
}

fn valid_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The `traceparent` a request passes on, set when its span is made: the span continues the
/// caller's trace and its own id is what goes on, so it is known only once the span exists,
/// and the span is made from a `&Request` (tower-http's `MakeSpan`) that cannot carry it.
#[derive(Clone, Default)]
struct TraceSlot(Arc<OnceLock<String>>);

async fn trace_slot(mut req: Request, next: Next) -> Response {
    req.extensions_mut().insert(TraceSlot::default());
    next.run(req).await
}

fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned())
}

/// The span of one request, in the caller's trace when it sent a valid `traceparent`.
fn request_span(req: &Request) -> tracing::Span {
    let method = req.method().as_str();
    let route = route_of(req);
    let request_id = header_str(req.headers(), REQUEST_ID).unwrap_or_default();
    let span = tracing::info_span!(
        "http.request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        http.response.status_code = tracing::field::Empty,
        request_id = %request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    let traceparent =
        sagapay_telemetry::continue_trace(&span, header_str(req.headers(), TRACEPARENT));
    if let Some(slot) = req.extensions().get::<TraceSlot>() {
        let _ = slot.0.set(traceparent);
    }
    span
}

async fn request_context(
    State(metrics): State<HttpMetrics>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = route_of(&req);
    let headers = req.headers();
    let ctx = RequestContext {
        request_id: header_str(headers, REQUEST_ID)
            .map(str::to_owned)
            .unwrap_or_else(new_request_id),
        correlation_id: header_str(headers, CORRELATION_ID)
            .filter(|v| valid_id(v))
            .map(str::to_owned)
            .unwrap_or_else(|| Uuid::now_v7().to_string()),
        traceparent: req
            .extensions()
            .get::<TraceSlot>()
            .and_then(|slot| slot.0.get().cloned())
            .unwrap_or_else(sagapay_telemetry::new_traceparent),
    };
    req.extensions_mut().insert(ctx.clone());
    let mut resp = next.run(req).await;

    let mut error = resp.extensions_mut().remove::<ErrorBody>();
    if error.is_none() && is_foreign_error(&resp) {
        // An error made outside our handlers (axum's extractors and body limit, an unknown
        // route or method): give it the one error shape too.
        let status = resp.status();
        let (parts, body) = resp.into_parts();
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        error = Some(foreign_error(status, &String::from_utf8_lossy(&text)));
        resp = Response::from_parts(parts, axum::body::Body::empty());
    }
    if let Some(body) = error {
        let status = resp.status();
        let doc = ErrorDocument {
            error: body,
            request_id: Some(ctx.request_id.clone()),
        };
        let mut fresh = (status, Json(doc)).into_response();
        for (name, value) in resp.headers() {
            if name != axum::http::header::CONTENT_LENGTH
                && name != axum::http::header::CONTENT_TYPE
            {
                fresh.headers_mut().insert(name.clone(), value.clone());
            }
        }
        resp = fresh;
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.correlation_id) {
        resp.headers_mut().insert(CORRELATION_ID, v);
    }
    let status = resp.status().as_u16().to_string();
    metrics
        .requests_total
        .with_label_values(&[&method, &route, &status])
        .inc();
    metrics
        .request_duration_seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// An error answer not in the one error shape: not JSON, and not a page (the console's
/// refusals are HTML pages with their code, for a browser).
fn is_foreign_error(resp: &Response) -> bool {
    let own = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.starts_with("text/html"));
    (resp.status().is_client_error() || resp.status().is_server_error()) && !own
}

/// The error shape for a status some layer below produced with a plain-text reason.
fn foreign_error(status: StatusCode, reason: &str) -> ErrorBody {
    use crate::api_error::ErrorType;
    let reason: String = reason.chars().take(300).collect();
    let (kind, code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            ErrorType::InvalidRequestError,
            "body_too_large",
            "the request body is larger than this endpoint accepts".to_owned(),
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            ErrorType::InvalidRequestError,
            "unsupported_media_type",
            "send the body as application/json".to_owned(),
        ),
        StatusCode::NOT_FOUND => (
            ErrorType::InvalidRequestError,
            "route_not_found",
            "no such route".to_owned(),
        ),
        StatusCode::SERVICE_UNAVAILABLE => (
            ErrorType::ApiError,
            "request_timeout",
            "the request took longer than this service allows; retry it (with the same idempotency key)".to_owned(),
        ),
        StatusCode::METHOD_NOT_ALLOWED => (
            ErrorType::InvalidRequestError,
            "method_not_allowed",
            "this route does not accept this method".to_owned(),
        ),
        s if s.is_client_error() => (
            ErrorType::InvalidRequestError,
            "invalid_request",
            if reason.is_empty() {
                "the request is invalid".to_owned()
            } else {
                reason
            },
        ),
        _ => (
            ErrorType::ApiError,
            "internal_error",
            "the service failed; retry later".to_owned(),
        ),
    };
    ErrorBody {
        kind,
        code: code.to_owned(),
        message,
        param: None,
    }
}
