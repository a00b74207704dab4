//! Creating, reading and listing payments (`/internal/payments...`).

use super::state::AppState;
use crate::admission::{Scope, Verdict};
use crate::store::{self, NewPayment};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sagapay_api_models::{PaymentCreated as Created, PaymentPage};
use sagapay_domain::events::{CaptureMethod, PaymentRequested};
use sagapay_domain::{
    AmountMinor, Currency, CustomerId, Envelope, IdempotencyKey, PaymentMethod, PaymentStatus,
};
use sagapay_messaging::headers::TRACEPARENT;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::{replayed, ApiError};
use sagapay_service_kit::http::RequestContext;
use sagapay_service_kit::service_auth::VerifiedCaller;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A payment request as the gateway forwards it, already validated there; it is parsed again
/// here (the orchestrator trusts no caller with its invariants).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePayment {
    pub customer_id: CustomerId,
    pub amount_cents: AmountMinor,
    pub currency: Currency,
    pub idempotency_key: IdempotencyKey,
    #[serde(default)]
    pub payment_method: PaymentMethod,
    /// AUTOMATIC (default): captured when authorized; MANUAL: waits for the merchant's
    /// capture or cancel.
    #[serde(default)]
    pub capture_method: CaptureMethod,
}

/// What identifies "the same request" for idempotency: everything but the key itself.
fn fingerprint(merchant_id: Uuid, req: &CreatePayment) -> String {
    let (merchant, amount) = (merchant_id.to_string(), req.amount_cents.to_string());
    let mut parts = vec![
        merchant.as_str(),
        req.customer_id.as_str(),
        amount.as_str(),
        req.currency.as_str(),
        req.payment_method.as_str(),
    ];
    // Only when not the default, so automatic payments keep the fingerprints they had
    // before capture methods existed (a retry across the upgrade is still the same request).
    if req.capture_method == CaptureMethod::Manual {
        parts.push("MANUAL");
    }
    sagapay_domain::request_fingerprint(&parts)
}

pub(super) async fn create_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(caller): Extension<VerifiedCaller>,
    Json(req): Json<CreatePayment>,
) -> Result<Response, ApiError> {
    let merchant_id = caller.acting_merchant()?;
    let fp = fingerprint(merchant_id, &req);
    let mut conn = state.pool.acquire().await?;
    if let Verdict::Overloaded {
        scope,
        in_flight,
        limit,
    } = state.admission.check(merchant_id)
    {
        // A retry of a payment already accepted is answered as before; only new work waits.
        return match existing(&mut conn, merchant_id, &req, &fp).await? {
            Some(resp) => Ok(resp),
            None => {
                state.admission.refused(scope);
                Ok(overloaded(scope, in_flight, limit))
            }
        };
    }
    let payment_id = Uuid::now_v7();
    let envelope = Envelope::new(
        payment_id,
        None,
        &ctx.correlation_id,
        &PaymentRequested {
            merchant_id,
            customer_id: req.customer_id.clone(),
            amount_minor: req.amount_cents,
            currency: req.currency,
            payment_method: req.payment_method.clone(),
        },
    );
    let mut headers = MessageHeaders::default();
    headers.set(TRACEPARENT, ctx.traceparent.clone());
    let inserted = store::insert_payment(
        &mut conn,
        &NewPayment {
            payment_id,
            merchant_id,
            customer_id: &req.customer_id,
            amount_minor: req.amount_cents.get(),
            currency: req.currency.as_str(),
            idempotency_key: &req.idempotency_key,
            request_fingerprint: &fp,
            correlation_id: &ctx.correlation_id,
            payment_method: &req.payment_method,
            capture_method: req.capture_method,
            deadline: state.shell.deadlines.created,
        },
        &state.shell.outbox.row(&envelope, &headers),
    )
    .await?;
    if inserted {
        state.admission.accepted(merchant_id);
        tracing::debug!(payment_id = %payment_id, correlation_id = %ctx.correlation_id, "payment created");
        let created = Created {
            payment_id,
            status: PaymentStatus::Created,
        };
        return Ok((StatusCode::CREATED, Json(created)).into_response());
    }
    // The key is taken. The unique constraint makes this the one durable answer, even when
    // two requests with the same key race: the loser reads the winner's committed row.
    existing(&mut conn, merchant_id, &req, &fp)
        .await?
        .ok_or_else(|| ApiError::internal("idempotency key taken but no payment found"))
}

