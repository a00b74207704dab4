//! The inbox consumer against a real PostgreSQL and Kafka, with handlers that fail on
//! purpose: every class of database refusal is dead-lettered with its SQLSTATE and never
//! retried, a transient failure is retried within its budget and then dead-lettered as
//! RETRY_EXHAUSTED, and a rebalance in the middle of the work skips and repeats nothing.

use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sagapay_domain::events::RiskApproved;
use sagapay_domain::{Envelope, Namespace};
use sagapay_e2e::{config, eventually, fresh_namespace, metric_value, read_until, topic_reader};
use sagapay_messaging::{
    Classification, ConsumerSettings, DeadLetter, Handler, HandlerError, InboxConsumer,
    KafkaSettings, MessageContext, MessagingMetrics,
};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// Runs the SQL a message's `reason` names, so each message fails the way the test wants.
struct Refuser;

impl Handler for Refuser {
    type Prepared = ();

    async fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        envelope: &'a Envelope,
        ctx: &'a MessageContext,
        _prepared: &'a mut (),
    ) -> Result<(), HandlerError> {
        let command: RiskApproved = envelope.decode()?;
        let sql = match command.reason.as_str() {
            "ok" => "INSERT INTO target (id, n) VALUES ($1, 1)",
            "unique" => "INSERT INTO target (id, n) VALUES (-1, 1)",
            "check" => "INSERT INTO target (id, n) VALUES ($1, -1)",
            "not_null" => "INSERT INTO target (id, n) VALUES ($1, NULL)",
            "foreign_key" => "INSERT INTO child (target_id) VALUES ($1 + 1000000)",
            "truncation" => "INSERT INTO texts (short) VALUES ('too long' || $1::text)",
            "cast" => "SELECT ('abc' || $1::text)::int",
            "division" => "SELECT 1 / ($1 - $1)",
            "undefined_table" => "SELECT count(*) FROM no_such_table WHERE $1 > 0",
            "trigger" => "INSERT INTO guarded (id) VALUES ($1)",
            "nul_text" => {
                sqlx::query("INSERT INTO texts (long) VALUES ($1)")
                    .bind("a\u{0}b")
                    .execute(conn)
                    .await?;
                return Ok(());
            }
            "nul_jsonb" => {
                sqlx::query("INSERT INTO docs (doc) VALUES ($1)")
                    .bind(sqlx::types::Json(serde_json::json!({"k": "a\u{0}b"})))
                    .execute(conn)
                    .await?;
                return Ok(());
            }
            "timeout" => {
                sqlx::query("SET LOCAL statement_timeout = '50ms'")
                    .execute(&mut *conn)
                    .await?;
                "SELECT pg_sleep(1) WHERE $1 >= 0"
            }
            other => {
                return Err(HandlerError::permanent(anyhow::anyhow!(
                    "unknown command {other}"
                )))
            }
        };
        // Declared transient on purpose: what the error is decides, not how it was returned.
        sqlx::query(sql)
            .bind(ctx.offset)
            .execute(conn)
            .await
            .map_err(HandlerError::transient)?;
        Ok(())
    }
}

async fn prepare(ns: &Namespace, topic: &str, partitions: i32) -> (PgPool, KafkaSettings) {
    let mut common = config("risk", ns);
    common.kafka.partitions = partitions;
    let pool = sagapay_service_kit::db::prepare(&common, refinery::Runner::new(&[]))
        .await
        .unwrap();
    common
        .kafka
        .ensure_topics(&[topic.to_owned(), ns.dead_letter_topic()])
        .await
        .unwrap();
    (pool, common.kafka)
}

async fn produce(producer: &FutureProducer, topic: &str, key: &str, env: &Envelope) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(&env.to_json()),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce");
}

fn settings(ns: &Namespace, topic: &str, lanes: usize, max_batch: usize) -> ConsumerSettings {
    ConsumerSettings {
        consumer_name: "risk".into(),
        group_id: ns.consumer_group("risk"),
        topics: vec![topic.to_owned()],
        handles: vec![sagapay_domain::EventType::RiskApproved],
        dead_letter_topic: ns.dead_letter_topic(),
        retry_initial: Duration::from_millis(20),
        retry_max: Duration::from_millis(100),
        retry_attempts: 3,
        retry_budget: Duration::from_millis(300),
        lanes,
        max_batch,
        linger: Duration::ZERO,
    }
}

