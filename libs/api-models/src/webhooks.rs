//! Webhook endpoints, their deliveries, and the merchant events they carry, as the API shows
//! them (the notification service answers with these; the gateway passes them on).

use sagapay_domain::MerchantEventType;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum EndpointStatus {
    Enabled,
    /// No success for too long: nothing more is sent (delete it and register again).
    Disabled,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEndpoint {
    pub id: Uuid,
    pub url: String,
    pub enabled_events: Vec<MerchantEventType>,
    pub status: EndpointStatus,
    pub disabled_reason: Option<String>,
    /// Unix time, seconds.
    pub created: i64,
    /// The signing secret (`whsec_...`): in the answer that creates the endpoint only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEndpointList {
    pub data: Vec<WebhookEndpoint>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookEndpointDeleted {
    pub id: Uuid,
    pub deleted: bool,
}

/// A rolled signing secret; the previous one keeps signing beside it until
/// `previous_secret_expires`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RolledSecret {
    pub id: Uuid,
    pub secret: String,
    /// Unix time, seconds.
    pub previous_secret_expires: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not delivered yet; tried again at `next_attempt`.
    Pending,
    Delivered,
    /// Given up.
    Failed,
}

impl DeliveryStatus {
    /// From its stored name (`webhook_delivery_status`: PENDING, DELIVERED, FAILED).
    pub fn parse_stored(s: &str) -> Option<Self> {
        match s {
            "PENDING" => Some(Self::Pending),
            "DELIVERED" => Some(Self::Delivered),
            "FAILED" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// One event's delivery to one endpoint, with its last attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    pub id: Uuid,
    pub event_id: String,
    pub event_type: MerchantEventType,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub last_latency_ms: Option<i32>,
    /// Unix times, seconds.
    pub last_attempt: Option<i64>,
    pub next_attempt: Option<i64>,
    pub delivered: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDeliveryList {
    pub data: Vec<WebhookDelivery>,
}

/// What a merchant event carries: the payment (or, for refund events, the refund) as the
/// saga's event told it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventData {
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub object: serde_json::Value,
}

/// A merchant event, as every delivery and `GET /events` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MerchantEvent {
    /// `evt_` and 32 hex digits; the same for every delivery of the event.
    pub id: String,
    #[serde(rename = "type")]
    pub event_type: MerchantEventType,
    /// Unix time, seconds.
    pub created: i64,
    pub data: EventData,
}

/// A page of events, newest first; `has_more` when another page follows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventPage {
    pub data: Vec<MerchantEvent>,
    pub has_more: bool,
}
