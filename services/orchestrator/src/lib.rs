//! The orchestrator owns each payment's state and drives the saga: it creates payments (with
//! durable idempotency), reacts to each step's outcome with one checked transition, and sends
//! the next step's command through its outbox.

mod api;
mod refunds;
mod saga;
mod store;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use sagapay_domain::events::ProviderOperation;
use sagapay_domain::EventType;
use sagapay_service_kit::{CommonConfig, Platform, ServiceHandle};
use std::sync::Arc;

pub const SERVICE: &str = "orchestrator";
pub const DEFAULT_PORT: u16 = 8001;

mod embedded {
    refinery::embed_migrations!("../../migrations/orchestrator");
}

/// Events the orchestrator reacts to.
pub const CONSUMES: &[EventType] = &[
    EventType::RiskApproved,
    EventType::RiskReviewRequired,
    EventType::RiskDenied,
    EventType::PaymentAuthorized,
    EventType::PaymentFailed,
    EventType::PaymentCaptured,
    EventType::PaymentSettled,
    EventType::LedgerPostFailed,
    EventType::ProviderRetriesExhausted,
    EventType::PaymentReversed,
    EventType::PaymentRefunded,
    EventType::RefundPosted,
];

/// Events the orchestrator publishes.
pub const PRODUCES: &[EventType] = &[
    EventType::PaymentRequested,
    EventType::AuthorizeRequested,
    EventType::CaptureRequested,
    EventType::LedgerPostRequested,
    EventType::VoidRequested,
    EventType::RefundRequested,
    EventType::LedgerRefundRequested,
    EventType::PaymentFinalized,
];

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Run the outbox relay in this process (tests turn it off to hold events back).
    pub relay_enabled: bool,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            common: CommonConfig::from_env(SERVICE, DEFAULT_PORT)?,
            relay_enabled: true,
        })
    }
}

#[derive(Clone)]
pub(crate) struct SagaMetrics {
    pub transitions_total: IntCounterVec,
    pub events_ignored_total: IntCounterVec,
    pub payment_e2e_seconds: HistogramVec,
    pub compensations_failed_total: IntCounterVec,
    /// Amounts of payments reaching a terminal state, in minor units, by status and currency.
    pub finalized_amount_minor_total: IntCounterVec,
}

impl SagaMetrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let transitions_total = IntCounterVec::new(
            Opts::new(
                "saga_transitions_total",
                "Payment state transitions applied",
            ),
            &["from", "to"],
        )?;
        let events_ignored_total = IntCounterVec::new(
            Opts::new(
                "saga_events_ignored_total",
                "Saga events not applied: stale, out of order, or an illegal transition",
            ),
            &["event_type", "reason"],
        )?;
        let payment_e2e_seconds = HistogramVec::new(
            HistogramOpts::new(
                "payment_e2e_seconds",
                "Time from payment creation to its terminal state",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["status"],
        )?;
        let compensations_failed_total = IntCounterVec::new(
            Opts::new(
                "compensations_failed_total",
                "Compensations (void, refund) that failed on every attempt: need an operator",
            ),
            &["operation"],
        )?;
        let finalized_amount_minor_total = IntCounterVec::new(
            Opts::new(
                "payments_finalized_amount_minor_total",
                "Amounts of payments that reached a terminal state, in minor units of currency",
            ),
            &["status", "currency"],
        )?;
        registry.register(Box::new(finalized_amount_minor_total.clone()))?;
        registry.register(Box::new(compensations_failed_total.clone()))?;
        registry.register(Box::new(transitions_total.clone()))?;
        registry.register(Box::new(events_ignored_total.clone()))?;
        registry.register(Box::new(payment_e2e_seconds.clone()))?;
        // Series known in advance start at zero, so dashboards and alerts see them at once.
        for (from, to) in sagapay_domain::state::TRANSITIONS {
            transitions_total
                .with_label_values(&[from.as_str(), to.as_str()])
                .inc_by(0);
        }
        for operation in [ProviderOperation::Void, ProviderOperation::Refund] {
            compensations_failed_total
                .with_label_values(&[operation.as_str()])
                .inc_by(0);
        }
        for event_type in CONSUMES {
            for reason in ["stale", "illegal_transition"] {
                events_ignored_total
                    .with_label_values(&[event_type.as_str(), reason])
                    .inc_by(0);
            }
        }
        Ok(Self {
            transitions_total,
            events_ignored_total,
            payment_e2e_seconds,
            compensations_failed_total,
            finalized_amount_minor_total,
        })
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
    let metrics = SagaMetrics::register(&platform.registry)?;
    let mut builder = platform.builder();
    if config.relay_enabled {
        platform.spawn_relay(&mut builder);
    }
    let saga = Arc::new(saga::Saga {
        outbox: platform.outbox.clone(),
        metrics,
    });
    platform.spawn_consumer(&mut builder, saga, CONSUMES)?;
    let state = api::AppState {
        pool: platform.pool.clone(),
        outbox: platform.outbox.clone(),
    };
    let router = platform.router(api::routes(state));
    builder.serve(config.common.http_addr, router).await
}
