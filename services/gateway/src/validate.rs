//! Parsing the public payment request: every field is checked here and reported with its
//! name, so a client learns exactly what to fix. Nothing invalid reaches the orchestrator.

use sagapay_domain::events::CaptureMethod;
use sagapay_domain::text::TextError;
use sagapay_domain::{
    AmountMinor, Currency, CustomerId, IdempotencyKey, MoneyError, PaymentMethod, PerCurrency,
    RefundReason,
};
use sagapay_service_kit::ApiError;
use serde_json::{Map, Value};

pub use sagapay_domain::text::{
    CUSTOMER_ID_MAX, IDEMPOTENCY_KEY_MAX, PAYMENT_METHOD_MAX, REFUND_REASON_MAX_CHARS as REASON_MAX,
};

/// A payment request that parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentRequest {
    pub customer_id: CustomerId,
    pub amount: AmountMinor,
    pub currency: Currency,
    pub idempotency_key: IdempotencyKey,
    /// Provider token of the payment method; the simulated provider's test tokens are listed
    /// in the provider adapter's documentation.
    pub payment_method: PaymentMethod,
    pub capture_method: CaptureMethod,
}

const FIELDS: &[&str] = &[
    "customer_id",
    "amount_cents",
    "currency",
    "idempotency_key",
    "payment_method",
    "capture_method",
];

/// The domain's refusal of a text field as the edge's error: `code`, the rule, the field.
fn refused(code: &str, param: &str, e: TextError) -> ApiError {
    let message = match e {
        TextError::Invalid { field, rule } => format!("{field} must be {rule}"),
        other => other.to_string(),
    };
    ApiError::invalid(code, message).with_param(param)
}

/// `customer_id`: 1-64 characters of `A-Z a-z 0-9 _ - . : @` ([`CustomerId`]).
pub fn customer_id(raw: &str) -> Result<CustomerId, ApiError> {
    CustomerId::parse(raw).map_err(|e| refused("invalid_customer_id", "customer_id", e))
}

/// Idempotency key: 1-255 printable ASCII characters ([`IdempotencyKey`]).
pub fn idempotency_key(raw: &str, param: &str) -> Result<IdempotencyKey, ApiError> {
    IdempotencyKey::parse(raw).map_err(|e| refused("invalid_idempotency_key", param, e))
}

/// A JSON object that names each key once. `serde_json::Value` keeps the last of repeated
/// keys silently; parsers disagree on which one wins, so a body that repeats a key is refused.
struct UniqueKeys(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Object;
        impl<'de> serde::de::Visitor<'de> for Object {
            type Value = UniqueKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut access: A,
            ) -> Result<UniqueKeys, A::Error> {
                let mut out = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(serde::de::Error::custom(format_args!(
                            "the field {:?} appears more than once",
                            key.chars().take(64).collect::<String>()
                        )));
                    }
                    let value: Value = access.next_value()?;
                    out.insert(key, value);
                }
                Ok(UniqueKeys(out))
            }
        }
        d.deserialize_map(Object)
    }
}

/// The body as a JSON object whose keys are all in `allowed`, each once.
fn json_object(body: &[u8], allowed: &[&str]) -> Result<Map<String, Value>, ApiError> {
    let UniqueKeys(obj) = serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(
            "invalid_body",
            format!("the body must be a JSON object: {e}"),
        ),
        _ => ApiError::invalid("malformed_json", format!("the body is not valid JSON: {e}")),
    })?;
    if let Some(unknown) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            "unknown_field",
            format!(
                "unknown field {:?}; allowed: {}",
                unknown.chars().take(64).collect::<String>(),
                allowed.join(", ")
            ),
        )
        .with_param(unknown.chars().take(64).collect::<String>()));
    }
    Ok(obj)
}

