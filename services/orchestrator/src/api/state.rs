//! What every handler of the orchestrator's API is given, and who it acts for.

use sagapay_messaging::Outbox;
use sagapay_service_kit::api_error::ApiError;
use sagapay_service_kit::service_auth::VerifiedCaller;
use sqlx::PgPool;
use uuid::Uuid;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub deadlines: crate::saga::deadlines::Deadlines,
    pub metrics: crate::SagaMetrics,
}

/// The merchant the verified caller acts for; every internal route acts for one.
pub(crate) fn merchant_of(caller: &VerifiedCaller) -> Result<Uuid, ApiError> {
    caller.acting_merchant()
}
