//! SagaPay's domain: money, identifiers, the payment state machine and the event catalog.
//!
//! This crate does no I/O. Everything here is a value that parses (and so cannot be
//! invalid once constructed) or a pure function over such values; with the `sqlx` feature,
//! also how each is stored (`sql`).

pub mod events;
pub mod fingerprint;
pub mod merchant_events;
pub mod money;
pub mod namespace;
pub mod per_currency;
pub mod refund;
#[cfg(feature = "openapi")]
mod schema;
#[cfg(feature = "sqlx")]
pub mod sql;
pub mod state;
pub mod text;

pub use events::{Channel, Envelope, EventType};
pub use fingerprint::request_fingerprint;
pub use merchant_events::MerchantEventType;
pub use money::{AmountMinor, Currency, MoneyError};
pub use namespace::Namespace;
pub use per_currency::PerCurrency;
pub use refund::RefundStatus;
pub use state::{PaymentStatus, TransitionError};
pub use text::{
    CustomerId, IdempotencyKey, OperatorName, OperatorReason, PaymentMethod, RefundReason,
    TextError,
};