/// The request's idempotency key: the `Idempotency-Key` header or the body's
/// `idempotency_key` (they must agree when both are sent); one of them is required.
fn request_idempotency_key(
    obj: &Map<String, Value>,
    header_key: Option<&str>,
) -> Result<IdempotencyKey, ApiError> {
    let body_key = match obj.get("idempotency_key") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(idempotency_key(s, "idempotency_key")?),
        Some(_) => {
            return Err(
                ApiError::invalid("invalid_type", "idempotency_key must be a string")
                    .with_param("idempotency_key"),
            )
        }
    };
    let header_key = header_key
        .map(|k| idempotency_key(k, "Idempotency-Key"))
        .transpose()?;
    match (header_key, body_key) {
        (Some(h), Some(b)) if h != b => Err(ApiError::invalid(
            "idempotency_key_mismatch",
            "the Idempotency-Key header and the body's idempotency_key differ",
        )
        .with_param("idempotency_key")),
        (Some(k), _) | (None, Some(k)) => Ok(k),
        (None, None) => Err(ApiError::invalid(
            "idempotency_key_required",
            "send an Idempotency-Key header (or idempotency_key in the body): it is what makes a retried request safe",
        )
        .with_param("idempotency_key")),
    }
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a Value, ApiError> {
    obj.get(name).ok_or_else(|| {
        ApiError::invalid("missing_field", format!("{name} is required")).with_param(name)
    })
}

fn string_field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, ApiError> {
    field(obj, name)?.as_str().ok_or_else(|| {
        ApiError::invalid("invalid_type", format!("{name} must be a string")).with_param(name)
    })
}

/// `amount_cents`: an integer number of minor units, 1 to `max_minor`.
fn amount_field(obj: &Map<String, Value>, max_minor: i64) -> Result<AmountMinor, ApiError> {
    let raw = match field(obj, "amount_cents")? {
        Value::Number(n) => n.as_i64().ok_or_else(|| {
            ApiError::invalid(
                "invalid_amount",
                "amount_cents must be a whole number of minor units within range",
            )
            .with_param("amount_cents")
        })?,
        _ => {
            return Err(
                ApiError::invalid("invalid_type", "amount_cents must be an integer")
                    .with_param("amount_cents"),
            )
        }
    };
    AmountMinor::new_with_max(raw, max_minor).map_err(|e| {
        let msg = match e {
            MoneyError::NotPositive(_) => "amount_cents must be at least 1".to_owned(),
            MoneyError::AboveMaximum { max_minor, .. } => {
                format!("amount_cents must be at most {max_minor}")
            }
            other => other.to_string(),
        };
        ApiError::invalid("invalid_amount", msg).with_param("amount_cents")
    })
}

/// Parses the JSON body; `header_key` is the `Idempotency-Key` header, if sent.
/// `max_amount` bounds `amount_cents` in the request's currency.
pub fn payment_request(
    body: &[u8],
    header_key: Option<&str>,
    max_amount: &PerCurrency,
) -> Result<PaymentRequest, ApiError> {
    let obj = json_object(body, FIELDS)?;
    let customer_id = customer_id(string_field(&obj, "customer_id")?)?;

    let currency = Currency::parse(string_field(&obj, "currency")?).map_err(|_| {
        ApiError::invalid(
            "unsupported_currency",
            format!(
                "currency must be one of {}",
                Currency::supported().collect::<Vec<_>>().join(", ")
            ),
        )
        .with_param("currency")
    })?;
    let amount = amount_field(&obj, max_amount.minor_for(currency))?;

    let idempotency_key = request_idempotency_key(&obj, header_key)?;
    let payment_method = match obj.get("payment_method") {
        None | Some(Value::Null) => PaymentMethod::default_card(),
        Some(Value::String(s)) => PaymentMethod::parse(s.as_str())
            .map_err(|e| refused("invalid_payment_method", "payment_method", e))?,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_payment_method",
                format!("payment_method must be a token of 1-{PAYMENT_METHOD_MAX} characters of a-z, 0-9, '_'"),
            )
            .with_param("payment_method"))
        }
    };
    let capture_method = match obj.get("capture_method") {
        None | Some(Value::Null) => CaptureMethod::Automatic,
        Some(Value::String(s)) if s == "automatic" => CaptureMethod::Automatic,
        Some(Value::String(s)) if s == "manual" => CaptureMethod::Manual,
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_capture_method",
                "capture_method must be \"automatic\" or \"manual\"",
            )
            .with_param("capture_method"))
        }
    };
    Ok(PaymentRequest {
        customer_id,
        amount,
        currency,
        idempotency_key,
        payment_method,
        capture_method,
    })
}

