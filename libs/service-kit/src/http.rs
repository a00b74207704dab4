//! HTTP plumbing every service shares: `/health`, `/ready`, `/metrics`, and the middleware that
//! gives each request an id, a correlation id and a trace context, measures it, and renders
//! errors in the one error shape.

use crate::api_error::{ErrorBody, ErrorDocument};
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use sagapay_telemetry::HttpMetrics;
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use tracing::Instrument;
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
    /// Reported in the body, never in the status code (see `ready`).
    pub consumers: sagapay_messaging::ConsumerHealth,
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

/// 200 when the database and Kafka answer within 2 s, else 503. A consumer retrying a message
/// in place is named in the body (`checks.consumer: "stalled"` and `stalled_consumers`) but
/// keeps the answer 200: what a stall needs is a person (alerts fire on
/// `consumer_stalled_seconds`), not fewer instances. A 503 would make a load balancer take the
/// orchestrator's API out of service because one payment's event is stuck, and a restart
/// (what an orchestrator does to an instance that stays unready) only redelivers the same
/// message to the same failure; every instance stuck on it would go down together.
async fn ready(State(s): State<OpsState>) -> Response {
    let timeout = Duration::from_secs(2);
    let db_ok = tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(&s.readiness.pool))
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false);
    let kafka_ok = sagapay_messaging::kafka::reachable(&s.readiness.producer, timeout).await;
    let status = if db_ok && kafka_ok {
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
    (
        status,
        Json(json!({
            "service": s.service,
            "status": overall,
            "checks": {
                "database": word(db_ok),
                "kafka": word(kafka_ok),
                "consumer": if stalls.is_empty() { "ok" } else { "stalled" },
            },
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

/// Wraps `router` (all routes of the service) with the request-context and metrics middleware.
pub fn instrument(router: Router, metrics: HttpMetrics) -> Router {
    router.layer(axum::middleware::from_fn_with_state(
        metrics,
        request_context,
    ))
}

fn valid_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn request_context(
    State(metrics): State<HttpMetrics>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let headers = req.headers();
    let request_id = format!("req_{}", Uuid::now_v7().simple());
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
    let traceparent = sagapay_telemetry::continue_trace(&span, header_str(headers, TRACEPARENT));
    let ctx = RequestContext {
        request_id,
        correlation_id: header_str(headers, CORRELATION_ID)
            .filter(|v| valid_id(v))
            .map(str::to_owned)
            .unwrap_or_else(|| Uuid::now_v7().to_string()),
        traceparent,
    };
    req.extensions_mut().insert(ctx.clone());
    let mut resp = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", resp.status().as_u16());

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
    if let Ok(v) = HeaderValue::from_str(&ctx.request_id) {
        resp.headers_mut().insert(REQUEST_ID, v);
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

fn is_foreign_error(resp: &Response) -> bool {
    let json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    (resp.status().is_client_error() || resp.status().is_server_error()) && !json
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
