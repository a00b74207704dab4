//! A merchant refund as the API shows it.

use chrono::{DateTime, Utc};
use sagapay_domain::{AmountMinor, Currency, RefundStatus};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Refund {
    pub refund_id: Uuid,
    pub payment_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(value_type = i64, example = 1000))]
    pub amount_cents: AmountMinor,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "USD"))]
    pub currency: Currency,
    pub status: RefundStatus,
    pub reason: String,
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
