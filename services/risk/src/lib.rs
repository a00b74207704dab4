//! Risk decides whether a payment may proceed: approve, send to manual review, or deny, by
//! rules with configurable thresholds (see [`rules`]). The decision, its reason and the values
//! the rules saw are persisted. Operators decide reviews through the ops endpoints (see
//! [`ops`]), authorised with an ops key that is not a merchant key.
//!
//! The rules count from PostgreSQL, in the handler's transaction: a redelivered
//! `payments.requested` is skipped by the inbox and so never counts twice, and a customer's
//! payments are decided one at a time (advisory lock per customer), so two concurrent payments
//! cannot both slip under a velocity limit. A customer is a merchant's: the id is the
//! merchant's own (two merchants' `cust-1` are different people), so everything counts per
//! merchant and customer.

pub mod ops;
pub mod rules;

use anyhow::anyhow;
use rules::{Decision, Inputs, Thresholds};
use sagapay_domain::events::{
    PaymentFinalized, PaymentRequested, RiskApproved, RiskDenied, RiskReviewRequired,
};
use sagapay_domain::{Envelope, EventType, PaymentStatus};
use sagapay_messaging::{Handler, HandlerError, MessageContext, Outbox, OUTBOX_COLUMNS};
use sagapay_service_kit::config::{env_or, env_parse};
use sagapay_service_kit::{CommonConfig, OpsKey, Platform, ServiceHandle};
use sqlx::PgConnection;
use std::sync::Arc;

pub const SERVICE: &str = "risk";
pub const DEFAULT_PORT: u16 = 8002;
pub const CONSUMES: &[EventType] = &[EventType::PaymentRequested, EventType::PaymentFinalized];
pub const PRODUCES: &[EventType] = &[
    EventType::RiskApproved,
    EventType::RiskReviewRequired,
    EventType::RiskDenied,
];
pub use sagapay_service_kit::ops_auth::DEV_OPS_KEY;

mod embedded {
    refinery::embed_migrations!("../../migrations/risk");
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub thresholds: Thresholds,
    /// `SAGAPAY_OPS_KEY`: required in production; `dev-ops-secret` by default in development.
    pub ops_key: OpsKey,
}

impl Config {
    /// Risk's settings (`SAGAPAY_RISK_*`, see `docs/configuration.md`).
    pub fn from_env() -> anyhow::Result<Self> {
        let common = CommonConfig::from_env(SERVICE, DEFAULT_PORT)?;
        let d = Thresholds::default();
        let thresholds = Thresholds {
            review_amount: sagapay_domain::PerCurrency::parse_over(
                &env_or("SAGAPAY_RISK_REVIEW_AMOUNT_CENTS", ""),
                &d.review_amount,
            )
            .map_err(|e| anyhow::anyhow!("SAGAPAY_RISK_REVIEW_AMOUNT_CENTS: {e}"))?,
            velocity_review_per_hour: env_parse(
                "SAGAPAY_RISK_VELOCITY_REVIEW_PER_HOUR",
                d.velocity_review_per_hour,
            )?,
            velocity_deny_per_hour: env_parse(
                "SAGAPAY_RISK_VELOCITY_DENY_PER_HOUR",
                d.velocity_deny_per_hour,
            )?,
            recent_failures_review: env_parse(
                "SAGAPAY_RISK_RECENT_FAILURES_REVIEW",
                d.recent_failures_review,
            )?,
        };
        let ops_key = OpsKey::from_env(common.environment)?;
        Ok(Self {
            common,
            thresholds,
            ops_key,
        })
    }

    pub fn for_test(common: CommonConfig) -> Self {
        Self {
            common,
            thresholds: Thresholds::default(),
            ops_key: OpsKey::development(),
        }
    }
}

struct RiskHandler {
    outbox: Outbox,
    thresholds: Thresholds,
}