/// Each class of database refusal, declared transient by the handler, is dead-lettered
/// NON_RETRYABLE with its SQLSTATE at the first attempt; a statement timeout is retried in
/// place and dead-lettered RETRY_EXHAUSTED once its budget is spent; every good message
/// between them is applied, and the committed offset passes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_class_of_database_refusal_is_dead_lettered_with_its_sqlstate() {
    let ns = fresh_namespace();
    let topic = ns.topic("risk.approved");
    let (pool, kafka) = prepare(&ns, &topic, 1).await;
    sqlx::raw_sql(
        "CREATE TABLE target (id BIGINT PRIMARY KEY, n INT NOT NULL CHECK (n > 0));
         INSERT INTO target VALUES (-1, 1);
         CREATE TABLE child (target_id BIGINT REFERENCES target (id));
         CREATE TABLE texts (short VARCHAR(3), long TEXT);
         CREATE TABLE docs (doc JSONB);
         CREATE TABLE guarded (id BIGINT);
         CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'guarded rows are refused'; END $$;
         CREATE TRIGGER guard BEFORE INSERT ON guarded FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .execute(&pool)
    .await
    .unwrap();

    let expected: HashMap<&str, (&str, Classification)> = [
        ("unique", ("23505", Classification::NonRetryable)),
        ("check", ("23514", Classification::NonRetryable)),
        ("not_null", ("23502", Classification::NonRetryable)),
        ("foreign_key", ("23503", Classification::NonRetryable)),
        ("truncation", ("22001", Classification::NonRetryable)),
        ("cast", ("22P02", Classification::NonRetryable)),
        ("division", ("22012", Classification::NonRetryable)),
        ("nul_text", ("22021", Classification::NonRetryable)),
        ("nul_jsonb", ("22P05", Classification::NonRetryable)),
        ("undefined_table", ("42P01", Classification::NonRetryable)),
        ("trigger", ("P0001", Classification::NonRetryable)),
        ("timeout", ("57014", Classification::RetryExhausted)),
    ]
    .into_iter()
    .collect();
    let producer = kafka.producer("failures-test").unwrap();
    let payment_id = Uuid::now_v7();
    let mut commands = Vec::new();
    for poison in expected.keys() {
        commands.push("ok");
        commands.push(poison);
    }
    commands.push("ok");
    let mut ids = Vec::new();
    for command in &commands {
        let env = Envelope::new(
            payment_id,
            None,
            "failures",
            &RiskApproved {
                reason: (*command).to_owned(),
            },
        );
        produce(&producer, &topic, &payment_id.to_string(), &env).await;
        ids.push((env.event_id, *command));
    }

    let registry = prometheus::Registry::new();
    let metrics = MessagingMetrics::register(&registry).unwrap();
    let consumer = InboxConsumer::new(
        &kafka,
        producer,
        pool.clone(),
        Arc::new(Refuser),
        settings(&ns, &topic, 1, 1),
        metrics,
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));

    let reader = topic_reader(&ns, &ns.dead_letter_topic()).unwrap();
    let mut letters = HashMap::new();
    while letters.len() < expected.len() {
        let raw = read_until(&reader, WAIT, |_| true).await;
        let letter: DeadLetter = serde_json::from_slice(&raw).unwrap();
        let command = ids
            .iter()
            .find(|(id, _)| Some(id.to_string()) == letter.event_id)
            .map(|(_, c)| *c)
            .expect("a letter of a sent message");
        letters.insert(command, letter);
    }
    for (command, (sqlstate, classification)) in &expected {
        let letter = &letters[command];
        assert_eq!(
            letter.sqlstate.as_deref(),
            Some(*sqlstate),
            "{command}: {}",
            letter.error
        );
        assert_eq!(
            letter.classification, *classification,
            "{command}: {}",
            letter.error
        );
        let attempts = letter.attempts.unwrap();
        match classification {
            Classification::NonRetryable => assert_eq!(attempts, 1, "{command}: never retried"),
            Classification::RetryExhausted => assert!(attempts >= 3, "{command}: {attempts}"),
        }
    }
    let applied: i64 = eventually(WAIT, "every good message applied", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM target WHERE id >= 0")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == expected.len() as i64 + 1).then_some(n)
    })
    .await;
    assert_eq!(applied, expected.len() as i64 + 1);
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    let timeout_attempts = letters["timeout"].attempts.unwrap();
    assert_eq!(
        metric_value(&text, "handler_retries_total{event_type=\"risk.approved\"}"),
        f64::from(timeout_attempts - 1),
        "only the timeout was retried"
    );
    assert_eq!(
        metric_value(
            &text,
            "dlq_published_total{classification=\"NON_RETRYABLE\"}"
        ),
        11.0
    );
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let committed = committed_offsets(&kafka, &ns.consumer_group("risk"), &topic).await;
    assert_eq!(
        committed,
        vec![commands.len() as i64],
        "every message passed"
    );
    pool.close().await;
    sagapay_e2e::cleanup_namespace(&ns).await;
}

/// Applies each event by recording it (with the consumer that applied it), slowly, so that
/// batches are in flight when the group changes.
struct SlowRecorder {
    name: &'static str,
}

