//! What every handler of the orchestrator's API is given. (Who it acts for is the verified
//! caller's signed claim: `VerifiedCaller::acting_merchant`.)

use crate::admission::Admission;
use crate::saga::shell::Shell;
use sqlx::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// Decides and writes what merchants and operators ask of a payment, as the saga does.
    pub shell: Shell,
    /// Whether a new payment may be accepted now.
    pub admission: Admission,
}
