//! Public routes for what merchants integrate with besides payments: webhook endpoints (their
//! secrets, rolls and deliveries) and the events they receive, `GET /events` to catch up.
//! The notification service owns all of it; these handlers check the request at the edge
//! (shape, sizes, known event types), then forward it signed for the merchant.

use crate::auth::Merchant;
use crate::peer::{forward, query_suffix, require_json, Peer};
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use sagapay_domain::MerchantEventType;
use sagapay_service_kit::api_error::{json_body, ApiError};
use sagapay_service_kit::http::RequestContext;
use serde::Deserialize;
use serde_json::json;
use uuid::Uuid;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/webhook_endpoints",
            post(create_endpoint).get(list_endpoints),
        )
        .route("/webhook_endpoints/{endpoint_id}", delete(delete_endpoint))
        .route(
            "/webhook_endpoints/{endpoint_id}/roll_secret",
            post(roll_secret),
        )
        .route(
            "/webhook_endpoints/{endpoint_id}/deliveries",
            get(list_deliveries),
        )
        .route("/events", get(list_events))
        .route("/events/{event_id}", get(get_event))
}

/// A new webhook endpoint.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpointBody {
    /// Where events are POSTed; `https` to a public address in production.
    #[schema(example = "https://shop.example.com/sagapay/webhooks")]
    pub url: String,
    /// The event types to receive.
    #[schema(value_type = Vec<MerchantEventType>, example = json!(["payment.settled", "payment.failed"]))]
    pub enabled_events: Vec<MerchantEventTypeName>,
}

/// An event type merchants can subscribe to.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, example = "payment.settled")]
pub struct MerchantEventTypeName(String);

/// The edge's check of a new endpoint: the shape, the URL's length and scheme, known event
/// types. The notification service checks again, and resolves the host in production.
fn check_new_endpoint(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let req: CreateEndpointBody = json_body(body)?;
    if req.url.is_empty() || req.url.len() > 2048 {
        return Err(
            ApiError::invalid("invalid_url", "url must be 1 to 2048 characters").with_param("url"),
        );
    }
    match url::Url::parse(&req.url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
        _ => {
            return Err(
                ApiError::invalid("invalid_url", "url is not an absolute http(s) URL")
                    .with_param("url"),
            )
        }
    }
    if req.enabled_events.is_empty() || req.enabled_events.len() > 32 {
        return Err(ApiError::invalid(
            "invalid_enabled_events",
            "enabled_events must list 1 to 32 event types",
        )
        .with_param("enabled_events"));
    }
    if let Some(unknown) = req
        .enabled_events
        .iter()
        .find(|t| MerchantEventType::parse(&t.0).is_none())
    {
        return Err(ApiError::invalid(
            "invalid_enabled_events",
            format!(
                "unknown event type {:?}; known: {}",
                unknown.0.chars().take(64).collect::<String>(),
                MerchantEventType::ALL.map(|t| t.as_str()).join(", ")
            ),
        )
        .with_param("enabled_events"));
    }
    Ok(json!({
        "url": req.url,
        "enabled_events": req.enabled_events.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
    }))
}

/// Path ids are UUIDs; anything else names nothing of this merchant's.
fn endpoint_path(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::not_found("webhook_endpoint_not_found", "no such webhook endpoint")
            .with_param("endpoint_id")
    })
}

/// Registers a webhook endpoint; the answer carries its signing secret, shown this once.
#[utoipa::path(
    post,
    path = "/webhook_endpoints",
    tag = "webhooks",
    request_body = CreateEndpointBody,
    security(("api_key" = [])),
    responses(
        (status = 201, description = "The endpoint, with its secret (whsec_...) shown once", body = sagapay_api_models::WebhookEndpoint),
        (status = 400, description = "Invalid URL or event types", body = crate::schemas::ErrorResponse),
        (status = 401, description = "Missing, invalid or revoked API key", body = crate::schemas::ErrorResponse),
        (status = 409, description = "Too many endpoints", body = crate::schemas::ErrorResponse),
        (status = 415, description = "Not application/json", body = crate::schemas::ErrorResponse),
    )
)]
pub(crate) async fn create_endpoint(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    require_json(&headers)?;
    let checked = check_new_endpoint(&body)?;
    forward(
        &state,
        Peer::Notification,
        &ctx,
        merchant,
        reqwest::Method::POST,
        "/internal/webhook_endpoints".into(),
        Some(&checked),
    )
    .await
}

/// The merchant's webhook endpoints (without secrets).
#[utoipa::path(get, path = "/webhook_endpoints", tag = "webhooks", security(("api_key" = [])),
    responses((status = 200, description = "The merchant's endpoints", body = sagapay_api_models::WebhookEndpointList)))]
