//! Text that crosses a service boundary: identifiers that parse, and the rule every string in
//! an event obeys.
//!
//! Why here: a string is written to PostgreSQL by whichever service receives it, and
//! PostgreSQL refuses a NUL character in `TEXT` and `JSONB` (SQLSTATE 22021/22P05). Left
//! unchecked, one such string stops a consumer in its database instead of at its door. So
//! the rules are checked where bytes become values: the gateway's request parsing, the
//! orchestrator's internal API and [`crate::Envelope::from_json`] all use the types below,
//! and a message that breaks them is a decode error (dead-lettered), never a database error.
//!
//! Invariants:
//! - `TEXT_NO_NUL`: no string of an envelope contains U+0000;
//! - `TEXT_BOUNDED`: no string of an envelope is longer than [`TEXT_MAX_BYTES`], so no field
//!   can grow a row (or an outbox message) past what Kafka accepts;
//! - identifiers and merchant text (`CustomerId`, `PaymentMethod`, `IdempotencyKey`,
//!   `RefundReason`, correlation ids) have one alphabet and length each, the gateway's,
//!   wherever they are read.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest string, in bytes, any envelope may carry (payload fields and keys included).
/// Reasons, provider references and error texts fit with room to spare.
pub const TEXT_MAX_BYTES: usize = 1024;

/// Longest correlation id (the gateway's `x-correlation-id` rule).
pub const CORRELATION_ID_MAX: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("{field} contains a NUL character")]
    Nul { field: String },
    #[error("{field} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        field: String,
        len: usize,
        max: usize,
    },
    #[error("{field} must be {rule}")]
    Invalid { field: &'static str, rule: String },
}

/// Checks one string against `TEXT_NO_NUL` and a length bound.
pub fn check_text(field: &str, value: &str, max_bytes: usize) -> Result<(), TextError> {
    if value.len() > max_bytes {
        return Err(TextError::TooLong {
            field: field.to_owned(),
            len: value.len(),
            max: max_bytes,
        });
    }
    if value.contains('\0') {
        return Err(TextError::Nul {
            field: field.to_owned(),
        });
    }
    Ok(())
}

