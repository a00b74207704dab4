//! The public API's requests, one type per route that takes a body: the gateway parses the
//! body into it (serde, each field a domain type that checks its own rule), forwards it to the
//! service behind, which parses the same type again, and the API document describes it
//! (feature `openapi`), so what the document promises is what the code accepts.
//!
//! Also here, once: what makes two requests with the same idempotency key "the same request"
//! ([`CreatePaymentRequest::fingerprint`], [`CreateRefundRequest::fingerprint`]), used by the
//! gateway's fast path and the orchestrator's durable guard alike, and the machine-readable
//! code a refused field is reported with ([`FieldCodes`]).

use crate::payments::CaptureMethod;
use sagapay_domain::{
    request_fingerprint, AmountMinor, Currency, CustomerId, IdempotencyKey, PaymentMethod,
    RefundReason,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The code a request reports a refused field with (the field's own code when it has one;
/// wrong JSON types, missing and unknown fields have codes of their own, see the gateway).
pub trait FieldCodes {
    fn field_code(field: &str) -> Option<&'static str>;
}

/// A request that creates something, and the key that makes its retry safe.
pub trait Idempotent {
    fn idempotency_key(&self) -> &IdempotencyKey;
}

/// An optional field that, when present, holds a value: `null` is refused like any other
/// value of the wrong type (the document does not call these fields nullable).
pub fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A whole number as JSON Schema counts them: `10960` and `10960.0` alike (a fraction, or a
/// number beyond 2^53, is refused).
struct WholeNumber(i64);

impl<'de> Deserialize<'de> for WholeNumber {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Whole;
        impl serde::de::Visitor<'_> for Whole {
            type Value = WholeNumber;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<WholeNumber, E> {
                Ok(WholeNumber(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<WholeNumber, E> {
                i64::try_from(v)
                    .map(WholeNumber)
                    .map_err(|_| E::custom("the number is too large"))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<WholeNumber, E> {
                // Whole and well inside i64 (below 2^53 every such f64 is exact).
                if v.fract() == 0.0 && v.abs() < 9_007_199_254_740_992.0 {
                    Ok(WholeNumber(v as i64))
                } else {
                    Err(E::custom("the number must be whole"))
                }
            }
        }
        d.deserialize_any(Whole)
    }
}

/// An optional whole number that, when present, holds one (`null` is refused like any other
/// value of the wrong type).
pub fn present_whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    WholeNumber::deserialize(d).map(|w| Some(w.0))
}

/// An optional whole number where `null` means none, as absence does.
pub fn whole_or_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<WholeNumber>::deserialize(d).map(|w| w.map(|w| w.0))
}

/// The codes of the fields requests share.
fn common_code(field: &str) -> Option<&'static str> {
    Some(match field {
        "amount_cents" => "invalid_amount",
        "idempotency_key" => "invalid_idempotency_key",
        _ => return None,
    })
}

/// `POST /payments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreatePaymentRequest {
    pub customer_id: CustomerId,
    /// At most the currency's maximum (about $1,000,000 by default: 100,000,000 in USD,
    /// 150,000,000 in JPY); above it the payment is refused with `invalid_amount`.
    #[cfg_attr(feature = "openapi", schema(example = 2500))]
    pub amount_cents: AmountMinor,
    pub currency: Currency,
    /// Makes a retry safe. An `Idempotency-Key` header, if also sent, must be the same.
    pub idempotency_key: IdempotencyKey,
    /// Default `pm_card_ok`. The simulated provider's test cards: `pm_card_declined`,
    /// `pm_card_insufficient_funds`, `pm_card_timeout`, `pm_card_fail_twice`, `pm_card_slow`.
    #[serde(default)]
    pub payment_method: PaymentMethod,
    #[serde(default)]
    pub capture_method: CaptureMethod,
}

impl FieldCodes for CreatePaymentRequest {
    fn field_code(field: &str) -> Option<&'static str> {
        let own = match field {
            "customer_id" => "invalid_customer_id",
            "currency" => "unsupported_currency",
            "payment_method" => "invalid_payment_method",
            "capture_method" => "invalid_capture_method",
            _ => return common_code(field),
        };
        Some(own)
    }
}

impl Idempotent for CreatePaymentRequest {
    fn idempotency_key(&self) -> &IdempotencyKey {
        &self.idempotency_key
    }
}

