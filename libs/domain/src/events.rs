//! The event catalog: every message SagaPay services exchange over Kafka, with its envelope.
//!
//! Topics are by destination, not by event type: each event travels on the [`Channel`] of the
//! service that acts on it (`<namespace>.<channel>`), or on the payments stream that anyone may
//! follow, keyed by `payment_id`. So all of one payment's messages to one service are in one
//! partition, in the order they were sent. The event type stays in the envelope (and a
//! header); consumers dispatch on it. Payloads are typed structs; the envelope carries them as
//! JSON with an explicit `schema_version`.
//!
//! Readers are tolerant, so services can be upgraded one at a time (a rolling upgrade):
//! - a consumer ignores fields it does not know, in the envelope and in payloads (an older
//!   consumer processes a newer producer's event);
//! - a field added to a payload is optional, with a default (a newer consumer processes an
//!   older producer's event), and an optional field that is absent is omitted, not `null`;
//! - adding such a field does not change `schema_version`. Removing or renaming a field,
//!   changing its type or its meaning, or adding a required one does: the version goes up;
//! - a consumer accepts the versions from 1 to the one it knows; a newer version is a
//!   permanent failure (dead-lettered, and replayed once the consumer is upgraded).

use crate::money::{AmountMinor, Currency};
use crate::state::PaymentStatus;
use crate::text::{self, CustomerId, PaymentMethod, TextError};
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Where events travel: the inbound channel of the service that acts on them, or the payments
/// stream (lifecycle events that several parties follow).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Channel {
    /// Everything the saga reacts to: answers of risk, the provider adapter and the ledger.
    Orchestrator,
    /// Requests for a risk decision.
    Risk,
    /// Commands to the payment provider.
    Provider,
    /// Postings.
    Ledger,
    /// The payments' lifecycle, for notification, risk's history, analytics, merchants.
    Payments,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Orchestrator,
        Channel::Risk,
        Channel::Provider,
        Channel::Ledger,
        Channel::Payments,
    ];

    /// The topic suffix.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Orchestrator => "orchestrator",
            Channel::Risk => "risk",
            Channel::Provider => "provider",
            Channel::Ledger => "ledger",
            Channel::Payments => "payments",
        }
    }

    /// A stream is read by parties that each follow the types they care about and pass over
    /// the others; a service's own channel carries only what it must handle (anything else
    /// is a dead letter).
    pub fn is_stream(self) -> bool {
        self == Channel::Payments
    }
}

/// Every event type. The string form is the `event_type` field (and header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// orchestrator -> risk: a payment was created and needs a risk decision.
    PaymentRequested,
    /// risk -> orchestrator: approved (by the rules, or by an operator after review).
    RiskApproved,
    /// risk -> orchestrator: the rules want a human to look; the payment waits in review.
    RiskReviewRequired,
    /// risk -> orchestrator: denied (by the rules, or by an operator after review).
    RiskDenied,
    /// orchestrator -> provider-adapter: authorize the amount at the provider.
    AuthorizeRequested,
    /// provider-adapter -> orchestrator: the provider authorized.
    PaymentAuthorized,
    /// provider-adapter -> orchestrator: the provider declined (a final answer, not an error).
    PaymentFailed,
    /// orchestrator -> provider-adapter: capture the authorization.
    CaptureRequested,
    /// provider-adapter -> orchestrator: the provider captured.
    PaymentCaptured,
    /// orchestrator -> ledger: post the captured amount.
    LedgerPostRequested,
    /// ledger -> orchestrator: the journal transaction is posted.
    PaymentSettled,
    /// ledger -> orchestrator: the ledger refuses the posting (a business rule, not an outage).
    LedgerPostFailed,
    /// provider-adapter -> orchestrator: a provider operation timed out or errored on every
    /// allowed attempt; its outcome at the provider is unknown.
    ProviderRetriesExhausted,
    /// orchestrator -> provider-adapter: void (reverse) an authorization.
    VoidRequested,
    /// orchestrator -> provider-adapter: refund a capture in full (compensation).
    RefundRequested,
    /// provider-adapter -> orchestrator: the money movement was reversed at the provider
    /// (authorization voided, or capture refunded).
    PaymentReversed,
    /// provider-adapter -> orchestrator: a merchant-requested refund went through at the provider.
    PaymentRefunded,
    /// orchestrator -> ledger: post a refund.
    LedgerRefundRequested,
    /// ledger -> orchestrator: the refund is posted.
    RefundPosted,
    /// orchestrator -> anyone (notification): the payment reached a terminal state.
    PaymentFinalized,
    /// orchestrator -> anyone (notification): a manual payment is authorized and waits for
    /// its merchant's capture or cancel.
    PaymentAwaitingCapture,
    /// orchestrator -> anyone (notification): a merchant's refund is done (refunded and
    /// posted).
    RefundSucceeded,
    /// orchestrator -> anyone (notification): the provider refused a merchant's refund; it
    /// did not happen and what it held of the refundable amount is free again.
    RefundFailed,
}

