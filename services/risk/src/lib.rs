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
//!
//! The consumer handles a batch of messages in one transaction, and runs several lanes at
//! once. Locks taken per payment in arrival order made two lanes holding [X, Y] and [Y, X]
//! wait for each other until PostgreSQL killed one (a deadlock, a second of `deadlock_timeout`
//! and the batch done again). So a batch takes every lock it needs before its first decision,
//! in one statement and one global order (see [`lock_in_order`]): lanes may wait for each
//! other, never in a circle. Deadlocks risk still hits are counted (`risk_deadlocks_total`).

pub mod ops;
pub mod rules;

use anyhow::anyhow;
use prometheus::{IntCounter, Registry};
use rules::{Decision, Inputs, Thresholds};
use sagapay_domain::events::{
    PaymentFinalized, PaymentRequested, RiskApproved, RiskDenied, RiskReviewRequired,
};
use sagapay_domain::{Envelope, EventType, PaymentStatus};
use sagapay_messaging::{Handler, HandlerError, MessageContext, Outbox, OUTBOX_COLUMNS};
use sagapay_service_kit::config::{env_or, env_parse};
use sagapay_service_kit::{CommonConfig, OpsKey, Platform, ServiceHandle};
use sqlx::PgConnection;
use std::collections::HashSet;
use std::sync::Arc;
use uuid::Uuid;

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
    metrics: RiskMetrics,
}

/// Risk's own metrics.
#[derive(Clone)]
struct RiskMetrics {
    deadlocks: IntCounter,
}

impl RiskMetrics {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        let deadlocks = IntCounter::new(
            "risk_deadlocks_total",
            "Deadlocks (SQLSTATE 40P01) risk's consumer transactions hit; each was rolled \
             back and done again",
        )?;
        registry.register(Box::new(deadlocks.clone()))?;
        Ok(Self { deadlocks })
    }

    /// Counts `result`'s failure if it is a deadlock, and passes it on.
    fn observe<T>(&self, result: Result<T, HandlerError>) -> Result<T, HandlerError> {
        if let Err(e) = &result {
            if is_deadlock(e) {
                self.deadlocks.inc();
            }
        }
        result
    }
}

/// Whether `e` is PostgreSQL's deadlock detector killing the transaction.
fn is_deadlock(e: &HandlerError) -> bool {
    sagapay_messaging::failure::classify(e).sqlstate.as_deref() == Some(DEADLOCK_DETECTED)
}

/// SQLSTATE `deadlock_detected`.
const DEADLOCK_DETECTED: &str = "40P01";

/// A merchant's customer: what risk counts by, and locks.
type CustomerKey = (Uuid, String);

/// The customers whose locks the transaction holds: those of a batch's `payments.requested`,
/// taken by [`Handler::prepare`]. Empty for a message handled alone, which locks for itself.
#[derive(Default)]
struct Locked(HashSet<CustomerKey>);

