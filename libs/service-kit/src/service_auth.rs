//! Service credentials: how a service proves that a request to another service is its own,
//! and states the merchant it acts for as a claim nobody else can set.
//!
//! The shape is an HMAC-SHA256-signed request with a timestamp (the scheme of Stripe's
//! webhook signatures and, in spirit, of AWS SigV4), chosen over a bearer token because the
//! signature binds the credential to this one request: its caller, time, method, path and
//! query, merchant and body. A captured request cannot be changed (another merchant, another
//! amount) and can be replayed only within the window, where every write is idempotent by its
//! key anyway. No token issuer, no clock-synchronised expiry beyond the window, one small
//! crate (`hmac`).
//!
//! Headers: `sagapay-caller` (the calling service), `sagapay-merchant` (the claim, when the
//! request acts for a merchant), `sagapay-timestamp` (unix seconds) and
//! `sagapay-signature: v1=<hex>`, the HMAC of
//! `v1\n<caller>\n<timestamp>\n<METHOD>\n<path?query>\n<merchant or empty>\n<hex SHA-256 of body>`.
//! A request is accepted within [`WINDOW_S`] seconds of its timestamp, either way.
//!
//! Keys: `SAGAPAY_INTERNAL_KEYS`, or a file named by `SAGAPAY_INTERNAL_KEYS_FILE` (the
//! container convention), comma separated. A caller signs with the first; a receiver accepts
//! any. Rotation without downtime: deploy `old,new` everywhere (receivers accept the new key
//! before anyone signs with it), then `new,old` (callers sign with it), then `new`.

use crate::api_error::{ApiError, ErrorType};
use crate::config::Environment;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use uuid::Uuid;

pub const CALLER: &str = "sagapay-caller";
pub const MERCHANT: &str = "sagapay-merchant";
pub const TIMESTAMP: &str = "sagapay-timestamp";
pub const SIGNATURE: &str = "sagapay-signature";

/// How far a request's timestamp may be from the receiver's clock, in seconds.
pub const WINDOW_S: i64 = 60;
/// The development key; refused in production.
pub const DEV_INTERNAL_KEY: &str = "dev-internal-secret";
/// The shortest key production accepts.
pub const MIN_KEY_LEN: usize = 32;
/// The largest body a signed request may carry.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The keys services sign and verify internal requests with (the first signs).
/// Each key a `secrecy` secret: never printed, wiped when dropped.
#[derive(Clone, Debug)]
pub struct ServiceKeys(Arc<[SecretString]>);

/// Who called, as its verified credential says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCaller {
    pub caller: String,
    /// The merchant the caller acts for, when it signed one.
    pub merchant: Option<Uuid>,
}

impl VerifiedCaller {
    /// The merchant a route that acts for one must have been signed for (401
    /// `merchant_claim_missing` otherwise).
    pub fn acting_merchant(&self) -> Result<Uuid, ApiError> {
        self.merchant.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorType::AuthenticationError,
                "merchant_claim_missing",
                "this route acts for a merchant: the signed sagapay-merchant claim is required",
            )
        })
    }
}

