use sagapay_domain::events::RiskApproved;
use sagapay_domain::Envelope;
use sagapay_e2e::{
    config, eventually, fresh_namespace, read_until, topic_reader, StackOptions, TestStack,
};
use sagapay_messaging::{MessageHeaders, MessagingMetrics, Outbox, OutboxRelay, RelaySettings};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// The orchestrator commits a payment and its `payments.requested` row, but its relay is not
/// running: nothing is published. A new orchestrator instance (relay on) publishes the row and
/// the payment completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_stopped_between_commit_and_publish_loses_nothing_once_it_runs_again() {
    let mut stack = TestStack::spawn_with(StackOptions {
        orchestrator_relay_disabled: true,
        ..StackOptions::default()
    })
    .await;
    let payment_id = stack
        .create_payment_id(json!({
            "customer_id": "cust-relay", "amount_cents": 999, "currency": "GBP",
            "idempotency_key": "relay-1"
        }))
        .await;
    let orch = stack.db("orchestrator").await;
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE message_key = $1 AND published_at IS NULL",
    )
    .bind(&payment_id)
    .fetch_one(&orch)
    .await
    .unwrap();
    assert_eq!(unpublished, 1, "the event is committed but not published");
    assert_eq!(stack.get_payment(&payment_id).await["status"], "CREATED");

    stack.restart_orchestrator().await;
    stack
        .wait_for_status(&payment_id, "SETTLED", Duration::from_secs(30))
        .await;
    stack.teardown().await;
}

/// A relay claims a batch and dies before publishing. Its claim protects the rows from other
/// relays until it expires; then another relay publishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_claimed_by_a_crashed_relay_are_published_after_the_claim_expires() {
    let (ns, common, pool, topic) = outbox_only_namespace().await;

    let envelope = Envelope::new(
        Uuid::now_v7(),
        None,
        "corr",
        &RiskApproved { reason: "t".into() },
    );
    let mut tx = pool.begin().await.unwrap();
    Outbox::new(ns.clone())
        .enqueue(&mut tx, &envelope, &MessageHeaders::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let registry = prometheus::Registry::new();
    let metrics = MessagingMetrics::register(&registry).unwrap();
    let settings = RelaySettings {
        claim_timeout: Duration::from_secs(1),
        ..RelaySettings::default()
    };
    let producer = common.kafka.producer("relay-test").unwrap();
    let crashed = OutboxRelay::new(
        pool.clone(),
        producer.clone(),
        settings.clone(),
        metrics.clone(),
    );
    let batch = crashed.claim_batch().await.unwrap();
    assert_eq!(batch.rows.len(), 1);
    assert_eq!(batch.rows[0].event_id, envelope.event_id);
    drop(batch); // the relay dies holding the claim

    let survivor = OutboxRelay::new(pool.clone(), producer, settings, metrics);
    assert_eq!(
        survivor.relay_once().await.unwrap(),
        0,
        "a live claim keeps the row from other relays"
    );
    eventually(
        Duration::from_secs(10),
        "the claim to expire and the row to be published",
        || async { (survivor.relay_once().await.unwrap() == 1).then_some(()) },
    )
    .await;
    let published: bool =
        sqlx::query_scalar("SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1")
            .bind(envelope.event_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(published);

    let reader = topic_reader(&ns, &topic).unwrap();
    let id = envelope.event_id.to_string();
    let payload = read_until(&reader, Duration::from_secs(20), |p| {
        Envelope::from_json(p)
            .map(|e| e.event_id.to_string() == id)
            .unwrap_or(false)
    })
    .await;
    assert_eq!(Envelope::from_json(&payload).unwrap(), envelope);

    pool.close().await;
    sagapay_e2e::cleanup_namespace(&ns).await;
}

/// A running relay marks delivered rows with its next claim (one statement for both), so the
/// mark of a row waits for the next commit's notification; at shutdown it writes the marks it
/// still holds. Both timers are set far out, so only a claim or the shutdown can mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivered_rows_are_marked_by_the_next_claim_and_at_shutdown() {
    let (ns, common, pool, topic) = outbox_only_namespace().await;
    let registry = prometheus::Registry::new();
    let metrics = MessagingMetrics::register(&registry).unwrap();
    let relay = OutboxRelay::new(
        pool.clone(),
        common.kafka.producer("relay-test").unwrap(),
        RelaySettings {
            poll_interval: Duration::from_secs(600),
            mark_delay: Duration::from_secs(600),
            ..RelaySettings::default()
        },
        metrics,
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let reader = topic_reader(&ns, &topic).unwrap();
    let outbox = Outbox::new(ns.clone());
    let published = |event_id: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT published_at IS NOT NULL FROM outbox WHERE event_id = $1",
            )
            .bind(event_id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let commit_and_read = |reason: &'static str| {
        let (pool, outbox, reader) = (pool.clone(), outbox.clone(), &reader);
        async move {
            let envelope = Envelope::new(
                Uuid::now_v7(),
                None,
                "corr",
                &RiskApproved {
                    reason: reason.into(),
                },
            );
            let mut tx = pool.begin().await.unwrap();
            outbox
                .enqueue(&mut tx, &envelope, &MessageHeaders::default())
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let id = envelope.event_id.to_string();
            read_until(reader, Duration::from_secs(20), |p| {
                Envelope::from_json(p)
                    .map(|e| e.event_id.to_string() == id)
                    .unwrap_or(false)
            })
            .await;
            envelope.event_id
        }
    };

    // The relay has not started listening before its first pass; wait for that pass.
    eventually(Duration::from_secs(10), "the relay to listen", || {
        let pool = pool.clone();
        async move {
            let listening: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND query LIKE 'LISTEN%'",
            )
            .fetch_one(&pool)
            .await
            .unwrap();
            (listening > 0).then_some(())
        }
    })
    .await;
    let first = commit_and_read("first").await;
    assert!(
        !published(first).await,
        "delivered, and its mark waits for the next claim"
    );
    let second = commit_and_read("second").await;
    eventually(
        Duration::from_secs(10),
        "the claim of the second row to mark the first",
        || async { published(first).await.then_some(()) },
    )
    .await;
    assert!(!published(second).await);

    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert!(published(second).await, "marked at shutdown");

    pool.close().await;
    sagapay_e2e::cleanup_namespace(&ns).await;
}

/// A fresh namespace with only the messaging tables in the orchestrator's database (outbox,
/// inbox) and its `risk.approved` topic.
async fn outbox_only_namespace() -> (
    sagapay_domain::Namespace,
    sagapay_service_kit::CommonConfig,
    sqlx::PgPool,
    String,
) {
    let ns = fresh_namespace();
    let common = config("orchestrator", &ns);
    let pool = sagapay_service_kit::db::prepare(&common, refinery::Runner::new(&[]))
        .await
        .unwrap();
    let topic = ns.topic("risk.approved");
    common
        .kafka
        .ensure_topics(std::slice::from_ref(&topic))
        .await
        .unwrap();
    (ns, common, pool, topic)
}
