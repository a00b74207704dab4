//! Notification tells merchants what happened to their payments. For every payment that
//! reached a terminal state it records, in the inbox transaction: the notification row (one
//! per payment and outcome), the merchant event merchants read from `GET /events`, and one
//! webhook delivery per endpoint subscribed to it (`events`). The dispatcher sends the
//! deliveries, signed (`signature`), to destinations the environment allows
//! (`destination`), retrying with backoff (`dispatcher`); the internal API serves endpoints,
//! deliveries and events to the gateway (`api`).

use anyhow::anyhow;
use sagapay_domain::events::PaymentFinalized;
use sagapay_domain::{Envelope, EventType};
use sagapay_messaging::{Handler, HandlerError, MessageContext};
use sagapay_service_kit::config::{env_ms, env_or, env_parse};
use sagapay_service_kit::{
    CommonConfig, Environment, NonceStore, Platform, ServiceHandle, TrustedCallers,
};
use serde_json::json;
use sqlx::PgConnection;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub mod api;
pub mod client;
pub mod destination;
pub mod dispatcher;
pub mod events;
pub mod ops;
pub mod signature;

pub const SERVICE: &str = "notification";
pub const DEFAULT_PORT: u16 = 8005;
pub const CONSUMES: &[EventType] = &[
    EventType::PaymentFinalized,
    EventType::PaymentAwaitingCapture,
    EventType::RefundSucceeded,
    EventType::RefundFailed,
];

mod embedded {
    refinery::embed_migrations!("../../migrations/notification");
}

/// How webhooks are sent.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `SAGAPAY_WEBHOOK_TIMEOUT_MS` (10,000): longest wait for a receiver's answer.
    pub timeout: Duration,
    /// `SAGAPAY_WEBHOOK_RETRY_INITIAL_MS` (60,000), doubled per failure up to
    /// `SAGAPAY_WEBHOOK_RETRY_MAX_MS` (6 hours).
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// `SAGAPAY_WEBHOOK_RETRY_FOR_MS` (3 days): no retry later than this after the event.
    pub retry_for: Duration,
    /// `SAGAPAY_WEBHOOK_DISABLE_AFTER_MS` (3 days): an endpoint without a success for this long
    /// is disabled.
    pub disable_after: Duration,
    /// `SAGAPAY_WEBHOOK_ENDPOINT_CONCURRENCY` (4): deliveries in flight per endpoint.
    pub endpoint_concurrency: usize,
    /// `SAGAPAY_WEBHOOK_MERCHANT_CONCURRENCY` (16): deliveries in flight per merchant, all its
    /// endpoints together (a quarter of an instance's `in_flight`).
    pub merchant_concurrency: usize,
    /// `SAGAPAY_WEBHOOK_CA_FILE`: a PEM bundle of CAs trusted besides the public roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Deliveries in flight in all, per instance.
    pub in_flight: usize,
    /// How often due retries are looked for when nothing wakes the dispatcher.
    pub poll_interval: Duration,
    /// `SAGAPAY_EVENT_RETENTION_DAYS` (30): how long events (and their deliveries) are kept.
    pub event_retention: Duration,
    /// Production: https to public addresses only.
    pub policy: destination::Policy,
}

impl WebhookSettings {
    fn from_env(environment: Environment) -> anyhow::Result<Self> {
        let ms = |name: &str, default_ms: u64| env_ms(name, Duration::from_millis(default_ms));
        Ok(Self {
            timeout: ms("SAGAPAY_WEBHOOK_TIMEOUT_MS", 10_000)?,
            retry_initial: ms("SAGAPAY_WEBHOOK_RETRY_INITIAL_MS", 60_000)?,
            retry_max: ms("SAGAPAY_WEBHOOK_RETRY_MAX_MS", 6 * 3_600_000)?,
            retry_for: ms("SAGAPAY_WEBHOOK_RETRY_FOR_MS", 3 * 86_400_000)?,
            disable_after: ms("SAGAPAY_WEBHOOK_DISABLE_AFTER_MS", 3 * 86_400_000)?,
            endpoint_concurrency: env_parse("SAGAPAY_WEBHOOK_ENDPOINT_CONCURRENCY", 4usize)?.max(1),
            merchant_concurrency: env_parse("SAGAPAY_WEBHOOK_MERCHANT_CONCURRENCY", 16usize)?
                .max(1),
            ca_file: Some(env_or("SAGAPAY_WEBHOOK_CA_FILE", ""))
                .filter(|f| !f.is_empty())
                .map(std::path::PathBuf::from),
            in_flight: 64,
            poll_interval: Duration::from_secs(1),
            event_retention: Duration::from_secs(
                86_400 * env_parse("SAGAPAY_EVENT_RETENTION_DAYS", 30u64)?,
            ),
            policy: policy_of(environment, &env_or("SAGAPAY_WEBHOOK_ALLOWED_NETWORKS", ""))?,
        })
    }

