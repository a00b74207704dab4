//! Notification tells merchants about payments that reached a terminal state: exactly one
//! notification per payment and outcome, recorded durably (delivery is a log line for now;
//! webhooks would be sent from these rows).

use anyhow::anyhow;
use sagapay_domain::events::PaymentFinalized;
use sagapay_domain::{Envelope, EventType};
use sagapay_messaging::{Handler, HandlerError, MessageContext};
use sagapay_service_kit::{CommonConfig, Platform, ServiceHandle};
use serde_json::json;
use sqlx::PgConnection;
use std::sync::Arc;
use uuid::Uuid;

pub const SERVICE: &str = "notification";
pub const DEFAULT_PORT: u16 = 8005;
pub const CONSUMES: &[EventType] = &[EventType::PaymentFinalized];

mod embedded {
    refinery::embed_migrations!("../../migrations/notification");
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

struct NotificationHandler;

impl Handler for NotificationHandler {
    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        _ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        if env.event_type() != Some(EventType::PaymentFinalized) {
            return Err(HandlerError::permanent(anyhow!(
                "notification does not handle {}",
                env.event_type
            )));
        }
        let ev: PaymentFinalized = env.decode()?;
        let kind = format!("payment.{}", ev.status.as_str().to_ascii_lowercase());
        let payload = json!({
            "payment_id": env.payment_id,
            "status": ev.status,
            "amount_cents": ev.amount_minor.get(),
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
        embedded::migrations::runner(),
        CONSUMES,
        &[],
    )
    .await?;
    let mut builder = platform.builder();
    platform.spawn_relay(&mut builder);
    platform.spawn_consumer(&mut builder, Arc::new(NotificationHandler), CONSUMES)?;
    let router = platform.router(axum::Router::new());
    builder.serve(config.common.http_addr, router).await
}
