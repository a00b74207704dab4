//! `GET /openapi.json`: the gateway's public API as an OpenAPI 3 document, generated from the
//! route handlers' annotations (utoipa); the wire types they name are `schemas`'s.

use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SagaPay",
        description = "Payments carried by a saga across six services. Every error has the shape \
            {\"error\": {\"type\", \"code\", \"message\", \"param\"}, \"request_id\"}; every response \
            carries x-request-id, and x-correlation-id is accepted or generated.",
    ),
    paths(
        crate::routes::create_payment,
        crate::routes::get_payment,
        crate::routes::list_payments,
        crate::routes::create_refund,
        crate::routes::capture_payment,
        crate::routes::cancel_payment,
        crate::webhooks::create_endpoint,
        crate::webhooks::list_endpoints,
        crate::webhooks::delete_endpoint,
        crate::webhooks::roll_secret,
        crate::webhooks::list_deliveries,
        crate::webhooks::list_events,
        crate::webhooks::get_event,
        document,
        health,
        ready,
        metrics,
    ),
    modifiers(&ApiKeyAuth),
    tags(
        (name = "payments", description = "Create and read payments"),
        (name = "refunds", description = "Refund settled payments"),
        (name = "webhooks", description = "Webhook endpoints, their deliveries, and the events they carry"),
        (name = "operations", description = "Probes, metrics and this document"),
    )
)]
pub struct ApiDoc;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "api_key",
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))),
            );
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn document() -> Response {
    axum::Json(ApiDoc::openapi()).into_response()
}

// The probes and metrics are served by the shared service kit; they are declared here so the
// document lists every route the gateway answers.

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "Alive, names its service")))]
#[allow(dead_code)]
fn health() {}

/// Readiness: database and Kafka reachable.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Ready"), (status = 503, description = "Not ready, with the failing checks")))]
#[allow(dead_code)]
fn ready() {}

/// Prometheus metrics, text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}
