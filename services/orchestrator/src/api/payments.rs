//! Creating, reading and listing payments (`/internal/payments...`).

use super::state::AppState;
use crate::admission::{Scope, Verdict};
use crate::store::{self, NewPayment};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use sagapay_api_models::queries::{filter_time, page_limit};
use sagapay_api_models::{PaymentCreated as Created, PaymentPage};
use sagapay_domain::events::PaymentRequested;
use sagapay_domain::{Envelope, PaymentStatus};
use sagapay_messaging::headers::TRACEPARENT;
use sagapay_messaging::MessageHeaders;
use sagapay_service_kit::api_error::{replayed, ApiError};
use sagapay_service_kit::http::RequestContext;
use sagapay_service_kit::service_auth::VerifiedCaller;
use uuid::Uuid;

/// A payment request as the gateway forwards it, already validated there: the public API's
/// own type, parsed again here (the orchestrator trusts no caller with its invariants).
pub use sagapay_api_models::CreatePaymentRequest as CreatePayment;

pub(super) async fn create_payment(
    State(state): State<AppState>,
    Extension(ctx): Extension<RequestContext>,
    Extension(caller): Extension<VerifiedCaller>,
    Json(req): Json<CreatePayment>,
) -> Result<Response, ApiError> {
    let merchant_id = caller.acting_merchant()?;
    let fp = req.fingerprint(merchant_id);
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
                state.admission.refused(scope, merchant_id);
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
            capture_method: req.capture_method.into(),
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

/// `GET /payments`'s query (the public API's type), checked here: the gateway passes it on.
pub(super) use sagapay_api_models::ListPaymentsQuery as ListQuery;

/// The listing a query asks for, or the 400 naming what is wrong with it.
fn listing(q: ListQuery) -> Result<store::Listing, ApiError> {
    let invalid = |code: &str, param: &str, message: &str| {
        ApiError::invalid(code, message.to_owned()).with_param(param)
    };
    let limit = page_limit(q.limit)
        .ok_or_else(|| invalid("invalid_limit", "limit", "limit must be from 1 to 100"))?;
    let status = q
        .status
        .map(|s| {
            s.parse::<PaymentStatus>()
                .map_err(|_| invalid("invalid_status", "status", "status is not a payment status"))
        })
        .transpose()?;
    let time = |raw: Option<i64>, name: &str| {
        raw.map(|s| {
            filter_time(s).ok_or_else(|| {
                invalid(
                    "invalid_timestamp",
                    name,
                    "not a unix time in seconds from 0 to 253402300799",
                )
            })
        })
        .transpose()
    };
    let starting_after = q
        .starting_after
        .map(|s| {
            Uuid::parse_str(&s).map_err(|_| {
                invalid(
                    "invalid_starting_after",
                    "starting_after",
                    "starting_after is not a payment id",
                )
            })
        })
        .transpose()?;
    Ok(store::Listing {
        status,
        created_gte: time(q.created_gte, "created_gte")?,
        created_lt: time(q.created_lt, "created_lt")?,
        starting_after,
        limit,
    })
}

pub(super) async fn list_payments(
    State(state): State<AppState>,
    Extension(caller): Extension<VerifiedCaller>,
    query: Result<axum::extract::Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let merchant_id = caller.acting_merchant()?;
    let listing = listing(query?.0)?;
    let mut conn = state.pool.acquire().await?;
    let (data, has_more) = store::list(&mut conn, merchant_id, &listing)
        .await?
        .ok_or_else(|| {
            // A well-formed cursor that names no payment of this merchant: not found.
            ApiError::not_found(
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
