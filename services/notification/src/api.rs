//! The notification service's internal API, called by the gateway for a merchant (the
//! merchant travels as the gateway's signed claim): webhook endpoints, their deliveries, and
//! the merchant's events. Every input is checked again here; the gateway's checks are a
//! convenience for callers, not this service's defence.

use crate::destination::{self, Policy};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use sagapay_api_models::{
    DeliveryStatus, EndpointStatus, EventPage, ListDeliveriesQuery, ListEventsQuery, MerchantEvent,
    RolledSecret, WebhookDelivery, WebhookDeliveryList, WebhookEndpoint, WebhookEndpointDeleted,
    WebhookEndpointList,
};
use sagapay_domain::MerchantEventType;
use sagapay_service_kit::api_error::{ApiError, ErrorType};
use sagapay_service_kit::json_body::json_body;
use sagapay_service_kit::service_auth::{
    require_service_credential, NonceStore, TrustedCallers, VerifiedCaller,
};
use serde::Deserialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

/// Who may call: the gateway only.
pub const CALLERS: &[&str] = &["gateway"];
/// Most endpoints a merchant may have.
pub const MAX_ENDPOINTS: i64 = 16;
/// Longest a rolled secret may stay valid beside the new one.
pub const MAX_ROLL_GRACE_S: i64 = 7 * 24 * 3600;
pub const DEFAULT_ROLL_GRACE_S: i64 = 24 * 3600;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub policy: Policy,
}

pub fn routes(state: AppState, trusted: TrustedCallers, nonces: NonceStore) -> Router {
    let routes = Router::new()
        .route(
            "/internal/webhook_endpoints",
            post(create_endpoint).get(list_endpoints),
        )
        .route(
            "/internal/webhook_endpoints/{endpoint_id}",
            axum::routing::delete(delete_endpoint),
        )
        .route(
            "/internal/webhook_endpoints/{endpoint_id}/roll_secret",
            post(roll_secret),
        )
        .route(
            "/internal/webhook_endpoints/{endpoint_id}/deliveries",
            get(list_deliveries),
        )
        .route("/internal/events", get(list_events))
        .route("/internal/events/{event_id}", get(get_event));
    require_service_credential(routes, trusted, nonces, CALLERS, crate::SERVICE).with_state(state)
}

/// A new endpoint as the gateway forwards it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateEndpoint {
    pub url: String,
    pub enabled_events: Vec<String>,
}

/// The subscribed types, each known, without repeats, at least one.
pub fn parse_enabled_events(raw: &[String]) -> Result<Vec<MerchantEventType>, ApiError> {
    if raw.is_empty() || raw.len() > 32 {
        return Err(ApiError::invalid(
            "invalid_enabled_events",
            "enabled_events must list 1 to 32 event types",
        )
        .with_param("enabled_events"));
    }
    let mut types = Vec::new();
    for name in raw {
        let t = MerchantEventType::parse(name).ok_or_else(|| {
            ApiError::invalid(
                "invalid_enabled_events",
                format!(
                    "unknown event type {:?}; known: {}",
                    name.chars().take(64).collect::<String>(),
                    MerchantEventType::ALL.map(|t| t.as_str()).join(", ")
                ),
            )
            .with_param("enabled_events")
        })?;
        if !types.contains(&t) {
            types.push(t);
        }
    }
    Ok(types)
}

/// A URL webhooks may be sent to under `policy` (resolved now, too, in production).
pub async fn check_url(raw: &str, policy: &Policy) -> Result<url::Url, ApiError> {
    let invalid = |e: destination::DestinationError| {
        ApiError::invalid("invalid_url", e.to_string()).with_param("url")
    };
    if raw.len() > 2048 {
        return Err(
            ApiError::invalid("invalid_url", "url is longer than 2048 characters")
                .with_param("url"),
        );
    }
    let url = destination::check_syntax(raw, policy).map_err(invalid)?;
    if policy.https_only() {
        destination::resolve(&url, policy).await.map_err(invalid)?;
    }
    Ok(url)
}

