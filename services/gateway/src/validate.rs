//! Parsing the public requests at the edge: a body becomes its type from
//! `sagapay_api_models::requests` (serde; each field a domain type that checks its own rule),
//! and a refusal names the field (`param`) and a machine-readable code
//! (`sagapay_service_kit::json_body`, with the request's own codes, [`FieldCodes`]), so a
//! client learns exactly what to fix. Nothing invalid reaches the services behind the
//! gateway, which parse the same types again.
//!
//! The idempotency key is required in the body; the `Idempotency-Key` header, an older
//! spelling of it, is taken in its place when the body has none, and must agree when both
//! are sent.

use sagapay_api_models::{FieldCodes, Idempotent};
use sagapay_domain::{AmountMinor, IdempotencyKey, PerCurrency};
use sagapay_service_kit::json_body;
use sagapay_service_kit::ApiError;
use serde::de::DeserializeOwned;

/// The body as `T`; `header_key` is the `Idempotency-Key` header, if sent.
pub fn request<T>(body: &[u8], header_key: Option<&str>) -> Result<T, ApiError>
where
    T: DeserializeOwned + FieldCodes + Idempotent,
{
    // An empty body is an empty object (a cancel may carry nothing but the header).
    let body = json_body::or_empty_object(body);
    let header_key = header_key
        .map(|k| {
            IdempotencyKey::parse(k).map_err(|e| {
                ApiError::invalid("invalid_idempotency_key", e.to_string())
                    .with_param("Idempotency-Key")
            })
        })
        .transpose()?;
    let req = match (json_body::parse::<T>(body), &header_key) {
        (Ok(req), _) => req,
        (Err(f), Some(key)) if f.missing().as_deref() == Some("idempotency_key") => {
            json_body::parse_with(body, "idempotency_key", key.as_str())
                .map_err(|f| f.refusal(T::field_code))?
        }
        (Err(f), _) => return Err(f.refusal(T::field_code)),
    };
    if let Some(h) = header_key {
        if &h != req.idempotency_key() {
            return Err(ApiError::invalid(
                "idempotency_key_mismatch",
                "the Idempotency-Key header and the body's idempotency_key differ",
            )
            .with_param("idempotency_key"));
        }
    }
    Ok(req)
}

/// A body without an idempotency key as `T` (an empty body is an empty object).
pub fn body<T: DeserializeOwned + FieldCodes>(body: &[u8]) -> Result<T, ApiError> {
    json_body::parse_body(body, T::field_code)
}

