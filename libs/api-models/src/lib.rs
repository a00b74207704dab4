//! The public API's wire types, defined once: the orchestrator serializes them (through the
//! gateway, which passes its answers on) and the gateway's OpenAPI document is generated from
//! them (feature `openapi`), so the document cannot describe a field the service does not send.
//! Values only, no I/O; the domain's types where the domain has one (status enums, amounts,
//! currencies, customer ids).

pub mod payments;
pub mod queries;
pub mod refunds;
pub mod requests;
pub mod webhooks;

pub use payments::{
    CaptureMethod, Payment, PaymentCreated, PaymentPage, PaymentSummary, TimelineEntry,
    TimelineKind,
};
pub use queries::{ListDeliveriesQuery, ListEventsQuery, ListPaymentsQuery};
pub use refunds::Refund;
pub use requests::{
    CancelRequest, CaptureRequest, CreatePaymentRequest, CreateRefundRequest, FieldCodes,
    Idempotent,
};
pub use webhooks::{
    CreateWebhookEndpointRequest, DeliveryStatus, EndpointStatus, EventData, EventPage,
    MerchantEvent, RollSecretRequest, RolledSecret, WebhookDelivery, WebhookDeliveryList,
    WebhookEndpoint, WebhookEndpointDeleted, WebhookEndpointList,
};
