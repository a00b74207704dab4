//! The public API's query strings, one type per listing route: the service that answers the
//! listing parses its query into it, and the API document describes it (feature `openapi`),
//! ranges included. The gateway passes query strings on unparsed (bounded in length).

use serde::{Deserialize, Serialize};

/// Latest time a listing filter takes: 9999-12-31T23:59:59Z, in unix seconds.
pub const UNIX_TIME_MAX: i64 = 253_402_300_799;

/// The page size of every listing: 1 to 100, default 20.
pub fn page_limit(raw: Option<i64>) -> Option<i64> {
    match raw.unwrap_or(20) {
        l @ 1..=100 => Some(l),
        _ => None,
    }
}

/// A filter time within 1970 to 9999 (unix seconds), or `None` when it is outside.
pub fn filter_time(raw: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    (0..=UNIX_TIME_MAX)
        .contains(&raw)
        .then(|| chrono::DateTime::from_timestamp(raw, 0))
        .flatten()
}

/// `GET /payments`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ListPaymentsQuery {
    /// Page size: 1 to 100, default 20.
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 100))]
    pub limit: Option<i64>,
    /// The last payment id of the previous page (unknown: 404 `invalid_starting_after`).
    #[cfg_attr(feature = "openapi", param(format = Uuid))]
    pub starting_after: Option<String>,
    /// Only payments in this status.
    #[cfg_attr(feature = "openapi", param(value_type = Option<sagapay_domain::PaymentStatus>))]
    pub status: Option<String>,
    /// Created at or after (unix seconds).
    #[cfg_attr(feature = "openapi", param(minimum = 0, maximum = 253402300799_i64))]
    pub created_gte: Option<i64>,
    /// Created before (unix seconds).
    #[cfg_attr(feature = "openapi", param(minimum = 0, maximum = 253402300799_i64))]
    pub created_lt: Option<i64>,
}

/// `GET /events`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ListEventsQuery {
    /// Page size: 1 to 100, default 20.
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 100))]
    pub limit: Option<i64>,
    /// The last event id of the previous page (unknown: 404 `invalid_starting_after`).
    #[cfg_attr(feature = "openapi", param(pattern = "^evt_[0-9a-f]{32}$"))]
    pub starting_after: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", param(rename = "type", value_type = Option<sagapay_domain::MerchantEventType>))]
    pub event_type: Option<String>,
    /// Recorded at or after (unix seconds).
    #[cfg_attr(feature = "openapi", param(minimum = 0, maximum = 253402300799_i64))]
    pub created_gte: Option<i64>,
    /// Recorded before (unix seconds).
    #[cfg_attr(feature = "openapi", param(minimum = 0, maximum = 253402300799_i64))]
    pub created_lt: Option<i64>,
}

/// `GET /webhook_endpoints/{endpoint_id}/deliveries`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(deny_unknown_fields)]
pub struct ListDeliveriesQuery {
    /// Page size: 1 to 100, default 20.
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 100))]
    pub limit: Option<i64>,
}