/// Checks every string of a JSON value, object keys included, against `TEXT_NO_NUL` and
/// `TEXT_BOUNDED`; `path` names the value in the error (`payload.reason`).
pub fn check_json_text(path: &str, value: &serde_json::Value) -> Result<(), TextError> {
    use serde_json::Value;
    match value {
        Value::String(s) => check_text(path, s, TEXT_MAX_BYTES),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_json_text(&format!("{path}[{i}]"), v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check_text(&format!("a key of {path}"), k, TEXT_MAX_BYTES)?;
            check_json_text(&format!("{path}.{}", shorten(k)), v)
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// A key for an error message: never the whole of a hostile string.
fn shorten(s: &str) -> String {
    s.chars()
        .take(40)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A correlation id: 1-128 printable ASCII characters without spaces.
pub fn valid_correlation_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= CORRELATION_ID_MAX
        && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Declares a string newtype that exists only when its rule holds: built by `parse`,
/// (de)serialized as a plain string, refused by `Deserialize` when the rule fails.
macro_rules! checked_string {
    ($(#[$doc:meta])* $name:ident, field $field:literal, rule $rule:expr, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(value: impl Into<String>) -> Result<Self, TextError> {
                let value = value.into();
                let valid: fn(&str) -> bool = $valid;
                if valid(&value) {
                    Ok(Self(value))
                } else {
                    Err(TextError::Invalid {
                        field: $field,
                        rule: $rule,
                    })
                }
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = TextError;
            fn try_from(value: String) -> Result<Self, TextError> {
                Self::parse(value)
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
    };
}

/// `value` is 1 to `max` bytes, each allowed by `byte_ok`.
fn bytes_within(value: &str, max: usize, byte_ok: fn(u8) -> bool) -> bool {
    !value.is_empty() && value.len() <= max && value.bytes().all(byte_ok)
}

pub const CUSTOMER_ID_MAX: usize = 64;
pub const PAYMENT_METHOD_MAX: usize = 64;
pub const IDEMPOTENCY_KEY_MAX: usize = 255;
pub const REFUND_REASON_MAX_CHARS: usize = 200;

checked_string!(
    /// The merchant's reference for its customer: 1-64 of `A-Z a-z 0-9 _ - . : @`.
    CustomerId, field "customer_id",
    rule format!("1-{CUSTOMER_ID_MAX} characters of A-Z, a-z, 0-9, '_', '-', '.', ':', '@'"),
    |v| bytes_within(v, CUSTOMER_ID_MAX, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'@')
    })
);

checked_string!(
    /// A provider's token for a payment method (`pm_card_ok`): 1-64 of `a-z 0-9 _`.
    PaymentMethod, field "payment_method",
    rule format!("a token of 1-{PAYMENT_METHOD_MAX} characters of a-z, 0-9, '_'"),
    |v| bytes_within(v, PAYMENT_METHOD_MAX, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
    })
);

checked_string!(
    /// A client's idempotency key: 1-255 printable ASCII characters (space to tilde).
    IdempotencyKey, field "idempotency_key",
    rule format!("1-{IDEMPOTENCY_KEY_MAX} printable ASCII characters"),
    |v| bytes_within(v, IDEMPOTENCY_KEY_MAX, |b| (0x20..=0x7e).contains(&b))
);

/// `value` is 1 to `max` characters, not blank, with no control character.
fn printable_within(value: &str, max: usize) -> bool {
    !value.trim().is_empty() && value.chars().count() <= max && !value.chars().any(char::is_control)
}

checked_string!(
    /// Why a merchant refunds: 1-200 characters, not blank, no control characters.
    RefundReason, field "reason",
    rule format!("1-{REFUND_REASON_MAX_CHARS} printable characters"),
    |v| printable_within(v, REFUND_REASON_MAX_CHARS)
);

pub const OPERATOR_NAME_MAX_CHARS: usize = 100;
pub const OPERATOR_REASON_MAX_CHARS: usize = 500;

checked_string!(
    /// Who an operator is (`requested_by`, `reviewed_by`), as recorded beside what they did:
    /// 1-100 characters, not blank, no control characters.
    OperatorName, field "operator",
    rule format!("1-{OPERATOR_NAME_MAX_CHARS} printable characters"),
    |v| printable_within(v, OPERATOR_NAME_MAX_CHARS)
);

checked_string!(
    /// Why an operator ends a payment: 1-500 characters, not blank, no control characters.
    OperatorReason, field "reason",
    rule format!("1-{OPERATOR_REASON_MAX_CHARS} printable characters"),
    |v| printable_within(v, OPERATOR_REASON_MAX_CHARS)
);

impl RefundReason {
    /// The reason of a refund whose request names none.
    pub fn requested_by_customer() -> Self {
        Self("requested_by_customer".to_owned())
    }
}

/// The payment method a payment is charged to when a request names none: an opaque token the
/// provider understands (for the simulated provider, one of its test tokens; see the provider
/// adapter).
pub const DEFAULT_PAYMENT_METHOD: &str = "pm_card_ok";

impl PaymentMethod {
    /// The default card of the simulated provider, used when a request names none.
    pub fn default_card() -> Self {
        Self(DEFAULT_PAYMENT_METHOD.to_owned())
    }
}

impl Default for PaymentMethod {
    fn default() -> Self {
        Self::default_card()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_with_nul_or_beyond_the_bound_are_refused_wherever_they_are() {
        assert!(check_json_text("payload", &json!({"a": "fine", "b": [1, "ok"]})).is_ok());
        let cases = [
            (json!({"capture_id": "cap\u{0}1"}), "payload.capture_id"),
            (
                json!({"nested": {"list": ["x", "y\u{0}"]}}),
                "payload.nested.list[1]",
            ),
            (json!({"k\u{0}": 1}), "a key of payload"),
            (
                json!({"reason": "x".repeat(TEXT_MAX_BYTES + 1)}),
                "payload.reason",
            ),
        ];
        for (value, field) in cases {
            let err = check_json_text("payload", &value).unwrap_err();
            let named = match &err {
                TextError::Nul { field } | TextError::TooLong { field, .. } => field.clone(),
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(named, field, "{value}");
        }
        assert!(check_json_text("p", &json!("x".repeat(TEXT_MAX_BYTES))).is_ok());
    }

    #[test]
    fn identifiers_parse_by_the_gateways_rules() {
        assert!(CustomerId::parse("cust-1.a:b@c_d").is_ok());
        for bad in ["", "a b", "c\u{0}", &"c".repeat(65), "é"] {
            assert!(CustomerId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(PaymentMethod::parse("pm_card_ok").is_ok());
        for bad in ["", "PM", "pm-card", &"p".repeat(65)] {
            assert!(PaymentMethod::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse("key with spaces ~").is_ok());
        assert!(RefundReason::parse("damaged item, sorry").is_ok());
        for bad in ["", "   ", "a\u{0}", "a\nb", &"r".repeat(201)] {
            assert!(RefundReason::parse(bad).is_err(), "{bad:?}");
        }
        for bad in ["", "k\u{0}", "k\n", &"k".repeat(256)] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn identifiers_are_checked_when_deserialized() {
        assert!(serde_json::from_value::<CustomerId>(json!("c1")).is_ok());
        assert!(serde_json::from_value::<CustomerId>(json!("c\u{0}")).is_err());
        let long = "c".repeat(2_000_000);
        assert!(serde_json::from_value::<CustomerId>(json!(long)).is_err());
        assert_eq!(
            serde_json::to_value(CustomerId::parse("c1").unwrap()).unwrap(),
            json!("c1")
        );
    }

    #[test]
    fn correlation_ids_are_short_printable_ascii() {
        assert!(valid_correlation_id("0199-abc"));
        for bad in ["", "a b", "a\u{0}", &"c".repeat(129)] {
            assert!(!valid_correlation_id(bad), "{bad:?}");
        }
    }
}
