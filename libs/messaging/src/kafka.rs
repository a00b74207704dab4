//! Kafka clients with SagaPay's settings: an idempotent producer tuned for low latency, consumers
//! that store offsets only after their transaction committed, and topic administration.

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::FutureProducer;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// Partitions of the topics a service creates when they are absent.
    pub partitions: i32,
    /// librdkafka properties set on producers after SagaPay's own (operator tuning).
    pub producer_overrides: Vec<(String, String)>,
    /// librdkafka properties set on consumers after SagaPay's own.
    pub consumer_overrides: Vec<(String, String)>,
    /// librdkafka properties of every client (producers, consumers, topic administration):
    /// the connection's security (`security.protocol`, `sasl.mechanism`, `sasl.username`,
    /// `sasl.password`, ...).
    pub client_overrides: Vec<(String, String)>,
    /// Replicas of the topics a service creates (1 on the one-broker local stack).
    pub replication_factor: i32,
}

/// Parses `key=value,key=value` (librdkafka property overrides); empty input gives none.
pub fn parse_overrides(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => anyhow::bail!("{pair:?} is not key=value"),
        })
        .collect()
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            partitions: 12,
            producer_overrides: Vec::new(),
            consumer_overrides: Vec::new(),
            client_overrides: Vec::new(),
            replication_factor: 1,
        }
    }
}

impl KafkaSettings {
    fn base(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.brokers)
            .set("socket.nagle.disable", "true")
            // Reconnect to a broker that went away at least twice a second (librdkafka's
            // default backs off to 10 s), and back off failed requests as little: after a
            // broker restart every client is back within half a second of the broker, not up
            // to 10 s later (docs/architecture.md, "Recovery").
            .set("reconnect.backoff.max.ms", "500")
            .set("retry.backoff.max.ms", "500")
            .set("log_level", "4");
        for (k, v) in &self.client_overrides {
            cfg.set(k, v);
        }
        cfg
    }

    /// An idempotent producer: `acks=all`, no duplicates or reordering on internal retries.
    /// `linger.ms` stays small: latency matters more than batch size at our rates, and the
    /// relay hands librdkafka whole batches anyway.
    pub fn producer(&self, client_id: &str) -> anyhow::Result<FutureProducer> {
        let mut cfg = self.base();
        cfg.set("client.id", client_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "1")
            .set("message.timeout.ms", "30000")
            .set("request.timeout.ms", "10000");
        for (k, v) in &self.producer_overrides {
            cfg.set(k, v);
        }
        cfg.create().context("creating Kafka producer")
    }

    /// A producer for a service that writes no event (the gateway): a client that watches the
    /// cluster for readiness. Not idempotent: an idempotent producer asks the broker for a
    /// producer id as soon as it connects, and the broker refuses that to a principal allowed
    /// to write nowhere (`crate::acl`); the producer would fail fatally.
    pub fn observer(&self, client_id: &str) -> anyhow::Result<FutureProducer> {
        let mut cfg = self.base();
        cfg.set("client.id", client_id)
            .set("enable.idempotence", "false");
        cfg.create().context("creating Kafka client")
    }

    /// A consumer of group `group_id` that commits, in the background, only offsets the
    /// application stored after its database transaction committed.
    pub fn consumer(&self, group_id: &str, client_id: &str) -> anyhow::Result<StreamConsumer> {
        self.consumer_config(group_id, client_id)
            .create()
            .context("creating Kafka consumer")
    }

    /// [`KafkaSettings::consumer`] with a context of its own (rebalance callbacks).
    pub fn consumer_with_context<C: ConsumerContext + 'static>(
        &self,
        group_id: &str,
        client_id: &str,
        context: C,
    ) -> anyhow::Result<StreamConsumer<C>> {
        self.consumer_config(group_id, client_id)
            .create_with_context(context)
            .context("creating Kafka consumer")
    }

    fn consumer_config(&self, group_id: &str, client_id: &str) -> ClientConfig {
        let mut cfg = self.base();
        cfg.set("group.id", group_id)
            .set("client.id", client_id)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "500")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // A fetch returns as soon as one byte is there (fetch.min.bytes = 1), so a long
            // wait costs no latency; it only spares an idle consumer a fetch every 50 ms.
            .set("fetch.wait.max.ms", "500")
            .set("partition.assignment.strategy", "cooperative-sticky")
            // After a failed fetch (the broker away), try again soon (default 500 ms).
            .set("fetch.error.backoff.ms", "100")
            // Belt and braces for topics created after the subscription: notice them soon.
            .set("topic.metadata.refresh.interval.ms", "10000");
        for (k, v) in &self.consumer_overrides {
            cfg.set(k, v);
        }
        cfg
    }

    pub(crate) fn admin(&self) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        self.base().create().context("creating Kafka admin client")
    }

    /// Creates the topics that do not exist yet, with `replication_factor` replicas.
    pub async fn ensure_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        if topics.is_empty() {
            return Ok(());
        }
        let admin = self.admin()?;
        let new_topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.partitions,
                    TopicReplication::Fixed(self.replication_factor),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
        let results = admin
            .create_topics(new_topics.iter(), &opts)
            .await
            .context("creating topics")?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => anyhow::bail!("could not create topic {topic}: {code}"),
            }
        }
        // A consumer that subscribes before the broker's metadata shows a new topic leaves it
        // out of its assignment until its next metadata refresh. Wait until every topic is
        // visible with all its partitions.
        let wanted = topics.to_vec();
        tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                let missing = missing_topics(admin.inner(), &wanted);
                if missing.is_empty() {
                    return Ok(());
                }
                if std::time::Instant::now() > deadline {
                    anyhow::bail!("topics not visible in metadata after 30 s: {missing:?}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .await
        .context("metadata wait task")?
    }

    /// Deletes topics (test clean-up).
    pub async fn delete_topics(&self, topics: &[String]) -> anyhow::Result<()> {
        let admin = self.admin()?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        admin
            .delete_topics(&names, &AdminOptions::new())
            .await
            .context("deleting topics")?;
        Ok(())
    }
}

