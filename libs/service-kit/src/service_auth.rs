//! Service credentials: how a service proves that a request to another service is its own,
//! states the merchant it acts for as a claim nobody else can set, and cannot have it
//! replayed.
//!
//! **Identity.** Each calling service signs with an Ed25519 key of its own
//! (`SAGAPAY_SERVICE_SIGNING_KEY`); a receiving service holds the public keys of the services
//! it accepts (`SAGAPAY_TRUSTED_CALLERS`, `gateway=<key>`). A receiver can check a signature
//! but not make one, so no service can sign as another: with the one shared HMAC key of
//! before, any service holding it could sign as the gateway.
//!
//! **What is signed.** `v3\n<receiving service>\n<caller>\n<timestamp>\n<nonce>\n<METHOD>\n
//! <path?query>\n<merchant or empty>\n<hex SHA-256 of body>`: the credential is bound to this
//! one request (the service it is for, its caller, time, method, path and query, merchant and
//! body), so a captured request cannot be changed (another merchant, another amount) nor sent
//! to another service that shares the caller's key. Headers: `sagapay-caller`,
//! `sagapay-merchant` (when the request acts for a merchant), `sagapay-timestamp` (unix
//! seconds), `sagapay-nonce` (128 random bits, hex) and `sagapay-signature: v3=<base64>`. (v2,
//! without the receiving service, is no longer accepted: a receiver and its callers upgrade
//! together.)
//!
//! **Replay.** A request is accepted within [`WINDOW_S`] seconds of its timestamp, either way,
//! and once: the receiver records `(caller, nonce)` in its database (`service_request_nonces`)
//! and answers a second use 401 `service_credential_replayed`. A nonce outlives the window it
//! could be used in (rows older than [`NONCE_RETENTION`] are deleted as requests come), so a
//! replay is refused by its nonce inside the window and by its timestamp after. A replayed
//! `roll_secret` would otherwise have handed its caller the merchant's new webhook secret.
//!
//! **Rotation without downtime.** Receivers list the new public key beside the old
//! (`gateway=<new> <old>`), then the caller signs with the new key, then the old one is
//! removed from the list. `sagapayctl service-key generate` makes a key pair.
//!
//! Development: every service has a development key pair derived from its name, trusted by
//! default; production refuses them.

use crate::api_error::{ApiError, ErrorType};
use crate::config::Environment;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub const CALLER: &str = "sagapay-caller";
pub const MERCHANT: &str = "sagapay-merchant";
pub const TIMESTAMP: &str = "sagapay-timestamp";
pub const NONCE: &str = "sagapay-nonce";
pub const SIGNATURE: &str = "sagapay-signature";

/// How far a request's timestamp may be from the receiver's clock, in seconds.
pub const WINDOW_S: i64 = 60;
/// How long a nonce is remembered: longer than the two windows a timestamp can be accepted in.
pub const NONCE_RETENTION: Duration = Duration::from_secs(5 * 60);
/// The largest body a signed request may carry.
const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Forgotten nonces are deleted once per this many verified requests.
const NONCE_SWEEP_EVERY: u64 = 500;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The development key pair of `service`: derived from its name, known to anyone, refused in
/// production.
fn development_key(service: &str) -> SigningKey {
    let seed: [u8; 32] =
        Sha256::digest(format!("sagapay-development-service-key:{service}")).into();
    SigningKey::from_bytes(&seed)
}

/// A service's own signing key: what its calls are signed with, as itself.
#[derive(Clone)]
pub struct ServiceSigner {
    caller: String,
    key: Arc<SigningKey>,
    /// Whether this is the development key (production refuses it).
    development: bool,
}

impl std::fmt::Debug for ServiceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceSigner")
            .field("caller", &self.caller)
            .field("key", &"[REDACTED]")
            .finish()
    }
}