impl Handler for SlowRecorder {
    type Prepared = ();

    async fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        envelope: &'a Envelope,
        ctx: &'a MessageContext,
        _prepared: &'a mut (),
    ) -> Result<(), HandlerError> {
        sqlx::query(
            "INSERT INTO handled (event_id, consumer, kafka_partition, kafka_offset)
             SELECT $1, $2, $3, $4 FROM pg_sleep(0.02)",
        )
        .bind(envelope.event_id)
        .bind(self.name)
        .bind(ctx.partition)
        .bind(ctx.offset)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Two consumers of one group share four partitions; the second joins while the first is
/// busy, then the first leaves in the middle of its batches. Every event is applied exactly
/// once (no skipped offset, nothing twice), both did part of the work, and the group's
/// committed offsets reach the end of every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_in_the_middle_of_batches_skips_and_repeats_nothing() {
    let ns = fresh_namespace();
    let topic = ns.topic("risk.approved");
    let (pool, kafka) = prepare(&ns, &topic, 4).await;
    sqlx::query(
        "CREATE TABLE handled (event_id UUID NOT NULL, consumer TEXT NOT NULL,
                               kafka_partition INT NOT NULL, kafka_offset BIGINT NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let total = 800;
    let producer = kafka.producer("rebalance-test").unwrap();
    for i in 0..total {
        let key = format!("payment-{}", i % 40);
        let env = Envelope::new(
            Uuid::now_v7(),
            None,
            "rebalance",
            &RiskApproved {
                reason: format!("event {i}"),
            },
        );
        produce(&producer, &topic, &key, &env).await;
    }
    let start = |name: &'static str| {
        let consumer = InboxConsumer::new(
            &kafka,
            producer.clone(),
            pool.clone(),
            Arc::new(SlowRecorder { name }),
            settings(&ns, &topic, 2, 8),
            MessagingMetrics::register(&prometheus::Registry::new()).unwrap(),
        )
        .unwrap();
        let shutdown = CancellationToken::new();
        (tokio::spawn(consumer.run(shutdown.clone())), shutdown)
    };
    let handled = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM handled")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let (first, stop_first) = start("first");
    eventually(WAIT, "the first consumer to be busy", || async {
        (handled().await >= 40).then_some(())
    })
    .await;
    let (second, stop_second) = start("second");
    let by_second = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM handled WHERE consumer = 'second'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    eventually(WAIT, "the second consumer to get partitions", || async {
        (by_second().await >= 10).then_some(())
    })
    .await;
    assert!(
        handled().await < total,
        "the first left with work in flight"
    );
    stop_first.cancel();
    first.await.unwrap().unwrap();
    eventually(WAIT, "every event to be handled", || async {
        (handled().await >= total).then_some(())
    })
    .await;
    // Let a repeat, if there were one, arrive before counting.
    eventually(
        WAIT,
        "the group's committed offsets to reach the end",
        || async {
            let ends = end_offsets(&kafka, &topic).await;
            (committed_offsets(&kafka, &ns.consumer_group("risk"), &topic).await == ends)
                .then_some(())
        },
    )
    .await;
    stop_second.cancel();
    second.await.unwrap().unwrap();
    let (rows, distinct, firsts): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT event_id), count(*) FILTER (WHERE consumer = 'first')
           FROM handled",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(distinct, total, "no event was skipped");
    assert_eq!(rows, total, "no event was applied twice");
    assert!(
        firsts > 0 && firsts < total,
        "both consumers worked: first {firsts}"
    );
    pool.close().await;
    sagapay_e2e::cleanup_namespace(&ns).await;
}

/// The offsets group `group_id` committed on each partition of `topic` (0 where none).
async fn committed_offsets(kafka: &KafkaSettings, group_id: &str, topic: &str) -> Vec<i64> {
    use rdkafka::consumer::Consumer;
    use rdkafka::{Offset, TopicPartitionList};
    let probe = kafka.consumer(group_id, "offset-probe").unwrap();
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut list = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        list.add_partition(topic, p.id());
    }
    let committed = probe
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap();
    let mut out: Vec<(i32, i64)> = committed
        .elements()
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            };
            (e.partition(), offset)
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, o)| o).collect()
}

/// The high watermark of each partition of `topic`.
async fn end_offsets(kafka: &KafkaSettings, topic: &str) -> Vec<i64> {
    use rdkafka::consumer::Consumer;
    let probe = kafka
        .consumer("watermark-probe", "watermark-probe")
        .unwrap();
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut partitions: Vec<i32> = metadata.topics()[0]
        .partitions()
        .iter()
        .map(|p| p.id())
        .collect();
    partitions.sort();
    partitions
        .into_iter()
        .map(|p| {
            probe
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect()
}