fn new_secret() -> Result<String, ApiError> {
    use base64::Engine;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(format!(
        "whsec_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn endpoint_view(r: &sqlx::postgres::PgRow) -> sqlx::Result<WebhookEndpoint> {
    let created: DateTime<Utc> = r.try_get("created_at")?;
    let disabled_at: Option<DateTime<Utc>> = r.try_get("disabled_at")?;
    Ok(WebhookEndpoint {
        id: r.try_get("endpoint_id")?,
        url: r.try_get("url")?,
        enabled_events: r.try_get("enabled_events")?,
        status: if disabled_at.is_some() {
            EndpointStatus::Disabled
        } else {
            EndpointStatus::Enabled
        },
        disabled_reason: r.try_get("disabled_reason")?,
        created: created.timestamp(),
        secret: None,
    })
}

const ENDPOINT_COLUMNS: &str =
    "endpoint_id, url, enabled_events, created_at, disabled_at, disabled_reason";

async fn create_endpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<WebhookEndpoint>), ApiError> {
    let merchant = caller.acting_merchant()?;
    let req: CreateEndpoint = json_body(&body)?;
    let url = check_url(&req.url, &state.policy).await?;
    let types = parse_enabled_events(&req.enabled_events)?;
    let secret = new_secret()?;
    let names: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
    // The count and the insert in one statement: two concurrent creations cannot both pass.
    let row = sqlx::query(&format!(
        "INSERT INTO webhook_endpoints (endpoint_id, merchant_id, url, enabled_events, secret)
         SELECT $1, $2, $3, $4, $5
          WHERE (SELECT count(*) FROM webhook_endpoints
                  WHERE merchant_id = $2 AND deleted_at IS NULL) < $6
         RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(merchant)
    .bind(url.as_str())
    .bind(&names)
    .bind(&secret)
    .bind(MAX_ENDPOINTS)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            ErrorType::InvalidRequestError,
            "too_many_endpoints",
            format!(
                "a merchant may have at most {MAX_ENDPOINTS} webhook endpoints; delete one first"
            ),
        )
    })?;
    // Shown once: only the signing needs it from now on.
    let view = WebhookEndpoint {
        secret: Some(secret),
        ..endpoint_view(&row)?
    };
    Ok((StatusCode::CREATED, Json(view)))
}

async fn list_endpoints(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
) -> Result<Json<WebhookEndpointList>, ApiError> {
    let merchant = caller.acting_merchant()?;
    let rows = sqlx::query(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
          WHERE merchant_id = $1 AND deleted_at IS NULL ORDER BY created_at, endpoint_id"
    ))
    .bind(merchant)
    .fetch_all(&state.pool)
    .await?;
    let data = rows
        .iter()
        .map(endpoint_view)
        .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(Json(WebhookEndpointList { data }))
}

fn endpoint_not_found() -> ApiError {
    ApiError::not_found("webhook_endpoint_not_found", "no such webhook endpoint")
        .with_param("endpoint_id")
}

/// The endpoint id in the path; not a UUID cannot name one of this merchant's.
fn endpoint_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| endpoint_not_found())
}

