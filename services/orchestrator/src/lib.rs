//! The orchestrator owns each payment's state and drives the saga: it creates payments (with
//! durable idempotency), reacts to each step's outcome with one checked transition, and sends
//! the next step's command through its outbox.

pub mod admission;
mod api;
pub mod saga;
#[cfg(test)]
mod simulation;
pub mod store;

pub use saga::deadlines;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use sagapay_domain::events::ProviderOperation;
use sagapay_domain::{EventType, PaymentStatus};
use sagapay_service_kit::{
    CommonConfig, NonceStore, OpsKey, Platform, ServiceHandle, TrustedCallers,
};
use std::sync::Arc;

pub const SERVICE: &str = "orchestrator";
pub const DEFAULT_PORT: u16 = 8001;

mod embedded {
    refinery::embed_migrations!("../../migrations/orchestrator");
}

/// Events the orchestrator reacts to.
pub use saga::consumed::CONSUMES;

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
    EventType::PaymentAwaitingCapture,
    EventType::RefundSucceeded,
    EventType::RefundFailed,
];

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Run the outbox relay in this process (tests turn it off to hold events back).
    pub relay_enabled: bool,
    /// How long each state may wait (see [`deadlines`]).
    pub deadlines: deadlines::Deadlines,
    /// The credential of the ops routes (`SAGAPAY_OPS_KEY`).
    pub ops_key: OpsKey,
    /// The services allowed to call the internal API, and their keys (`SAGAPAY_TRUSTED_CALLERS`).
    pub trusted_callers: TrustedCallers,
    /// Payments in flight above which new ones are refused (`SAGAPAY_ADMISSION_MAX_IN_FLIGHT`,
    /// 0: off; see [`admission`]).
    pub admission_max_in_flight: i64,
    /// A merchant's default share of it (`SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT`, 0: none).
    pub admission_merchant_max_in_flight: i64,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let common = CommonConfig::from_env(SERVICE, DEFAULT_PORT)?;
        let admission_max_in_flight = admission::Admission::limit_from_env()?;
        Ok(Self {
            ops_key: OpsKey::from_env(common.environment)?,
            trusted_callers: TrustedCallers::from_env(common.environment, api::CALLERS)?,
            deadlines: deadlines::Deadlines::from_env()?,
            admission_max_in_flight,
            admission_merchant_max_in_flight: admission::Admission::merchant_limit_from_env(
                admission_max_in_flight,
            )?,
            relay_enabled: true,
            common,
        })
    }

    /// For tests: the development ops key and the default deadlines.
    pub fn for_test(common: CommonConfig) -> Self {
        Self {
            common,
            relay_enabled: true,
            deadlines: deadlines::Deadlines::default(),
            ops_key: OpsKey::development(),
            trusted_callers: TrustedCallers::development(api::CALLERS),
            admission_max_in_flight: admission::Admission::DEFAULT_LIMIT,
            admission_merchant_max_in_flight: admission::Admission::default_share(
                admission::Admission::DEFAULT_LIMIT,
            ),
        }
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
    /// Steps sent again after their deadline, by the payment's status.
    pub deadline_nudges_total: IntCounterVec,
    /// Payments flagged as needing an operator, by status.
    pub attention_flagged_total: IntCounterVec,
    /// Payments and refunds needing an operator now.
    pub payments_needing_attention: IntGauge,
    /// Payments and refunds past their deadline and not (yet) flagged.
    pub payments_past_deadline: IntGauge,
    /// Provider answers whose amount or currency differ from the request (never applied).
    pub provider_amount_mismatches_total: IntCounterVec,
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
                "Amounts of payments that reached a terminal state, in minor units of currency: \
                 what was captured for those that kept a capture (settled, refunded), what was asked for \
                 otherwise",
            ),
            &["status", "currency"],
        )?;
        let deadline_nudges_total = IntCounterVec::new(
            Opts::new(
                "deadline_nudges_total",
                "Saga steps sent again because the payment passed its deadline, by status",
            ),
            &["status"],
        )?;
        let attention_flagged_total = IntCounterVec::new(
            Opts::new(
                "attention_flagged_total",
                "Payments flagged as needing an operator (stuck after re-sends, waiting for a \
                 person, an unknown outcome, an amount the provider changed), by status",
            ),
            &["status"],
        )?;
        let payments_needing_attention = IntGauge::new(
            "payments_needing_attention",
            "Payments and refunds flagged as needing an operator (sagapayctl payments stuck)",
        )?;
        let payments_past_deadline = IntGauge::new(
            "payments_past_deadline",
            "Payments and refunds past their deadline, not yet re-sent or flagged",
        )?;
        let provider_amount_mismatches_total = IntCounterVec::new(
            Opts::new(
                "provider_amount_mismatches_total",
                "Provider answers whose amount or currency differ from the request (not applied)",
            ),
            &["operation"],
        )?;
        for c in [&deadline_nudges_total, &attention_flagged_total] {
            for status in PaymentStatus::ALL.iter().filter(|s| !s.is_terminal()) {
                c.with_label_values(&[status.as_str()]).inc_by(0);
            }
        }
        for what in ["authorization", "capture", "refund"] {
            provider_amount_mismatches_total
                .with_label_values(&[what])
                .inc_by(0);
        }
        registry.register(Box::new(deadline_nudges_total.clone()))?;
        registry.register(Box::new(attention_flagged_total.clone()))?;
        registry.register(Box::new(payments_needing_attention.clone()))?;
        registry.register(Box::new(payments_past_deadline.clone()))?;
        registry.register(Box::new(provider_amount_mismatches_total.clone()))?;
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
            deadline_nudges_total,
            attention_flagged_total,
            payments_needing_attention,
            payments_past_deadline,
            provider_amount_mismatches_total,
        })
    }
}

pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner,
        CONSUMES,
        PRODUCES,
    )
    .await?;
    let metrics = SagaMetrics::register(&platform.registry)?;
    let mut builder = platform.builder();
    if config.relay_enabled {
        platform.spawn_relay(&mut builder)?;
    }
    let admission = admission::Admission::register(
        &platform.registry,
        config.admission_max_in_flight,
        config.admission_merchant_max_in_flight,
    )?;
    let shell = saga::shell::Shell {
        outbox: platform.outbox.clone(),
        metrics,
        deadlines: config.deadlines.clone(),
        admission: admission.clone(),
    };
    let saga = Arc::new(saga::Saga {
        shell: shell.clone(),
    });
    platform.spawn_consumer(&mut builder, saga, CONSUMES)?;
    let sweeper = saga::sweeper::Sweeper {
        pool: platform.pool.clone(),
        shell: shell.clone(),
    };
    builder.spawn("deadline-sweeper", move |shutdown| sweeper.run(shutdown));
    let (sampler, pool) = (admission.clone(), platform.pool.clone());
    builder.spawn("admission-sampler", move |shutdown| {
        sampler.run(pool, shutdown)
    });
    let state = api::AppState {
        pool: platform.pool.clone(),
        shell,
        admission,
    };
    let ops = api::ops::routes(state.clone(), config.ops_key.clone());
    let router = platform.router(
        api::routes(
            state,
            config.trusted_callers.clone(),
            NonceStore::new(platform.pool.clone()),
        )
        .merge(ops),
    );
    builder
        .serve(config.common.http_addr, config.common.tls.clone(), router)
        .await
}