impl ServiceKeys {
    /// `SAGAPAY_INTERNAL_KEYS` (or `SAGAPAY_INTERNAL_KEYS_FILE`), checked for `environment`.
    pub fn from_env(environment: Environment) -> anyhow::Result<Self> {
        let raw = match (
            crate::settings::secret("SAGAPAY_INTERNAL_KEYS"),
            Some(crate::config::env_or("SAGAPAY_INTERNAL_KEYS_FILE", "")).filter(|v| !v.is_empty()),
        ) {
            (Some(_), Some(_)) => anyhow::bail!(
                "set SAGAPAY_INTERNAL_KEYS or SAGAPAY_INTERNAL_KEYS_FILE, not both"
            ),
            (Some(v), None) => v,
            (None, Some(path)) => SecretString::from(
                std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("SAGAPAY_INTERNAL_KEYS_FILE {path}: {e}"))?,
            ),
            (None, None) => match environment {
                Environment::Development => SecretString::from(DEV_INTERNAL_KEY),
                Environment::Production => anyhow::bail!(
                    "SAGAPAY_INTERNAL_KEYS (or SAGAPAY_INTERNAL_KEYS_FILE) must be set in production"
                ),
            },
        };
        let keys: Vec<&str> = raw
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .collect();
        anyhow::ensure!(!keys.is_empty(), "SAGAPAY_INTERNAL_KEYS names no key");
        if environment == Environment::Production {
            for key in &keys {
                anyhow::ensure!(
                    key.len() >= MIN_KEY_LEN && *key != DEV_INTERNAL_KEY,
                    "every key of SAGAPAY_INTERNAL_KEYS must be a secret of at least {MIN_KEY_LEN} characters in production (not the development key)"
                );
            }
        }
        Ok(Self::new(&keys))
    }

    pub fn new(keys: &[&str]) -> Self {
        assert!(!keys.is_empty(), "at least one key");
        Self(keys.iter().map(|k| SecretString::from(*k)).collect())
    }

    /// The development key, for tests.
    pub fn development() -> Self {
        Self::new(&[DEV_INTERNAL_KEY])
    }

    /// The headers that make a request of `caller` verifiable, signed with the first key at
    /// `now_unix`.
    pub fn sign(
        &self,
        caller: &str,
        method: &str,
        path_and_query: &str,
        merchant: Option<Uuid>,
        body: &[u8],
        now_unix: i64,
    ) -> [(&'static str, String); 4] {
        let merchant_text = merchant.map(|m| m.to_string()).unwrap_or_default();
        let signature = mac(
            self.0[0].expose_secret(),
            &signed_text(
                caller,
                now_unix,
                method,
                path_and_query,
                &merchant_text,
                body,
            ),
        );
        [
            (CALLER, caller.to_owned()),
            (MERCHANT, merchant_text),
            (TIMESTAMP, now_unix.to_string()),
            (SIGNATURE, format!("v1={}", hex::encode(signature))),
        ]
    }

    /// Checks a request's credential against every key, in constant time per key.
    pub fn verify(
        &self,
        headers: &axum::http::HeaderMap,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Result<VerifiedCaller, CredentialError> {
        // A credential header given twice is ambiguous (a proxy may read the other one).
        if [CALLER, MERCHANT, TIMESTAMP, SIGNATURE]
            .iter()
            .any(|name| headers.get_all(*name).iter().count() > 1)
        {
            return Err(CredentialError::Invalid);
        }
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(caller), Some(timestamp), Some(signature)) =
            (get(CALLER), get(TIMESTAMP), get(SIGNATURE))
        else {
            return Err(CredentialError::Missing);
        };
        let merchant_text = get(MERCHANT).unwrap_or_default();
        let timestamp: i64 = timestamp.parse().map_err(|_| CredentialError::Invalid)?;
        if (now_unix - timestamp).abs() > WINDOW_S {
            return Err(CredentialError::Expired);
        }
        let given = signature
            .strip_prefix("v1=")
            .and_then(|h| hex::decode(h).ok())
            .ok_or(CredentialError::Invalid)?;
        let text = signed_text(
            caller,
            timestamp,
            method,
            path_and_query,
            merchant_text,
            body,
        );
        let matched = self.0.iter().fold(false, |found, key| {
            found | crate::constant_time::bytes_equal(&mac(key.expose_secret(), &text), &given)
        });
        if !matched {
            return Err(CredentialError::Invalid);
        }
        let merchant = match merchant_text {
            "" => None,
            m => Some(Uuid::parse_str(m).map_err(|_| CredentialError::Invalid)?),
        };
        Ok(VerifiedCaller {
            caller: caller.to_owned(),
            merchant,
        })
    }
}

fn signed_text(
    caller: &str,
    timestamp: i64,
    method: &str,
    path_and_query: &str,
    merchant: &str,
    body: &[u8],
) -> String {
    format!(
        "v1\n{caller}\n{timestamp}\n{}\n{path_and_query}\n{merchant}\n{}",
        method.to_ascii_uppercase(),
        hex::encode(Sha256::digest(body))
    )
}

fn mac(key: &str, text: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("HMAC takes any key length");
    m.update(text.as_bytes());
    m.finalize().into_bytes().to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("missing service credential (sagapay-caller, sagapay-timestamp, sagapay-signature)")]
    Missing,
    #[error("service credential outside its time window: check the caller's clock")]
    Expired,
    #[error("invalid service credential")]
    Invalid,
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> Self {
        let code = match e {
            CredentialError::Missing => "service_credential_missing",
            CredentialError::Expired => "service_credential_expired",
            CredentialError::Invalid => "service_credential_invalid",
        };
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::AuthenticationError,
            code,
            e.to_string(),
        )
    }
}

/// What [`require_service_credential`] checks against.
#[derive(Clone)]
struct Policy {
    keys: ServiceKeys,
    callers: &'static [&'static str],
}