/// Topics of `wanted` that the cluster's metadata does not show (with partitions) yet.
fn missing_topics<C: rdkafka::client::ClientContext>(
    client: &rdkafka::client::Client<C>,
    wanted: &[String],
) -> Vec<String> {
    match client.fetch_metadata(None, Duration::from_secs(5)) {
        Ok(md) => wanted
            .iter()
            .filter(|t| {
                !md.topics().iter().any(|m| {
                    m.name() == t.as_str() && m.error().is_none() && !m.partitions().is_empty()
                })
            })
            .cloned()
            .collect(),
        Err(_) => wanted.to_vec(),
    }
}

/// True when the cluster answers a metadata request within `timeout`.
pub async fn reachable(producer: &FutureProducer, timeout: Duration) -> bool {
    use rdkafka::producer::Producer;
    let client = producer.clone();
    tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, timeout).is_ok())
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::parse_overrides;

    #[test]
    fn overrides_parse_as_key_value_pairs() {
        assert_eq!(parse_overrides("").unwrap(), vec![]);
        assert_eq!(
            parse_overrides(" linger.ms=5, fetch.wait.max.ms = 10 ,").unwrap(),
            vec![
                ("linger.ms".to_owned(), "5".to_owned()),
                ("fetch.wait.max.ms".to_owned(), "10".to_owned())
            ]
        );
        assert!(parse_overrides("linger.ms").is_err());
        assert!(parse_overrides("=5").is_err());
    }

    /// The build carries TLS and SASL: a client configured for an authenticated, encrypted
    /// cluster is created (librdkafka refuses `SASL_SSL` outright when built without OpenSSL).
    /// Nothing connects: the broker address is never dialled before the test ends.
    #[tokio::test]
    async fn clients_accept_sasl_over_tls() {
        let settings = super::KafkaSettings {
            brokers: "kafka.invalid:9093".into(),
            client_overrides: parse_overrides(
                "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=sagapay,\
                 sasl.password=secret,ssl.endpoint.identification.algorithm=https",
            )
            .unwrap(),
            ..Default::default()
        };
        let _producer = settings.producer("tls-check").expect("a SASL_SSL producer");
        let _consumer = settings
            .consumer("tls-check", "tls-check")
            .expect("a SASL_SSL consumer");
    }
}
