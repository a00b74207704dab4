//! Development-only routes of the simulated provider, behind the ops key. They exist only when
//! `SAGAPAY_ENVIRONMENT=development`: a production deployment has no such route.
//!
//! - `POST /dev/provider/outage` `{"seconds": 15}`: the simulated provider refuses every
//!   connection (calls and status queries) for that long, as a PSP outage would look;
//!   `"operations": ["VOID"]` limits it to some operations, `"seconds": 0` ends it.

use crate::provider::Outage;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use sagapay_domain::events::ProviderOperation;
use sagapay_service_kit::ops_auth::{require_ops_key, OpsKey};
use sagapay_service_kit::ApiError;
use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutageRequest {
    seconds: u64,
    #[serde(default)]
    operations: Option<Vec<ProviderOperation>>,
}

#[derive(Debug, Serialize)]
struct OutageStarted {
    refusing_for_seconds: u64,
}

pub fn routes(outage: Outage, key: OpsKey) -> Router {
    let routes = Router::new().route("/dev/provider/outage", post(start_outage));
    require_ops_key(routes, key).with_state(outage)
}

async fn start_outage(
    State(outage): State<Outage>,
    Json(req): Json<OutageRequest>,
) -> Result<Json<OutageStarted>, ApiError> {
    if req.seconds > 3600 {
        return Err(
            ApiError::invalid("invalid_seconds", "seconds must be 0 to 3600").with_param("seconds"),
        );
    }
    outage.start(Duration::from_secs(req.seconds), req.operations);
    tracing::warn!(seconds = req.seconds, "simulated provider outage started");
    Ok(Json(OutageStarted {
        refusing_for_seconds: req.seconds,
    }))
}
