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

/// Longest webhook URL.
pub const WEBHOOK_URL_MAX: usize = 2048;
/// The webhook URLs the API takes, as the document states them ([`webhook_url_ok`] is the
/// same rule in code): http(s), a host name or IPv4 address of lower-case letters, digits,
/// dots and hyphens, a port of 1-65535, a path and a query of URL-safe characters.
pub const WEBHOOK_URL_PATTERN: &str = "^https?://[a-z0-9]+([.-][a-z0-9]+)*(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~/-]*)?([?][A-Za-z0-9._~=&-]*)?$";

/// Whether `url` matches [`WEBHOOK_URL_PATTERN`] (and is at most [`WEBHOOK_URL_MAX`] long).
pub fn webhook_url_ok(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    let host_ok = !host.is_empty()
        && host.split(['.', '-']).all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        });
    let port_ok = port.is_none_or(|p| {
        !p.starts_with('0') && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok()
    });
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let path_ok = path.is_empty()
        || (path.starts_with('/')
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._~/-".contains(&b)));
    let query_ok = query.is_none_or(|q| {
        q.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~=&-".contains(&b))
    });
    url.len() <= WEBHOOK_URL_MAX && host_ok && port_ok && path_ok && query_ok
}

/// `POST /webhook_endpoints`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookEndpointRequest {
    /// Where events are POSTed; `https` to a public address in production.
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 2048,
            pattern = "^https?://[a-z0-9]+([.-][a-z0-9]+)*(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?(/[A-Za-z0-9._~/-]*)?([?][A-Za-z0-9._~=&-]*)?$",
            example = "https://shop.example.com/sagapay/webhooks"
        )
    )]
    pub url: String,
    /// The event types to receive: 1 to 32.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 32,
        example = json!(["payment.settled", "payment.failed"])))]
    pub enabled_events: Vec<MerchantEventType>,
}

impl crate::requests::FieldCodes for CreateWebhookEndpointRequest {
    fn field_code(field: &str) -> Option<&'static str> {
        match field {
            "url" => Some("invalid_url"),
            "enabled_events" => Some("invalid_enabled_events"),
            _ => None,
        }
    }
}

/// `POST /webhook_endpoints/{endpoint_id}/roll_secret`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RollSecretRequest {
    /// Seconds the old secret keeps signing beside the new one: 0 to 604800 (a week),
    /// default 86400 (a day).
    #[serde(
        default,
        deserialize_with = "crate::requests::present_whole",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 604800, nullable = false)
    )]
    pub expires_in_s: Option<i64>,
}

impl crate::requests::FieldCodes for RollSecretRequest {
    fn field_code(field: &str) -> Option<&'static str> {
        (field == "expires_in_s").then_some("invalid_expires_in_s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_urls_follow_the_documented_pattern() {
        for ok in [
            "https://shop.example.com/sagapay/webhooks",
            "http://127.0.0.1:8080/hook?token=abc-1",
            "http://127.0.0.1:65535/ok",
            "https://a",
        ] {
            assert!(webhook_url_ok(ok), "{ok}");
        }
        for bad in [
            "ftp://a",
            "https://",
            "https://Shop.example.com",
            "https://a..b",
            "https://a-",
            "https://a:0",
            "https://a:65536",
            "https://a:099",
            "https://a/b c",
            "https://user@a",
            "https://a/%20",
            "https://a#frag",
        ] {
            assert!(!webhook_url_ok(bad), "{bad}");
        }
    }
}
