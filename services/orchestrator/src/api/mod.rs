//! The orchestrator's internal HTTP API, called by the gateway only: every route requires the
//! gateway's service credential (`sagapay_service_kit::service_auth`), and the merchant a
//! request acts for is the claim the gateway signed, never a field of the body or query.
//! Requests are parsed again by the same domain types the gateway uses, so even a caller with
//! the credential cannot store a field the gateway would refuse (nor grow an event past what
//! Kafka accepts).
//!
//! One module a job: [`state`] is what every handler is given, [`payments`], [`refunds`] and
//! [`manual`] are the merchant's routes, [`ops`] the operator's. Handlers read and write
//! through [`crate::store`] and build commands with [`crate::saga::commands`]; nothing below
//! this module imports it.

mod manual;
pub mod ops;
mod payments;
mod refunds;
mod state;

pub use state::AppState;

use axum::routing::{get, post};
use axum::Router;
use sagapay_service_kit::service_auth::{require_service_credential, NonceStore, TrustedCallers};

/// The services that may call the internal API.
pub const CALLERS: &[&str] = &["gateway"];

/// The internal API's routes, each behind the gateway's service credential.
pub fn routes(state: AppState, trusted: TrustedCallers, nonces: NonceStore) -> Router {
    let routes = Router::new()
        .route(
            "/internal/payments",
            post(payments::create_payment).get(payments::list_payments),
        )
        .route(
            "/internal/payments/{payment_id}",
            get(payments::get_payment),
        )
        .route(
            "/internal/payments/{payment_id}/refunds",
            post(refunds::create),
        )
        .route(
            "/internal/payments/{payment_id}/capture",
            post(manual::capture),
        )
        .route(
            "/internal/payments/{payment_id}/cancel",
            post(manual::cancel),
        );
    require_service_credential(routes, trusted, nonces, CALLERS, crate::SERVICE).with_state(state)
}