/// The amount within the limit of its currency (`max` of the gateway's settings). Above it, the
/// request is well formed and refused by policy: 422, as for any amount the state of things
/// refuses (a refund above what is left), with the field's code.
pub fn within_limit(
    amount: AmountMinor,
    currency: sagapay_domain::Currency,
    max: &PerCurrency,
) -> Result<(), ApiError> {
    let max_minor = max.minor_for(currency).min(AmountMinor::HARD_MAX_MINOR);
    if amount.get() > max_minor {
        return Err(ApiError::unprocessable(
            "invalid_amount",
            format!(
                "amount_cents must be at most {max_minor} in {}",
                currency.as_str()
            ),
        )
        .with_param("amount_cents"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagapay_api_models::{
        CancelRequest, CreatePaymentRequest, CreateRefundRequest, CreateWebhookEndpointRequest,
    };

    fn payment(
        body: &str,
        header: Option<&str>,
    ) -> Result<CreatePaymentRequest, (String, Option<String>)> {
        request(body.as_bytes(), header).map_err(|e| (e.body.code, e.body.param))
    }

    fn code(body: &str) -> String {
        payment(body, None).unwrap_err().0
    }

    #[test]
    fn a_valid_request_parses_with_its_defaults() {
        let r = payment(
            r#"{"customer_id":"cust-1","amount_cents":2500,"currency":"USD","idempotency_key":"k1"}"#,
            None,
        )
        .unwrap();
        assert_eq!((r.amount_cents.get(), r.currency.as_str()), (2500, "USD"));
        assert_eq!(r.payment_method.as_str(), "pm_card_ok");
        // JSON Schema's integers include 2500.0.
        let whole =
            r#"{"customer_id":"c","amount_cents":2500.0,"currency":"USD","idempotency_key":"k"}"#;
        assert_eq!(payment(whole, None).unwrap().amount_cents.get(), 2500);
    }

    #[test]
    fn each_refusal_names_its_field_and_code() {
        let base = |extra: &str| {
            format!(r#"{{"customer_id":"c","currency":"USD","idempotency_key":"k"{extra}}}"#)
        };
        let cases = [
            ("{".to_owned(), "malformed_json"),
            ("[]".to_owned(), "invalid_body"),
            (r#"["c", 1, "USD", "k"]"#.to_owned(), "invalid_body"),
            ("null".to_owned(), "invalid_body"),
            ("\u{feff}{}".to_owned(), "malformed_json"),
            (
                base(r#","amount_cents":1,"amount_cents":2"#),
                "invalid_body",
            ),
            (base(r#","amount_cents":1,"x":1"#), "unknown_field"),
            (base(""), "missing_field"),
            (base(r#","amount_cents":0"#), "invalid_amount"),
            (base(r#","amount_cents":-5"#), "invalid_amount"),
            (base(r#","amount_cents":2.5"#), "invalid_amount"),
            (
                base(r#","amount_cents":99999999999999999999"#),
                "invalid_amount",
            ),
            (base(r#","amount_cents":"100""#), "invalid_type"),
            (
                base(r#","amount_cents":1,"payment_method":"PM-1""#),
                "invalid_payment_method",
            ),
            (
                base(r#","amount_cents":1,"payment_method":7"#),
                "invalid_type",
            ),
            (
                base(r#","amount_cents":1,"payment_method":null"#),
                "invalid_type",
            ),
            (
                base(r#","amount_cents":1,"capture_method":"later""#),
                "invalid_capture_method",
            ),
            (
                r#"{"customer_id":"a b","amount_cents":1,"currency":"USD","idempotency_key":"k"}"#
                    .into(),
                "invalid_customer_id",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"usd","idempotency_key":"k"}"#
                    .into(),
                "unsupported_currency",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"USD"}"#.into(),
                "idempotency_key_required",
            ),
            (
                r#"{"customer_id":"c","amount_cents":1,"currency":"USD","idempotency_key":""}"#
                    .into(),
                "invalid_idempotency_key",
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(code(&body), expected, "body {body}");
        }
        let (_, param) = payment(&base(r#","amount_cents":0"#), None).unwrap_err();
        assert_eq!(param.as_deref(), Some("amount_cents"));
        let (_, param) = payment(&base(r#","amount_cents":1,"x":1"#), None).unwrap_err();
        assert_eq!(param.as_deref(), Some("x"));
    }

    #[test]
    fn the_header_key_stands_in_for_a_missing_body_key_and_must_agree_with_a_present_one() {
        let with = r#"{"customer_id":"c","amount_cents":1,"currency":"USD","idempotency_key":"a"}"#;
        let without = r#"{"customer_id":"c","amount_cents":1,"currency":"USD"}"#;
        assert!(payment(with, Some("a")).is_ok());
        assert_eq!(
            payment(with, Some("b")).unwrap_err().0,
            "idempotency_key_mismatch"
        );
        assert_eq!(
            payment(without, Some("h"))
                .unwrap()
                .idempotency_key
                .as_str(),
            "h"
        );
        assert_eq!(
            payment(without, Some("\u{7f}")).unwrap_err().0,
            "invalid_idempotency_key"
        );
        // A cancel may carry nothing but the header.
        let cancel: CancelRequest = request(b"", Some("c-1")).unwrap();
        assert_eq!(cancel.idempotency_key.as_str(), "c-1");
    }

    #[test]
    fn refunds_and_endpoints_report_their_own_codes() {
        let refund =
            |b: &str| request::<CreateRefundRequest>(b.as_bytes(), None).map_err(|e| e.body.code);
        assert_eq!(
            refund(r#"{"amount_cents":5,"idempotency_key":"k"}"#)
                .unwrap()
                .reason
                .as_str(),
            "requested_by_customer"
        );
        assert_eq!(
            refund(r#"{"amount_cents":5,"idempotency_key":"k","reason":""}"#).unwrap_err(),
            "invalid_reason"
        );
        let endpoint =
            |b: &str| body::<CreateWebhookEndpointRequest>(b.as_bytes()).map_err(|e| e.body.code);
        assert_eq!(
            endpoint(r#"{"url":"https://a","enabled_events":["payment.exploded"]}"#).unwrap_err(),
            "invalid_enabled_events"
        );
        assert_eq!(
            endpoint(r#"{"url":"https://a"}"#).unwrap_err(),
            "missing_field"
        );
    }

    #[test]
    fn an_amount_above_its_currencys_limit_is_refused_by_policy() {
        let limits = PerCurrency::from_pairs(&[("USD", 1_000), ("JPY", 5_000)]).unwrap();
        let usd = sagapay_domain::Currency::parse("USD").unwrap();
        let jpy = sagapay_domain::Currency::parse("JPY").unwrap();
        let amount = |a| AmountMinor::new(a).unwrap();
        assert!(within_limit(amount(1_000), usd, &limits).is_ok());
        let refused = within_limit(amount(1_001), usd, &limits).unwrap_err();
        assert_eq!(
            (refused.status.as_u16(), refused.body.code.as_str()),
            (422, "invalid_amount")
        );
        assert!(within_limit(amount(5_000), jpy, &limits).is_ok());
    }
}
