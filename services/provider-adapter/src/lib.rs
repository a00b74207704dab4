//! The provider adapter turns the orchestrator's authorize and capture commands into calls to
//! a payment provider (behind the [`provider::PaymentProvider`] port), records every attempt,
//! and reports the outcome as an event.

pub mod provider;

use anyhow::anyhow;
use chrono::Utc;
use provider::{
    PaymentProvider, ProviderError, ProviderOutcome, ProviderRequest, SimulatedProvider,
};
use sagapay_domain::events::{
    AuthorizeRequested, CaptureRequested, PaymentAuthorized, PaymentCaptured, PaymentFailed,
};
use sagapay_domain::{Envelope, EventType};
use sagapay_messaging::{Handler, HandlerError, MessageContext, Outbox};
use sagapay_service_kit::{CommonConfig, Platform, ServiceHandle};
use sqlx::PgConnection;
use std::sync::Arc;
use std::time::Instant;

pub const SERVICE: &str = "provider-adapter";
pub const DEFAULT_PORT: u16 = 8003;
pub const CONSUMES: &[EventType] = &[EventType::AuthorizeRequested, EventType::CaptureRequested];
pub const PRODUCES: &[EventType] = &[
    EventType::PaymentAuthorized,
    EventType::PaymentFailed,
    EventType::PaymentCaptured,
];

mod embedded {
    refinery::embed_migrations!("../../migrations/provider-adapter");
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            common: CommonConfig::from_env(SERVICE, DEFAULT_PORT)?,
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Operation {
    Authorize,
    Capture,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Authorize => "AUTHORIZE",
            Operation::Capture => "CAPTURE",
        }
    }
}

struct ProviderHandler<P> {
    provider: P,
    outbox: Outbox,
}

impl<P: PaymentProvider> ProviderHandler<P> {
    /// Calls the provider once and records the attempt in the handler's transaction.
    async fn attempt(
        &self,
        conn: &mut PgConnection,
        op: Operation,
        req: &ProviderRequest,
    ) -> Result<Result<ProviderOutcome, ProviderError>, HandlerError> {
        let started_at = Utc::now();
        let clock = Instant::now();
        let result = match op {
            Operation::Authorize => self.provider.authorize(req).await,
            Operation::Capture => self.provider.capture(req).await,
        };
        let latency_ms = clock.elapsed().as_millis().min(i32::MAX as u128) as i32;
        let (outcome, reference, decline_code, error) = match &result {
            Ok(ProviderOutcome::Succeeded { reference }) => {
                ("SUCCEEDED", Some(reference.as_str()), None, None)
            }
            Ok(ProviderOutcome::Declined { code }) => ("DECLINED", None, Some(code.as_str()), None),
            Err(ProviderError::Timeout) => ("TIMEOUT", None, None, Some("timeout".to_owned())),
            Err(e @ ProviderError::Unavailable(_)) => ("ERROR", None, None, Some(e.to_string())),
        };
        let attempt_no: i32 = sqlx::query_scalar(
            "SELECT COALESCE(max(attempt_no), 0) + 1 FROM provider_attempts
              WHERE payment_id = $1 AND operation = $2",
        )
        .bind(req.payment_id)
        .bind(op.as_str())
        .fetch_one(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO provider_attempts (payment_id, operation, attempt_no, provider, idempotency_key,
                 outcome, provider_reference, decline_code, error, started_at, finished_at, latency_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), $11)",
        )
        .bind(req.payment_id)
        .bind(op.as_str())
        .bind(attempt_no)
        .bind(self.provider.name())
        .bind(&req.idempotency_key)
        .bind(outcome)
        .bind(reference)
        .bind(decline_code)
        .bind(error)
        .bind(started_at)
        .bind(latency_ms)
        .execute(&mut *conn)
        .await?;
        Ok(result)
    }
}

impl<P: PaymentProvider> Handler for ProviderHandler<P> {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let headers = ctx.headers.propagated();
        match env.event_type() {
            Some(EventType::AuthorizeRequested) => {
                let cmd: AuthorizeRequested = env.decode()?;
                let req = ProviderRequest {
                    payment_id: env.payment_id,
                    idempotency_key: format!("authorize:{}", env.payment_id),
                    amount_minor: cmd.amount_minor,
                    currency: cmd.currency,
                    authorization_id: None,
                    payment_method: cmd.payment_method.clone(),
                };
                match self.attempt(conn, Operation::Authorize, &req).await? {
                    Ok(ProviderOutcome::Succeeded { reference }) => {
                        let next = env.follow_up(&PaymentAuthorized {
                            provider: self.provider.name().to_owned(),
                            authorization_id: reference,
                            amount_minor: cmd.amount_minor,
                            currency: cmd.currency,
                        });
                        self.outbox.enqueue(conn, &next, &headers).await?;
                        Ok(())
                    }
                    Ok(ProviderOutcome::Declined { code }) => {
                        // A decline is an answer, not an error: the orchestrator fails the payment.
                        let next = env.follow_up(&PaymentFailed {
                            provider: self.provider.name().to_owned(),
                            reason: format!("authorization declined: {code}"),
                            decline_code: code,
                        });
                        self.outbox.enqueue(conn, &next, &headers).await?;
                        Ok(())
                    }
                    Err(e) => Err(HandlerError::transient(e)),
                }
            }
            Some(EventType::CaptureRequested) => {
                let cmd: CaptureRequested = env.decode()?;
                let req = ProviderRequest {
                    payment_id: env.payment_id,
                    idempotency_key: format!("capture:{}", env.payment_id),
                    amount_minor: cmd.amount_minor,
                    currency: cmd.currency,
                    authorization_id: Some(cmd.authorization_id.clone()),
                    payment_method: String::new(),
                };
                match self.attempt(conn, Operation::Capture, &req).await? {
                    Ok(ProviderOutcome::Succeeded { reference }) => {
                        let next = env.follow_up(&PaymentCaptured {
                            provider: self.provider.name().to_owned(),
                            capture_id: reference,
                            amount_minor: cmd.amount_minor,
                            currency: cmd.currency,
                        });
                        self.outbox.enqueue(conn, &next, &headers).await?;
                        Ok(())
                    }
                    Ok(ProviderOutcome::Declined { code }) => Err(HandlerError::permanent(
                        anyhow!("capture declined ({code}): handled with the saga's failure paths"),
                    )),
                    Err(e) => Err(HandlerError::transient(e)),
                }
            }
            _ => Err(HandlerError::permanent(anyhow!(
                "provider-adapter does not handle {}",
                env.event_type
            ))),
        }
    }
}

pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner(),
        CONSUMES,
        PRODUCES,
    )
    .await?;
    let mut builder = platform.builder();
    platform.spawn_relay(&mut builder);
    let handler = Arc::new(ProviderHandler {
        provider: SimulatedProvider::new(platform.pool.clone()),
        outbox: platform.outbox.clone(),
    });
    platform.spawn_consumer(&mut builder, handler, CONSUMES)?;
    let router = platform.router(axum::Router::new());
    builder.serve(config.common.http_addr, router).await
}