impl CreatePaymentRequest {
    /// Everything but the key. `MANUAL` only when not the default, so automatic payments keep
    /// the fingerprints stored before capture methods existed.
    pub fn fingerprint(&self, merchant_id: Uuid) -> String {
        let (merchant, amount) = (merchant_id.to_string(), self.amount_cents.to_string());
        let mut parts = vec![
            merchant.as_str(),
            self.customer_id.as_str(),
            amount.as_str(),
            self.currency.as_str(),
            self.payment_method.as_str(),
        ];
        if self.capture_method == CaptureMethod::Manual {
            parts.push("MANUAL");
        }
        request_fingerprint(&parts)
    }
}

/// `POST /payments/{payment_id}/refunds`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateRefundRequest {
    /// At most what is left to refund of what was captured.
    #[cfg_attr(feature = "openapi", schema(example = 1000))]
    pub amount_cents: AmountMinor,
    /// Makes a retry safe. An `Idempotency-Key` header, if also sent, must be the same.
    pub idempotency_key: IdempotencyKey,
    /// Default `requested_by_customer`.
    #[serde(default = "RefundReason::requested_by_customer")]
    pub reason: RefundReason,
}

impl FieldCodes for CreateRefundRequest {
    fn field_code(field: &str) -> Option<&'static str> {
        match field {
            "reason" => Some("invalid_reason"),
            _ => common_code(field),
        }
    }
}

impl Idempotent for CreateRefundRequest {
    fn idempotency_key(&self) -> &IdempotencyKey {
        &self.idempotency_key
    }
}

impl CreateRefundRequest {
    /// The amount and the reason (the key and the payment are the scope).
    pub fn fingerprint(&self, merchant_id: Uuid) -> String {
        request_fingerprint(&[
            &merchant_id.to_string(),
            &self.amount_cents.to_string(),
            self.reason.as_str(),
        ])
    }
}

/// `POST /payments/{payment_id}/capture`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// At most the authorized amount; absent: all of it. The rest of the hold is released.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(example = 1500, nullable = false))]
    pub amount_cents: Option<AmountMinor>,
    /// Makes a retry safe. An `Idempotency-Key` header, if also sent, must be the same.
    pub idempotency_key: IdempotencyKey,
}

impl FieldCodes for CaptureRequest {
    fn field_code(field: &str) -> Option<&'static str> {
        common_code(field)
    }
}

impl Idempotent for CaptureRequest {
    fn idempotency_key(&self) -> &IdempotencyKey {
        &self.idempotency_key
    }
}

/// `POST /payments/{payment_id}/cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CancelRequest {
    /// Makes a retry safe. An `Idempotency-Key` header, if also sent, must be the same.
    pub idempotency_key: IdempotencyKey,
}

impl FieldCodes for CancelRequest {
    fn field_code(field: &str) -> Option<&'static str> {
        common_code(field)
    }
}

impl Idempotent for CancelRequest {
    fn idempotency_key(&self) -> &IdempotencyKey {
        &self.idempotency_key
    }
}

/// What a capture or cancel is, for its idempotency: the action and the amount asked for.
pub fn manual_action_fingerprint(action: &str, amount: Option<AmountMinor>) -> String {
    let amount = amount.map(|a| a.to_string()).unwrap_or_default();
    request_fingerprint(&[action, &amount])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payment_fingerprint_is_the_one_stored_since_the_first_version() {
        let req: CreatePaymentRequest = serde_json::from_str(
            r#"{"customer_id":"c","amount_cents":100,"currency":"USD","idempotency_key":"k"}"#,
        )
        .unwrap();
        let m = Uuid::nil();
        assert_eq!(
            req.fingerprint(m),
            request_fingerprint(&[&m.to_string(), "c", "100", "USD", "pm_card_ok"])
        );
        let manual = CreatePaymentRequest {
            capture_method: CaptureMethod::Manual,
            ..req.clone()
        };
        assert_ne!(manual.fingerprint(m), req.fingerprint(m));
    }

    #[test]
    fn defaults_and_refusals() {
        let r: CreateRefundRequest =
            serde_json::from_str(r#"{"amount_cents":5,"idempotency_key":"k"}"#).unwrap();
        assert_eq!(r.reason.as_str(), "requested_by_customer");
        for body in [
            r#"{"amount_cents":5,"idempotency_key":"k","x":1}"#,
            r#"{"amount_cents":2.5,"idempotency_key":"k"}"#,
            r#"{"amount_cents":0,"idempotency_key":"k"}"#,
            r#"{"amount_cents":5}"#,
            r#"{"amount_cents":5,"idempotency_key":"k","reason":" "}"#,
        ] {
            assert!(
                serde_json::from_str::<CreateRefundRequest>(body).is_err(),
                "{body}"
            );
        }
    }
}