impl RiskHandler {
    async fn assess(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let req: PaymentRequested = env.decode()?;
        // One decision at a time per customer, so counts cannot race.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))")
            .bind(req.merchant_id.to_string())
            .bind(req.customer_id.as_str())
            .execute(&mut *conn)
            .await?;
        // The counts, and in the same statement the decision already taken for this payment if
        // the request is a repeat (a step the orchestrator re-sent after its deadline).
        let (prior_last_hour, failures_last_24h, earlier): (i64, i64, Option<String>) =
            sqlx::query_as(
                "SELECT
                     (SELECT count(*) FROM risk_decisions
                       WHERE merchant_id = $3 AND customer_id = $1
                         AND decided_at > now() - interval '1 hour'),
                     (SELECT count(*) FROM customer_outcomes
                       WHERE merchant_id = $3 AND customer_id = $1
                         AND occurred_at > now() - interval '24 hours'),
                     (SELECT CASE WHEN r.status = 'APPROVED' THEN 'APPROVE'
                                  WHEN r.status = 'DENIED' THEN 'DENY'
                                  ELSE d.decision END
                        FROM risk_decisions d LEFT JOIN risk_reviews r USING (payment_id)
                       WHERE d.payment_id = $2)",
            )
            .bind(req.customer_id.as_str())
            .bind(env.payment_id)
            .bind(req.merchant_id)
            .fetch_one(&mut *conn)
            .await?;
        if let Some(decision) = earlier {
            return self.answer_again(conn, env, ctx, &decision).await;
        }
        let inputs = Inputs {
            amount_minor: req.amount_minor.get(),
            currency: req.currency,
            payments_last_hour: prior_last_hour + 1,
            failures_last_24h,
        };
        let (decision, reason) = rules::decide(&self.thresholds, &inputs);
        let recorded = serde_json::json!({
            "inputs": inputs,
            "thresholds": self.thresholds.applied(req.currency),
        });
        let headers = ctx.headers.propagated();
        let next = match decision {
            Decision::Approve => env.follow_up(&RiskApproved {
                reason: reason.clone(),
            }),
            Decision::Deny => env.follow_up(&RiskDenied {
                reason: reason.clone(),
            }),
            Decision::Review => env.follow_up(&RiskReviewRequired {
                reason: reason.clone(),
            }),
        };
        // The decision and its answer in one statement.
        let row = self.outbox.row(&next, &headers);
        let sql = format!(
            "WITH decided AS (
                 INSERT INTO risk_decisions
                        (payment_id, merchant_id, customer_id, decision, reason, inputs)
                 VALUES ($1, $2, $3, $4, $5, $6))
             INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ($7, $8, $9, $10, $11, $12)"
        );
        let decided = sqlx::query(&sql)
            .bind(env.payment_id)
            .bind(req.merchant_id)
            .bind(req.customer_id.as_str())
            .bind(decision.as_str())
            .bind(&reason)
            .bind(&recorded);
        row.bind(decided).execute(&mut *conn).await?;
        if decision == Decision::Review {
            sqlx::query(
                "INSERT INTO risk_reviews (payment_id, merchant_id, customer_id, amount_minor, currency,
                                           reason, source_event_id, correlation_id, headers)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(env.payment_id)
            .bind(req.merchant_id)
            .bind(req.customer_id.as_str())
            .bind(req.amount_minor.get())
            .bind(req.currency.as_str())
            .bind(&reason)
            .bind(env.event_id)
            .bind(&env.correlation_id)
            .bind(sqlx::types::Json(&headers))
            .execute(&mut *conn)
            .await?;
        }
        tracing::debug!(payment_id = %env.payment_id, decision = decision.as_str(), "risk decision");
        Ok(())
    }

    /// A repeated request for a payment already decided: the same answer again (a new event;
    /// the orchestrator ignores what it has already applied). Nothing is counted twice.
    async fn answer_again(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        decision: &str,
    ) -> Result<(), HandlerError> {
        let reason = "already decided".to_owned();
        let next = match decision {
            "APPROVE" => env.follow_up(&RiskApproved { reason }),
            "DENY" => env.follow_up(&RiskDenied { reason }),
            _ => env.follow_up(&RiskReviewRequired {
                reason: "already waiting for review".to_owned(),
            }),
        };
        tracing::info!(payment_id = %env.payment_id, decision, "repeated request: decision sent again");
        self.outbox
            .enqueue(conn, &next, &ctx.headers.propagated())
            .await?;
        Ok(())
    }

    async fn record_outcome(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
    ) -> Result<(), HandlerError> {
        let ev: PaymentFinalized = env.decode()?;
        if counts_as_failure(ev.status) {
            sqlx::query(
                "INSERT INTO customer_outcomes (payment_id, merchant_id, customer_id, status, occurred_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (payment_id) DO NOTHING",
            )
            .bind(env.payment_id)
            .bind(ev.merchant_id)
            .bind(ev.customer_id.as_str())
            .bind(ev.status.as_str())
            .bind(env.occurred_at)
            .execute(&mut *conn)
            .await?;
        }
        Ok(())
    }
}

impl Handler for RiskHandler {
    type Prepared = ();

    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        _prepared: &mut (),
    ) -> Result<(), HandlerError> {
        match env.event_type() {
            Some(EventType::PaymentRequested) => self.assess(conn, env, ctx).await,
            Some(EventType::PaymentFinalized) => self.record_outcome(conn, env).await,
            _ => Err(HandlerError::permanent(anyhow!(
                "risk does not handle {}",
                env.event_type
            ))),
        }
    }

    /// Only failed and reversed outcomes feed the velocity rules; a settled payment's
    /// `payments.finalized` (most of them) needs no transaction.
    fn affects(&self, env: &Envelope) -> bool {
        if env.event_type() != Some(EventType::PaymentFinalized) {
            return true;
        }
        match env.decode::<PaymentFinalized>() {
            Ok(ev) => counts_as_failure(ev.status),
            Err(_) => true,
        }
    }
}

/// Outcomes the velocity rules count as failures.
fn counts_as_failure(status: PaymentStatus) -> bool {
    matches!(status, PaymentStatus::Failed | PaymentStatus::Reversed)
}

pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner,
        CONSUMES,
        PRODUCES,
    )
    .await?;
    let mut builder = platform.builder();
    platform.spawn_relay(&mut builder)?;
    let handler = Arc::new(RiskHandler {
        outbox: platform.outbox.clone(),
        thresholds: config.thresholds.clone(),
    });
    platform.spawn_consumer(&mut builder, handler, CONSUMES)?;
    let api = ops::routes(
        ops::OpsState {
            pool: platform.pool.clone(),
            outbox: platform.outbox.clone(),
        },
        config.ops_key.clone(),
    );
    let router = platform.router(api);
    builder.serve(config.common.http_addr, router).await
}