/// Takes the advisory locks of `customers` for the rest of the transaction, in one statement
/// and one global order: ascending lock key (the `bigint` hash of `merchant/customer`). Every
/// transaction of risk takes its locks this way, so a transaction only ever waits for a lock
/// whose key is above every key it holds, and a circle of waits cannot form.
///
/// Why the calls happen in that order: `pg_advisory_xact_lock(k)` is a volatile output
/// expression of a SELECT with an ORDER BY that does not reference it, and PostgreSQL
/// (since 9.6, documented in the SELECT reference, "SELECT List") evaluates such expressions
/// after the sort, row by row in the sorted order; EXPLAIN VERBOSE shows the call in a node
/// above the Sort (or above the sorted DISTINCT, whose order the planner then keeps).
/// Equal keys (two customers whose hashes collide) are locked once: the same lock.
async fn lock_in_order(conn: &mut PgConnection, customers: &[&CustomerKey]) -> sqlx::Result<()> {
    let (merchants, ids): (Vec<String>, Vec<&str>) = customers
        .iter()
        .map(|(m, c)| (m.to_string(), c.as_str()))
        .unzip();
    sqlx::query(
        "SELECT pg_advisory_xact_lock(k)
           FROM (SELECT DISTINCT hashtextextended(m || '/' || c, 0) AS k
                   FROM unnest($1::text[], $2::text[]) AS u(m, c)) AS keys
          ORDER BY k",
    )
    .bind(&merchants)
    .bind(&ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// The customers of the `payments.requested` among `envelopes`, each once, sorted (for a
/// deterministic statement; the lock order is the statement's own). An event that does not
/// decode is left out: `handle` refuses it.
fn customers_of(envelopes: &[&Envelope]) -> Vec<CustomerKey> {
    let mut customers: Vec<CustomerKey> = envelopes
        .iter()
        .filter(|e| e.event_type() == Some(EventType::PaymentRequested))
        .filter_map(|e| e.decode::<PaymentRequested>().ok())
        .map(|req| (req.merchant_id, req.customer_id.as_str().to_owned()))
        .collect();
    customers.sort_unstable();
    customers.dedup();
    customers
}

impl RiskHandler {
    async fn assess(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        locked: &mut Locked,
    ) -> Result<(), HandlerError> {
        let req: PaymentRequested = env.decode()?;
        // One decision at a time per customer, so counts cannot race: the batch took the lock
        // already, or this message is alone and takes it.
        let customer = (req.merchant_id, req.customer_id.as_str().to_owned());
        if !locked.0.contains(&customer) {
            lock_in_order(conn, &[&customer]).await?;
            locked.0.insert(customer);
        }
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
        self.decide(conn, env, ctx, &req, &inputs).await
    }

    /// Decides by the rules over `inputs`, and records the decision with its answer (and the
    /// review, if it is one).
    async fn decide(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        req: &PaymentRequested,
        inputs: &Inputs,
    ) -> Result<(), HandlerError> {
        let (decision, reason) = rules::decide(&self.thresholds, inputs);
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
    type Prepared = Locked;

    /// Locks the customers of the batch's payment requests, all at once and in order (see
    /// [`lock_in_order`]), before the first decision.
    async fn prepare(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<Locked, HandlerError> {
        let customers = customers_of(envelopes);
        if customers.is_empty() {
            return Ok(Locked::default());
        }
        let keys: Vec<&CustomerKey> = customers.iter().collect();
        let locked = lock_in_order(conn, &keys).await.map_err(HandlerError::from);
        self.metrics.observe(locked)?;
        Ok(Locked(customers.into_iter().collect()))
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        locked: &mut Locked,
    ) -> Result<(), HandlerError> {
        let handled = match env.event_type() {
            Some(EventType::PaymentRequested) => self.assess(conn, env, ctx, locked).await,
            Some(EventType::PaymentFinalized) => self.record_outcome(conn, env).await,
            _ => Err(HandlerError::permanent(anyhow!(
                "risk does not handle {}",
                env.event_type
            ))),
        };
        self.metrics.observe(handled)
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
        metrics: RiskMetrics::register(&platform.registry)?,
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
    builder
        .serve(config.common.http_addr, config.common.tls.clone(), router)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use sagapay_domain::{AmountMinor, Currency, CustomerId, PaymentMethod};

    fn requested(merchant: Uuid, customer: &str) -> Envelope {
        Envelope::new(
            Uuid::now_v7(),
            None,
            "test",
            &PaymentRequested {
                merchant_id: merchant,
                customer_id: CustomerId::parse(customer).unwrap(),
                amount_minor: AmountMinor::new(1500).unwrap(),
                currency: Currency::parse("USD").unwrap(),
                payment_method: PaymentMethod::default(),
            },
        )
    }

    #[test]
    fn a_batch_locks_each_customer_of_its_requests_once() {
        let (m1, m2) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let mut undecodable = requested(m1, "cust-z");
        undecodable.payload = serde_json::json!({ "merchant_id": "not a uuid" });
        let mut finalized = requested(m1, "cust-f");
        finalized.event_type = EventType::PaymentFinalized.as_str().to_owned();
        let batch = [
            requested(m2, "cust-b"),
            requested(m1, "cust-b"),
            requested(m2, "cust-b"),
            requested(m1, "cust-a"),
            undecodable,
            finalized,
        ];
        let refs: Vec<&Envelope> = batch.iter().collect();
        assert_eq!(
            customers_of(&refs),
            vec![
                (m1, "cust-a".to_owned()),
                (m1, "cust-b".to_owned()),
                (m2, "cust-b".to_owned()),
            ],
            "each (merchant, customer) once; two merchants' cust-b are two customers"
        );
        assert!(customers_of(&[]).is_empty());
    }

    /// A database error with a SQLSTATE, as PostgreSQL sends one.
    #[derive(Debug)]
    struct Refused(&'static str);

    impl std::fmt::Display for Refused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "refused with {}", self.0)
        }
    }

    impl std::error::Error for Refused {}

    impl sqlx::error::DatabaseError for Refused {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn refused(code: &'static str) -> HandlerError {
        sqlx::Error::Database(Box::new(Refused(code))).into()
    }

    #[test]
    fn only_deadlocks_are_counted_as_deadlocks() {
        let metrics = RiskMetrics::register(&Registry::new()).unwrap();
        assert!(metrics.observe(Err::<(), _>(refused("40P01"))).is_err());
        assert_eq!(metrics.deadlocks.get(), 1);
        for other in [
            refused("40001"),
            refused("23505"),
            HandlerError::transient(anyhow!("pool timed out")),
            HandlerError::permanent(anyhow!("not an envelope")),
        ] {
            assert!(!is_deadlock(&other), "{other}");
            let _ = metrics.observe(Err::<(), _>(other));
        }
        assert!(metrics.observe(Ok(())).is_ok());
        assert_eq!(metrics.deadlocks.get(), 1);
    }
}
