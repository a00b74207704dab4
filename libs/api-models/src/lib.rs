//! The public API's wire types, defined once: the orchestrator serializes them (through the
//! gateway, which passes its answers on) and the gateway's OpenAPI document is generated from
//! them (feature `openapi`), so the document cannot describe a field the service does not send.
//! Values only, no I/O; the domain's types where the domain has one (status enums, amounts,
//! currencies, customer ids).

pub mod payments;
pub mod refunds;
pub mod webhooks;

pub use payments::{
    CaptureMethod, Payment, PaymentCreated, PaymentPage, PaymentSummary, TimelineEntry,
    TimelineKind,
};
pub use refunds::Refund;
pub use webhooks::{
    DeliveryStatus, EndpointStatus, EventData, EventPage, MerchantEvent, RolledSecret,
    WebhookDelivery, WebhookDeliveryList, WebhookEndpoint, WebhookEndpointDeleted,
    WebhookEndpointList,
};
