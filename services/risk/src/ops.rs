//! Ops endpoints for the manual review queue. Authorised by the ops key (header `x-ops-key`,
//! or `x-api-key` for clients of the seed system), a credential no merchant has.
//!
//! - `GET /ops/reviews?limit=50&after=<payment_id>`: pending reviews, oldest first.
//! - `POST /ops/reviews/{payment_id}/approve` and `/deny` with `{"reviewed_by": "..."}`: the
//!   decision, who took it and when are kept; the saga resumes (approve) or the payment fails
//!   (deny). A second decision answers 409 with the one already taken.
//! - `GET /ops/openapi.json`: these routes' document (Schemathesis judges it in the suite).

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sagapay_domain::events::{RiskApproved, RiskDenied};
use sagapay_domain::{Envelope, OperatorName};
use sagapay_messaging::{MessageHeaders, Outbox};
use sagapay_service_kit::api_error::{ApiError, ErrorDocument, ErrorType};
use sagapay_service_kit::json_body::parse_body;
use sagapay_service_kit::openapi::{document_json, Link, Links, OPS_KEY};
use sagapay_service_kit::ops_auth::{require_ops_key, OpsKey};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    pub outbox: Outbox,
}

pub fn routes(state: OpsState, key: OpsKey) -> Router {
    let routes = Router::new()
        .route("/ops/reviews", get(list_reviews))
        .route("/ops/reviews/{payment_id}/approve", post(approve))
        .route("/ops/reviews/{payment_id}/deny", post(deny))
        .route("/ops/openapi.json", get(document));
    require_ops_key(routes, key).with_state(state)
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "SagaPay risk: operations",
        description = "The manual review queue: payments the rules sent to a person, and \
            their decisions. Called with the ops key (`sagapayctl reviews`)."
    ),
    paths(list_reviews, approve, deny, document),
    components(schemas(ErrorDocument)),
    modifiers(&OPS_KEY, &LINKS)
)]
struct OpsDoc;

/// From the queue to a decision on its first review.
const LINKS: Links = Links(&[
    Link::new(
        "/ops/reviews",
        "get",
        "200",
        "Approve",
        "approve",
        "payment_id",
        "$response.body#/reviews/0/payment_id",
    ),
    Link::new(
        "/ops/reviews",
        "get",
        "200",
        "Deny",
        "deny",
        "payment_id",
        "$response.body#/reviews/0/payment_id",
    ),
]);

/// This document.
#[utoipa::path(get, path = "/ops/openapi.json", tag = "operations", security(("ops_key" = [])),
    responses((status = 200, description = "OpenAPI 3 document", content_type = "application/json")))]
async fn document() -> Response {
    Json(document_json(&OpsDoc::openapi())).into_response()
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Page size: 1 to 100, default 50.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The last payment id of the previous page (`next_after`).
    #[param(format = Uuid)]
    after: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ReviewView {
    payment_id: Uuid,
    merchant_id: Uuid,
    customer_id: String,
    amount_cents: i64,
    currency: String,
    reason: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ReviewPage {
    reviews: Vec<ReviewView>,
    /// Pass as `after` to get the next page; null on the last page.
    next_after: Option<Uuid>,
}

/// Pending reviews, oldest first, a page at a time.
#[utoipa::path(get, path = "/ops/reviews", tag = "reviews", params(ListQuery),
    security(("ops_key" = [])),
    responses((status = 200, description = "A page of pending reviews", body = ReviewPage)))]
