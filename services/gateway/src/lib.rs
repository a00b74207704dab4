//! The gateway is SagaPay's public edge: it authenticates merchants by API key, validates
//! requests strictly, and forwards them to the orchestrator's internal API over one pooled
//! HTTP client. It owns merchants and API keys (stored only as hashes).

pub mod auth;
pub mod idempotency;
pub mod keycache;
pub mod keys;
mod openapi;
mod peer;
pub mod ratelimit;
mod routes;
mod schemas;
pub mod shedding;
mod state;
pub mod validate;
mod webhooks;

use anyhow::Context;
use sagapay_domain::PerCurrency;
use sagapay_service_kit::config::{env_or, env_or_off, env_parse};
use sagapay_service_kit::{CommonConfig, Environment, Platform, ServiceHandle, ServiceSigner};
use secrecy::{ExposeSecret, SecretString};
use std::time::Duration;

pub const SERVICE: &str = "gateway";
pub const DEFAULT_PORT: u16 = 8000;
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

mod embedded {
    refinery::embed_migrations!("../../migrations/gateway");
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// `SAGAPAY_ORCHESTRATOR_URL`, default `http://127.0.0.1:8001`.
    pub orchestrator_url: String,
    /// `SAGAPAY_NOTIFICATION_URL` (default `http://127.0.0.1:8005`): webhooks and events.
    pub notification_url: String,
    /// `SAGAPAY_DEV_API_KEY`, default `dev-secret`: the development merchant's key, seeded only
    /// in development mode.
    pub dev_api_key: Option<SecretString>,
    /// `SAGAPAY_MAX_AMOUNT_CENTS`: the largest payment per currency, in its minor units
    /// (`USD:100000000,JPY:150000000,...`); default about $1,000,000 in each currency. A bare
    /// number is USD's, and the others follow by exponent.
    pub max_amount: PerCurrency,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// `SAGAPAY_SERVICE_CA_FILE`: the only CA trusted for https calls to other services.
    pub service_ca_file: Option<std::path::PathBuf>,
    /// `SAGAPAY_ORCHESTRATOR_TIMEOUT_MS`, default 10,000: longest wait for the orchestrator's
    /// answer before the client gets 503 (and may retry with the same idempotency key).
    pub orchestrator_timeout_ms: u64,
    /// Per API key: `SAGAPAY_RATE_LIMIT_PER_SECOND` (default 100) and
    /// `SAGAPAY_RATE_LIMIT_BURST` (default 200), per gateway instance.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// The idempotency fast path: `SAGAPAY_REDIS_URL` (default `redis://127.0.0.1:6379`; empty
    /// turns the fast path off and leaves only the durable guard).
    pub idempotency: idempotency::IdempotencySettings,
    /// The gateway's signing key (`SAGAPAY_SERVICE_SIGNING_KEY`).
    pub signer: ServiceSigner,
    /// `SAGAPAY_KEY_CACHE_TTL_MS` (default and most 1,000; 0: off): how long a key found is
    /// trusted without the database, so also how long a revoked key may still work.
    pub key_cache_ttl_ms: u64,
    /// Database lookups of keys not cached, per client address: `SAGAPAY_KEY_LOOKUPS_PER_SECOND`
    /// (default 20) with room for `SAGAPAY_KEY_LOOKUPS_BURST` (default 100) at once.
    pub key_lookups_per_second: u32,
    pub key_lookups_burst: u32,
    /// `SAGAPAY_KEY_LOOKUPS_CONCURRENT` (default 4): key lookups at once on the instance, from
    /// all addresses together; beyond it, 429 at once.
    pub key_lookups_concurrent: usize,
}

