//! The provider adapter turns the orchestrator's provider commands (authorize, capture, void,
//! refund) into calls to a payment provider behind the [`provider::PaymentProvider`] port.
//!
//! A command's handler only schedules the operation (one row per payment and operation, in
//! its inbox transaction); the [`worker`] performs due operations with a timeout, retries
//! timeouts on a back-off schedule, persists every attempt, and reports the outcome as an event.

mod dev;
pub mod policy;
pub mod provider;
pub mod records;
pub mod replies;
pub mod worker;

use anyhow::anyhow;
use prometheus::{IntCounterVec, IntGauge, Opts};
use provider::ProviderOutcome;
use provider::{Outage, PaymentProvider, SimulatedProvider};
use records::{OperationKey, OperationStatus};
use sagapay_domain::events::{
    AuthorizeRequested, CaptureRequested, ProviderOperation, RefundRequested, VoidRequested,
};
use sagapay_domain::{AmountMinor, Currency, Envelope, EventType};
use sagapay_messaging::{
    Classification, GroupCommit, Handler, HandlerError, MessageContext, Outbox,
};
use sagapay_service_kit::config::{env_ms, env_ms_list, env_parse};
use sagapay_service_kit::{CommonConfig, Environment, OpsKey, Platform, ServiceHandle};
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

/// The provider adapter's schema, for a test that uses its tables (the simulated provider's
/// books) without running the service.
pub fn migrations() -> refinery::Runner {
    embedded::migrations::runner()
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub retry: RetrySettings,
    /// How long the simulated provider's `pm_card_slow` takes.
    pub simulated_slow_delay: Duration,
    /// `SAGAPAY_OPS_KEY`: the development routes (a simulated outage) require it.
    pub ops_key: OpsKey,
}

