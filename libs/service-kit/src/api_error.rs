//! The one error shape of every SagaPay HTTP API:
//! `{"error": {"type", "code", "message", "param"}, "request_id"}`.
//!
//! Handlers return [`ApiError`]; the request-context middleware (see `http`) fills in the
//! request id, so handlers never thread it through.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

/// Broad category, as a client would branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorType {
    InvalidRequestError,
    AuthenticationError,
    RateLimitError,
    IdempotencyError,
    ConflictError,
    ApiError,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: ErrorType,
    /// Machine-readable, stable: clients branch on it.
    #[cfg_attr(feature = "openapi", schema(example = "invalid_amount"))]
    pub code: String,
    /// For humans; may change.
    pub message: String,
    /// The request field at fault, when there is one.
    pub param: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: ErrorType,
        code: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            body: ErrorBody {
                kind,
                code: code.to_owned(),
                message: message.into(),
                param: None,
            },
        }
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.body.param = Some(param.into());
        self
    }

    pub fn invalid(code: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            ErrorType::InvalidRequestError,
            code,
            message,
        )
    }

    /// 422: well formed, refused by a rule that depends on configuration or state (an amount
    /// above its currency's limit, a refund above what is left).
    pub fn unprocessable(code: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::InvalidRequestError,
            code,
            message,
        )
    }

    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorType::InvalidRequestError,
            code,
            message,
        )
    }

    /// 422: the idempotency key was used before for a different `what` (the same request
    /// again is answered as the first was; see [`replayed`]).
    pub fn idempotency_key_reused(what: &str) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::IdempotencyError,
            "idempotency_key_reused",
            format!("this idempotency key was already used for a different {what}"),
        )
        .with_param("idempotency_key")
    }

    pub fn body_too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorType::InvalidRequestError,
            "body_too_large",
            format!("the request body is larger than {limit_bytes} bytes"),
        )
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::AuthenticationError,
            "invalid_api_key",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::ApiError,
            "internal_error",
            message,
        )
    }

    pub fn unavailable(code: &str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::ApiError,
            code,
            message,
        )
    }
}

/// The full JSON document of an error response.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[cfg_attr(feature = "openapi", schema(as = ErrorResponse))]
pub struct ErrorDocument {
    pub error: ErrorBody,
    pub request_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let doc = ErrorDocument {
            error: self.body.clone(),
            request_id: None,
        };
        let mut resp = (self.status, axum::Json(doc)).into_response();
        // Every 503 is worth retrying (with the same idempotency key): say when.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        // The request-context middleware re-renders the body with the request id.
        resp.extensions_mut().insert(self.body);
        resp
    }
}

/// A query string that does not parse: 400 `invalid_query` in the API's shape (axum's own
/// rejection is plain text, which callers through the gateway would see as a failure).
impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(e: axum::extract::rejection::QueryRejection) -> Self {
        ApiError::invalid("invalid_query", e.body_text())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error");
        ApiError::unavailable(
            "database_unavailable",
            "the service's database is unavailable; retry later",
        )
    }
}

/// Marks `resp` as the replay of an earlier identical request (`idempotent-replayed: true`):
/// how every SagaPay API tells a client its retry changed nothing.
pub fn replayed(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    resp
}
