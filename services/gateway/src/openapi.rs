//! `GET /openapi.json`: the gateway's public API as an OpenAPI 3 document, generated from the
//! route handlers' annotations (utoipa); the wire types they name are `schemas`'s.

use axum::response::{IntoResponse, Response};
use sagapay_service_kit::openapi::{
    document_json, KeyedApi, Link, Links, OptionalBodies, BODY_ANSWERS,
};
use utoipa::OpenApi;

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
    modifiers(&PUBLIC, &LINKS, &OPTIONAL_BODIES),
    tags(
        (name = "payments", description = "Create and read payments"),
        (name = "refunds", description = "Refund settled payments"),
        (name = "webhooks", description = "Webhook endpoints, their deliveries, and the events they carry"),
        (name = "operations", description = "Probes, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The merchant's key, and the answers any route that takes it may give (Schemathesis sends
/// requests without a key, floods, and finds any status the document does not list).
const PUBLIC: KeyedApi = KeyedApi {
    scheme: "api_key",
    header: "x-api-key",
    answers: &[
        (
            "400",
            "Invalid request (a header, the body, a query parameter)",
        ),
        ("401", "Missing, invalid or revoked API key"),
        ("429", "Rate limited: retry after `Retry-After` seconds"),
        (
            "503",
            "A service behind the gateway is unavailable; retry (with the same idempotency key)",
        ),
    ],
    body_answers: BODY_ANSWERS,
};

/// A roll's body may be left out (the default overlap).
const OPTIONAL_BODIES: OptionalBodies =
    OptionalBodies(&[("/webhook_endpoints/{endpoint_id}/roll_secret", "post")]);

/// How a client goes from one answer to the next request: a created payment to reading,
/// capturing, cancelling and refunding it; a created endpoint to its deliveries, its secret's
/// roll and its deletion; a page of events to one event.
const LINKS: Links = Links(&[
    Link::new(
        "/payments",
        "post",
        "201",
        "GetPayment",
        "get_payment",
        "payment_id",
        "$response.body#/payment_id",
    ),
    Link::new(
        "/payments",
        "post",
        "201",
        "CapturePayment",
        "capture_payment",
        "payment_id",
        "$response.body#/payment_id",
    ),
    Link::new(
        "/payments",
        "post",
        "201",
        "CancelPayment",
        "cancel_payment",
        "payment_id",
        "$response.body#/payment_id",
    ),
    Link::new(
        "/payments",
        "post",
        "201",
        "RefundPayment",
        "create_refund",
        "payment_id",
        "$response.body#/payment_id",
    ),
    Link::new(
        "/webhook_endpoints",
        "post",
        "201",
        "ListDeliveries",
        "list_deliveries",
        "endpoint_id",
        "$response.body#/id",
    ),
    Link::new(
        "/webhook_endpoints",
        "post",
        "201",
        "RollSecret",
        "roll_secret",
        "endpoint_id",
        "$response.body#/id",
    ),
    Link::new(
        "/webhook_endpoints",
        "post",
        "201",
        "DeleteEndpoint",
        "delete_endpoint",
        "endpoint_id",
        "$response.body#/id",
    ),
    Link::new(
        "/events",
        "get",
        "200",
        "GetEvent",
        "get_event",
        "event_id",
        "$response.body#/data/0/id",
    ),
]);

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn document() -> Response {
    axum::Json(document_json(&ApiDoc::openapi())).into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_link_names_an_operation_and_a_parameter_of_the_document() {
        let doc = document_json(&ApiDoc::openapi());
        let mut operations = std::collections::BTreeMap::new();
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                let params: Vec<String> = op["parameters"]
                    .as_array()
                    .map(|ps| {
                        ps.iter()
                            .map(|p| p["name"].as_str().unwrap().to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                operations.insert(op["operationId"].as_str().unwrap().to_owned(), params);
            }
        }
        let mut links = 0;
        for item in doc["paths"].as_object().unwrap().values() {
            for op in item.as_object().unwrap().values() {
                for response in op["responses"].as_object().unwrap().values() {
                    for link in response["links"]
                        .as_object()
                        .into_iter()
                        .flat_map(|l| l.values())
                    {
                        let target = link["operationId"].as_str().unwrap();
                        let params = operations.get(target).unwrap_or_else(|| panic!("{target}"));
                        for name in link["parameters"].as_object().unwrap().keys() {
                            assert!(params.contains(name), "{target} has no parameter {name}");
                        }
                        links += 1;
                    }
                }
            }
        }
        assert_eq!(links, LINKS.0.len());
    }
}