async fn list_reviews(
    State(state): State<OpsState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<ReviewPage>, ApiError> {
    let Query(q) = query?;
    let after = q
        .after
        .map(|a| {
            Uuid::parse_str(&a).map_err(|_| {
                ApiError::invalid("invalid_after", "after must be a payment id").with_param("after")
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(
            ApiError::invalid("invalid_limit", "limit must be between 1 and 100")
                .with_param("limit"),
        );
    }
    let rows = sqlx::query(
        "SELECT payment_id, merchant_id, customer_id, amount_minor, currency, reason, created_at
           FROM risk_reviews r
          WHERE status = 'PENDING'
            AND ($1::uuid IS NULL OR (created_at, payment_id) >
                 (SELECT created_at, payment_id FROM risk_reviews WHERE payment_id = $1))
          ORDER BY created_at, payment_id
          LIMIT $2",
    )
    .bind(after)
    .bind(limit + 1)
    .fetch_all(&state.pool)
    .await?;
    let mut reviews = rows
        .iter()
        .map(|r| {
            Ok(ReviewView {
                payment_id: r.try_get("payment_id")?,
                merchant_id: r.try_get("merchant_id")?,
                customer_id: r.try_get("customer_id")?,
                amount_cents: r.try_get("amount_minor")?,
                currency: r.try_get("currency")?,
                reason: r.try_get("reason")?,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    let next_after = if reviews.len() as i64 > limit {
        reviews.truncate(limit as usize);
        reviews.last().map(|r| r.payment_id)
    } else {
        None
    };
    Ok(Json(ReviewPage {
        reviews,
        next_after,
    }))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Verdict {
    Approved,
    Denied,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::Approved => "APPROVED",
            Verdict::Denied => "DENIED",
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// Who decides, recorded with the decision.
    reviewed_by: OperatorName,
}

#[derive(Debug, Serialize, ToSchema)]
struct DecisionView {
    payment_id: Uuid,
    status: &'static str,
    decided_by: String,
    decided_at: DateTime<Utc>,
}

/// Approves the payment: the saga resumes.
#[utoipa::path(post, path = "/ops/reviews/{payment_id}/approve", tag = "reviews",
    params(("payment_id" = String, Path, format = Uuid, description = "The payment under review")),
    request_body = DecisionBody, security(("ops_key" = [])),
    responses(
        (status = 200, description = "Approved", body = DecisionView),
        (status = 404, description = "No review for this payment", body = ErrorDocument),
        (status = 409, description = "Already decided", body = ErrorDocument),
    ))]
async fn approve(
    state: State<OpsState>,
    id: Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    decide(state, id, body, Verdict::Approved).await
}

/// Denies the payment: it fails.
#[utoipa::path(post, path = "/ops/reviews/{payment_id}/deny", tag = "reviews",
    params(("payment_id" = String, Path, format = Uuid, description = "The payment under review")),
    request_body = DecisionBody, security(("ops_key" = [])),
    responses(
        (status = 200, description = "Denied", body = DecisionView),
        (status = 404, description = "No review for this payment", body = ErrorDocument),
        (status = 409, description = "Already decided", body = ErrorDocument),
    ))]
async fn deny(state: State<OpsState>, id: Path<String>, body: Bytes) -> Result<Response, ApiError> {
    decide(state, id, body, Verdict::Denied).await
}

fn parse_reviewer(body: &[u8]) -> Result<String, ApiError> {
    let parsed: DecisionBody = parse_body(body, |field| {
        (field == "reviewed_by").then_some("invalid_reviewed_by")
    })?;
    Ok(parsed.reviewed_by.into())
}

async fn decide(
    State(state): State<OpsState>,
    Path(payment_id): Path<String>,
    body: Bytes,
    verdict: Verdict,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::not_found("review_not_found", "no review for this payment")
            .with_param("payment_id")
    };
    let payment_id = Uuid::parse_str(&payment_id).map_err(|_| not_found())?;
    let reviewed_by = parse_reviewer(&body)?;
    let mut tx = state.pool.begin().await?;
    let row = sqlx::query(
        "SELECT status, decided_by, decided_at, source_event_id, correlation_id, headers
           FROM risk_reviews WHERE payment_id = $1 FOR UPDATE",
    )
    .bind(payment_id)
    .fetch_optional(&mut *tx)
    .await?
    .ok_or_else(not_found)?;
    let status: String = row.try_get("status")?;
    if status != "PENDING" {
        let by: Option<String> = row.try_get("decided_by")?;
        let at: Option<DateTime<Utc>> = row.try_get("decided_at")?;
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorType::ConflictError,
            "review_already_decided",
            format!(
                "this review was already decided: {status} by {} at {}",
                by.unwrap_or_default(),
                at.map(|t| t.to_rfc3339()).unwrap_or_default()
            ),
        ));
    }
    let decided_at: DateTime<Utc> = sqlx::query_scalar(
        "UPDATE risk_reviews SET status = $2, decided_by = $3, decided_at = now()
          WHERE payment_id = $1 RETURNING decided_at",
    )
    .bind(payment_id)
    .bind(verdict.as_str())
    .bind(&reviewed_by)
    .fetch_one(&mut *tx)
    .await?;
    let source_event_id: Uuid = row.try_get("source_event_id")?;
    let correlation_id: String = row.try_get("correlation_id")?;
    let headers: sqlx::types::Json<MessageHeaders> = row.try_get("headers")?;
    let reason = format!(
        "manual review {} by {reviewed_by}",
        verdict.as_str().to_ascii_lowercase()
    );
    let event = match verdict {
        Verdict::Approved => Envelope::new(
            payment_id,
            Some(source_event_id),
            &correlation_id,
            &RiskApproved { reason },
        ),
        Verdict::Denied => Envelope::new(
            payment_id,
            Some(source_event_id),
            &correlation_id,
            &RiskDenied { reason },
        ),
    };
    state.outbox.enqueue(&mut tx, &event, &headers.0).await?;
    tx.commit().await?;
    tracing::info!(payment_id = %payment_id, decision = verdict.as_str(), reviewed_by = %reviewed_by, "review decided");
    Ok(Json(DecisionView {
        payment_id,
        status: verdict.as_str(),
        decided_by: reviewed_by,
        decided_at,
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reviewers_are_named() {
        assert_eq!(
            parse_reviewer(br#"{"reviewed_by":"ops-ann"}"#).unwrap(),
            "ops-ann"
        );
        assert!(parse_reviewer(br#"{"reviewed_by":""}"#).is_err());
        assert!(parse_reviewer(br#"{"reviewed_by":"a","x":1}"#).is_err());
        assert!(parse_reviewer(br#"{}"#).is_err());
        assert!(parse_reviewer(b"not json").is_err());
    }
}
