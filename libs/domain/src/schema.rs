//! The API document's view of the domain's checked types (feature `openapi`): each type's
//! rule, written once beside the code that enforces it, as a JSON Schema the document embeds.
//! A request type that names `CustomerId` gets its alphabet and length in the document for
//! free, and the document cannot promise what `parse` refuses (Schemathesis checks both
//! directions against the running gateway).

use crate::money::{AmountMinor, Currency};
use crate::text::{
    CustomerId, IdempotencyKey, OperatorName, OperatorReason, PaymentMethod, RefundReason,
    CUSTOMER_ID_MAX, IDEMPOTENCY_KEY_MAX, OPERATOR_NAME_MAX_CHARS, OPERATOR_REASON_MAX_CHARS,
    PAYMENT_METHOD_MAX, REFUND_REASON_MAX_CHARS,
};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// A string of 1 to `max` characters matching `pattern` (anchored, JSON Schema's regex).
fn text(pattern: &str, max: usize, description: &str, example: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([serde_json::json!(example)])
        .into()
}

macro_rules! text_schema {
    ($name:ident, $pattern:expr, $max:expr, $description:literal, $example:literal) => {
        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                text($pattern, $max, $description, $example)
            }
        }
        impl ToSchema for $name {}
    };
}

text_schema!(
    CustomerId,
    "^[A-Za-z0-9_.:@-]+$",
    CUSTOMER_ID_MAX,
    "The merchant's reference for its customer: A-Z, a-z, 0-9, `_ - . : @`.",
    "cus_42"
);
text_schema!(
    PaymentMethod,
    "^[a-z0-9_]+$",
    PAYMENT_METHOD_MAX,
    "The provider's token of a payment method: a-z, 0-9, `_`.",
    "pm_card_ok"
);
text_schema!(
    IdempotencyKey,
    "^[\\x20-\\x7e]+$",
    IDEMPOTENCY_KEY_MAX,
    "Printable ASCII, scoped to the merchant: the same key with the same request is answered \
     as the first time, with a different request it is refused (422).",
    "order-1042-attempt-1"
);
/// Printable text: not blank, no control character (`printable_within` in `text`).
const PRINTABLE: &str =
    "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$";

text_schema!(
    RefundReason,
    PRINTABLE,
    REFUND_REASON_MAX_CHARS,
    "Why the merchant refunds: not blank, no control characters.",
    "damaged in transit"
);
text_schema!(
    OperatorName,
    PRINTABLE,
    OPERATOR_NAME_MAX_CHARS,
    "Who the operator is, recorded beside what they did: not blank, no control characters.",
    "ops-ann"
);
text_schema!(
    OperatorReason,
    PRINTABLE,
    OPERATOR_REASON_MAX_CHARS,
    "Why the operator acts, recorded with it: not blank, no control characters.",
    "the provider confirmed the capture by phone"
);

impl PartialSchema for AmountMinor {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
            .minimum(Some(1))
            .maximum(Some(AmountMinor::HARD_MAX_MINOR))
            .description(Some(
                "Integer minor units of the currency (cents for USD, yen for JPY).",
            ))
            .into()
    }
}
impl ToSchema for AmountMinor {}

impl PartialSchema for Currency {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(Currency::supported()))
            .description(Some("An ISO 4217 code the platform supports."))
            .examples([serde_json::json!("USD")])
            .into()
    }
}
impl ToSchema for Currency {}
