//! Ops endpoints for the manual review queue. Authorised by the ops key (header `x-ops-key`,
//! or `x-api-key` for clients of the seed system), a credential no merchant has.
//!
//! - `GET /ops/reviews?limit=50&after=<payment_id>`: pending reviews, oldest first.
//! - `POST /ops/reviews/{payment_id}/approve` and `/deny` with `{"reviewed_by": "..."}`: the
//!   decision, who took it and when are kept; the saga resumes (approve) or the payment fails
//!   (deny). A second decision answers 409 with the one already taken.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sagapay_domain::events::{RiskApproved, RiskDenied};
use sagapay_domain::Envelope;
use sagapay_messaging::{MessageHeaders, Outbox};
use sagapay_service_kit::api_error::{ApiError, ErrorType};
use sagapay_service_kit::ops_auth::{require_ops_key, OpsKey};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Row};
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
        .route("/ops/reviews/{payment_id}/deny", post(deny));
    require_ops_key(routes, key).with_state(state)
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    after: Option<Uuid>,
}

#[derive(Debug, Serialize)]
struct ReviewView {
    payment_id: Uuid,
    merchant_id: Uuid,
    customer_id: String,
    amount_cents: i64,
    currency: String,
    reason: String,
    created_at: DateTime<Utc>,
}

#[derive(Debug, Serialize)]
struct ReviewPage {
    reviews: Vec<ReviewView>,
    /// Pass as `after` to get the next page; null on the last page.
    next_after: Option<Uuid>,
}

async fn list_reviews(
    State(state): State<OpsState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<ReviewPage>, ApiError> {
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
    .bind(q.after)
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reviewed_by: String,
}

#[derive(Debug, Serialize)]
struct DecisionView {
    payment_id: Uuid,
    status: &'static str,
    decided_by: String,
    decided_at: DateTime<Utc>,
}

async fn approve(
    state: State<OpsState>,
    id: Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    decide(state, id, body, Verdict::Approved).await
}

async fn deny(state: State<OpsState>, id: Path<String>, body: Bytes) -> Result<Response, ApiError> {
    decide(state, id, body, Verdict::Denied).await
}

fn parse_reviewer(body: &[u8]) -> Result<String, ApiError> {
    let parsed: DecisionBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "invalid_body",
            format!("expected {{\"reviewed_by\": \"...\"}}: {e}"),
        )
    })?;
    let who = parsed.reviewed_by;
    let ok =
        !who.trim().is_empty() && who.chars().count() <= 64 && !who.chars().any(char::is_control);
    if !ok {
        return Err(ApiError::invalid(
            "invalid_reviewed_by",
            "reviewed_by must be 1-64 printable characters",
        )
        .with_param("reviewed_by"));
    }
    Ok(who)
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
