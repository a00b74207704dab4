//! What every answer of the console says to the browser: nothing is cached (pages show
//! payments and merchants), no other site may frame it, scripts and styles come from the
//! console only, forms post to the console only, and no referrer leaves it.

use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;

const HEADERS: [(header::HeaderName, &str); 7] = [
    // Browsers keep to HTTPS once they saw it (ignored over plain HTTP, in development).
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000"),
    (header::CACHE_CONTROL, "no-store"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::PRAGMA, "no-cache"),
];

/// Adds the headers to every answer.
pub async fn headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in HEADERS {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}
