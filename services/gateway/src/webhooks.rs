//! Public routes for what merchants integrate with besides payments: webhook endpoints (their
//! secrets, rolls and deliveries) and the events they receive, `GET /events` to catch up.
//! The notification service owns all of it; these handlers check the request at the edge
//! (shape, sizes, known event types), then forward it signed for the merchant.

use crate::auth::Merchant;
use crate::peer::{forward, query_suffix, require_json, Peer};
use crate::state::AppState;
use crate::validate;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::{Extension, Router};
use sagapay_api_models::webhooks::{webhook_url_ok, WEBHOOK_URL_MAX, WEBHOOK_URL_PATTERN};
use sagapay_api_models::{CreateWebhookEndpointRequest, RollSecretRequest};
use sagapay_service_kit::api_error::ApiError;
use sagapay_service_kit::http::RequestContext;
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

/// The edge's check of a new endpoint: the shape, the URL by the documented pattern, 1 to 32
/// known event types. The notification service checks again, and resolves the host in
/// production.
fn check_new_endpoint(body: &[u8]) -> Result<CreateWebhookEndpointRequest, ApiError> {
    let req: CreateWebhookEndpointRequest = validate::body(body)?;
    if !webhook_url_ok(&req.url) {
        return Err(ApiError::invalid(
            "invalid_url",
            format!(
                "url must be an absolute http(s) URL of at most {WEBHOOK_URL_MAX} characters \
                 matching {WEBHOOK_URL_PATTERN}"
            ),
        )
        .with_param("url"));
    }
    if req.enabled_events.is_empty() || req.enabled_events.len() > 32 {
        return Err(ApiError::invalid(
            "invalid_enabled_events",
            "enabled_events must list 1 to 32 event types",
        )
        .with_param("enabled_events"));
    }
    Ok(req)
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
    request_body = CreateWebhookEndpointRequest,
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
        Some(&serde_json::to_value(&checked).expect("a request serializes")),
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
    request_body(content = RollSecretRequest, description = "Optional: an empty body rolls with the default overlap"),
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
    let roll: RollSecretRequest = validate::body(&body)?;
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
           sagapay_api_models::ListDeliveriesQuery),
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
    params(sagapay_api_models::ListEventsQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "A page of events, newest first", body = sagapay_api_models::EventPage),
        (status = 400, description = "Invalid filter or cursor", body = crate::schemas::ErrorResponse),
        (status = 404, description = "The cursor names no event of this merchant", body = crate::schemas::ErrorResponse),
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
