use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use sagapay_domain::events::RiskApproved;
use sagapay_domain::Envelope;
use sagapay_e2e::{config, eventually, fresh_namespace, metric_value, read_until, topic_reader};
use sagapay_messaging::{
    ConsumerSettings, DeadLetter, Handler, HandlerError, InboxConsumer, MessageContext,
    MessagingMetrics,
};
use sqlx::PgConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Records each event it handles in `handled`, in the consumer's transaction, and counts it
/// in `effects` after that transaction commits; refuses one event as permanently wrong.
struct Recorder {
    refused: Uuid,
    effects: Arc<std::sync::Mutex<Vec<Uuid>>>,
}

impl Handler for Recorder {
    /// The new events of the batch, as `prepare` was given them.
    type Prepared = Vec<Uuid>;

    async fn prepare(
        &self,
        _conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<Vec<Uuid>, HandlerError> {
        let ids: Vec<Uuid> = envelopes.iter().map(|e| e.event_id).collect();
        let distinct: std::collections::HashSet<&Uuid> = ids.iter().collect();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "prepare is given each new event once"
        );
        Ok(ids)
    }

    async fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        envelope: &'a Envelope,
        ctx: &'a MessageContext,
        prepared: &'a mut Vec<Uuid>,
    ) -> Result<(), HandlerError> {
        // Taken, as a handler must: what it found prepared was loaded for this event.
        let was_prepared = prepared
            .iter()
            .position(|id| *id == envelope.event_id)
            .map(|at| prepared.swap_remove(at))
            .is_some();
        if envelope.event_id == self.refused {
            return Err(HandlerError::permanent(anyhow::anyhow!(
                "refused by the test"
            )));
        }
        sqlx::query("INSERT INTO handled (event_id, kafka_offset, prepared) VALUES ($1, $2, $3)")
            .bind(envelope.event_id)
            .bind(ctx.offset)
            .bind(was_prepared)
            .execute(conn)
            .await?;
        let (effects, event_id) = (self.effects.clone(), envelope.event_id);
        ctx.after_commit(move || effects.lock().unwrap().push(event_id));
        Ok(())
    }
}