impl Config {
    /// The adapter's settings (`SAGAPAY_PROVIDER_*`, see `docs/configuration.md`).
    pub fn from_env() -> anyhow::Result<Self> {
        let d = RetrySettings::default();
        let common = CommonConfig::from_env(SERVICE, DEFAULT_PORT)?;
        Ok(Self {
            ops_key: OpsKey::from_env(common.environment)?,
            common,
            retry: RetrySettings {
                call_timeout: env_ms("SAGAPAY_PROVIDER_TIMEOUT_MS", d.call_timeout)?,
                backoff: env_ms_list("SAGAPAY_PROVIDER_BACKOFF_MS", &d.backoff)?,
                long_backoff: env_ms_list("SAGAPAY_PROVIDER_LONG_BACKOFF_MS", &d.long_backoff)?,
                give_up_after: env_ms("SAGAPAY_PROVIDER_GIVE_UP_MS", d.give_up_after)?,
                authorize_give_up_after: env_ms(
                    "SAGAPAY_PROVIDER_AUTHORIZE_GIVE_UP_MS",
                    d.authorize_give_up_after,
                )?,
                claim_timeout: env_ms("SAGAPAY_PROVIDER_CLAIM_TIMEOUT_MS", d.claim_timeout)?,
                max_in_flight_per_merchant: env_parse(
                    "SAGAPAY_PROVIDER_MERCHANT_MAX_IN_FLIGHT",
                    d.max_in_flight_per_merchant,
                )?,
                ..d
            },
            simulated_slow_delay: env_ms("SAGAPAY_PROVIDER_SLOW_MS", Duration::from_millis(500))?,
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
            ops_key: OpsKey::development(),
        }
    }
}

/// Schedules the operation a command asks for. Idempotent: one operation per payment and
/// kind (and refund). A command for an operation that exists already (a step the saga sent
/// again after its deadline, a replayed dead letter) is answered from the operation: with its
/// outcome when it ended, by re-arming it when it was given up, and not at all while it is in
/// progress (its outcome will answer).
struct CommandHandler {
    outbox: Outbox,
    settings: RetrySettings,
    provider: &'static str,
}

/// An operation as it stands, for answering a repeated command.
#[derive(Debug, sqlx::FromRow)]
struct Existing {
    operation_id: Uuid,
    status: OperationStatus,
    attempts: i32,
    result_reference: Option<String>,
    result_amount_minor: Option<AmountMinor>,
    result_currency: Option<Currency>,
    last_error: Option<String>,
    /// A void or refund of the same payment exists (its authorization or capture is being
    /// compensated, so it must not be re-armed).
    compensated: bool,
    /// A capture of the payment succeeded (a void of it was performed as its refund).
    captured: bool,
}

/// The operation a command asks for.
struct Asked {
    operation: ProviderOperation,
    operation_key: OperationKey,
    request: OperationRequest,
    /// The merchant, which an authorization's command names; the payment's other operations
    /// take it from the authorization's row (the worker shares its places by merchant).
    merchant_id: Option<Uuid>,
}

impl Asked {
    /// What `env`'s command asks for. A capture, void or refund names no card and no
    /// merchant: they are the authorization's (see `schedule`).
    fn from_command(env: &Envelope) -> Result<Self, HandlerError> {
        let request = |amount_minor, currency, reference, reason| OperationRequest {
            amount_minor,
            currency,
            payment_method: String::new(),
            reference,
            reason,
            capture_method: Default::default(),
        };
        let (operation, operation_key, request, merchant_id) = match env.event_type() {
            Some(EventType::AuthorizeRequested) => {
                let c: AuthorizeRequested = env.decode()?;
                let request = OperationRequest {
                    payment_method: c.payment_method.into(),
                    capture_method: c.capture_method,
                    ..request(c.amount_minor, c.currency, None, None)
                };
                let merchant_id = Some(c.merchant_id);
                (
                    ProviderOperation::Authorize,
                    OperationKey::NONE,
                    request,
                    merchant_id,
                )
            }
            Some(EventType::CaptureRequested) => {
                let c: CaptureRequested = env.decode()?;
                let request = request(c.amount_minor, c.currency, Some(c.authorization_id), None);
                (
                    ProviderOperation::Capture,
                    OperationKey::NONE,
                    request,
                    None,
                )
            }
            Some(EventType::VoidRequested) => {
                let c: VoidRequested = env.decode()?;
                let (reference, reason) = (c.authorization_id, Some(c.reason));
                let request = request(c.amount_minor, c.currency, reference, reason);
                (ProviderOperation::Void, OperationKey::NONE, request, None)
            }
            Some(EventType::RefundRequested) => {
                let c: RefundRequested = env.decode()?;
                let (reference, reason) = (Some(c.capture_id), Some(c.reason));
                let request = request(c.amount_minor, c.currency, reference, reason);
                let key = OperationKey::refund(c.refund_id);
                (ProviderOperation::Refund, key, request, None)
            }
            _ => {
                return Err(HandlerError::permanent(anyhow!(
                    "provider-adapter does not handle {}",
                    env.event_type
                )))
            }
        };
        Ok(Self {
            operation,
            operation_key,
            request,
            merchant_id,
        })
    }
}

impl CommandHandler {
    async fn schedule(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        asked: Asked,
    ) -> Result<(), HandlerError> {
        let Asked {
            operation,
            operation_key,
            request,
            merchant_id,
        } = asked;
        if !policy::scheduled_after_void(operation) && voided(conn, env.payment_id).await? {
            // A capture asked after the payment's void was asked for (a replayed dead letter,
            // a command delayed past an operator's fail): the authorization is, or will be,
            // gone, and a provider refuses it. Found by the simulator.
            tracing::warn!(payment_id = %env.payment_id,
                "capture asked after the payment's void: not performed");
            return Ok(());
        }
        // Captures, voids and refunds carry the authorization's card (a PSP knows it from
        // the authorization; the simulated provider behaves by it) and its merchant (for an
        // authorization recorded before merchants were, from its command).
        let inserted = sqlx::query(
            "INSERT INTO provider_operations (operation_id, payment_id, operation, request,
                                              source_event_id, correlation_id, headers,
                                              source_envelope, source_topic, source_partition, source_offset,
                                              operation_key, give_up_at, merchant_id)
             VALUES ($1, $2, $3,
                     CASE WHEN $4->>'payment_method' = '' THEN
                          jsonb_set($4, '{payment_method}', to_jsonb(COALESCE(
                              (SELECT a.request->>'payment_method' FROM provider_operations a
                                WHERE a.payment_id = $2 AND a.operation = 'AUTHORIZE'), '')))
                     ELSE $4 END,
                     $5, $6, $7, $8, $9, $10, $11, $12, now() + make_interval(secs => $13),
                     COALESCE($14, (SELECT COALESCE(a.merchant_id,
                                                    (a.source_envelope #>> '{payload,merchant_id}')::uuid)
                                      FROM provider_operations a
                                     WHERE a.payment_id = $2 AND a.operation = 'AUTHORIZE')))
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
        .bind(self.settings.give_up_after(operation).as_secs_f64())
        .bind(merchant_id)
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if inserted == 0 {
            self.answer_again(conn, env, ctx, operation, operation_key, &request)
                .await?;
        }
        Ok(())
    }

    async fn answer_again(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        operation: ProviderOperation,
        operation_key: OperationKey,
        request: &OperationRequest,
    ) -> Result<(), HandlerError> {
        let existing: Existing = sqlx::query_as(
            "SELECT o.operation_id, o.status, o.attempts, o.result_reference, o.result_amount_minor,
                    o.result_currency, o.last_error,
                    EXISTS (SELECT 1 FROM provider_operations c
                             WHERE c.payment_id = o.payment_id AND c.operation IN ('VOID', 'REFUND')
                               AND c.operation_key = '') AS compensated,
                    EXISTS (SELECT 1 FROM provider_operations c
                             WHERE c.payment_id = o.payment_id AND c.operation = 'CAPTURE'
                               AND c.status = 'SUCCEEDED') AS captured
               FROM provider_operations o
              WHERE o.payment_id = $1 AND o.operation = $2 AND o.operation_key = $3
              FOR UPDATE",
        )
        .bind(env.payment_id)
        .bind(operation.as_str())
        .bind(operation_key)
        .fetch_one(&mut *conn)
        .await?;
        let (payment_id, op) = (env.payment_id, operation.as_str());
        match policy::repeated(existing.status, operation, existing.compensated) {
            policy::Repeated::Waits => {
                tracing::info!(%payment_id, operation = op,
                    "operation in progress; the repeated command waits for its outcome");
                return Ok(());
            }
            policy::Repeated::Left => {
                tracing::info!(%payment_id, operation = op,
                    "operation given up and being compensated: not re-armed");
                return Ok(());
            }
            policy::Repeated::Rearmed => {
                return self.rearm(conn, env, operation, &existing).await;
            }
            policy::Repeated::Answered => {}
        }
        let answering = self.answering(env, operation, operation_key, request, &existing);
        let last_error = existing.last_error.clone().unwrap_or_default();
        let outcome = recorded_outcome(&existing)?;
        let ending = match &outcome {
            Some(outcome) => replies::Ending::Outcome(outcome),
            None => replies::Ending::NotPerformed {
                last_error: &last_error,
            },
        };
        let event = answering.event(ending);
        tracing::info!(%payment_id, operation = op, status = %existing.status,
            "repeated command answered with the operation's outcome");
        self.outbox
            .enqueue(conn, &event, &ctx.headers.propagated())
            .await?;
        Ok(())
    }

    /// Who the answer to a repeated command for an existing operation is for, and what it
    /// reports.
    fn answering<'a>(
        &'a self,
        env: &'a Envelope,
        operation: ProviderOperation,
        operation_key: OperationKey,
        request: &'a OperationRequest,
        existing: &Existing,
    ) -> replies::Answering<'a> {
        replies::Answering {
            payment_id: env.payment_id,
            causation_id: env.event_id,
            correlation_id: &env.correlation_id,
            // A void performed as the refund of the capture that went through (see the
            // worker's `request`) reports a refund, the second time as the first.
            operation: policy::reported_as(operation, existing.captured),
            refund_id: operation_key
                .0
                .filter(|_| operation == ProviderOperation::Refund),
            reason: request.reason.as_deref().unwrap_or_default(),
            provider: self.provider,
            authorization_id: match operation {
                ProviderOperation::Capture => request.reference.as_deref(),
                _ => None,
            },
            attempts: u32::try_from(existing.attempts).unwrap_or(0),
        }
    }

