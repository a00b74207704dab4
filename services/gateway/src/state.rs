//! What every public handler is given: the key store, the rate limits, the idempotency cache
//! and the clients of the services the gateway calls.

use crate::auth::KeyStore;
use crate::idempotency::IdempotencyCache;
use sagapay_service_kit::ServiceSigner;
use sqlx::PgPool;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub client: reqwest::Client,
    pub orchestrator_url: String,
    pub notification_url: String,
    /// The gateway's own key: its calls to other services are signed with it.
    pub signer: ServiceSigner,
    pub max_amount: sagapay_domain::PerCurrency,
    pub rate_limit: std::sync::Arc<crate::ratelimit::RateLimit>,
    pub key_cache: std::sync::Arc<crate::keycache::KeyCache<crate::auth::Merchant>>,
    pub lookup_budget: std::sync::Arc<crate::ratelimit::RateLimit<std::net::IpAddr>>,
    pub production: bool,
    pub idempotency: std::sync::Arc<IdempotencyCache>,
    /// Refuses new payments here for a moment after the orchestrator said `overloaded`.
    pub shedding: std::sync::Arc<crate::shedding::Shedding>,
}

impl KeyStore for AppState {
    fn key_pool(&self) -> &PgPool {
        &self.pool
    }
    fn rate_limit(&self) -> &crate::ratelimit::RateLimit {
        &self.rate_limit
    }
    fn key_cache(&self) -> &crate::keycache::KeyCache<crate::auth::Merchant> {
        &self.key_cache
    }
    fn lookup_budget(&self) -> &crate::ratelimit::RateLimit<std::net::IpAddr> {
        &self.lookup_budget
    }
    fn production(&self) -> bool {
        self.production
    }
}