/// Messages that wait for the same lane are committed together, and a batch that cannot
/// commit as a whole loses nothing: 30 events of one payment are on the topic before the
/// consumer starts (one lane, batches of up to 32); the 11th is refused by the handler and the
/// 21st repeats the 6th. Every other event is applied exactly once and in offset order, the
/// refused one is dead-lettered, the repeat is counted as a duplicate, batches of two or more
/// were committed, and the committed offset covers all 30 messages. Effects a handler asks to
/// run after commit ran once per applied event, although the first ten were handled in a
/// transaction that rolled back before they were committed again. The handler's `prepare` ran
/// for the committed batches with their new events, each once (the repeat is not new).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_commits_together_and_a_bad_message_in_it_costs_nothing() {
    let ns = fresh_namespace();
    let common = config("risk", &ns);
    let pool = sagapay_service_kit::db::prepare(&common, refinery::Runner::new(&[]))
        .await
        .unwrap();
    sqlx::query(
        "CREATE TABLE handled (event_id UUID NOT NULL, kafka_offset BIGINT NOT NULL,
                                prepared BOOLEAN NOT NULL)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let topic = ns.topic("risk.approved");
    common
        .kafka
        .ensure_topics(&[topic.clone(), ns.dead_letter_topic()])
        .await
        .unwrap();

    let payment_id = Uuid::now_v7();
    let mut envelopes: Vec<Envelope> = (0..30)
        .map(|i| {
            Envelope::new(
                payment_id,
                None,
                "batch",
                &RiskApproved {
                    reason: format!("event {i}"),
                },
            )
        })
        .collect();
    envelopes[20] = envelopes[5].clone();
    let refused = envelopes[10].event_id;
    let producer = common.kafka.producer("batch-test").unwrap();
    for env in &envelopes {
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&payment_id.to_string())
                    .payload(&env.to_json()),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("produce");
    }

    let registry = prometheus::Registry::new();
    let metrics = MessagingMetrics::register(&registry).unwrap();
    let group_id = ns.consumer_group("risk");
    let effects = Arc::new(std::sync::Mutex::new(Vec::new()));
    let consumer = InboxConsumer::new(
        &common.kafka,
        producer,
        pool.clone(),
        Arc::new(Recorder {
            refused,
            effects: effects.clone(),
        }),
        ConsumerSettings {
            consumer_name: "risk".into(),
            group_id,
            topics: vec![topic.clone()],
            handles: vec![sagapay_domain::EventType::RiskApproved],
            dead_letter_topic: ns.dead_letter_topic(),
            retry_initial: Duration::from_millis(50),
            retry_max: Duration::from_millis(200),
            retry_attempts: 10,
            retry_budget: Duration::from_secs(60),
            lanes: 1,
            max_batch: 32,
            linger: Duration::from_millis(5),
        },
        metrics.clone(),
    )
    .unwrap();
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(consumer.run(shutdown.clone()));

    let expected: Vec<Uuid> = envelopes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 10 && *i != 20)
        .map(|(_, e)| e.event_id)
        .collect();
    let handled: Vec<(Uuid, i64)> = eventually(
        Duration::from_secs(30),
        "the 28 applicable events to be handled",
        || async {
            let rows: Vec<(Uuid, i64)> =
                sqlx::query_as("SELECT event_id, kafka_offset FROM handled ORDER BY kafka_offset")
                    .fetch_all(&pool)
                    .await
                    .unwrap();
            (rows.len() >= expected.len()).then_some(rows)
        },
    )
    .await;
    let handled_ids: Vec<Uuid> = handled.iter().map(|(id, _)| *id).collect();
    assert_eq!(handled_ids, expected, "each applied once, in offset order");
    let prepared: i64 = sqlx::query_scalar("SELECT count(*) FROM handled WHERE prepared")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(
        prepared >= 2,
        "the events of a committed batch were prepared together ({prepared} were)"
    );
    let after_commit = eventually(
        Duration::from_secs(10),
        "after-commit effects of the 28 applied events",
        || {
            let seen = effects.lock().unwrap().clone();
            async move { (seen.len() >= 28).then_some(seen) }
        },
    )
    .await;
    assert_eq!(
        after_commit, expected,
        "after-commit effects ran once per applied event, never for a rolled-back attempt"
    );

    let reader = topic_reader(&ns, &ns.dead_letter_topic()).unwrap();
    let raw = read_until(&reader, Duration::from_secs(20), |_| true).await;
    let letter: DeadLetter = serde_json::from_slice(&raw).unwrap();
    assert_eq!(letter.event_id, Some(refused.to_string()));
    assert_eq!(letter.original_offset, 10);

    let text = || prometheus::TextEncoder::new().encode_to_string(&registry.gather());
    eventually(
        Duration::from_secs(10),
        "the duplicate to be counted",
        || {
            let t = text().unwrap();
            async move {
                let skipped = metric_value(
                    &t,
                    "duplicate_events_skipped_total{event_type=\"risk.approved\"}",
                );
                (skipped == 1.0).then_some(())
            }
        },
    )
    .await;
    let t = text().unwrap();
    assert!(
        metric_value(&t, "consumer_batch_size_count") >= 1.0,
        "at least one batch of two or more committed:\n{t}"
    );
    assert_eq!(
        metric_value(&t, "events_consumed_total{event_type=\"risk.approved\"}"),
        28.0
    );

    // Everything was finished, so the stored offset passes the last message.
    shutdown.cancel();
    running.await.unwrap().unwrap();
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(inbox, 28, "the refused event left no inbox row");
    let committed = committed_offset(&common.kafka, &ns.consumer_group("risk"), &topic).await;
    assert_eq!(committed, 30);

    pool.close().await;
    sagapay_e2e::cleanup_namespace(&ns).await;
}

/// The offsets group `group_id` committed on `topic`, summed over its partitions (the test's
/// messages share one key, so one partition holds them all and the others stay at 0).
async fn committed_offset(
    kafka: &sagapay_messaging::KafkaSettings,
    group_id: &str,
    topic: &str,
) -> i64 {
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
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}