async fn delete_endpoint(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(raw): Path<String>,
) -> Result<Json<WebhookEndpointDeleted>, ApiError> {
    let merchant = caller.acting_merchant()?;
    let id = endpoint_id(&raw)?;
    let deleted = sqlx::query(
        "UPDATE webhook_endpoints SET deleted_at = now()
          WHERE endpoint_id = $1 AND merchant_id = $2 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(merchant)
    .execute(&state.pool)
    .await?
    .rows_affected();
    if deleted == 0 {
        return Err(endpoint_not_found());
    }
    Ok(Json(WebhookEndpointDeleted { id, deleted: true }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollSecret {
    /// How long the old secret keeps signing beside the new one.
    #[serde(default)]
    expires_in_s: Option<i64>,
}

async fn roll_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(raw): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<RolledSecret>, ApiError> {
    let merchant = caller.acting_merchant()?;
    let id = endpoint_id(&raw)?;
    let req: RollSecret = if body.is_empty() {
        RollSecret { expires_in_s: None }
    } else {
        json_body(&body)?
    };
    let grace_s = req.expires_in_s.unwrap_or(DEFAULT_ROLL_GRACE_S);
    if !(0..=MAX_ROLL_GRACE_S).contains(&grace_s) {
        return Err(ApiError::invalid(
            "invalid_expires_in_s",
            format!("expires_in_s must be from 0 to {MAX_ROLL_GRACE_S}"),
        )
        .with_param("expires_in_s"));
    }
    let secret = new_secret()?;
    let row = sqlx::query(
        "UPDATE webhook_endpoints
            SET previous_secret = secret, secret = $3,
                previous_secret_expires_at = now() + make_interval(secs => $4)
          WHERE endpoint_id = $1 AND merchant_id = $2 AND deleted_at IS NULL
         RETURNING previous_secret_expires_at",
    )
    .bind(id)
    .bind(merchant)
    .bind(&secret)
    .bind(grace_s as f64)
    .fetch_optional(&state.pool)
    .await?
    .ok_or_else(endpoint_not_found)?;
    let expires: DateTime<Utc> = row.try_get("previous_secret_expires_at")?;
    Ok(Json(RolledSecret {
        id,
        secret,
        previous_secret_expires: expires.timestamp(),
    }))
}

fn limit(raw: Option<i64>) -> Result<i64, ApiError> {
    sagapay_api_models::queries::page_limit(raw).ok_or_else(|| {
        ApiError::invalid("invalid_limit", "limit must be from 1 to 100").with_param("limit")
    })
}

fn timestamp(raw: Option<i64>, name: &str) -> Result<Option<DateTime<Utc>>, ApiError> {
    raw.map(|s| {
        sagapay_api_models::queries::filter_time(s).ok_or_else(|| {
            ApiError::invalid(
                "invalid_timestamp",
                format!("{name} is not a unix time in seconds from 0 to 253402300799"),
            )
            .with_param(name)
        })
    })
    .transpose()
}

async fn list_deliveries(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(raw): Path<String>,
    page: Result<Query<ListDeliveriesQuery>, QueryRejection>,
) -> Result<Json<WebhookDeliveryList>, ApiError> {
    let merchant = caller.acting_merchant()?;
    let id = endpoint_id(&raw)?;
    let Query(page) = page?;
    let limit = limit(page.limit)?;
    let owned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM webhook_endpoints WHERE endpoint_id = $1 AND merchant_id = $2)",
    )
    .bind(id)
    .bind(merchant)
    .fetch_one(&state.pool)
    .await?;
    if !owned {
        return Err(endpoint_not_found());
    }
    let rows = sqlx::query(
        "SELECT d.delivery_id, d.event_id, ev.event_type, d.status::text AS status, d.attempts,
                d.last_status_code, d.last_error, d.last_latency_ms, d.last_attempt_at,
                d.next_attempt_at, d.delivered_at
           FROM webhook_deliveries d JOIN merchant_events ev USING (event_id)
          WHERE d.endpoint_id = $1
          ORDER BY d.created_at DESC, d.delivery_id DESC LIMIT $2",
    )
    .bind(id)
    .bind(limit)
    .fetch_all(&state.pool)
    .await?;
    let data = rows
        .iter()
        .map(|r| {
            let status: String = r.try_get("status")?;
            let unix = |c: &str| -> sqlx::Result<Option<i64>> {
                Ok(r.try_get::<Option<DateTime<Utc>>, _>(c)?
                    .map(|t| t.timestamp()))
            };
            Ok(WebhookDelivery {
                id: r.try_get("delivery_id")?,
                event_id: r.try_get("event_id")?,
                event_type: r.try_get("event_type")?,
                status: DeliveryStatus::parse_stored(&status).ok_or_else(|| {
                    sqlx::Error::ColumnDecode {
                        index: "status".into(),
                        source: format!("{status:?} is not a delivery status").into(),
                    }
                })?,
                attempts: r.try_get("attempts")?,
                last_status_code: r.try_get("last_status_code")?,
                last_error: r.try_get("last_error")?,
                last_latency_ms: r.try_get("last_latency_ms")?,
                last_attempt: unix("last_attempt_at")?,
                next_attempt: if status == "PENDING" {
                    unix("next_attempt_at")?
                } else {
                    None
                },
                delivered: unix("delivered_at")?,
            })
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(Json(WebhookDeliveryList { data }))
}

fn event_not_found() -> ApiError {
    ApiError::not_found("event_not_found", "no such event").with_param("event_id")
}

/// The merchant's events, newest first, in a stable order (creation time, then id), a page
/// at a time: `starting_after` names the last event of the previous page.
async fn list_events(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    page: Result<Query<ListEventsQuery>, QueryRejection>,
) -> Result<Json<EventPage>, ApiError> {
    let merchant = caller.acting_merchant()?;
    let Query(page) = page?;
    let limit = limit(page.limit)?;
    let event_type = page
        .event_type
        .as_deref()
        .map(|t| {
            MerchantEventType::parse(t).ok_or_else(|| {
                ApiError::invalid("invalid_type", "type is not a known event type")
                    .with_param("type")
            })
        })
        .transpose()?;
    let gte = timestamp(page.created_gte, "created_gte")?;
    let lt = timestamp(page.created_lt, "created_lt")?;
    // The cursor must be one of this merchant's events (another's answers as unknown).
    let cursor: Option<(DateTime<Utc>, String)> = match &page.starting_after {
        None => None,
        Some(id) => Some(
            sqlx::query_as(
                "SELECT created_at, event_id FROM merchant_events WHERE event_id = $1 AND merchant_id = $2",
            )
            .bind(id)
            .bind(merchant)
            .fetch_optional(&state.pool)
            .await?
            .ok_or_else(|| {
                // Well-formed or not, a cursor that names no event of this merchant.
                ApiError::not_found("invalid_starting_after", "starting_after is not one of your events")
                    .with_param("starting_after")
            })?,
        ),
    };
    let rows: Vec<(sqlx::types::Json<MerchantEvent>,)> = sqlx::query_as(
        "SELECT body FROM merchant_events
          WHERE merchant_id = $1
            AND ($2::text IS NULL OR event_type = $2)
            AND ($3::timestamptz IS NULL OR created_at >= $3)
            AND ($4::timestamptz IS NULL OR created_at < $4)
            AND ($5::timestamptz IS NULL OR (created_at, event_id) < ($5, $6))
          ORDER BY created_at DESC, event_id DESC
          LIMIT $7",
    )
    .bind(merchant)
    .bind(event_type.map(|t| t.as_str()))
    .bind(gte)
    .bind(lt)
    .bind(cursor.as_ref().map(|c| c.0))
    .bind(cursor.as_ref().map(|c| c.1.clone()))
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let has_more = rows.len() as i64 > limit;
    let data: Vec<MerchantEvent> = rows
        .into_iter()
        .take(limit as usize)
        .map(|(b,)| b.0)
        .collect();
    Ok(Json(EventPage { data, has_more }))
}

async fn get_event(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(id): Path<String>,
) -> Result<Json<MerchantEvent>, ApiError> {
    let merchant = caller.acting_merchant()?;
    let body: Option<(sqlx::types::Json<MerchantEvent>,)> =
        sqlx::query_as("SELECT body FROM merchant_events WHERE event_id = $1 AND merchant_id = $2")
            .bind(&id)
            .bind(merchant)
            .fetch_optional(&state.pool)
            .await?;
    body.map(|(b,)| Json(b.0)).ok_or_else(event_not_found)
}