impl ServiceSigner {
    /// `SAGAPAY_SERVICE_SIGNING_KEY` (or `SAGAPAY_SERVICE_SIGNING_KEY_FILE`) of `service`; its
    /// development key when neither is set in development.
    pub fn from_env(service: &str, environment: Environment) -> anyhow::Result<Self> {
        let raw = match (
            crate::settings::secret("SAGAPAY_SERVICE_SIGNING_KEY"),
            Some(crate::config::env_or("SAGAPAY_SERVICE_SIGNING_KEY_FILE", ""))
                .filter(|v| !v.is_empty()),
        ) {
            (Some(_), Some(_)) => anyhow::bail!(
                "set SAGAPAY_SERVICE_SIGNING_KEY or SAGAPAY_SERVICE_SIGNING_KEY_FILE, not both"
            ),
            (Some(v), None) => v,
            (None, Some(path)) => SecretString::from(
                std::fs::read_to_string(&path)
                    .map_err(|e| anyhow::anyhow!("SAGAPAY_SERVICE_SIGNING_KEY_FILE {path}: {e}"))?,
            ),
            (None, None) => match environment {
                Environment::Development => return Ok(Self::development(service)),
                Environment::Production => anyhow::bail!(
                    "SAGAPAY_SERVICE_SIGNING_KEY (or SAGAPAY_SERVICE_SIGNING_KEY_FILE) must be set in production: `sagapayctl service-key generate` makes one"
                ),
            },
        };
        let signer = Self::from_seed(service, raw.expose_secret().trim())
            .map_err(|e| anyhow::anyhow!("SAGAPAY_SERVICE_SIGNING_KEY: {e}"))?;
        if environment == Environment::Production && signer.development {
            anyhow::bail!("SAGAPAY_SERVICE_SIGNING_KEY is the development key of {service}: production needs a key of its own");
        }
        Ok(signer)
    }

    /// `service` signing with the key whose 32-byte seed is `seed_base64`.
    pub fn from_seed(service: &str, seed_base64: &str) -> anyhow::Result<Self> {
        let seed: [u8; 32] = b64()
            .decode(seed_base64)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| anyhow::anyhow!("not the base64 of a 32-byte Ed25519 seed"))?;
        let key = SigningKey::from_bytes(&seed);
        Ok(Self {
            caller: service.to_owned(),
            development: key.to_bytes() == development_key(service).to_bytes(),
            key: Arc::new(key),
        })
    }

    /// `service` signing with its development key.
    pub fn development(service: &str) -> Self {
        Self {
            caller: service.to_owned(),
            key: Arc::new(development_key(service)),
            development: true,
        }
    }

    pub fn caller(&self) -> &str {
        &self.caller
    }

    /// The public key receivers list for this signer (base64).
    pub fn public_key(&self) -> String {
        b64().encode(self.key.verifying_key().to_bytes())
    }

    /// The headers that make a request verifiable, signed at `now_unix` with a fresh nonce.
    pub fn sign(
        &self,
        audience: &str,
        method: &str,
        path_and_query: &str,
        merchant: Option<Uuid>,
        body: &[u8],
        now_unix: i64,
    ) -> [(&'static str, String); 5] {
        let nonce = Uuid::new_v4().simple().to_string();
        self.sign_with_nonce(
            audience,
            method,
            path_and_query,
            merchant,
            body,
            now_unix,
            &nonce,
        )
    }

    /// [`ServiceSigner::sign`] with a given nonce (tests forge replays with it).
    #[allow(clippy::too_many_arguments)]
    pub fn sign_with_nonce(
        &self,
        audience: &str,
        method: &str,
        path_and_query: &str,
        merchant: Option<Uuid>,
        body: &[u8],
        now_unix: i64,
        nonce: &str,
    ) -> [(&'static str, String); 5] {
        let merchant_text = merchant.map(|m| m.to_string()).unwrap_or_default();
        let text = signed_text(
            audience,
            &self.caller,
            now_unix,
            nonce,
            method,
            path_and_query,
            &merchant_text,
            body,
        );
        let signature = self.key.sign(text.as_bytes());
        [
            (CALLER, self.caller.clone()),
            (MERCHANT, merchant_text),
            (TIMESTAMP, now_unix.to_string()),
            (NONCE, nonce.to_owned()),
            (
                SIGNATURE,
                format!("v3={}", b64().encode(signature.to_bytes())),
            ),
        ]
    }
}

/// Makes a new signing key: `(seed, public key)`, both base64.
pub fn generate_key_pair() -> anyhow::Result<(String, String)> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    Ok((
        b64().encode(seed),
        b64().encode(key.verifying_key().to_bytes()),
    ))
}