/// A capture request that parsed: what to capture (absent: all) and its key.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRequest {
    pub amount: Option<AmountMinor>,
    pub idempotency_key: IdempotencyKey,
}

/// Parses `{amount_cents?, idempotency_key}` (capture) or `{idempotency_key}` (cancel, with
/// `amount_allowed` false); the key may come from the header instead.
pub fn capture_request(
    body: &[u8],
    header_key: Option<&str>,
    amount_allowed: bool,
) -> Result<CaptureRequest, ApiError> {
    let fields: &[&str] = if amount_allowed {
        &["amount_cents", "idempotency_key"]
    } else {
        &["idempotency_key"]
    };
    // An empty body is an empty object: every field is optional or in the header.
    let obj = if body.iter().all(u8::is_ascii_whitespace) {
        json_object(b"{}", fields)?
    } else {
        json_object(body, fields)?
    };
    let amount = match obj.get("amount_cents") {
        None | Some(Value::Null) => None,
        Some(_) => Some(amount_field(&obj, AmountMinor::HARD_MAX_MINOR)?),
    };
    Ok(CaptureRequest {
        amount,
        idempotency_key: request_idempotency_key(&obj, header_key)?,
    })
}

/// A refund request that parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundRequest {
    pub amount: AmountMinor,
    pub idempotency_key: IdempotencyKey,
    pub reason: RefundReason,
}

const REFUND_FIELDS: &[&str] = &["amount_cents", "idempotency_key", "reason"];