/// The answer to a retry of a payment already created with this key (201, marked replayed),
/// 422 when the key was used for another request, `None` when the key is new.
async fn existing(
    conn: &mut sqlx::PgConnection,
    merchant_id: Uuid,
    req: &CreatePayment,
    fp: &str,
) -> Result<Option<Response>, ApiError> {
    let Some(existing) =
        store::load_by_idempotency_key(conn, merchant_id, &req.idempotency_key).await?
    else {
        return Ok(None);
    };
    if existing.request_fingerprint != fp {
        return Err(ApiError::idempotency_key_reused("request"));
    }
    let created = Created {
        payment_id: existing.payment_id,
        status: existing.status,
    };
    Ok(Some(replayed(
        (StatusCode::CREATED, Json(created)).into_response(),
    )))
}

/// 503 `overloaded`: the pipeline, or the merchant's share of it, is full; the merchant
/// retries with the same key. The header `sagapay-overload-scope` says which, so the gateway
/// sheds only this merchant's new payments, or everyone's.
fn overloaded(scope: Scope, in_flight: i64, limit: i64) -> Response {
    let message = match scope {
        Scope::Pipeline => format!(
            "the payment pipeline is behind ({in_flight} payments in flight, at most {limit}); \
             retry with the same idempotency key"
        ),
        Scope::Merchant => format!(
            "this merchant has {in_flight} payments in flight, its limit is {limit}; retry \
             with the same idempotency key"
        ),
    };
    let mut resp = ApiError::unavailable("overloaded", message).into_response();
    resp.headers_mut().insert(
        OVERLOAD_SCOPE,
        axum::http::HeaderValue::from_static(scope.as_str()),
    );
    resp
}

/// Which limit a 503 `overloaded` hit: `merchant` or `pipeline`.
pub const OVERLOAD_SCOPE: &str = "sagapay-overload-scope";

/// `GET /payments`'s query, checked here whatever the gateway checked.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    limit: Option<i64>,
    starting_after: Option<String>,
    status: Option<String>,
    created_gte: Option<i64>,
    created_lt: Option<i64>,
}

impl ListQuery {
    fn parse(self) -> Result<store::Listing, ApiError> {
        let invalid = |code: &str, param: &str, message: &str| {
            ApiError::invalid(code, message.to_owned()).with_param(param)
        };
        let limit = match self.limit.unwrap_or(20) {
            l @ 1..=100 => l,
            _ => {
                return Err(invalid(
                    "invalid_limit",
                    "limit",
                    "limit must be from 1 to 100",
                ))
            }
        };
        let status = self
            .status
            .map(|s| {
                s.parse::<PaymentStatus>().map_err(|_| {
                    invalid("invalid_status", "status", "status is not a payment status")
                })
            })
            .transpose()?;
        let time = |raw: Option<i64>, name: &str| {
            raw.map(|s| {
                chrono::DateTime::from_timestamp(s, 0)
                    .ok_or_else(|| invalid("invalid_timestamp", name, "not a unix time in seconds"))
            })
            .transpose()
        };
        let starting_after = self
            .starting_after
            .map(|s| {
                Uuid::parse_str(&s).map_err(|_| {
                    invalid(
                        "invalid_starting_after",
                        "starting_after",
                        "starting_after is not one of your payments",
                    )
                })
            })
            .transpose()?;
        Ok(store::Listing {
            status,
            created_gte: time(self.created_gte, "created_gte")?,
            created_lt: time(self.created_lt, "created_lt")?,
            starting_after,
            limit,
        })
    }
}

pub(super) async fn list_payments(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let merchant_id = caller.acting_merchant()?;
    let listing = query?.0.parse()?;
    let mut conn = state.pool.acquire().await?;
    let (data, has_more) = store::list(&mut conn, merchant_id, &listing)
        .await?
        .ok_or_else(|| {
            ApiError::invalid(
                "invalid_starting_after",
                "starting_after is not one of your payments",
            )
            .with_param("starting_after")
        })?;
    Ok(Json(PaymentPage { data, has_more }).into_response())
}

pub(super) async fn get_payment(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    Path(payment_id): Path<Uuid>,
) -> Result<Response, ApiError> {
    let merchant_id = caller.acting_merchant()?;
    let mut conn = state.pool.acquire().await?;
    match store::view(&mut conn, payment_id, merchant_id).await? {
        Some(mut view) => {
            view.refunds = store::refunds::list(&mut conn, payment_id).await?;
            Ok(Json(view).into_response())
        }
        None => Err(
            ApiError::not_found("payment_not_found", format!("no payment {payment_id}"))
                .with_param("payment_id"),
        ),
    }
}