/// `router`'s routes, each requiring a valid credential of one of `callers` (401 without a
/// valid one, 403 for another service). The handler finds the [`VerifiedCaller`] in the
/// request's extensions.
pub fn require_service_credential<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    keys: ServiceKeys,
    callers: &'static [&'static str],
) -> Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(
        Policy { keys, callers },
        check,
    ))
}

async fn check(State(policy): State<Policy>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(SIGNATURE) {
        return ApiError::from(CredentialError::Missing).into_response();
    }
    let bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => return ApiError::body_too_large(MAX_BODY_BYTES).into_response(),
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let now = chrono::Utc::now().timestamp();
    let verified = match policy.keys.verify(
        &parts.headers,
        parts.method.as_str(),
        path_and_query,
        &bytes,
        now,
    ) {
        Ok(v) => v,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if !policy.callers.contains(&verified.caller.as_str()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorType::AuthenticationError,
            "caller_not_allowed",
            format!("service {} may not call this route", verified.caller),
        )
        .into_response();
    }
    parts.extensions.insert(verified);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(signed: [(&'static str, String); 4]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in signed {
            h.insert(k, HeaderValue::from_str(&v).unwrap());
        }
        h
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let keys = ServiceKeys::new(&["k1-k1-k1-k1-k1-k1-k1-k1-k1-k1-k1-k1"]);
        let m = Uuid::now_v7();
        let h = headers(keys.sign("gateway", "POST", "/internal/payments", Some(m), b"{}", NOW));
        assert_eq!(
            keys.verify(&h, "POST", "/internal/payments", b"{}", NOW + 59),
            Ok(VerifiedCaller {
                caller: "gateway".into(),
                merchant: Some(m)
            })
        );
        // Body, path, method, merchant, caller, key, time, headers: each breaks it.
        let changed = |name: &'static str, value: &str, append: bool| {
            let mut changed = h.clone();
            let value = HeaderValue::from_str(value).unwrap();
            if append {
                changed.append(name, value);
            } else {
                changed.insert(name, value);
            }
            changed
        };
        let other_merchant = Uuid::now_v7().to_string();
        let stranger = ServiceKeys::new(&["k2-k2-k2-k2-k2-k2-k2-k2-k2-k2-k2-k2"]);
        use CredentialError::{Expired, Invalid, Missing};
        let merchant_changed = changed(MERCHANT, &other_merchant, false);
        let merchant_twice = changed(MERCHANT, &other_merchant, true);
        let caller_changed = changed(CALLER, "risk", false);
        let p = "/internal/payments";
        // (what, verifier, headers, method, path and query, body, now, expected)
        #[rustfmt::skip]
        let cases = [
            ("body", &keys, &h, "POST", p, "{ }", NOW, Invalid),
            ("query", &keys, &h, "POST", "/internal/payments?x=1", "{}", NOW, Invalid),
            ("method", &keys, &h, "PUT", p, "{}", NOW, Invalid),
            ("merchant", &keys, &merchant_changed, "POST", p, "{}", NOW, Invalid),
            ("merchant twice", &keys, &merchant_twice, "POST", p, "{}", NOW, Invalid),
            ("caller", &keys, &caller_changed, "POST", p, "{}", NOW, Invalid),
            ("key", &stranger, &h, "POST", p, "{}", NOW, Invalid),
            ("late", &keys, &h, "POST", p, "{}", NOW + 61, Expired),
            ("early", &keys, &h, "POST", p, "{}", NOW - 61, Expired),
            ("no headers", &keys, &HeaderMap::new(), "POST", p, "{}", NOW, Missing),
        ];
        for (what, verifier, headers, method, path, body, now, expected) in cases {
            assert_eq!(
                verifier.verify(headers, method, path, body.as_bytes(), now),
                Err(expected),
                "{what}"
            );
        }
    }

    #[test]
    fn during_a_rotation_both_keys_verify_and_the_first_signs() {
        let old = ServiceKeys::new(&["old"]);
        let new = ServiceKeys::new(&["new"]);
        let both = ServiceKeys::new(&["new", "old"]);
        for signer in [&old, &new, &both] {
            let h = headers(signer.sign("gateway", "GET", "/p", None, b"", NOW));
            assert!(both.verify(&h, "GET", "/p", b"", NOW).is_ok());
        }
        let h = headers(both.sign("gateway", "GET", "/p", None, b"", NOW));
        assert!(new.verify(&h, "GET", "/p", b"", NOW).is_ok());
        assert!(old.verify(&h, "GET", "/p", b"", NOW).is_err());
        let shown = format!("{both:?}");
        assert!(
            !shown.contains("new") && !shown.contains("old") && shown.contains("REDACTED"),
            "{shown}"
        );
    }
}
