//! Risk decides whether a payment may proceed. For now every payment is approved; the rules
//! (amount thresholds, velocity, recent failures) and manual review come with issue 3. The
//! decision, its reason and the values the rules saw are persisted either way.

use anyhow::anyhow;
use sagapay_domain::events::{PaymentRequested, RiskApproved};
use sagapay_domain::{Envelope, EventType};
use sagapay_messaging::{Handler, HandlerError, MessageContext, Outbox};
use sagapay_service_kit::{CommonConfig, Platform, ServiceHandle};
use serde_json::json;
use sqlx::PgConnection;
use std::sync::Arc;

pub const SERVICE: &str = "risk";
pub const DEFAULT_PORT: u16 = 8002;
pub const CONSUMES: &[EventType] = &[EventType::PaymentRequested];
pub const PRODUCES: &[EventType] = &[EventType::RiskApproved];

mod embedded {
    refinery::embed_migrations!("../../migrations/risk");
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

struct RiskHandler {
    outbox: Outbox,
}

impl Handler for RiskHandler {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        if env.event_type() != Some(EventType::PaymentRequested) {
            return Err(HandlerError::permanent(anyhow!(
                "risk does not handle {}",
                env.event_type
            )));
        }
        let req: PaymentRequested = env.decode()?;
        let reason = "no rule matched";
        let inputs = json!({
            "amount_minor": req.amount_minor.get(),
            "currency": req.currency.as_str(),
        });
        sqlx::query(
            "INSERT INTO risk_decisions (payment_id, merchant_id, customer_id, decision, reason, inputs)
             VALUES ($1, $2, $3, 'APPROVE', $4, $5)",
        )
        .bind(env.payment_id)
        .bind(req.merchant_id)
        .bind(&req.customer_id)
        .bind(reason)
        .bind(&inputs)
        .execute(&mut *conn)
        .await?;
        let next = env.follow_up(&RiskApproved {
            reason: reason.to_owned(),
        });
        self.outbox
            .enqueue(conn, &next, &ctx.headers.propagated())
            .await?;
        Ok(())
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
    let handler = Arc::new(RiskHandler {
        outbox: platform.outbox.clone(),
    });
    platform.spawn_consumer(&mut builder, handler, CONSUMES)?;
    let router = platform.router(axum::Router::new());
    builder.serve(config.common.http_addr, router).await
}