/// The services a receiver accepts calls from, and the public keys of each.
#[derive(Clone, Debug)]
pub struct TrustedCallers(Arc<BTreeMap<String, Vec<VerifyingKey>>>);

impl TrustedCallers {
    /// `SAGAPAY_TRUSTED_CALLERS` (`gateway=<key>[ <key>],<service>=...`), the development
    /// keys of `default_callers` when unset in development.
    pub fn from_env(environment: Environment, default_callers: &[&str]) -> anyhow::Result<Self> {
        let raw = crate::config::env_or("SAGAPAY_TRUSTED_CALLERS", "");
        if raw.trim().is_empty() {
            return match environment {
                Environment::Development => Ok(Self::development(default_callers)),
                Environment::Production => anyhow::bail!(
                    "SAGAPAY_TRUSTED_CALLERS must be set in production (the public keys of the services that call this one, gateway=<key>)"
                ),
            };
        }
        let callers =
            Self::parse(&raw).map_err(|e| anyhow::anyhow!("SAGAPAY_TRUSTED_CALLERS: {e}"))?;
        if environment == Environment::Production {
            for (caller, keys) in callers.0.iter() {
                let dev = development_key(caller).verifying_key();
                anyhow::ensure!(
                    !keys.contains(&dev),
                    "SAGAPAY_TRUSTED_CALLERS trusts the development key of {caller}: production needs its own"
                );
            }
        }
        Ok(callers)
    }

