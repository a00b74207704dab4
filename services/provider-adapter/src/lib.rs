//! The provider adapter turns the orchestrator's provider commands (authorize, capture, void,
//! refund) into calls to a payment provider behind the [`provider::PaymentProvider`] port.
//!
//! A command's handler only schedules the operation (one row per payment and operation, in
//! its inbox transaction); the [`worker`] performs due operations with a timeout, retries
//! timeouts on a back-off schedule, persists every attempt, and reports the outcome as an event.

pub mod provider;
pub mod worker;

use anyhow::anyhow;
use prometheus::{IntCounterVec, Opts};
use provider::{PaymentProvider, SimulatedProvider};
use sagapay_domain::events::{
    AuthorizeRequested, CaptureRequested, ProviderOperation, RefundRequested, VoidRequested,
};
use sagapay_domain::{Envelope, EventType};
use sagapay_messaging::{Classification, Handler, HandlerError, MessageContext};
use sagapay_service_kit::config::env_parse;
use sagapay_service_kit::{CommonConfig, Platform, ServiceHandle};
use sqlx::PgConnection;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;
use worker::{OperationRequest, RetrySettings, Worker};

pub const SERVICE: &str = "provider-adapter";
pub const DEFAULT_PORT: u16 = 8003;
pub const CONSUMES: &[EventType] = &[
    EventType::AuthorizeRequested,
    EventType::CaptureRequested,
    EventType::VoidRequested,
    EventType::RefundRequested,
];
pub const PRODUCES: &[EventType] = &[
    EventType::PaymentAuthorized,
    EventType::PaymentFailed,
    EventType::PaymentCaptured,
    EventType::PaymentReversed,
    EventType::PaymentRefunded,
    EventType::ProviderRetriesExhausted,
];

mod embedded {
    refinery::embed_migrations!("../../migrations/provider-adapter");
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub retry: RetrySettings,
    /// How long the simulated provider's `pm_card_slow` takes.
    pub simulated_slow_delay: Duration,
}

impl Config {
    /// | variable | default |
    /// |---|---|
    /// | `SAGAPAY_PROVIDER_TIMEOUT_MS` | 2000 |
    /// | `SAGAPAY_PROVIDER_BACKOFF_MS` | `1000,2000,4000` (attempts = entries + 1) |
    /// | `SAGAPAY_PROVIDER_SLOW_MS` | 500 |
    /// | `SAGAPAY_PROVIDER_CLAIM_TIMEOUT_MS` | 60000 (a crashed worker's operations are taken over after this) |
    pub fn from_env() -> anyhow::Result<Self> {
        let d = RetrySettings::default();
        let backoff = match std::env::var("SAGAPAY_PROVIDER_BACKOFF_MS") {
            Ok(v) if !v.is_empty() => v
                .split(',')
                .map(|ms| ms.trim().parse::<u64>().map(Duration::from_millis))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow!("SAGAPAY_PROVIDER_BACKOFF_MS={v:?}: {e}"))?,
            _ => d.backoff.clone(),
        };
        Ok(Self {
            common: CommonConfig::from_env(SERVICE, DEFAULT_PORT)?,
            retry: RetrySettings {
                call_timeout: Duration::from_millis(env_parse(
                    "SAGAPAY_PROVIDER_TIMEOUT_MS",
                    2000,
                )?),
                backoff,
                ..d
            },
            simulated_slow_delay: Duration::from_millis(env_parse(
                "SAGAPAY_PROVIDER_SLOW_MS",
                500,
            )?),
        })
    }

    pub fn for_test(common: CommonConfig) -> Self {
        Self {
            common,
            retry: RetrySettings {
                // Generous enough that a loaded test machine does not time out a healthy call.
                call_timeout: Duration::from_millis(1000),
                ..RetrySettings::default()
            },
            simulated_slow_delay: Duration::from_millis(200),
        }
    }
}

/// Schedules the operation a command asks for. Idempotent: one operation per payment and kind.
struct CommandHandler;