/// About $1,000,000 in each currency.
pub fn default_max_amount() -> PerCurrency {
    PerCurrency::about_usd(100_000_000)
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let common = CommonConfig::from_env(SERVICE, DEFAULT_PORT)?;
        let dev_api_key = match common.environment {
            Environment::Development => Some(SecretString::from(env_or(
                "SAGAPAY_DEV_API_KEY",
                "dev-secret",
            ))),
            Environment::Production => None,
        };
        let orchestrator_timeout_ms = env_parse("SAGAPAY_ORCHESTRATOR_TIMEOUT_MS", 10_000)?;
        Ok(Self {
            orchestrator_url: env_or("SAGAPAY_ORCHESTRATOR_URL", "http://127.0.0.1:8001"),
            notification_url: env_or("SAGAPAY_NOTIFICATION_URL", "http://127.0.0.1:8005"),
            dev_api_key,
            max_amount: PerCurrency::parse_over(
                &env_or("SAGAPAY_MAX_AMOUNT_CENTS", ""),
                &default_max_amount(),
            )
            .map_err(|e| anyhow::anyhow!("SAGAPAY_MAX_AMOUNT_CENTS: {e}"))?,
            body_limit_bytes: 16 * 1024,
            service_ca_file: sagapay_service_kit::service_client::ca_file_from_env(),
            orchestrator_timeout_ms,
            rate_limit_per_second: env_parse("SAGAPAY_RATE_LIMIT_PER_SECOND", 100)?,
            rate_limit_burst: env_parse("SAGAPAY_RATE_LIMIT_BURST", 200)?,
            idempotency: idempotency::IdempotencySettings {
                ca_file: Some(env_or("SAGAPAY_REDIS_CA_FILE", ""))
                    .filter(|f| !f.is_empty())
                    .map(Into::into),
                ..idempotency::IdempotencySettings::new(
                    env_or_off("SAGAPAY_REDIS_URL", DEFAULT_REDIS_URL),
                    Duration::from_millis(orchestrator_timeout_ms),
                )
            },
            signer: ServiceSigner::from_env(SERVICE, common.environment)?,
            key_cache_ttl_ms: env_parse("SAGAPAY_KEY_CACHE_TTL_MS", 1_000)?,
            key_lookups_per_second: env_parse("SAGAPAY_KEY_LOOKUPS_PER_SECOND", 20)?,
            key_lookups_burst: env_parse("SAGAPAY_KEY_LOOKUPS_BURST", 100)?,
            key_lookups_concurrent: env_parse("SAGAPAY_KEY_LOOKUPS_CONCURRENT", 4)?,
            common,
        })
    }

    pub fn for_test(common: CommonConfig, orchestrator_url: String) -> Self {
        Self {
            orchestrator_url,
            // Set by whoever starts the notification service beside it.
            notification_url: "http://127.0.0.1:8005".into(),
            dev_api_key: Some(SecretString::from("dev-secret")),
            max_amount: default_max_amount(),
            body_limit_bytes: 16 * 1024,
            service_ca_file: None,
            orchestrator_timeout_ms: 10_000,
            // Tests that are not about rate limits must not hit them.
            rate_limit_per_second: 100_000,
            rate_limit_burst: 100_000,
            idempotency: idempotency::IdempotencySettings::new(
                Some(DEFAULT_REDIS_URL.into()),
                Duration::from_secs(10),
            ),
            signer: ServiceSigner::development(SERVICE),
            key_cache_ttl_ms: 1_000,
            // Tests that are not about floods send many keys from one address.
            key_lookups_per_second: 100_000,
            key_lookups_burst: 100_000,
            key_lookups_concurrent: 1_000,
            common,
        }
    }
}

pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner,
        &[],
        &[],
    )
    .await?;
    if let Some(key) = &config.dev_api_key {
        anyhow::ensure!(
            config.common.environment == Environment::Development,
            "the development API key is accepted only in development mode"
        );
        auth::seed_dev_merchant(&platform.pool, key.expose_secret()).await?;
    }
    // Straight to the orchestrator and the notification service, trusting their CA alone
    // when given (`service_client`).
    let client = sagapay_service_kit::service_client::builder(config.service_ca_file.as_deref())?
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .timeout(Duration::from_millis(config.orchestrator_timeout_ms))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .context("building HTTP client")?;
    let state = state::AppState {
        pool: platform.pool.clone(),
        client,
        orchestrator_url: config.orchestrator_url.trim_end_matches('/').to_owned(),
        notification_url: config.notification_url.trim_end_matches('/').to_owned(),
        signer: config.signer.clone(),
        max_amount: config.max_amount.clone(),
        rate_limit: std::sync::Arc::new(ratelimit::RateLimit::new(
            config.rate_limit_per_second,
            config.rate_limit_burst,
        )),
        key_cache: std::sync::Arc::new(keycache::KeyCache::new(
            Duration::from_millis(config.key_cache_ttl_ms),
            config.key_lookups_concurrent,
        )),
        production: config.common.environment == Environment::Production,
        lookup_budget: std::sync::Arc::new(ratelimit::RateLimit::new(
            config.key_lookups_per_second,
            config.key_lookups_burst,
        )),
        idempotency: std::sync::Arc::new(idempotency::IdempotencyCache::new(
            config.common.namespace.as_str(),
            config.idempotency.clone(),
            &platform.registry,
        )?),
        shedding: std::sync::Arc::new(shedding::Shedding::register(&platform.registry)?),
    };
    let limits = state.rate_limit.clone();
    let budget = state.lookup_budget.clone();
    let router = platform.router(
        routes::routes(state, config.body_limit_bytes)
            .route("/openapi.json", axum::routing::get(openapi::document)),
    );
    let mut builder = platform.builder();
    builder.spawn("rate-limit-housekeeping", move |shutdown| async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Duration::from_secs(60)) => {
                    limits.shrink();
                    budget.shrink();
                }
            }
        }
    });
    builder
        .serve(config.common.http_addr, config.common.tls.clone(), router)
        .await
}