    /// `gateway=<base64 key>[ <base64 key>],<service>=...`
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut map: BTreeMap<String, Vec<VerifyingKey>> = BTreeMap::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (caller, keys) = entry
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("{entry:?} is not <service>=<public key>"))?;
            let caller = caller.trim();
            anyhow::ensure!(!caller.is_empty(), "{entry:?} names no service");
            for key in keys.split_whitespace() {
                let bytes: [u8; 32] = b64()
                    .decode(key)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!("{caller}: {key:?} is not a base64 Ed25519 public key")
                    })?;
                let key = VerifyingKey::from_bytes(&bytes).map_err(|_| {
                    anyhow::anyhow!("{caller}: {key:?} is not an Ed25519 public key")
                })?;
                map.entry(caller.to_owned()).or_default().push(key);
            }
            anyhow::ensure!(
                map.get(caller).is_some_and(|k| !k.is_empty()),
                "{caller} has no key"
            );
        }
        anyhow::ensure!(!map.is_empty(), "no service is trusted");
        Ok(Self(Arc::new(map)))
    }

    /// The development keys of `callers`.
    pub fn development(callers: &[&str]) -> Self {
        Self(Arc::new(
            callers
                .iter()
                .map(|c| ((*c).to_owned(), vec![development_key(c).verifying_key()]))
                .collect(),
        ))
    }

    /// Checks a request's credential (not yet its nonce: see [`NonceStore`]).
    pub fn verify(
        &self,
        audience: &str,
        headers: &axum::http::HeaderMap,
        method: &str,
        path_and_query: &str,
        body: &[u8],
        now_unix: i64,
    ) -> Result<Verified, CredentialError> {
        // A credential header given twice is ambiguous (a proxy may read the other one).
        if [CALLER, MERCHANT, TIMESTAMP, NONCE, SIGNATURE]
            .iter()
            .any(|name| headers.get_all(*name).iter().count() > 1)
        {
            return Err(CredentialError::Invalid);
        }
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let (Some(caller), Some(timestamp), Some(nonce), Some(signature)) =
            (get(CALLER), get(TIMESTAMP), get(NONCE), get(SIGNATURE))
        else {
            return Err(CredentialError::Missing);
        };
        let merchant_text = get(MERCHANT).unwrap_or_default();
        let timestamp: i64 = timestamp.parse().map_err(|_| CredentialError::Invalid)?;
        if (now_unix - timestamp).abs() > WINDOW_S {
            return Err(CredentialError::Expired);
        }
        if nonce.len() != 32 || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CredentialError::Invalid);
        }
        let signature: [u8; 64] = signature
            .strip_prefix("v3=")
            .and_then(|s| b64().decode(s).ok())
            .and_then(|b| b.try_into().ok())
            .ok_or(CredentialError::Invalid)?;
        let signature = ed25519_dalek::Signature::from_bytes(&signature);
        let keys = self.0.get(caller).ok_or(CredentialError::Invalid)?;
        let text = signed_text(
            audience,
            caller,
            timestamp,
            nonce,
            method,
            path_and_query,
            merchant_text,
            body,
        );
        if !keys
            .iter()
            .any(|k| k.verify(text.as_bytes(), &signature).is_ok())
        {
            return Err(CredentialError::Invalid);
        }
        let merchant = match merchant_text {
            "" => None,
            m => Some(Uuid::parse_str(m).map_err(|_| CredentialError::Invalid)?),
        };
        Ok(Verified {
            caller: VerifiedCaller {
                caller: caller.to_owned(),
                merchant,
            },
            nonce: nonce.to_ascii_lowercase(),
        })
    }
}

/// A credential that verified, with the nonce to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub caller: VerifiedCaller,
    pub nonce: String,
}

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

#[allow(clippy::too_many_arguments)]
fn signed_text(
    audience: &str,
    caller: &str,
    timestamp: i64,
    nonce: &str,
    method: &str,
    path_and_query: &str,
    merchant: &str,
    body: &[u8],
) -> String {
    format!(
        "v3\n{audience}\n{caller}\n{timestamp}\n{nonce}\n{}\n{path_and_query}\n{merchant}\n{}",
        method.to_ascii_uppercase(),
        hex::encode(Sha256::digest(body))
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("missing service credential (sagapay-caller, sagapay-timestamp, sagapay-nonce, sagapay-signature)")]
    Missing,
    #[error("service credential outside its time window: check the caller's clock")]
    Expired,
    #[error("invalid service credential")]
    Invalid,
    #[error("this service credential was used before: a request is accepted once")]
    Replayed,
}

impl From<CredentialError> for ApiError {
    fn from(e: CredentialError) -> Self {
        let code = match e {
            CredentialError::Missing => "service_credential_missing",
            CredentialError::Expired => "service_credential_expired",
            CredentialError::Invalid => "service_credential_invalid",
            CredentialError::Replayed => "service_credential_replayed",
        };
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::AuthenticationError,
            code,
            e.to_string(),
        )
    }
}

/// Where a receiver remembers the nonces it accepted: its own database
/// (`service_request_nonces`), so every instance of the receiver refuses a replay.
#[derive(Clone)]
pub struct NonceStore {
    pool: PgPool,
    verified: Arc<AtomicU64>,
}

impl NonceStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            verified: Arc::default(),
        }
    }

    /// Records the nonce; false when it was recorded before (a replay).
    pub async fn first_use(&self, caller: &str, nonce: &str) -> sqlx::Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO service_request_nonces (caller, nonce) VALUES ($1, $2)
             ON CONFLICT DO NOTHING",
        )
        .bind(caller)
        .bind(nonce)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if self
            .verified
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(NONCE_SWEEP_EVERY)
        {
            sqlx::query(
                "DELETE FROM service_request_nonces WHERE seen_at < now() - make_interval(secs => $1)",
            )
            .bind(NONCE_RETENTION.as_secs_f64())
            .execute(&self.pool)
            .await?;
        }
        Ok(inserted == 1)
    }
}

