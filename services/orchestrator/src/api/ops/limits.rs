//! `GET|PUT /ops/merchants/{merchant_id}/limits`: a merchant's own share of admission
//! control (`sagapayctl merchant limit`).

use super::super::state::AppState;
use super::{field_code, operator};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use sagapay_domain::OperatorName;
use sagapay_service_kit::api_error::ApiError;
use sagapay_service_kit::json_body;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LimitsRequest {
    /// The merchant's own limit of payments in flight (0: no limit of its own); null or
    /// absent: the default share.
    #[serde(
        default,
        deserialize_with = "sagapay_api_models::requests::whole_or_null"
    )]
    #[schema(minimum = 0, maximum = 2147483647)]
    max_in_flight: Option<i64>,
    /// Who asks (default "an operator").
    requested_by: Option<OperatorName>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct Limits {
    merchant_id: Uuid,
    /// The merchant's own limit, when it has one.
    max_in_flight: Option<i32>,
    /// What applies when it has none.
    default_max_in_flight: i64,
    /// Its payments in flight now, as admission sees them.
    in_flight: i64,
}

async fn limits_of(state: &AppState, merchant_id: Uuid) -> Result<Limits, ApiError> {
    let own: Option<i32> =
        sqlx::query_scalar("SELECT max_in_flight FROM merchant_limits WHERE merchant_id = $1")
            .bind(merchant_id)
            .fetch_optional(&state.pool)
            .await?;
    let (in_flight, default_max_in_flight) = state.admission.merchant(merchant_id);
    Ok(Limits {
        merchant_id,
        max_in_flight: own,
        default_max_in_flight,
        in_flight,
    })
}

/// A merchant id of a path: anything but a UUID names no merchant.
fn merchant_path(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| {
        ApiError::not_found("merchant_not_found", "no such merchant").with_param("merchant_id")
    })
}

/// The merchant's share: its own limit, the default, and its payments in flight now.
#[utoipa::path(get, path = "/ops/merchants/{merchant_id}/limits", tag = "merchants",
    params(("merchant_id" = String, Path, format = Uuid, description = "The merchant")),
    security(("ops_key" = [])),
    responses(
        (status = 200, description = "Its limits", body = Limits),
        (status = 404, description = "Not a merchant id", body = sagapay_service_kit::api_error::ErrorDocument),
    ))]
pub(super) async fn merchant_limits(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> Result<Json<Limits>, ApiError> {
    let merchant_id = merchant_path(&raw)?;
    Ok(Json(limits_of(&state, merchant_id).await?))
}

/// Sets the merchant's own limit (or gives it the default share again).
#[utoipa::path(put, path = "/ops/merchants/{merchant_id}/limits", tag = "merchants",
    params(("merchant_id" = String, Path, format = Uuid, description = "The merchant")),
    request_body = LimitsRequest,
    security(("ops_key" = [])),
    responses(
        (status = 200, description = "Its limits now", body = Limits),
        (status = 404, description = "Not a merchant id", body = sagapay_service_kit::api_error::ErrorDocument),
    ))]
pub(super) async fn set_merchant_limits(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    body: Bytes,
) -> Result<Json<Limits>, ApiError> {
    let merchant_id = merchant_path(&raw)?;
    // The body is required (unlike a retry's): an empty PUT is not "the default share".
    let req: LimitsRequest = json_body::parse(&body).map_err(|f| f.refusal(field_code))?;
    let who = operator(req.requested_by);
    let max_in_flight = match req.max_in_flight {
        None => None,
        Some(n) => Some(i32::try_from(n).ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::invalid(
                "invalid_max_in_flight",
                "max_in_flight must be 0 (no limit of its own) to 2147483647, or null (the \
                 default share)",
            )
            .with_param("max_in_flight")
        })?),
    };
    crate::admission::set_merchant_limit(&state.pool, merchant_id, max_in_flight, &who).await?;
    tracing::warn!(%merchant_id, operator = %who, ?max_in_flight,
        "merchant admission limit set");
    Ok(Json(limits_of(&state, merchant_id).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct MerchantAdmissionView {
    merchant_id: Uuid,
    /// Its payments in flight now, as admission sees them.
    in_flight: i64,
    /// Its new payments this instance refused since it started.
    refused: u64,
    /// Of those, refused at the merchant's own limit (the others at the pipeline's).
    refused_at_own_limit: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub(super) struct AdmissionView {
    /// The pipeline's limit of payments in flight (0: off).
    max_in_flight: i64,
    /// A merchant's share without a limit of its own.
    default_max_in_flight: i64,
    /// Payments in flight now, every merchant.
    in_flight: i64,
    /// Merchants with payments in flight or refused, most in flight first.
    merchants: Vec<MerchantAdmissionView>,
}

/// Admission control now: the limits, the payments in flight, and per merchant its payments
/// in flight and refused (by this instance, since it started).
#[utoipa::path(get, path = "/ops/admission", tag = "merchants",
    security(("ops_key" = [])),
    responses((status = 200, description = "Admission now", body = AdmissionView)))]
pub(super) async fn admission(State(state): State<AppState>) -> Json<AdmissionView> {
    let (max_in_flight, default_max_in_flight, in_flight, merchants) = state.admission.merchants();
    Json(AdmissionView {
        max_in_flight,
        default_max_in_flight,
        in_flight,
        merchants: merchants
            .into_iter()
            .map(|m| MerchantAdmissionView {
                merchant_id: m.merchant_id,
                in_flight: m.in_flight,
                refused: m.refused,
                refused_at_own_limit: m.refused_at_own_limit,
            })
            .collect(),
    })
}
