//! Operators' routes for payments that stopped moving, behind the ops key
//! (`sagapayctl payments stuck|retry|fail` calls them):
//!
//! - `GET /ops/payments/stuck?limit=100`: payments and refunds past their deadline or flagged
//!   as needing attention, with state, age, re-sends and why, oldest deadline first;
//! - `POST /ops/payments/{id}/retry` `{"requested_by": "..."}`: sends the payment's
//!   outstanding command (and its refunds' in flight) again now, with a fresh count of re-sends
//!   and the flag cleared;
//! - `POST /ops/payments/{id}/fail` `{"reason": "...", "requested_by": "..."}`: ends the
//!   payment as the saga would: before a risk decision it fails at once; an authorization is
//!   voided and a capture refunded, and the payment ends REVERSED when the provider confirms;
//!   a payment whose capture of another amount is parked ends REVERSED once exactly what the
//!   provider took is refunded; one whose void the provider refused ends FAILED (nothing was
//!   captured; the hold lapses at the issuer);
//! - `POST /ops/payments/{id}/accept` `{"reason": "...", "requested_by": "..."}`: keeps a
//!   capture the provider made of another amount than was asked: posted for what was
//!   captured, the payment settles for it;
//! - `GET /ops/admission`: the limits, the payments in flight, and per merchant its payments in
//!   flight and refused by this instance since it started;
//! - `GET|PUT /ops/merchants/{id}/limits` `{"max_in_flight": N | null, "requested_by": "..."}`:
//!   a merchant's own share of admission control (null: the default share again).
//!
//! One file a job: [`stuck`] lists, [`end`] acts on a payment (retry, fail, accept), [`limits`]
//! reads and sets a merchant's share; this module routes them and serves their document,
//! `GET /ops/openapi.json` (Schemathesis judges it in the suite).

mod end;
mod limits;
mod stuck;

use super::state::AppState;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sagapay_service_kit::api_error::ApiError;
use sagapay_service_kit::openapi::{document_json, Link, Links, OptionalBodies, OPS_KEY};
use sagapay_service_kit::ops_auth::{require_ops_key, OpsKey};
use utoipa::OpenApi;
use uuid::Uuid;

pub fn routes(state: AppState, key: OpsKey) -> Router {
    let routes = Router::new()
        .route("/ops/payments/stuck", get(stuck::stuck))
        .route("/ops/payments/{payment_id}/retry", post(end::retry))
        .route("/ops/payments/{payment_id}/fail", post(end::fail))
        .route("/ops/payments/{payment_id}/accept", post(end::accept))
        .route(
            "/ops/merchants/{merchant_id}/limits",
            get(limits::merchant_limits).put(limits::set_merchant_limits),
        )
        .route("/ops/admission", get(limits::admission))
        .route("/ops/openapi.json", get(document));
    require_ops_key(routes, key).with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SagaPay orchestrator: operations",
        description = "What operators do with payments that stopped moving, and merchants' \
            shares of admission control. Called with the ops key (`sagapayctl`)."
    ),
    paths(
        stuck::stuck,
        end::retry,
        end::fail,
        end::accept,
        limits::merchant_limits,
        limits::set_merchant_limits,
        limits::admission,
        document
    ),
    components(schemas(sagapay_service_kit::api_error::ErrorDocument)),
    modifiers(&OPS_KEY, &LINKS, &OPTIONAL_BODIES)
)]
struct OpsDoc;

/// A retry's body may be left out (who asks defaults to "an operator").
const OPTIONAL_BODIES: OptionalBodies =
    OptionalBodies(&[("/ops/payments/{payment_id}/retry", "post")]);

/// From the list of stuck payments to what an operator does with the first of them.
const LINKS: Links = Links(&[
    Link::new(
        "/ops/payments/stuck",
        "get",
        "200",
        "Retry",
        "retry",
        "payment_id",
        "$response.body#/payments/0/payment_id",
    ),
    Link::new(
        "/ops/payments/stuck",
        "get",
        "200",
        "Fail",
        "fail",
        "payment_id",
        "$response.body#/payments/0/payment_id",
    ),
    Link::new(
        "/ops/payments/stuck",
        "get",
        "200",
        "Accept",
        "accept",
        "payment_id",
        "$response.body#/payments/0/payment_id",
    ),
]);

/// This document.
#[utoipa::path(get, path = "/ops/openapi.json", tag = "operations", security(("ops_key" = [])),
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
async fn document() -> Response {
    axum::Json(document_json(&OpsDoc::openapi())).into_response()
}

/// The code of a refused field of an ops request.
fn field_code(field: &str) -> Option<&'static str> {
    Some(match field {
        "requested_by" => "invalid_requested_by",
        "reason" => "invalid_reason",
        "max_in_flight" => "invalid_max_in_flight",
        _ => return None,
    })
}

/// Who asks: the name given, or "an operator".
fn operator(requested_by: Option<sagapay_domain::OperatorName>) -> String {
    requested_by.map_or_else(|| "an operator".to_owned(), String::from)
}

/// A payment id of a path: anything but a UUID names no payment.
fn payment_path(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| not_found(raw))
}

fn not_found(payment_id: impl std::fmt::Display) -> ApiError {
    ApiError::not_found("payment_not_found", format!("no payment {payment_id}"))
        .with_param("payment_id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_ops_route_with_the_ops_key() {
        let doc = document_json(&OpsDoc::openapi());
        let paths = doc["paths"].as_object().unwrap();
        for path in [
            "/ops/payments/stuck",
            "/ops/payments/{payment_id}/retry",
            "/ops/payments/{payment_id}/fail",
            "/ops/payments/{payment_id}/accept",
            "/ops/merchants/{merchant_id}/limits",
        ] {
            assert!(paths.contains_key(path), "{path}");
        }
        assert_eq!(
            doc["components"]["securitySchemes"]["ops_key"]["name"],
            "x-ops-key"
        );
    }
}
