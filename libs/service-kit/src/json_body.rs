//! A JSON body into its type, for every HTTP API of SagaPay: serde (with
//! `serde_path_to_error`) does the parsing, and a refusal becomes a 400 in the one error shape
//! that names the field (`param`) and says what is wrong with a machine-readable code:
//!
//! - `malformed_json`: not JSON; `invalid_body`: not an object, or a field twice;
//! - `missing_field`, `unknown_field`: the field named;
//! - `invalid_type`: a JSON value of the wrong kind (`"100"` for an integer, `null` for a
//!   field that is not nullable);
//! - otherwise the field's own code, from the caller's table (`invalid_amount`, ...), or
//!   `invalid_value`.
//!
//! The gateway's requests, the orchestrator's and the risk service's ops requests all parse
//! here, so a client meets the same refusals wherever it calls.

use crate::api_error::ApiError;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The code of a field of the request type, when it has its own.
pub type FieldCodes = fn(&str) -> Option<&'static str>;

/// `body` as `T` (an empty body is an empty object), refusals coded by `codes`.
pub fn parse_body<T: DeserializeOwned>(body: &[u8], codes: FieldCodes) -> Result<T, ApiError> {
    parse(or_empty_object(body)).map_err(|f| f.refusal(codes))
}

/// A JSON request body as `T` (an empty body is `{}`), or the 400 naming the field and what is
/// wrong with it, with no codes of the request's own.
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    parse_body(body, |_| None)
}

/// An empty (or blank) body reads as `{}`: every field optional, or reported missing.
pub fn or_empty_object(body: &[u8]) -> &[u8] {
    if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    }
}

/// Why serde refused a body, and where.
#[derive(Debug)]
pub struct Failure {
    /// The refused value's path ("amount_cents", "enabled_events[3]"; "." for the body).
    path: String,
    inner: serde_json::Error,
}

impl Failure {
    fn whole(inner: serde_json::Error) -> Self {
        Self {
            path: ".".into(),
            inner,
        }
    }

    fn at(e: serde_path_to_error::Error<serde_json::Error>) -> Self {
        Self {
            path: e.path().to_string(),
            inner: e.into_inner(),
        }
    }

    /// The field serde found missing, if that is the error.
    pub fn missing(&self) -> Option<String> {
        quoted_after(&message(&self.inner), "missing field `")
    }

    /// The 400 for this failure, fields coded by `codes`.
    pub fn refusal(self, codes: FieldCodes) -> ApiError {
        use serde_json::error::Category;
        let msg = message(&self.inner);
        if !matches!(self.inner.classify(), Category::Data) {
            return ApiError::invalid(
                "malformed_json",
                format!("the body is not valid JSON: {msg}"),
            );
        }
        if let Some(field) = quoted_after(&msg, "missing field `") {
            return missing_field(&field);
        }
        if let Some(field) = quoted_after(&msg, "unknown field `") {
            return ApiError::invalid("unknown_field", msg).with_param(field);
        }
        if let Some(field) = quoted_after(&msg, "duplicate field `") {
            return ApiError::invalid(
                "invalid_body",
                format!("the field {field:?} appears more than once"),
            );
        }
        // The refused value's field: the first step of its path ("enabled_events[3]" and
        // "enabled_events" are both the field enabled_events).
        let field = self
            .path
            .split(['.', '['])
            .next()
            .unwrap_or_default()
            .to_owned();
        if field.is_empty() || field == "?" {
            return ApiError::invalid(
                "invalid_body",
                format!("the body must be a JSON object: {msg}"),
            );
        }
        let code = if msg.starts_with("invalid type:") {
            "invalid_type"
        } else {
            codes(&field).unwrap_or("invalid_value")
        };
        let message = if msg.starts_with(&field) {
            msg
        } else {
            format!("{field}: {msg}")
        };
        ApiError::invalid(code, message).with_param(field)
    }
}

/// The whole body (trailing bytes included) as `T`, which must be written as an object
/// (serde would also read a struct from an array of its fields' values).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        let kind: Value = serde_json::from_slice(body).map_err(Failure::whole)?;
        return Err(Failure::whole(serde::de::Error::custom(format_args!(
            "expected an object, found {}",
            match kind {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            }
        ))));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let t: T = serde_path_to_error::deserialize(&mut de).map_err(Failure::at)?;
    de.end().map_err(Failure::whole)?;
    Ok(t)
}

/// `body` (an object of known, distinct fields: it parsed up to a missing field) with
/// `field` set to `value`, as `T`.
pub fn parse_with<T: DeserializeOwned>(
    body: &[u8],
    field: &str,
    value: &str,
) -> Result<T, Failure> {
    let mut obj: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(Failure::whole)?;
    obj.insert(field.into(), Value::String(value.into()));
    serde_path_to_error::deserialize(Value::Object(obj)).map_err(Failure::at)
}

/// serde_json's message without its position (" at line 1 column 9").
fn message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rsplit_once(" at line ") {
        Some((msg, _)) => msg.to_owned(),
        None => text,
    }
}

/// The name between backticks after `prefix`, when `msg` starts with it.
fn quoted_after(msg: &str, prefix: &str) -> Option<String> {
    let rest = msg.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.chars().take(64).collect())
}

fn missing_field(field: &str) -> ApiError {
    if field == "idempotency_key" {
        return ApiError::invalid(
            "idempotency_key_required",
            "idempotency_key is required (or an Idempotency-Key header): it is what makes a \
             retried request safe",
        )
        .with_param("idempotency_key");
    }
    ApiError::invalid("missing_field", format!("{field} is required")).with_param(field)
}
