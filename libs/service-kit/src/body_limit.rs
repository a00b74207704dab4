//! The refusal of a body announced larger than a route accepts, sent so that the client reads
//! it. Every service answers 413 `body_too_large` from the `Content-Length` alone, before
//! anything else runs; tower-http's limit (inside, in [`crate::http::instrument`]) still
//! bounds bodies without a length as they are read.
//!
//! Why the body is read before answering: a server that answers and closes while the client
//! is still sending leaves unread bytes in its socket, and its kernel resets the connection;
//! the reset can reach the client before it reads the answer, so it sees a broken connection
//! instead of a clear error (the "lingering close" HTTP servers do). The body is discarded as
//! it arrives, never buffered, up to a bound and for at most a second; past the bound the
//! answer is sent at once (no client of ours sends that much).

use crate::api_error::ApiError;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::time::Duration;

/// Longest a refused body is read for.
const DRAIN_TIME: Duration = Duration::from_secs(1);

/// The largest refused body read to its end: twice the limit, and at least 1 MiB.
pub fn drain_bound(limit_bytes: usize) -> u64 {
    (limit_bytes as u64).saturating_mul(2).max(1 << 20)
}

/// Middleware (`axum::middleware::from_fn_with_state(limit_bytes, refuse_oversized)`).
pub async fn refuse_oversized(
    State(limit_bytes): State<usize>,
    req: Request,
    next: Next,
) -> Response {
    match announced_length(&req) {
        Some(len) if len > limit_bytes as u64 => {
            if len <= drain_bound(limit_bytes) {
                let mut body = req.into_body().into_data_stream();
                let drain = async { while let Some(Ok(_)) = body.next().await {} };
                let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
            }
            ApiError::body_too_large(limit_bytes).into_response()
        }
        _ => next.run(req).await,
    }
}

fn announced_length(req: &Request) -> Option<u64> {
    req.headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_limit_still_drains_a_mebibyte_and_a_large_one_twice_itself() {
        assert_eq!(drain_bound(16 * 1024), 1 << 20);
        assert_eq!(drain_bound(1 << 20), 2 << 20);
        assert_eq!(drain_bound(usize::MAX), u64::MAX);
    }
}
