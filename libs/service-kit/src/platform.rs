//! What every service starts with: logging, its database, a Kafka producer, its topics, a
//! metrics registry, the outbox relay and an inbox consumer.

use crate::config::CommonConfig;
use crate::db;
use crate::http::{self, Readiness};
use crate::runtime::ServiceBuilder;
use axum::Router;
use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use sagapay_domain::EventType;
use sagapay_messaging::{
    ConsumerHealth, ConsumerSettings, Handler, InboxConsumer, MessagingMetrics, Outbox, OutboxRelay,
};
use sagapay_telemetry::HttpMetrics;
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;

pub struct Platform {
    pub config: CommonConfig,
    pub pool: PgPool,
    pub producer: FutureProducer,
    pub registry: Registry,
    pub messaging_metrics: MessagingMetrics,
    pub http_metrics: HttpMetrics,
    pub outbox: Outbox,
    /// The stalls of this service's consumers, for `/ready`.
    pub consumer_health: ConsumerHealth,
}

impl Platform {
    /// Prepares the database and Kafka for a service that consumes `consumes` and publishes
    /// `produces`. Topics (and the dead-letter topic) are created when absent.
    pub async fn init(
        config: CommonConfig,
        migrations: refinery::Runner,
        consumes: &[EventType],
        produces: &[EventType],
    ) -> anyhow::Result<Self> {
        sagapay_telemetry::init(config.service);
        let pool = db::prepare(&config, migrations).await?;
        let producer = config.kafka.producer(config.service)?;
        let mut topics: Vec<String> = consumes
            .iter()
            .chain(produces)
            .map(|t| config.topic(*t))
            .collect();
        topics.push(config.namespace.dead_letter_topic());
        topics.sort();
        topics.dedup();
        config.kafka.ensure_topics(&topics).await?;
        let registry = Registry::new_custom(
            None,
            Some(
                [("service".to_owned(), config.service.to_owned())]
                    .into_iter()
                    .collect(),
            ),
        )?;
        let messaging_metrics = MessagingMetrics::register(&registry)?;
        let http_metrics = HttpMetrics::register(&registry)?;
        let outbox = Outbox::new(config.namespace.clone());
        Ok(Self {
            config,
            pool,
            producer,
            registry,
            messaging_metrics,
            http_metrics,
            outbox,
            consumer_health: ConsumerHealth::default(),
        })
    }

    pub fn builder(&self) -> ServiceBuilder {
        ServiceBuilder::new(self.config.service)
    }

    /// Starts the outbox relay of this service's database.
    pub fn spawn_relay(&self, builder: &mut ServiceBuilder) {
        let relay = OutboxRelay::new(
            self.pool.clone(),
            self.producer.clone(),
            self.config.relay.clone(),
            self.messaging_metrics.clone(),
        );
        builder.spawn("outbox-relay", move |shutdown| relay.run(shutdown));
    }

    /// Starts an inbox consumer of `consumes` that runs `handler` in the configured number of
    /// lanes (`SAGAPAY_CONSUMER_LANES`).
    pub fn spawn_consumer<H: Handler>(
        &self,
        builder: &mut ServiceBuilder,
        handler: Arc<H>,
        consumes: &[EventType],
    ) -> anyhow::Result<()> {
        self.spawn_consumer_in_lanes(builder, handler, consumes, self.config.consumer_lanes)
    }

    /// Starts an inbox consumer of `consumes` that runs `handler` in `lanes` lanes, for a
    /// service whose handlers must not run in parallel with each other.
    pub fn spawn_consumer_in_lanes<H: Handler>(
        &self,
        builder: &mut ServiceBuilder,
        handler: Arc<H>,
        consumes: &[EventType],
        lanes: usize,
    ) -> anyhow::Result<()> {
        assert!(lanes >= 1, "a consumer needs at least one lane");
        let group_id = self.config.namespace.consumer_group(self.config.service);
        let settings = ConsumerSettings {
            consumer_name: self.config.service.to_owned(),
            group_id,
            topics: consumes.iter().map(|t| self.config.topic(*t)).collect(),
            dead_letter_topic: self.config.namespace.dead_letter_topic(),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            retry_attempts: self.config.consumer_retry_attempts,
            retry_budget: self.config.consumer_retry_budget,
            lanes,
            max_batch: self.config.consumer_batch,
        };
        self.messaging_metrics
            .expect_events(consumes.iter().map(|t| t.as_str()));
        let inbox = InboxConsumer::new(
            &self.config.kafka,
            self.producer.clone(),
            self.pool.clone(),
            handler,
            settings,
            self.messaging_metrics.clone(),
        )?
        .report_to(&self.consumer_health);
        builder.spawn("inbox-consumer", move |shutdown| inbox.run(shutdown));
        Ok(())
    }

    /// The service's whole router: its API plus `/health`, `/ready`, `/metrics`, instrumented.
    pub fn router(&self, api: Router) -> Router {
        let ops = http::ops_routes(
            self.config.service,
            self.registry.clone(),
            Readiness {
                pool: self.pool.clone(),
                producer: self.producer.clone(),
                consumers: self.consumer_health.clone(),
            },
        );
        http::instrument(api.merge(ops), self.http_metrics.clone())
    }
}