/// Parses `{amount_cents, idempotency_key, reason}`; the key may come from the header instead.
pub fn refund_request(
    body: &[u8],
    header_key: Option<&str>,
    max_amount_minor: i64,
) -> Result<RefundRequest, ApiError> {
    let obj = json_object(body, REFUND_FIELDS)?;
    let amount = amount_field(&obj, max_amount_minor)?;
    let reason = match obj.get("reason") {
        None | Some(Value::Null) => RefundReason::requested_by_customer(),
        Some(Value::String(r)) => {
            RefundReason::parse(r.as_str()).map_err(|e| refused("invalid_reason", "reason", e))?
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "invalid_reason",
                format!("reason must be 1-{REASON_MAX} printable characters"),
            )
            .with_param("reason"))
        }
    };
    let idempotency_key = request_idempotency_key(&obj, header_key)?;
    Ok(RefundRequest {
        amount,
        idempotency_key,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max(usd_minor: i64) -> PerCurrency {
        PerCurrency::from_pairs(&[("USD", usd_minor)]).unwrap()
    }

    fn parse(body: &str) -> Result<PaymentRequest, String> {
        payment_request(body.as_bytes(), None, &max(1_000_000)).map_err(|e| e.body.code)
    }

    #[test]
    fn a_valid_request_parses() {
        let r = parse(r#"{"customer_id":"cust-1","amount_cents":2500,"currency":"USD","idempotency_key":"k1"}"#).unwrap();
        assert_eq!(r.amount.get(), 2500);
        assert_eq!(r.currency.as_str(), "USD");
        assert_eq!(r.idempotency_key.as_str(), "k1");
        assert_eq!(r.payment_method.as_str(), "pm_card_ok");
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (r#"{"#, "malformed_json"),
            (r#"[]"#, "invalid_body"),
            (
                r#"{"customer_id":"c","amount_cents":-1,"amount_cents":100,"currency":"USD","idempotency_key":"k"}"#,
                "invalid_body",
            ),
            ("\u{feff}{}", "malformed_json"),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"USD","idempotency_key":"k","x":1}"#,
                "unknown_field",
            ),
            (
                r#"{"amount_cents":1,"currency":"USD","idempotency_key":"k"}"#,
                "missing_field",
            ),
            (
                r#"{"customer_id":"a b","amount_cents":1,"currency":"USD","idempotency_key":"k"}"#,
                "invalid_customer_id",
            ),
            (
                r#"{"customer_id":"c","amount_cents":0,"currency":"USD","idempotency_key":"k"}"#,
                "invalid_amount",
            ),
            (
                r#"{"customer_id":"c","amount_cents":-5,"currency":"USD","idempotency_key":"k"}"#,
                "invalid_amount",
            ),
            (
                r#"{"customer_id":"c","amount_cents":2.5,"currency":"USD","idempotency_key":"k"}"#,
                "invalid_amount",
            ),
            (
                r#"{"customer_id":"c","amount_cents":99999999999999999999,"currency":"USD","idempotency_key":"k"}"#,
                "invalid_amount",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1000001,"currency":"USD","idempotency_key":"k"}"#,
                "invalid_amount",
            ),
            (
                r#"{"customer_id":"c","amount_cents":"100","currency":"USD","idempotency_key":"k"}"#,
                "invalid_type",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"usd","idempotency_key":"k"}"#,
                "unsupported_currency",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"USD"}"#,
                "idempotency_key_required",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"USD","idempotency_key":""}"#,
                "invalid_idempotency_key",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"USD","idempotency_key":"k\u0000"}"#,
                "invalid_idempotency_key",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"USD","idempotency_key":"k","payment_method":"PM-1"}"#,
                "invalid_payment_method",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"USD","idempotency_key":"k","payment_method":7}"#,
                "invalid_payment_method",
            ),
        ];
        for (body, code) in cases {
            assert_eq!(parse(body).unwrap_err(), code, "body {body}");
        }
    }

    #[test]
    fn the_amount_limit_is_the_currencys_own() {
        let limits = PerCurrency::from_pairs(&[("USD", 1_000), ("JPY", 5_000)]).unwrap();
        let body = |amount: i64, currency: &str| {
            format!(
                r#"{{"customer_id":"c","amount_cents":{amount},"currency":"{currency}","idempotency_key":"k"}}"#
            )
        };
        let code =
            |b: String| payment_request(b.as_bytes(), None, &limits).map_err(|e| e.body.code);
        assert!(code(body(1_000, "USD")).is_ok());
        assert_eq!(code(body(1_001, "USD")).unwrap_err(), "invalid_amount");
        assert!(code(body(5_000, "JPY")).is_ok(), "stated for JPY");
        assert!(
            code(body(10_000, "KWD")).is_ok(),
            "USD's 10.00 at exponent 3"
        );
        assert_eq!(code(body(10_001, "KWD")).unwrap_err(), "invalid_amount");
    }

    #[test]
    fn refund_requests_parse_strictly() {
        let ok = refund_request(
            br#"{"amount_cents":500,"idempotency_key":"r1","reason":"damaged"}"#,
            None,
            1_000_000,
        )
        .unwrap();
        assert_eq!((ok.amount.get(), ok.reason.as_str()), (500, "damaged"));
        let default_reason =
            refund_request(br#"{"amount_cents":1}"#, Some("r2"), 1_000_000).unwrap();
        assert_eq!(default_reason.reason.as_str(), "requested_by_customer");
        for (body, code) in [
            (
                r#"{"amount_cents":0,"idempotency_key":"k"}"#,
                "invalid_amount",
            ),
            (
                r#"{"amount_cents":-1,"idempotency_key":"k"}"#,
                "invalid_amount",
            ),
            (
                r#"{"amount_cents":"5","idempotency_key":"k"}"#,
                "invalid_type",
            ),
            (r#"{"amount_cents":5}"#, "idempotency_key_required"),
            (
                r#"{"amount_cents":5,"idempotency_key":"k","x":1}"#,
                "unknown_field",
            ),
            (
                r#"{"amount_cents":5,"idempotency_key":"k","reason":""}"#,
                "invalid_reason",
            ),
        ] {
            assert_eq!(
                refund_request(body.as_bytes(), None, 1_000_000)
                    .unwrap_err()
                    .body
                    .code,
                code,
                "{body}"
            );
        }
    }

    #[test]
    fn header_and_body_keys_must_agree() {
        let body =
            br#"{"customer_id":"c","amount_cents":1,"currency":"USD","idempotency_key":"a"}"#;
        assert!(payment_request(body, Some("a"), &max(10)).is_ok());
        assert_eq!(
            payment_request(body, Some("b"), &max(10))
                .unwrap_err()
                .body
                .code,
            "idempotency_key_mismatch"
        );
        let no_key = br#"{"customer_id":"c","amount_cents":1,"currency":"USD"}"#;
        assert_eq!(
            payment_request(no_key, Some("h"), &max(10))
                .unwrap()
                .idempotency_key
                .as_str(),
            "h"
        );
    }
}
