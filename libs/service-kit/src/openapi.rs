//! What every SagaPay API document shares (feature `openapi`): the key a route is called with
//! (a security scheme), the answers any keyed route may give whatever it does, added to each
//! operation once so no route can forget one, and the document as JSON with utoipa's one
//! spelling mistake put right. The gateway's public document and the ops documents of the
//! orchestrator and the risk service are built with it; Schemathesis judges all three.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};
use utoipa::Modify;

/// A keyed API: its security scheme (`name`, sent in header `header`) and the answers its
/// keyed operations share.
pub struct KeyedApi {
    pub scheme: &'static str,
    pub header: &'static str,
    /// Answers of every operation that takes the key.
    pub answers: &'static [(&'static str, &'static str)],
    /// And of every operation that reads a body.
    pub body_answers: &'static [(&'static str, &'static str)],
}

/// The answers of a body the HTTP layer refuses before a handler runs.
pub const BODY_ANSWERS: &[(&str, &str)] = &[
    ("413", "Body too large (16 KiB by default)"),
    ("415", "Not application/json (UTF-8)"),
];

/// The ops APIs of the services: the ops key, and what any of their routes may answer.
pub const OPS_KEY: KeyedApi = KeyedApi {
    scheme: "ops_key",
    header: "x-ops-key",
    answers: &[
        ("400", "Invalid request (the body, a query parameter)"),
        ("401", "Missing or wrong ops key"),
        ("503", "The service's database is unavailable; retry"),
    ],
    body_answers: BODY_ANSWERS,
};

impl Modify for KeyedApi {
    fn modify(&self, openapi: &mut OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                self.scheme,
                SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(self.header))),
            );
        let error = ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("ErrorDocument")))
            .build();
        for item in openapi.paths.paths.values_mut() {
            let ops = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
            ];
            for op in ops.into_iter().flatten().filter(|op| op.security.is_some()) {
                let with_body = op.request_body.is_some().then_some(self.body_answers);
                let answers = self.answers.iter().chain(with_body.into_iter().flatten());
                for (status, description) in answers {
                    op.responses
                        .responses
                        .entry((*status).to_owned())
                        .or_insert_with(|| {
                            ResponseBuilder::new()
                                .description(*description)
                                .content("application/json", error.clone())
                                .build()
                                .into()
                        });
                }
            }
        }
    }
}

/// The document as JSON. utoipa 5.5 writes a link's fields in snake case (`operation_id`,
/// `request_body`), which OpenAPI does not know, so they are renamed here (the spec's
/// `operationId`, `requestBody`); everything else is utoipa's.
pub fn document_json(openapi: &OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(openapi).expect("the document serializes");
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

/// One OpenAPI link: from the answer `status` of `method path`, to operation `to`, its
/// parameter `param` taken from the answer by `from` (a runtime expression).
pub struct Link {
    pub path: &'static str,
    pub method: &'static str,
    pub status: &'static str,
    pub name: &'static str,
    pub to: &'static str,
    pub param: &'static str,
    pub from: &'static str,
}

impl Link {
    /// `(path, method, status)` the answer linked from, `name` of the link, `to` the operation
    /// id, `param` its parameter, `from` the runtime expression that fills it.
    pub const fn new(
        path: &'static str,
        method: &'static str,
        status: &'static str,
        name: &'static str,
        to: &'static str,
        param: &'static str,
        from: &'static str,
    ) -> Self {
        Self {
            path,
            method,
            status,
            name,
            to,
            param,
            from,
        }
    }
}

/// How a client goes from one answer to the next request; Schemathesis's stateful phase
/// follows them. A link from an operation or answer the document lacks is a bug: it panics
/// when the document is built (the documents' unit tests build them).
pub struct Links(pub &'static [Link]);

impl Modify for Links {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::link::LinkBuilder;
        use utoipa::openapi::RefOr;
        for l in self.0 {
            let item = openapi.paths.paths.get_mut(l.path);
            let op = item.and_then(|i| match l.method {
                "post" => i.post.as_mut(),
                "put" => i.put.as_mut(),
                _ => i.get.as_mut(),
            });
            let response = op.and_then(|o| o.responses.responses.get_mut(l.status));
            let Some(RefOr::T(response)) = response else {
                panic!(
                    "no {} {} answering {} to link from",
                    l.method, l.path, l.status
                );
            };
            let link = LinkBuilder::new()
                .operation_id(l.to)
                .parameter(l.param, l.from)
                .build();
            response.links.insert(l.name.to_owned(), RefOr::T(link));
        }
    }
}

/// Operations whose body may be left out (`(path, method)`): utoipa marks a body required
/// unless its type is an `Option`, which would also make `null` a valid body.
pub struct OptionalBodies(pub &'static [(&'static str, &'static str)]);

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut OpenApi) {
        for (path, method) in self.0 {
            let item = openapi.paths.paths.get_mut(*path);
            let op = item.and_then(|i| match *method {
                "put" => i.put.as_mut(),
                _ => i.post.as_mut(),
            });
            let body = op.and_then(|o| o.request_body.as_mut());
            let Some(body) = body else {
                panic!("no {method} {path} with a body");
            };
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}