impl CommandHandler {
    async fn schedule(
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        operation: ProviderOperation,
        operation_key: String,
        request: OperationRequest,
    ) -> Result<(), HandlerError> {
        let inserted = sqlx::query(
            "INSERT INTO provider_operations (operation_id, payment_id, operation, request,
                                              source_event_id, correlation_id, headers,
                                              source_envelope, source_topic, source_partition, source_offset,
                                              operation_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (payment_id, operation, operation_key) DO NOTHING",
        )
        .bind(Uuid::now_v7())
        .bind(env.payment_id)
        .bind(operation.as_str())
        .bind(sqlx::types::Json(&request))
        .bind(env.event_id)
        .bind(&env.correlation_id)
        .bind(sqlx::types::Json(ctx.headers.propagated()))
        .bind(sqlx::types::Json(env))
        .bind(&ctx.topic)
        .bind(ctx.partition)
        .bind(ctx.offset)
        .bind(operation_key)
        .execute(conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            tracing::info!(payment_id = %env.payment_id, operation = operation.as_str(),
                "operation already scheduled for this payment; command ignored");
        }
        Ok(())
    }
}

impl Handler for CommandHandler {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let mut key = String::new();
        let (operation, request) = match env.event_type() {
            Some(EventType::AuthorizeRequested) => {
                let c: AuthorizeRequested = env.decode()?;
                (
                    ProviderOperation::Authorize,
                    OperationRequest {
                        amount_minor: c.amount_minor,
                        currency: c.currency,
                        payment_method: c.payment_method.into(),
                        reference: None,
                        reason: None,
                    },
                )
            }
            Some(EventType::CaptureRequested) => {
                let c: CaptureRequested = env.decode()?;
                (
                    ProviderOperation::Capture,
                    OperationRequest {
                        amount_minor: c.amount_minor,
                        currency: c.currency,
                        payment_method: String::new(),
                        reference: Some(c.authorization_id),
                        reason: None,
                    },
                )
            }
            Some(EventType::VoidRequested) => {
                let c: VoidRequested = env.decode()?;
                (
                    ProviderOperation::Void,
                    OperationRequest {
                        amount_minor: c.amount_minor,
                        currency: c.currency,
                        payment_method: String::new(),
                        reference: c.authorization_id,
                        reason: Some(c.reason),
                    },
                )
            }
            Some(EventType::RefundRequested) => {
                let c: RefundRequested = env.decode()?;
                key = c.refund_id.map(|id| id.to_string()).unwrap_or_default();
                (
                    ProviderOperation::Refund,
                    OperationRequest {
                        amount_minor: c.amount_minor,
                        currency: c.currency,
                        payment_method: String::new(),
                        reference: Some(c.capture_id),
                        reason: Some(c.reason),
                    },
                )
            }
            _ => {
                return Err(HandlerError::permanent(anyhow!(
                    "provider-adapter does not handle {}",
                    env.event_type
                )))
            }
        };
        Self::schedule(conn, env, ctx, operation, key, request).await
    }
}

/// Starts the adapter with the simulated provider.
pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    start_with(config, |pool, cfg| {
        SimulatedProvider::new(pool, cfg.simulated_slow_delay)
    })
    .await
}

/// Starts the adapter with the provider `make_provider` builds (from the service's pool).
pub async fn start_with<P, F>(config: Config, make_provider: F) -> anyhow::Result<ServiceHandle>
where
    P: PaymentProvider,
    F: FnOnce(sqlx::PgPool, &Config) -> P,
{
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner(),
        CONSUMES,
        PRODUCES,
    )
    .await?;
    let retries_total = IntCounterVec::new(
        Opts::new(
            "retries_total",
            "Provider attempts that failed and were rescheduled",
        ),
        &["operation"],
    )?;
    platform
        .registry
        .register(Box::new(retries_total.clone()))?;
    for operation in [
        ProviderOperation::Authorize,
        ProviderOperation::Capture,
        ProviderOperation::Void,
        ProviderOperation::Refund,
    ] {
        retries_total
            .with_label_values(&[operation.as_str()])
            .inc_by(0);
    }
    let mut builder = platform.builder();
    platform.spawn_relay(&mut builder);
    platform.spawn_consumer(&mut builder, Arc::new(CommandHandler), CONSUMES)?;
    let worker = Arc::new(Worker {
        pool: platform.pool.clone(),
        provider: Arc::new(make_provider(platform.pool.clone(), &config)),
        outbox: platform.outbox.clone(),
        settings: config.retry.clone(),
        retries_total,
        dead_letters_total: platform
            .messaging_metrics
            .dlq_published_total
            .with_label_values(&[Classification::RetryExhausted.as_str()]),
        messaging_metrics: platform.messaging_metrics.clone(),
    });
    builder.spawn("provider-worker", move |shutdown| worker.run(shutdown));
    let router = platform.router(axum::Router::new());
    builder.serve(config.common.http_addr, router).await
}