impl EventType {
    pub const ALL: [EventType; 23] = [
        EventType::PaymentRequested,
        EventType::RiskApproved,
        EventType::RiskReviewRequired,
        EventType::RiskDenied,
        EventType::AuthorizeRequested,
        EventType::PaymentAuthorized,
        EventType::PaymentFailed,
        EventType::CaptureRequested,
        EventType::PaymentCaptured,
        EventType::LedgerPostRequested,
        EventType::PaymentSettled,
        EventType::LedgerPostFailed,
        EventType::ProviderRetriesExhausted,
        EventType::VoidRequested,
        EventType::RefundRequested,
        EventType::PaymentReversed,
        EventType::PaymentRefunded,
        EventType::LedgerRefundRequested,
        EventType::RefundPosted,
        EventType::PaymentFinalized,
        EventType::PaymentAwaitingCapture,
        EventType::RefundSucceeded,
        EventType::RefundFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::PaymentRequested => "payments.requested",
            EventType::RiskApproved => "risk.approved",
            EventType::RiskReviewRequired => "risk.review_required",
            EventType::RiskDenied => "risk.denied",
            EventType::AuthorizeRequested => "provider.authorize.requested",
            EventType::PaymentAuthorized => "payments.authorized",
            EventType::PaymentFailed => "payments.failed",
            EventType::CaptureRequested => "provider.capture.requested",
            EventType::PaymentCaptured => "payments.captured",
            EventType::LedgerPostRequested => "ledger.post.requested",
            EventType::PaymentSettled => "payments.settled",
            EventType::LedgerPostFailed => "ledger.post.failed",
            EventType::ProviderRetriesExhausted => "provider.retries_exhausted",
            EventType::VoidRequested => "provider.void.requested",
            EventType::RefundRequested => "provider.refund.requested",
            EventType::PaymentReversed => "payments.reversed",
            EventType::PaymentRefunded => "payments.refunded",
            EventType::LedgerRefundRequested => "ledger.refund.requested",
            EventType::RefundPosted => "refunds.posted",
            EventType::PaymentFinalized => "payments.finalized",
            EventType::PaymentAwaitingCapture => "payments.awaiting_capture",
            EventType::RefundSucceeded => "refunds.succeeded",
            EventType::RefundFailed => "refunds.failed",
        }
    }

    pub fn parse(s: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The channel the event travels on.
    pub fn channel(self) -> Channel {
        use EventType::*;
        match self {
            PaymentRequested => Channel::Risk,
            AuthorizeRequested | CaptureRequested | VoidRequested | RefundRequested => {
                Channel::Provider
            }
            LedgerPostRequested | LedgerRefundRequested => Channel::Ledger,
            RiskApproved
            | RiskReviewRequired
            | RiskDenied
            | PaymentAuthorized
            | PaymentFailed
            | PaymentCaptured
            | PaymentSettled
            | LedgerPostFailed
            | ProviderRetriesExhausted
            | PaymentReversed
            | PaymentRefunded
            | RefundPosted => Channel::Orchestrator,
            PaymentFinalized | PaymentAwaitingCapture | RefundSucceeded | RefundFailed => {
                Channel::Payments
            }
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest event type name an envelope may carry (the longest known one is 28 bytes).
const EVENT_TYPE_MAX_BYTES: usize = 64;

/// A payload type of the catalog, bound to its event type and schema version.
pub trait EventPayload: Serialize + DeserializeOwned {
    const EVENT_TYPE: EventType;
    const SCHEMA_VERSION: u16;
}

/// The envelope every Kafka message carries as its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// UUIDv7: unique, and ordered by creation time.
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u16,
    pub occurred_at: DateTime<Utc>,
    pub payment_id: Uuid,
    /// The event that caused this one; `None` for events caused by an API request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// Travels unchanged from the API request through every event of the payment.
    pub correlation_id: String,
    pub payload: serde_json::Value,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("envelope is not valid JSON of the expected shape: {0}")]
    Envelope(#[source] serde_json::Error),
    #[error("envelope refused: {0}")]
    Text(#[from] TextError),
    #[error("expected event type {expected}, got {actual}")]
    WrongType { expected: EventType, actual: String },
    #[error("unsupported schema version {actual} for {event_type} (supported: 1 to {supported})")]
    SchemaVersion {
        event_type: EventType,
        actual: u16,
        supported: u16,
    },
    #[error("payload of {event_type} is invalid: {source}")]
    Payload {
        event_type: EventType,
        #[source]
        source: serde_json::Error,
    },
}

impl Envelope {
    /// A new event for `payment_id`, caused by `causation_id`.
    pub fn new<P: EventPayload>(
        payment_id: Uuid,
        causation_id: Option<Uuid>,
        correlation_id: &str,
        payload: &P,
    ) -> Envelope {
        Envelope {
            event_id: Uuid::now_v7(),
            event_type: P::EVENT_TYPE.as_str().to_owned(),
            schema_version: P::SCHEMA_VERSION,
            occurred_at: Utc::now(),
            payment_id,
            causation_id,
            correlation_id: correlation_id.to_owned(),
            payload: serde_json::to_value(payload).expect("catalog payloads always serialize"),
        }
    }

    /// The next event of a saga: same payment and correlation, caused by `self`.
    pub fn follow_up<P: EventPayload>(&self, payload: &P) -> Envelope {
        Envelope::new(
            self.payment_id,
            Some(self.event_id),
            &self.correlation_id,
            payload,
        )
    }

    /// Reads an envelope and checks the text rules of [`crate::text`] on every string it
    /// carries (`TEXT_NO_NUL`, `TEXT_BOUNDED`, a valid correlation id), so nothing a
    /// database would refuse gets past decoding.
    pub fn from_json(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(DecodeError::Envelope)?;
        text::check_text("event_type", &envelope.event_type, EVENT_TYPE_MAX_BYTES)?;
        if !text::valid_correlation_id(&envelope.correlation_id) {
            return Err(TextError::Invalid {
                field: "correlation_id",
                rule: format!(
                    "1-{} printable ASCII characters without spaces",
                    text::CORRELATION_ID_MAX
                ),
            }
            .into());
        }
        text::check_json_text("payload", &envelope.payload)?;
        Ok(envelope)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("envelopes always serialize")
    }

    pub fn event_type(&self) -> Option<EventType> {
        EventType::parse(&self.event_type)
    }

    /// Decodes the payload as `P`, checking the event type and schema version first.
    pub fn decode<P: EventPayload>(&self) -> Result<P, DecodeError> {
        if self.event_type != P::EVENT_TYPE.as_str() {
            return Err(DecodeError::WrongType {
                expected: P::EVENT_TYPE,
                actual: self.event_type.clone(),
            });
        }
        // Older versions are read (what they lack has a default); a newer one changed the
        // meaning of something and waits for this consumer's upgrade (then a replay).
        if self.schema_version == 0 || self.schema_version > P::SCHEMA_VERSION {
            return Err(DecodeError::SchemaVersion {
                event_type: P::EVENT_TYPE,
                actual: self.schema_version,
                supported: P::SCHEMA_VERSION,
            });
        }
        serde_json::from_value(self.payload.clone()).map_err(|source| DecodeError::Payload {
            event_type: P::EVENT_TYPE,
            source,
        })
    }
}

macro_rules! catalog {
    ($($ty:ident => $event:ident, version $version:literal;)*) => {
        $(impl EventPayload for $ty {
            const EVENT_TYPE: EventType = EventType::$event;
            const SCHEMA_VERSION: u16 = $version;
        })*
    };
}

pub use crate::text::DEFAULT_PAYMENT_METHOD;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRequested {
    pub merchant_id: Uuid,
    pub customer_id: CustomerId,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    #[serde(default)]
    pub payment_method: PaymentMethod,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskApproved {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskReviewRequired {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiskDenied {
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuthorizeRequested {
    pub merchant_id: Uuid,
    pub customer_id: CustomerId,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    #[serde(default)]
    pub payment_method: PaymentMethod,
    /// AUTOMATIC (default): the adapter captures as soon as the authorization succeeds, with
    /// no command of the saga's; MANUAL: the capture waits for its command.
    #[serde(default)]
    pub capture_method: CaptureMethod,
}

/// When an authorization is captured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CaptureMethod {
    /// By the provider adapter, right after the authorization.
    #[default]
    Automatic,
    /// When the capture is asked for (`provider.capture.requested`).
    Manual,
}

impl CaptureMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMethod::Automatic => "AUTOMATIC",
            CaptureMethod::Manual => "MANUAL",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "AUTOMATIC" => Some(CaptureMethod::Automatic),
            "MANUAL" => Some(CaptureMethod::Manual),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFailed {
    pub provider: String,
    /// The provider's decline code, e.g. `card_declined`, `insufficient_funds`.
    pub decline_code: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentAuthorized {
    pub provider: String,
    pub authorization_id: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaptureRequested {
    pub authorization_id: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentCaptured {
    pub provider: String,
    pub capture_id: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    /// The authorization captured (so the saga can apply a capture that overtook its
    /// authorization). Absent in events of older producers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerPostRequested {
    pub merchant_id: Uuid,
    pub capture_id: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentSettled {
    pub journal_transaction_id: Uuid,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerPostFailed {
    pub reason: String,
}

/// The provider operations the adapter performs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProviderOperation {
    Authorize,
    Capture,
    Void,
    Refund,
}

impl ProviderOperation {
    pub const ALL: [Self; 4] = [Self::Authorize, Self::Capture, Self::Void, Self::Refund];

    pub fn as_str(self) -> &'static str {
        match self {
            ProviderOperation::Authorize => "AUTHORIZE",
            ProviderOperation::Capture => "CAPTURE",
            ProviderOperation::Void => "VOID",
            ProviderOperation::Refund => "REFUND",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderRetriesExhausted {
    pub operation: ProviderOperation,
    pub attempts: u32,
    pub last_error: String,
    /// Set when the operation was a merchant-requested refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<Uuid>,
    /// Set when the provider refused a capture, void or refund (it did not happen, as a PSP
    /// refuses a capture above the authorization or a refund above what is left captured):
    /// its decline code. Absent: the operation's outcome is unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoidRequested {
    /// The authorization to void, when one is known; with an unknown outcome the void is
    /// addressed by the authorization's idempotency key instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_id: Option<String>,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundRequested {
    pub capture_id: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub reason: String,
    /// A merchant-requested refund; `None` for the saga's own compensation (full refund).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<Uuid>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    pub refund_id: Uuid,
    pub provider: String,
    pub reference: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

/// The id under which the ledger reverses a capture it posted although the saga was refunding
/// it (an operator failed a CAPTURED payment and the ledger's posting came through after all):
/// one per payment, so the reversal is posted once (`REFUND:<id>`).
pub fn capture_reversal_id(payment_id: Uuid) -> Uuid {
    Uuid::new_v5(&payment_id, b"capture-reversal")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerRefundRequested {
    pub refund_id: Uuid,
    pub merchant_id: Uuid,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundPosted {
    pub refund_id: Uuid,
    pub journal_transaction_id: Uuid,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentReversed {
    pub provider: String,
    /// VOID or REFUND.
    pub operation: ProviderOperation,
    pub reference: String,
    pub reason: String,
    /// What the provider reversed: the authorization voided, or the capture refunded (the
    /// saga checks it against what it authorized or captured). Absent from adapters older than
    /// this field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_minor: Option<AmountMinor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentFinalized {
    pub status: PaymentStatus,
    pub merchant_id: Uuid,
    pub customer_id: CustomerId,
    /// The payment's amount: what was asked for and authorized.
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    /// What was captured, when the payment was (a manual capture may take less than the
    /// amount; a settled payment moved this, not `amount_minor`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_captured_minor: Option<AmountMinor>,
    pub reason: String,
    /// When the payment was created, so consumers can measure end-to-end time.
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PaymentAwaitingCapture {
    pub merchant_id: Uuid,
    pub customer_id: CustomerId,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundSucceeded {
    pub merchant_id: Uuid,
    pub refund_id: Uuid,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub reason: String,
    /// The payment's status after it: PARTIALLY_REFUNDED or REFUNDED.
    pub payment_status: PaymentStatus,
}

/// A merchant's refund the provider refused: it did not happen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RefundFailed {
    pub merchant_id: Uuid,
    pub refund_id: Uuid,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub reason: String,
    /// The provider's decline code.
    pub decline_code: String,
    /// The payment's status, unchanged by the refund.
    pub payment_status: PaymentStatus,
}

catalog! {
    PaymentRequested => PaymentRequested, version 1;
    RiskApproved => RiskApproved, version 1;
    RiskReviewRequired => RiskReviewRequired, version 1;
    RiskDenied => RiskDenied, version 1;
    PaymentFailed => PaymentFailed, version 1;
    AuthorizeRequested => AuthorizeRequested, version 1;
    PaymentAuthorized => PaymentAuthorized, version 1;
    CaptureRequested => CaptureRequested, version 1;
    PaymentCaptured => PaymentCaptured, version 1;
    LedgerPostRequested => LedgerPostRequested, version 1;
    PaymentSettled => PaymentSettled, version 1;
    PaymentFinalized => PaymentFinalized, version 1;
    LedgerPostFailed => LedgerPostFailed, version 1;
    ProviderRetriesExhausted => ProviderRetriesExhausted, version 1;
    VoidRequested => VoidRequested, version 1;
    RefundRequested => RefundRequested, version 1;
    PaymentReversed => PaymentReversed, version 1;
    PaymentRefunded => PaymentRefunded, version 1;
    LedgerRefundRequested => LedgerRefundRequested, version 1;
    RefundPosted => RefundPosted, version 1;
    PaymentAwaitingCapture => PaymentAwaitingCapture, version 1;
    RefundSucceeded => RefundSucceeded, version 1;
    RefundFailed => RefundFailed, version 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requested() -> PaymentRequested {
        PaymentRequested {
            merchant_id: Uuid::now_v7(),
            customer_id: CustomerId::parse("cust-1").unwrap(),
            amount_minor: AmountMinor::new(2500).unwrap(),
            currency: Currency::parse("USD").unwrap(),
            payment_method: PaymentMethod::default_card(),
        }
    }

    #[test]
    fn envelopes_round_trip_and_decode_their_payload() {
        let payload = requested();
        let env = Envelope::new(Uuid::now_v7(), None, "corr-1", &payload);
        assert_eq!(env.event_id.get_version_num(), 7);
        let back = Envelope::from_json(&env.to_json()).unwrap();
        assert_eq!(back, env);
        assert_eq!(back.decode::<PaymentRequested>().unwrap(), payload);
    }

    #[test]
    fn follow_ups_keep_payment_and_correlation_and_point_at_their_cause() {
        let first = Envelope::new(Uuid::now_v7(), None, "corr-1", &requested());
        let next = first.follow_up(&RiskApproved {
            reason: "ok".into(),
        });
        assert_eq!(next.payment_id, first.payment_id);
        assert_eq!(next.correlation_id, "corr-1");
        assert_eq!(next.causation_id, Some(first.event_id));
        assert_ne!(next.event_id, first.event_id);
    }

    #[test]
    fn decoding_checks_type_version_and_payload() {
        let mut env = Envelope::new(Uuid::now_v7(), None, "c", &requested());
        assert!(matches!(
            env.decode::<RiskApproved>(),
            Err(DecodeError::WrongType { .. })
        ));
        env.schema_version = 99;
        assert!(matches!(
            env.decode::<PaymentRequested>(),
            Err(DecodeError::SchemaVersion { .. })
        ));
        env.schema_version = 1;
        env.payload["amount_minor"] = serde_json::json!(-3);
        assert!(matches!(
            env.decode::<PaymentRequested>(),
            Err(DecodeError::Payload { .. })
        ));
        assert!(Envelope::from_json(b"{not json").is_err());
    }

    #[test]
    fn envelopes_carrying_text_a_database_would_refuse_do_not_decode() {
        let good = Envelope::new(
            Uuid::now_v7(),
            None,
            "c",
            &LedgerPostFailed { reason: "r".into() },
        );
        assert!(Envelope::from_json(&good.to_json()).is_ok());
        let mut nul = good.clone();
        nul.payload["reason"] = serde_json::json!("frozen\u{0}");
        let mut long = good.clone();
        long.payload["reason"] = serde_json::json!("r".repeat(crate::text::TEXT_MAX_BYTES + 1));
        let mut unknown_field = good.clone();
        unknown_field.payload["extra"] = serde_json::json!({"deep": ["x\u{0}"]});
        let mut correlation = good.clone();
        correlation.correlation_id = "a b".into();
        let mut event_type = good.clone();
        event_type.event_type = "t".repeat(65);
        for (bad, what) in [
            (nul, "payload.reason contains a NUL"),
            (long, "payload.reason is 1025 bytes"),
            (unknown_field, "payload.extra.deep[0] contains a NUL"),
            (correlation, "correlation_id must be"),
            (event_type, "event_type is 65 bytes"),
        ] {
            let err = Envelope::from_json(&bad.to_json()).unwrap_err();
            assert!(matches!(err, DecodeError::Text(_)), "{err}");
            assert!(err.to_string().contains(what), "{err} should say {what}");
        }
        let mut customer = Envelope::new(Uuid::now_v7(), None, "c", &requested());
        customer.payload["customer_id"] = serde_json::json!("c".repeat(65));
        let decoded = Envelope::from_json(&customer.to_json()).unwrap();
        assert!(matches!(
            decoded.decode::<PaymentRequested>(),
            Err(DecodeError::Payload { .. })
        ));
    }

    #[test]
    fn every_channel_carries_something_and_commands_go_to_the_service_that_acts() {
        for c in Channel::ALL {
            assert!(
                EventType::ALL.iter().any(|t| t.channel() == c),
                "{c:?} is empty"
            );
        }
        assert_eq!(EventType::AuthorizeRequested.channel(), Channel::Provider);
        assert_eq!(EventType::PaymentCaptured.channel(), Channel::Orchestrator);
        assert!(Channel::Payments.is_stream() && !Channel::Ledger.is_stream());
    }

    #[test]
    fn an_older_consumer_reads_a_newer_producers_event() {
        let mut newer = serde_json::to_value(Envelope::new(
            Uuid::now_v7(),
            None,
            "c",
            &LedgerPostFailed {
                reason: "frozen".into(),
            },
        ))
        .unwrap();
        newer["partition_hint"] = serde_json::json!(3);
        newer["payload"]["frozen_accounts"] = serde_json::json!(["USD:fee_revenue"]);
        let env = Envelope::from_json(newer.to_string().as_bytes()).unwrap();
        assert_eq!(env.decode::<LedgerPostFailed>().unwrap().reason, "frozen");
    }

    #[test]
    fn a_newer_consumer_reads_an_older_producers_event() {
        let older = serde_json::json!({
            "event_id": Uuid::now_v7(), "event_type": "provider.authorize.requested",
            "schema_version": 1, "occurred_at": "2026-11-01T00:00:00Z",
            "payment_id": Uuid::now_v7(), "correlation_id": "c",
            "payload": {"merchant_id": Uuid::now_v7(), "customer_id": "c1",
                        "amount_minor": 100, "currency": "USD"}
        });
        let env = Envelope::from_json(older.to_string().as_bytes()).unwrap();
        assert_eq!(env.causation_id, None);
        let cmd: AuthorizeRequested = env.decode().unwrap();
        assert_eq!(cmd.capture_method, CaptureMethod::Automatic);
        assert_eq!(cmd.payment_method, PaymentMethod::default_card());
        let captured = serde_json::json!({"provider": "p", "capture_id": "cap",
                                          "amount_minor": 5, "currency": "USD"});
        let captured: PaymentCaptured = serde_json::from_value(captured).unwrap();
        assert_eq!(captured.authorization_id, None);
    }

    #[test]
    fn absent_optional_fields_are_omitted() {
        let env = Envelope::new(
            Uuid::now_v7(),
            None,
            "c",
            &VoidRequested {
                authorization_id: None,
                amount_minor: AmountMinor::new(5).unwrap(),
                currency: Currency::parse("USD").unwrap(),
                reason: "r".into(),
            },
        );
        let json = serde_json::to_value(&env).unwrap();
        assert!(json.get("causation_id").is_none(), "{json}");
        assert!(json["payload"].get("authorization_id").is_none(), "{json}");
    }

    #[test]
    fn older_schema_versions_are_read_and_newer_ones_refused() {
        let mut env = Envelope::new(Uuid::now_v7(), None, "c", &requested());
        env.schema_version = 0;
        assert!(env.decode::<PaymentRequested>().is_err());
        env.schema_version = 2;
        assert!(matches!(
            env.decode::<PaymentRequested>(),
            Err(DecodeError::SchemaVersion { .. })
        ));
    }

    #[test]
    fn event_type_names_are_unique_and_parse_back() {
        for t in EventType::ALL {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
    }
}