    /// Tries an operation that was given up again (a replayed dead letter, an operator's
    /// retry), from the start of its schedules.
    async fn rearm(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        operation: ProviderOperation,
        existing: &Existing,
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "UPDATE provider_operations
                SET status = 'PENDING', attempts = 0, resolving = outcome_unknown,
                    next_attempt_at = now(), claimed_until = NULL, claim_token = NULL,
                    give_up_at = now() + make_interval(secs => $2),
                    source_event_id = $3, updated_at = now()
              WHERE operation_id = $1",
        )
        .bind(existing.operation_id)
        .bind(self.settings.give_up_after(operation).as_secs_f64())
        .bind(env.event_id)
        .execute(&mut *conn)
        .await?;
        tracing::warn!(payment_id = %env.payment_id, operation = operation.as_str(),
            previous_attempts = existing.attempts, "operation re-armed");
        Ok(())
    }
}

/// An ended operation's outcome as its row records it, for answering a repeated command: a
/// success with its result; a refusal with its code (its last error): a refusal is an answer,
/// the second time as the first, so a declined authorization fails the payment again and a
/// declined capture, void or refund is reported again (`provider.retries_exhausted` with its
/// decline code), never re-armed; `None` for one never performed.
fn recorded_outcome(existing: &Existing) -> Result<Option<ProviderOutcome>, HandlerError> {
    Ok(match existing.status {
        OperationStatus::Succeeded => {
            let (Some(reference), Some(amount_minor), Some(currency)) = (
                existing.result_reference.clone(),
                existing.result_amount_minor,
                existing.result_currency,
            ) else {
                return Err(HandlerError::permanent(anyhow!(
                    "operation {} succeeded without a recorded result",
                    existing.operation_id
                )));
            };
            Some(ProviderOutcome::Succeeded {
                reference,
                amount_minor,
                currency,
            })
        }
        OperationStatus::Declined => Some(ProviderOutcome::Declined {
            code: existing.last_error.clone().unwrap_or_default(),
        }),
        OperationStatus::NotPerformed | OperationStatus::Pending | OperationStatus::Exhausted => {
            None
        }
    })
}

