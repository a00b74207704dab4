//! Calls to the services behind the gateway (the orchestrator, the notification service):
//! signed with the gateway's service credential for the merchant that was authenticated, and
//! their answers passed on, errors re-issued as the gateway's own. Also what every forwarded
//! request shares: a JSON body and a bounded query string.

use crate::auth::Merchant;
use crate::state::AppState;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use sagapay_service_kit::api_error::{ApiError, ErrorDocument, ErrorType};
use sagapay_service_kit::http::{RequestContext, CORRELATION_ID, TRACEPARENT};
use uuid::Uuid;

/// The services the gateway calls.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Peer {
    Orchestrator,
    Notification,
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

/// A call to a peer's internal API for `merchant`, signed with the gateway's service
/// credential (the merchant travels as the signed claim, never in the body).
pub(crate) fn internal_to(
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
    let signed = state.signer.sign(
        match peer {
            Peer::Orchestrator => "orchestrator",
            Peer::Notification => "notification",
        },
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

pub(crate) fn upstream_unavailable(e: reqwest::Error) -> ApiError {
    tracing::error!(error = %e, "orchestrator unreachable");
    ApiError::unavailable(
        "upstream_unavailable",
        "the payment service is unavailable; retry with the same idempotency key",
    )
}

/// A successful answer of the orchestrator, passed on as it is.
pub(crate) struct Upstream {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) replayed: bool,
}

impl IntoResponse for Upstream {
    fn into_response(self) -> Response {
        let mut out = (self.status, self.body).into_response();
        out.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.replayed {
            sagapay_service_kit::api_error::replayed(out)
        } else {
            out
        }
    }
}

/// Reads the orchestrator's answer. Errors are re-issued as the gateway's own, so they carry
/// the gateway's request id.
pub(crate) async fn upstream(resp: reqwest::Response) -> Result<Upstream, ApiError> {
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

/// The query string as received, if short enough to forward (the notification service
/// parses it and refuses what it does not know).
pub(crate) fn query_suffix(raw: Option<String>) -> Result<String, ApiError> {
    match raw.filter(|q| !q.is_empty()) {
        None => Ok(String::new()),
        Some(q) if q.len() <= 512 => Ok(format!("?{q}")),
        Some(_) => Err(ApiError::invalid(
            "invalid_query",
            "the query string is longer than 512 characters",
        )),
    }
}
