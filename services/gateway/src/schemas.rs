//! The request bodies of the gateway's public API as its OpenAPI document names them: what
//! `validate` accepts (it parses the JSON itself, to report every field it refuses by name).
//! Answers are the types the orchestrator sends (`sagapay_api_models`) and the error shape
//! every service sends (`sagapay_service_kit::api_error::ErrorDocument`, as ErrorResponse).

pub use sagapay_api_models::{Payment, PaymentCreated, PaymentPage, Refund};
pub use sagapay_service_kit::api_error::ErrorDocument as ErrorResponse;

use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

/// `Idempotency-Key`: 1-255 printable ASCII characters, scoped to the merchant. Required here
/// or as the body's `idempotency_key` (they must agree when both are sent).
#[derive(IntoParams)]
#[into_params(names("Idempotency-Key"), parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKeyHeader(Option<String>);

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CreatePaymentBody {
    /// 1-64 characters of A-Z, a-z, 0-9, `_ - . : @`.
    #[schema(example = "cus_42")]
    customer_id: String,
    /// Integer minor units of the currency, 1 to the currency's maximum (about $1,000,000 by
    /// default: 100,000,000 in USD, 150,000,000 in JPY).
    #[schema(example = 2500, minimum = 1)]
    amount_cents: i64,
    /// ISO 4217 code the platform supports: USD EUR GBP CHF CAD AUD SEK NOK DKK PLN JPY.
    #[schema(example = "USD")]
    currency: String,
    /// Alternative to the `Idempotency-Key` header.
    idempotency_key: Option<String>,
    /// Payment method token (default `pm_card_ok`; the simulated provider's test cards are
    /// `pm_card_declined`, `pm_card_insufficient_funds`, `pm_card_timeout`,
    /// `pm_card_fail_twice`, `pm_card_slow`).
    payment_method: Option<String>,
    /// `automatic` (default: captured as soon as authorized) or `manual` (stops at
    /// AUTHORIZED until `POST /payments/{id}/capture` or `/cancel`; voided if not captured
    /// within the authorization's expiry, 7 days by default).
    #[schema(example = "automatic")]
    capture_method: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CaptureBody {
    /// Integer minor units, at most the authorized amount (default: all of it).
    #[schema(example = 1500, minimum = 1)]
    amount_cents: Option<i64>,
    /// Alternative to the `Idempotency-Key` header.
    idempotency_key: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct CreateRefundBody {
    /// Integer minor units, at most what is left to refund.
    #[schema(example = 1000, minimum = 1)]
    amount_cents: i64,
    /// Up to 200 characters.
    reason: Option<String>,
    idempotency_key: Option<String>,
}