pub(crate) async fn list_endpoints(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
) -> Result<Response, ApiError> {
    forward(
        &state,
        Peer::Notification,
        &ctx,
        merchant,
        reqwest::Method::GET,
        "/internal/webhook_endpoints".into(),
        None,
    )
    .await
}

/// Deletes a webhook endpoint; its pending deliveries are not sent.
#[utoipa::path(delete, path = "/webhook_endpoints/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint's id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Deleted", body = sagapay_api_models::WebhookEndpointDeleted),
        (status = 404, description = "No such endpoint for this merchant", body = crate::schemas::ErrorResponse),
    ))]
pub(crate) async fn delete_endpoint(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = endpoint_path(&raw)?;
    forward(
        &state,
        Peer::Notification,
        &ctx,
        merchant,
        reqwest::Method::DELETE,
        format!("/internal/webhook_endpoints/{id}"),
        None,
    )
    .await
}

/// A new signing secret; the old one keeps signing beside it for `expires_in_s` (default a
/// day, at most a week), so receivers can switch without missing an event.
#[utoipa::path(post, path = "/webhook_endpoints/{endpoint_id}/roll_secret", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint's id")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The new secret; the previous one signs too until it expires", body = sagapay_api_models::RolledSecret),
        (status = 400, description = "Invalid expires_in_s", body = crate::schemas::ErrorResponse),
        (status = 404, description = "No such endpoint for this merchant", body = crate::schemas::ErrorResponse),
    ))]
pub(crate) async fn roll_secret(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let id = endpoint_path(&raw)?;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Roll {
        expires_in_s: Option<i64>,
    }
    let roll: Roll = if body.is_empty() {
        Roll { expires_in_s: None }
    } else {
        json_body(&body)?
    };
    forward(
        &state,
        Peer::Notification,
        &ctx,
        merchant,
        reqwest::Method::POST,
        format!("/internal/webhook_endpoints/{id}/roll_secret"),
        Some(&json!({ "expires_in_s": roll.expires_in_s })),
    )
    .await
}

/// The endpoint's latest deliveries: status, attempts, the last answer's status code, error
/// and latency.
#[utoipa::path(get, path = "/webhook_endpoints/{endpoint_id}/deliveries", tag = "webhooks",
    params(("endpoint_id" = String, Path, description = "The endpoint's id"),
           ("limit" = Option<i64>, Query, description = "1 to 100, default 20")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The endpoint's newest deliveries", body = sagapay_api_models::WebhookDeliveryList),
        (status = 404, description = "No such endpoint for this merchant", body = crate::schemas::ErrorResponse),
    ))]
pub(crate) async fn list_deliveries(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = endpoint_path(&raw)?;
    let query = query_suffix(query)?;
    forward(
        &state,
        Peer::Notification,
        &ctx,
        merchant,
        reqwest::Method::GET,
        format!("/internal/webhook_endpoints/{id}/deliveries{query}"),
        None,
    )
    .await
}

/// The merchant's events, newest first: the same objects, with the same ids, as the webhooks.
#[utoipa::path(get, path = "/events", tag = "webhooks",
    params(
        ("limit" = Option<i64>, Query, description = "1 to 100, default 20"),
        ("starting_after" = Option<String>, Query, description = "The last event id of the previous page"),
        ("type" = Option<String>, Query, description = "Only events of this type"),
        ("created_gte" = Option<i64>, Query, description = "Recorded at or after (unix seconds)"),
        ("created_lt" = Option<i64>, Query, description = "Recorded before (unix seconds)"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of events, newest first", body = sagapay_api_models::EventPage),
        (status = 400, description = "Invalid filter or cursor", body = crate::schemas::ErrorResponse),
    ))]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let query = query_suffix(query)?;
    forward(
        &state,
        Peer::Notification,
        &ctx,
        merchant,
        reqwest::Method::GET,
        format!("/internal/events{query}"),
        None,
    )
    .await
}

/// One event.
#[utoipa::path(get, path = "/events/{event_id}", tag = "webhooks",
    params(("event_id" = String, Path, description = "evt_...")),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The event", body = sagapay_api_models::MerchantEvent),
        (status = 404, description = "No such event for this merchant", body = crate::schemas::ErrorResponse),
    ))]
pub(crate) async fn get_event(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    merchant: Merchant,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let well_formed = raw.len() == 36
        && raw.starts_with("evt_")
        && raw[4..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    if !well_formed {
        return Err(ApiError::not_found("event_not_found", "no such event").with_param("event_id"));
    }
    forward(
        &state,
        Peer::Notification,
        &ctx,
        merchant,
        reqwest::Method::GET,
        format!("/internal/events/{raw}"),
        None,
    )
    .await
}