/// What [`require_service_credential`] checks against.
#[derive(Clone)]
struct Policy {
    trusted: TrustedCallers,
    nonces: NonceStore,
    callers: &'static [&'static str],
    /// The receiving service, whose name every credential it accepts is signed for.
    audience: &'static str,
}

/// `router`'s routes of service `audience`, each requiring a valid credential of one of
/// `callers` signed for `audience`, used once (401 without one, or for a replay; 403 for
/// another service). The handler finds the [`VerifiedCaller`] in the request's extensions.
pub fn require_service_credential<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    trusted: TrustedCallers,
    nonces: NonceStore,
    callers: &'static [&'static str],
    audience: &'static str,
) -> Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(
        Policy {
            trusted,
            nonces,
            callers,
            audience,
        },
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
    let verified = match policy.trusted.verify(
        policy.audience,
        &parts.headers,
        parts.method.as_str(),
        path_and_query,
        &bytes,
        now,
    ) {
        Ok(v) => v,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if !policy.callers.contains(&verified.caller.caller.as_str()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorType::AuthenticationError,
            "caller_not_allowed",
            format!("service {} may not call this route", verified.caller.caller),
        )
        .into_response();
    }
    match policy
        .nonces
        .first_use(&verified.caller.caller, &verified.nonce)
        .await
    {
        Ok(true) => {}
        Ok(false) => return ApiError::from(CredentialError::Replayed).into_response(),
        Err(e) => return ApiError::from(e).into_response(),
    }
    parts.extensions.insert(verified.caller);
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn headers(signed: [(&'static str, String); 5]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in signed {
            h.insert(k, HeaderValue::from_str(&v).unwrap());
        }
        h
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_signed_request_verifies_and_any_change_breaks_it() {
        let (seed, public) = generate_key_pair().unwrap();
        let gateway = ServiceSigner::from_seed("gateway", &seed).unwrap();
        assert_eq!(gateway.public_key(), public);
        let trusted = TrustedCallers::parse(&format!("gateway={public}")).unwrap();
        let m = Uuid::now_v7();
        let h = headers(gateway.sign(
            "orchestrator",
            "POST",
            "/internal/payments",
            Some(m),
            b"{}",
            NOW,
        ));
        let verified = trusted
            .verify(
                "orchestrator",
                &h,
                "POST",
                "/internal/payments",
                b"{}",
                NOW + 59,
            )
            .unwrap();
        assert_eq!(
            verified.caller,
            VerifiedCaller {
                caller: "gateway".into(),
                merchant: Some(m)
            }
        );
        // Signed for the orchestrator, it is no credential at the notification service.
        assert_eq!(
            trusted.verify("notification", &h, "POST", "/internal/payments", b"{}", NOW),
            Err(CredentialError::Invalid)
        );
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
        let stranger =
            TrustedCallers::parse(&format!("gateway={}", generate_key_pair().unwrap().1)).unwrap();
        use CredentialError::{Expired, Invalid, Missing};
        let merchant_changed = changed(MERCHANT, &other_merchant, false);
        let merchant_twice = changed(MERCHANT, &other_merchant, true);
        let caller_changed = changed(CALLER, "risk", false);
        let nonce_changed = changed(NONCE, &Uuid::new_v4().simple().to_string(), false);
        let p = "/internal/payments";
        // (what, verifier, headers, method, path and query, body, now, expected)
        #[rustfmt::skip]
        let cases = [
            ("body", &trusted, &h, "POST", p, "{ }", NOW, Invalid),
            ("query", &trusted, &h, "POST", "/internal/payments?x=1", "{}", NOW, Invalid),
            ("method", &trusted, &h, "PUT", p, "{}", NOW, Invalid),
            ("merchant", &trusted, &merchant_changed, "POST", p, "{}", NOW, Invalid),
            ("merchant twice", &trusted, &merchant_twice, "POST", p, "{}", NOW, Invalid),
            ("caller", &trusted, &caller_changed, "POST", p, "{}", NOW, Invalid),
            ("nonce", &trusted, &nonce_changed, "POST", p, "{}", NOW, Invalid),
            ("key", &stranger, &h, "POST", p, "{}", NOW, Invalid),
            ("late", &trusted, &h, "POST", p, "{}", NOW + 61, Expired),
            ("early", &trusted, &h, "POST", p, "{}", NOW - 61, Expired),
            ("no headers", &trusted, &HeaderMap::new(), "POST", p, "{}", NOW, Missing),
        ];
        for (what, verifier, headers, method, path, body, now, expected) in cases {
            assert_eq!(
                verifier.verify("orchestrator", headers, method, path, body.as_bytes(), now),
                Err(expected),
                "{what}"
            );
        }
    }

    /// A receiver holds public keys only: it can check the gateway's requests but not make
    /// one. Another service signing with its own key cannot pass as the gateway, however it
    /// names itself.
    #[test]
    fn a_service_signs_only_as_itself() {
        let gateway = ServiceSigner::development("gateway");
        let orchestrator = ServiceSigner::development("orchestrator");
        let trusted = TrustedCallers::development(&["gateway"]);
        let forged = {
            let mut h = headers(orchestrator.sign("orchestrator", "POST", "/p", None, b"", NOW));
            h.insert(CALLER, HeaderValue::from_static("gateway"));
            h
        };
        assert_eq!(
            trusted.verify("orchestrator", &forged, "POST", "/p", b"", NOW),
            Err(CredentialError::Invalid)
        );
        let own = headers(gateway.sign("orchestrator", "POST", "/p", None, b"", NOW));
        assert!(trusted
            .verify("orchestrator", &own, "POST", "/p", b"", NOW)
            .is_ok());
    }

    #[test]
    fn during_a_rotation_both_keys_verify() {
        let (old_seed, old) = generate_key_pair().unwrap();
        let (new_seed, new) = generate_key_pair().unwrap();
        let both = TrustedCallers::parse(&format!("gateway={new} {old}")).unwrap();
        let only_new = TrustedCallers::parse(&format!("gateway={new}")).unwrap();
        for seed in [&old_seed, &new_seed] {
            let h = headers(ServiceSigner::from_seed("gateway", seed).unwrap().sign(
                "orchestrator",
                "GET",
                "/p",
                None,
                b"",
                NOW,
            ));
            assert!(both
                .verify("orchestrator", &h, "GET", "/p", b"", NOW)
                .is_ok());
        }
        let h = headers(
            ServiceSigner::from_seed("gateway", &old_seed)
                .unwrap()
                .sign("orchestrator", "GET", "/p", None, b"", NOW),
        );
        assert!(only_new
            .verify("orchestrator", &h, "GET", "/p", b"", NOW)
            .is_err());
        let shown = format!(
            "{:?}",
            ServiceSigner::from_seed("gateway", &old_seed).unwrap()
        );
        assert!(
            !shown.contains(&old_seed) && shown.contains("REDACTED"),
            "{shown}"
        );
    }

    #[test]
    fn trusted_callers_parse_or_say_why_not() {
        let (_, key) = generate_key_pair().unwrap();
        assert!(TrustedCallers::parse(&format!("gateway={key}, risk={key} {key}")).is_ok());
        for bad in ["", "gateway", "gateway=", "=abc", "gateway=bm90LWEta2V5"] {
            assert!(TrustedCallers::parse(bad).is_err(), "{bad:?}");
        }
    }
}
