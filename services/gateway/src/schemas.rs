//! The types the gateway's OpenAPI document names: requests and answers are
//! `sagapay_api_models`'s (the handlers parse and the orchestrator sends exactly these), the
//! error shape every service sends is `sagapay_service_kit::api_error::ErrorDocument`
//! (as ErrorResponse).

pub use sagapay_api_models::{Payment, PaymentCreated, PaymentPage, Refund};
pub use sagapay_service_kit::api_error::ErrorDocument as ErrorResponse;
