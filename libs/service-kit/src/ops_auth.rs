//! The ops credential: what operators' routes (review decisions, payment operations) require,
//! in header `x-ops-key` (`x-api-key` is accepted for clients of the seed system). It is not a
//! merchant key, and the gateway refuses it.
//!
//! Keys are compared as SHA-256 digests in constant time, so neither the key nor its length
//! leaks through timing. In development the key defaults to `dev-ops-secret`; in production it
//! must be set to a secret of at least 16 characters (and not that one).

use crate::api_error::ApiError;
use crate::config::{env_or, Environment};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use secrecy::{ExposeSecret, SecretString};
use std::sync::Arc;

pub const DEV_OPS_KEY: &str = "dev-ops-secret";

/// The ops key of this deployment (a `secrecy` secret: never printed, wiped when dropped).
#[derive(Clone, Debug)]
pub struct OpsKey(Arc<SecretString>);

impl OpsKey {
    /// `SAGAPAY_OPS_KEY`, checked for `environment`.
    pub fn from_env(environment: Environment) -> anyhow::Result<Self> {
        match environment {
            Environment::Development => Ok(Self::new(&env_or("SAGAPAY_OPS_KEY", DEV_OPS_KEY))),
            Environment::Production => {
                let key = env_or("SAGAPAY_OPS_KEY", "");
                anyhow::ensure!(
                    key.len() >= 16 && key != DEV_OPS_KEY,
                    "SAGAPAY_OPS_KEY must be set to a secret of at least 16 characters in production"
                );
                Ok(Self::new(&key))
            }
        }
    }

    pub fn new(key: &str) -> Self {
        Self(Arc::new(SecretString::from(key)))
    }

    /// The development key, for tests.
    pub fn development() -> Self {
        Self::new(DEV_OPS_KEY)
    }

    /// The key itself, for a service that calls ops routes on an operator's behalf (the
    /// console): never shown to the operator.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether `given` is this key (compared as digests, in constant time).
    pub fn matches(&self, given: &str) -> bool {
        crate::constant_time::secret_matches(given, self.0.expose_secret())
    }
}

/// `router`'s routes, each requiring the ops key (401 in the one error shape otherwise).
pub fn require_ops_key<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    key: OpsKey,
) -> Router<S> {
    router.route_layer(axum::middleware::from_fn_with_state(key, check))
}

async fn check(State(key): State<OpsKey>, req: Request, next: Next) -> Response {
    let given = ["x-ops-key", "x-api-key"]
        .iter()
        .find_map(|h| req.headers().get(*h))
        .and_then(|v| v.to_str().ok());
    match given {
        Some(k) if key.matches(k) => next.run(req).await,
        Some(_) => ApiError::unauthorized("invalid ops key").into_response(),
        None => ApiError::unauthorized("missing x-ops-key header").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_themselves() {
        let key = OpsKey::new("a-long-enough-secret");
        assert!(key.matches("a-long-enough-secret"));
        assert!(!key.matches("a-long-enough-secreT"));
        assert!(!key.matches(""));
        let shown = format!("{key:?}");
        assert!(
            !shown.contains("a-long-enough") && shown.contains("REDACTED"),
            "{shown}"
        );
    }
}
