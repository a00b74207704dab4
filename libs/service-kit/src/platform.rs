//! What every service starts with: logging, its database, a Kafka producer, its topics, a
//! metrics registry, the outbox relay and an inbox consumer.

use crate::config::CommonConfig;
use crate::http::{self, Readiness};
use crate::runtime::{ServiceBuilder, TaskHealth};
use crate::{db, startup};
use axum::Router;
use prometheus::Registry;
use rdkafka::producer::FutureProducer;
use sagapay_domain::{Channel, EventType};
use sagapay_messaging::{
    ConsumerHealth, ConsumerSettings, Handler, InboxConsumer, MessagingMetrics, Outbox,
    OutboxRelay, RelayProducer,
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
    /// The stalls of this service's consumers, and whether they run, for `/ready`.
    pub consumer_health: ConsumerHealth,
    /// Whether each background task still runs, for `/ready`.
    pub task_health: TaskHealth,
}

impl Platform {
    /// Prepares the database and Kafka for a service that consumes `consumes` and publishes
    /// `produces` (waiting for each to answer, see [`crate::startup`]). Topics (and, for a
    /// consumer, the dead-letter topic) are created when absent. `migrations` makes the service's
    /// migration runner (once per attempt).
    pub async fn init(
        config: CommonConfig,
        migrations: fn() -> refinery::Runner,
        consumes: &[EventType],
        produces: &[EventType],
    ) -> anyhow::Result<Self> {
        sagapay_telemetry::init(config.service, config.instance_id.as_deref());
        let pool = startup::wait_for(
            "PostgreSQL",
            config.startup_wait,
            startup::postgres_may_pass,
            || db::prepare(&config, migrations()),
        )
        .await?;
        let producer = if consumes.is_empty() && produces.is_empty() {
            config.kafka.observer(config.service)?
        } else {
            config.kafka.producer(config.service)?
        };
        let mut topics: Vec<String> = consumes
            .iter()
            .chain(produces)
            .map(|t| config.topic(*t))
            .collect();
        // A consumer's poison goes to the dead-letter topic; a service that consumes nothing
        // (the gateway) has none to send, and no right to write there
        // (`sagapay_messaging::acl`).
        if !consumes.is_empty() {
            topics.push(config.namespace.dead_letter_topic());
        }
        topics.sort();
        topics.dedup();
        startup::wait_for(
            "Kafka",
            config.startup_wait,
            startup::kafka_may_pass,
            || config.kafka.ensure_topics(&topics),
        )
        .await?;
        let mut labels: std::collections::HashMap<String, String> =
            [("service".to_owned(), config.service.to_owned())].into();
        if let Some(instance) = &config.instance_id {
            labels.insert("service_instance".to_owned(), instance.clone());
        }
        let registry = Registry::new_custom(None, Some(labels))?;
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
            task_health: TaskHealth::default(),
        })
    }

    pub fn builder(&self) -> ServiceBuilder {
        let mut builder = ServiceBuilder::new(self.config.service, self.task_health.clone());
        watch_producer(&mut builder, self.producer.clone());
        builder
    }

    /// Starts the outbox relay of this service's database, with a producer of its own that it
    /// replaces when it fails or stalls (`sagapay_messaging::relay_producer`).
    pub fn spawn_relay(&self, builder: &mut ServiceBuilder) -> anyhow::Result<()> {
        let producer = RelayProducer::replaceable(
            &self.config.kafka,
            &format!("{}-relay", self.config.service),
        )?;
        let relay = OutboxRelay::with_producer(
            self.pool.clone(),
            producer,
            self.config.relay.clone(),
            self.messaging_metrics.clone(),
        );
        builder.spawn("outbox-relay", move |shutdown| relay.run(shutdown));
        Ok(())
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

    /// Starts the inbox consumers of `consumes`, each running `handler` in `lanes` lanes (one
    /// lane: for a service whose handlers must not run in parallel with each other).
    ///
    /// One consumer, and one consumer group, per channel the service reads: `<ns>.<service>`
    /// for its own channel, `<ns>.<service>.<channel>` for a stream it follows. So each
    /// channel's partitions are shared evenly between the service's instances (a group
    /// reading several topics balances partition counts across all of them, and could give
    /// one instance all of the busy topic).
    pub fn spawn_consumer_in_lanes<H: Handler>(
        &self,
        builder: &mut ServiceBuilder,
        handler: Arc<H>,
        consumes: &[EventType],
        lanes: usize,
    ) -> anyhow::Result<()> {
        assert!(lanes >= 1, "a consumer needs at least one lane");
        self.messaging_metrics
            .expect_events(consumes.iter().map(|t| t.as_str()));
        let mut channels: Vec<Channel> = consumes.iter().map(|t| t.channel()).collect();
        channels.sort();
        channels.dedup();
        for channel in channels {
            let ns = &self.config.namespace;
            let group_id = if channel.is_stream() {
                format!(
                    "{}.{}",
                    ns.consumer_group(self.config.service),
                    channel.as_str()
                )
            } else {
                ns.consumer_group(self.config.service)
            };
            let settings = ConsumerSettings {
                consumer_name: self.config.service.to_owned(),
                group_id,
                topics: vec![ns.channel_topic(channel)],
                handles: consumes
                    .iter()
                    .copied()
                    .filter(|t| t.channel() == channel)
                    .collect(),
                dead_letter_topic: ns.dead_letter_topic(),
                retry_initial: Duration::from_millis(100),
                retry_max: Duration::from_secs(5),
                retry_attempts: self.config.consumer_retry_attempts,
                retry_budget: self.config.consumer_retry_budget,
                lanes,
                max_batch: self.config.consumer_batch,
                linger: self.config.consumer_linger,
            };
            // Static group membership: a restarted instance takes its partitions back at
            // once, without waiting for the group to notice it left.
            let mut kafka = self.config.kafka.clone();
            if let Some(instance) = &self.config.instance_id {
                kafka.consumer_overrides.insert(
                    0,
                    (
                        "group.instance.id".to_owned(),
                        format!("{}-{instance}", self.config.service),
                    ),
                );
            }
            let inbox = InboxConsumer::new(
                &kafka,
                self.producer.clone(),
                self.pool.clone(),
                handler.clone(),
                settings,
                self.messaging_metrics.clone(),
            )?
            .report_to(&self.consumer_health);
            builder.spawn("inbox-consumer", move |shutdown| inbox.run(shutdown));
        }
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
                tasks: self.task_health.clone(),
            },
        );
        http::instrument(
            api.merge(ops),
            self.http_metrics.clone(),
            self.config.http_limits,
        )
    }
}

/// How often the producer is asked whether it failed fatally.
const PRODUCER_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A task that ends, with the error, when the service's Kafka producer fails fatally (an
/// idempotent producer whose sequence librdkafka cannot repair: it would never deliver
/// again). The producer is shared by the relay, the dead-letter publisher and readiness, so
/// it is not replaced in place: the process stops with the reason in its log and its
/// supervisor starts a new one (a fresh producer id; the outbox keeps what was not sent).
fn watch_producer(builder: &mut ServiceBuilder, producer: FutureProducer) {
    use rdkafka::producer::Producer;
    builder.spawn("kafka-producer-watch", move |shutdown| async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(PRODUCER_CHECK_INTERVAL) => {}
            }
            if let Some((code, reason)) = producer.client().fatal_error() {
                anyhow::bail!("the Kafka producer failed fatally ({code:?}: {reason}); stopping so the supervisor restarts the service");
            }
        }
    });
}