/// Whether a void of the payment was asked for.
async fn voided(conn: &mut PgConnection, payment_id: Uuid) -> sqlx::Result<bool> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM provider_operations
                         WHERE payment_id = $1 AND operation = 'VOID')",
    )
    .bind(payment_id)
    .fetch_one(conn)
    .await
}

impl Handler for CommandHandler {
    type Prepared = ();

    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        _prepared: &mut (),
    ) -> Result<(), HandlerError> {
        let asked = Asked::from_command(env)?;
        self.schedule(conn, env, ctx, asked).await
    }
}

/// Starts the adapter with the simulated provider.
pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    let outage = Outage::default();
    // The simulated outage exists in development only.
    let api = match config.common.environment {
        Environment::Development => dev::routes(outage.clone(), config.ops_key.clone()),
        Environment::Production => axum::Router::new(),
    };
    start_with(
        config,
        move |pool, cfg| SimulatedProvider::new(pool, cfg.simulated_slow_delay, outage),
        api,
    )
    .await
}

/// Starts the adapter with the provider `make_provider` builds (from the service's pool),
/// serving `api` besides the common routes.
pub async fn start_with<P, F>(
    config: Config,
    make_provider: F,
    api: axum::Router,
) -> anyhow::Result<ServiceHandle>
where
    P: PaymentProvider,
    F: FnOnce(sqlx::PgPool, &Config) -> P,
{
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner,
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
    let merchants_at_cap = IntGauge::new(
        "provider_merchants_at_cap",
        "Merchants whose due provider operations waited at the worker's last claim because \
         they held their cap of its places (SAGAPAY_PROVIDER_MERCHANT_MAX_IN_FLIGHT)",
    )?;
    platform
        .registry
        .register(Box::new(merchants_at_cap.clone()))?;
    let mut builder = platform.builder();
    platform.spawn_relay(&mut builder)?;
    let provider = Arc::new(make_provider(platform.pool.clone(), &config));
    let handler = CommandHandler {
        outbox: platform.outbox.clone(),
        settings: config.retry.clone(),
        provider: provider.name(),
    };
    platform.spawn_consumer(&mut builder, Arc::new(handler), CONSUMES)?;
    let worker = Arc::new(Worker {
        pool: platform.pool.clone(),
        provider,
        outbox: platform.outbox.clone(),
        settings: config.retry.clone(),
        retries_total,
        dead_letters_total: platform
            .messaging_metrics
            .dlq_published_total
            .with_label_values(&[Classification::RetryExhausted.as_str()]),
        merchants_at_cap,
        messaging_metrics: platform.messaging_metrics.clone(),
        writes: GroupCommit::new(platform.pool.clone()),
        in_flight: Default::default(),
    });
    builder.spawn("provider-worker", move |shutdown| worker.run(shutdown));
    let router = platform.router(api);
    builder
        .serve(config.common.http_addr, config.common.tls.clone(), router)
        .await
}
