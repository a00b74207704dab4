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
    modifiers(&ApiKeyAuth, &SharedAnswers, &Links),
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

/// The answers every route that takes an API key may give, whatever it does: added to each
/// such operation here, once, so no route can forget one (Schemathesis sends requests without
/// a key, floods, and finds any status the document does not list).
struct SharedAnswers;

impl SharedAnswers {
    const ANSWERS: [(&'static str, &'static str); 4] = [
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
    ];
}

impl SharedAnswers {
    /// And those of every route that reads a body.
    const BODY_ANSWERS: [(&'static str, &'static str); 2] = [
        ("413", "Body too large (16 KiB by default)"),
        ("415", "Not application/json (UTF-8)"),
    ];
}

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let error = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorDocument")))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.delete,
                &mut item.put,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                if op.security.is_none() {
                    continue;
                }
                let with_body = op.request_body.is_some().then_some(Self::BODY_ANSWERS);
                for (status, description) in Self::ANSWERS
                    .into_iter()
                    .chain(with_body.into_iter().flatten())
                {
                    op.responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(description)
                                .content("application/json", error.clone())
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// How a client goes from one answer to the next request (OpenAPI links): a created payment to
/// reading, capturing, cancelling and refunding it; a created endpoint to its deliveries, its
/// secret's roll and its deletion; a page of events to one event. Schemathesis's stateful phase
/// follows them.
struct Links;

impl Links {
    /// (path, method, status, link name, operation id, parameter, runtime expression).
    const LINKS: [(
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        &'static str,
    ); 8] = [
        (
            "/payments",
            "post",
            "201",
            "GetPayment",
            "get_payment",
            "payment_id",
            "$response.body#/payment_id",
        ),
        (
            "/payments",
            "post",
            "201",
            "CapturePayment",
            "capture_payment",
            "payment_id",
            "$response.body#/payment_id",
        ),
        (
            "/payments",
            "post",
            "201",
            "CancelPayment",
            "cancel_payment",
            "payment_id",
            "$response.body#/payment_id",
        ),
        (
            "/payments",
            "post",
            "201",
            "RefundPayment",
            "create_refund",
            "payment_id",
            "$response.body#/payment_id",
        ),
        (
            "/webhook_endpoints",
            "post",
            "201",
            "ListDeliveries",
            "list_deliveries",
            "endpoint_id",
            "$response.body#/id",
        ),
        (
            "/webhook_endpoints",
            "post",
            "201",
            "RollSecret",
            "roll_secret",
            "endpoint_id",
            "$response.body#/id",
        ),
        (
            "/webhook_endpoints",
            "post",
            "201",
            "DeleteEndpoint",
            "delete_endpoint",
            "endpoint_id",
            "$response.body#/id",
        ),
        (
            "/events",
            "get",
            "200",
            "GetEvent",
            "get_event",
            "event_id",
            "$response.body#/data/0/id",
        ),
    ];
}

impl Modify for Links {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        use utoipa::openapi::RefOr;
        for (path, method, status, name, operation, param, expr) in Self::LINKS {
            let item = openapi.paths.paths.get_mut(path);
            let op = item.and_then(|i| match method {
                "post" => i.post.as_mut(),
                _ => i.get.as_mut(),
            });
            let response = op.and_then(|o| o.responses.responses.get_mut(status));
            let Some(RefOr::T(response)) = response else {
                panic!("the document has no {method} {path} answering {status} to link from");
            };
            let link = LinkBuilder::new()
                .operation_id(operation)
                .parameter(param, expr)
                .build();
            response.links.insert(name.to_owned(), RefOr::T(link));
        }
        // A roll's body is optional (empty: the default overlap).
        let roll = openapi
            .paths
            .paths
            .get_mut("/webhook_endpoints/{endpoint_id}/roll_secret")
            .and_then(|i| i.post.as_mut())
            .and_then(|o| o.request_body.as_mut())
            .expect("the roll route takes a body");
        roll.required = Some(utoipa::openapi::Required::False);
    }
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
pub async fn document() -> Response {
    axum::Json(document_json()).into_response()
}

/// The document as JSON. utoipa 5.5 writes a link's fields in snake case (`operation_id`,
/// `request_body`), which OpenAPI does not know, so they are renamed here (the spec's
/// `operationId`, `requestBody`); everything else is utoipa's.
pub fn document_json() -> serde_json::Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).expect("the document serializes");
    let paths = doc["paths"]
        .as_object_mut()
        .into_iter()
        .flat_map(|p| p.values_mut());
    let operations = paths
        .filter_map(|i| i.as_object_mut())
        .flat_map(|i| i.values_mut());
    for op in operations {
        let responses = op["responses"]
            .as_object_mut()
            .into_iter()
            .flat_map(|r| r.values_mut());
        for response in responses {
            let links = response.get_mut("links").and_then(|l| l.as_object_mut());
            for link in links.into_iter().flat_map(|l| l.values_mut()) {
                let Some(link) = link.as_object_mut() else {
                    continue;
                };
                for (snake, camel) in [
                    ("operation_id", "operationId"),
                    ("request_body", "requestBody"),
                ] {
                    if let Some(v) = link.remove(snake) {
                        link.insert(camel.to_owned(), v);
                    }
                }
            }
        }
    }
    doc
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
        let doc = document_json();
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
        assert_eq!(links, Links::LINKS.len());
    }
}