    /// Short retries for tests; the development destination policy.
    pub fn for_test() -> Self {
        Self {
            timeout: Duration::from_secs(2),
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(1),
            retry_for: Duration::from_secs(60),
            disable_after: Duration::from_secs(3600),
            endpoint_concurrency: 4,
            merchant_concurrency: 16,
            ca_file: None,
            in_flight: 64,
            poll_interval: Duration::from_millis(100),
            event_retention: Duration::from_secs(30 * 86_400),
            policy: destination::Policy::Any,
        }
    }
}

/// The destinations webhooks may go to: anything in development; in production https to
/// public addresses, and to the networks of `allowed` (CIDRs, comma separated) besides.
fn policy_of(environment: Environment, allowed: &str) -> anyhow::Result<destination::Policy> {
    Ok(match environment {
        Environment::Development => destination::Policy::Any,
        Environment::Production => destination::Policy::PublicHttps {
            also: allowed
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(|n| {
                    n.parse()
                        .map_err(|e| anyhow::anyhow!("SAGAPAY_WEBHOOK_ALLOWED_NETWORKS {n:?}: {e}"))
                })
                .collect::<anyhow::Result<_>>()?,
        },
    })
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// The services allowed to call the internal API, and their keys (`SAGAPAY_TRUSTED_CALLERS`).
    pub trusted_callers: TrustedCallers,
    pub webhooks: WebhookSettings,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let common = CommonConfig::from_env(SERVICE, DEFAULT_PORT)?;
        Ok(Self {
            trusted_callers: TrustedCallers::from_env(common.environment, api::CALLERS)?,
            webhooks: WebhookSettings::from_env(common.environment)?,
            common,
        })
    }

    pub fn for_test(common: CommonConfig) -> Self {
        Self {
            webhooks: WebhookSettings {
                policy: policy_of(common.environment, "").expect("no network to parse"),
                ..WebhookSettings::for_test()
            },
            trusted_callers: TrustedCallers::development(api::CALLERS),
            common,
        }
    }
}

struct NotificationHandler;

impl Handler for NotificationHandler {
    type Prepared = ();

    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        _ctx: &MessageContext,
        _prepared: &mut (),
    ) -> Result<(), HandlerError> {
        match env.event_type() {
            Some(EventType::PaymentFinalized) => self.notify_outcome(conn, env).await?,
            Some(
                EventType::PaymentAwaitingCapture
                | EventType::RefundSucceeded
                | EventType::RefundFailed,
            ) => {}
            _ => {
                return Err(HandlerError::permanent(anyhow!(
                    "notification does not handle {}",
                    env.event_type
                )))
            }
        }
        events::record(conn, env).await?;
        Ok(())
    }
}

impl NotificationHandler {
    /// The notification row of a payment's outcome (one per payment and outcome).
    async fn notify_outcome(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
    ) -> Result<(), HandlerError> {
        let ev: PaymentFinalized = env.decode()?;
        let kind = format!("payment.{}", ev.status.as_str().to_ascii_lowercase());
        let payload = json!({
            "payment_id": env.payment_id,
            "status": ev.status,
            "amount_cents": ev.amount_minor.get(),
            "amount_captured_cents": ev.amount_captured_minor.map(|a| a.get()),
            "currency": ev.currency,
            "customer_id": ev.customer_id,
            "reason": ev.reason,
        });
        let inserted = sqlx::query(
            "INSERT INTO notifications (notification_id, payment_id, merchant_id, kind, channel, payload, event_id)
             VALUES ($1, $2, $3, $4, 'log', $5, $6)
             ON CONFLICT (payment_id, kind) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(env.payment_id)
        .bind(ev.merchant_id)
        .bind(&kind)
        .bind(&payload)
        .bind(env.event_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 1 {
            tracing::debug!(payment_id = %env.payment_id, kind = %kind, "merchant notified");
        }
        Ok(())
    }
}

pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner,
        CONSUMES,
        &[],
    )
    .await?;
    let mut builder = platform.builder();
    platform.spawn_relay(&mut builder)?;
    platform.spawn_consumer(&mut builder, Arc::new(NotificationHandler), CONSUMES)?;
    let dispatcher = dispatcher::Dispatcher {
        pool: platform.pool.clone(),
        settings: config.webhooks.clone(),
        metrics: dispatcher::WebhookMetrics::register(&platform.registry)?,
        wakeup: sagapay_messaging::wakeup::Wakeup::listen(
            &platform.pool,
            "webhook_deliveries",
            &platform.messaging_metrics,
        )
        .await,
        client: client::build(
            config.webhooks.policy.clone(),
            config.webhooks.timeout,
            config.webhooks.ca_file.as_deref(),
        )?,
    };
    builder.spawn("webhook-dispatcher", move |shutdown| {
        dispatcher.run(shutdown)
    });
    let state = api::AppState {
        pool: platform.pool.clone(),
        policy: config.webhooks.policy.clone(),
    };
    let router = platform.router(api::routes(
        state,
        config.trusted_callers.clone(),
        NonceStore::new(platform.pool.clone()),
    ));
    builder
        .serve(config.common.http_addr, config.common.tls.clone(), router)
        .await
}
