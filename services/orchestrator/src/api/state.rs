//! What every handler of the orchestrator's API is given. (Who it acts for is the verified
//! caller's signed claim: `VerifiedCaller::acting_merchant`.)

use sagapay_messaging::Outbox;
use sqlx::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub deadlines: crate::saga::deadlines::Deadlines,
    pub metrics: crate::SagaMetrics,
}
