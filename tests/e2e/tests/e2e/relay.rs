use sagapay_domain::events::RiskApproved;
use sagapay_domain::Envelope;
use sagapay_e2e::{
    config, eventually, fresh_namespace, read_until, topic_reader, StackOptions, TestStack,
};
use sagapay_messaging::{
    MessageHeaders, MessagingMetrics, Outbox, OutboxRelay, RelayProducer, RelaySettings,
};
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
    // Long enough that the survivor's first try surely falls inside the claim on a busy
    // machine; the wait for its expiry below is longer still.
    let settings = RelaySettings {
        claim_timeout: Duration::from_secs(5),
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
        Duration::from_secs(20),
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
    let commit = |reason: &'static str| {
        let (pool, outbox) = (pool.clone(), outbox.clone());
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
            envelope.event_id
        }
    };
    let read = |event_id: Uuid| {
        let reader = &reader;
        async move {
            let id = event_id.to_string();
            read_until(reader, Duration::from_secs(20), |p| {
                Envelope::from_json(p)
                    .map(|e| e.event_id.to_string() == id)
                    .unwrap_or(false)
            })
            .await;
            event_id
        }
    };
    let commit_and_read = |reason: &'static str| async move { read(commit(reason).await).await };

    // A row waiting before the relay starts: its first pass (after it listens) publishes it,
    // and with it read, that pass is over and no notification is pending (the row's was sent
    // before anyone listened). From here on, each claim follows a notification.
    let zeroth = commit("zeroth").await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    read(zeroth).await;
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

/// librdkafka declares the relay's idempotent producer failed for good (injected as librdkafka
/// would raise it on a sequence it cannot repair): every send fails from then on. The relay
/// replaces it with a new producer, and the row waiting is published; nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_replaces_a_producer_that_failed_fatally_and_publishes_what_waited() {
    use rdkafka::producer::Producer;
    let (ns, common, pool, topic) = outbox_only_namespace().await;
    let registry = prometheus::Registry::new();
    let metrics = MessagingMetrics::register(&registry).unwrap();
    let relay = OutboxRelay::with_producer(
        pool.clone(),
        RelayProducer::replaceable(&common.kafka, "relay-test").unwrap(),
        RelaySettings::default(),
        metrics.clone(),
    );
    let broken = relay.producer();
    let reason = std::ffi::CString::new("injected by the test").unwrap();
    // SAFETY: the client pointer is live (`broken` holds the producer) and the reason is a
    // NUL-terminated string that outlives the call, which copies it.
    unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            broken.client().native_ptr(),
            rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
            reason.as_ptr(),
        );
    }
    assert!(
        broken.client().fatal_error().is_some(),
        "the injection took"
    );

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
    let reader = topic_reader(&ns, &topic).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(relay.run(shutdown.clone()));
    let id = envelope.event_id.to_string();
    read_until(&reader, Duration::from_secs(30), |p| {
        Envelope::from_json(p)
            .map(|e| e.event_id.to_string() == id)
            .unwrap_or(false)
    })
    .await;
    assert_eq!(metrics.outbox_producer_replacements_total.get(), 1);
    shutdown.cancel();
    running.await.unwrap().unwrap();
    drop(broken);
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

/// An outbox row larger than the broker accepts (a bug upstream) is parked with its error and
/// counted; it never holds up the rows behind it, so payments keep settling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outbox_row_the_broker_refuses_is_parked_and_the_relay_goes_on() {
    let stack = TestStack::spawn().await;
    let orchestrator = stack.db("orchestrator").await;
    let mut huge = Envelope::new(
        Uuid::now_v7(),
        None,
        "huge",
        &RiskApproved { reason: "x".into() },
    );
    huge.payload["reason"] = json!("x".repeat(1_500_000));
    let mut tx = orchestrator.begin().await.unwrap();
    Outbox::new(stack.ns.clone())
        .enqueue(&mut tx, &huge, &MessageHeaders::default())
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let after = stack.settled_payment("after-huge", 1_300, "USD").await;
    let (parked_at, error): (Option<chrono::DateTime<chrono::Utc>>, Option<String>) = eventually(
        Duration::from_secs(30),
        "the huge row to be parked",
        || async {
            let row: (Option<chrono::DateTime<chrono::Utc>>, Option<String>) =
                sqlx::query_as("SELECT parked_at, last_error FROM outbox WHERE event_id = $1")
                    .bind(huge.event_id)
                    .fetch_one(&orchestrator)
                    .await
                    .unwrap();
            row.0.is_some().then_some(row)
        },
    )
    .await;
    assert!(parked_at.is_some());
    let error = error.unwrap_or_default();
    assert!(error.contains("refused by the broker"), "{error}");
    assert!(error.contains("too large"), "{error}");
    let published: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT published_at FROM outbox WHERE event_id = $1")
            .bind(huge.event_id)
            .fetch_one(&orchestrator)
            .await
            .unwrap();
    assert_eq!(published, None, "parked, not published");
    assert_eq!(
        stack
            .metric(
                "orchestrator",
                "outbox_parked_total{service=\"orchestrator\"}"
            )
            .await,
        1.0
    );
    eventually(Duration::from_secs(10), "the parked-rows gauge", || async {
        let rows = stack
            .metric(
                "orchestrator",
                "outbox_parked_rows{service=\"orchestrator\"}",
            )
            .await;
        (rows == 1.0).then_some(())
    })
    .await;
    assert_eq!(stack.get_payment(&after).await["status"], "SETTLED");
    stack.teardown().await;
}

/// The relay and the provider worker are woken by LISTEN connections. When their database
/// goes away for longer than a reconnect can wait (a PostgreSQL restart, as the service sees
/// it), both notice (`listener_connected` drops to 0) and listen again once connections are
/// allowed: the gauge is back at 1, a LISTEN session on each channel exists, and payments
/// settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listeners_come_back_after_their_database_returns() {
    let stack = TestStack::spawn().await;
    let admin = stack.admin_pool().await;
    let provider_db = stack.ns.database("provider-adapter");
    let listening = |channel: &'static str| {
        let (admin, db) = (admin.clone(), provider_db.clone());
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = $1 AND query LIKE '%LISTEN%' AND query LIKE '%' || $2 || '%'",
            )
            .bind(db)
            .bind(channel)
            .fetch_one(&admin)
            .await
            .unwrap()
        }
    };
    let channels = ["sagapay_outbox", "sagapay_provider_operations"];
    for channel in channels {
        eventually(Duration::from_secs(20), "a LISTEN session", || async {
            (listening(channel).await >= 1).then_some(())
        })
        .await;
    }
    let connected = |channel: &str| {
        format!("listener_connected{{channel=\"{channel}\",service=\"provider-adapter\"}}")
    };
    for channel in channels {
        assert_eq!(
            stack.metric("provider-adapter", &connected(channel)).await,
            1.0
        );
    }
    sagapay_e2e::database_available(&admin, &provider_db, false).await;
    for channel in channels {
        eventually(
            Duration::from_secs(30),
            "the listeners to notice",
            || async {
                let gone = listening(channel).await == 0;
                let noticed = stack.metric("provider-adapter", &connected(channel)).await == 0.0;
                (gone && noticed).then_some(())
            },
        )
        .await;
    }
    sagapay_e2e::database_available(&admin, &provider_db, true).await;
    for channel in channels {
        eventually(
            Duration::from_secs(30),
            "LISTEN again after the outage",
            || async {
                let back = stack.metric("provider-adapter", &connected(channel)).await == 1.0;
                (back && listening(channel).await >= 1).then_some(())
            },
        )
        .await;
    }
    stack.settled_payment("after-listen", 1_400, "USD").await;
    admin.close().await;
    stack.teardown().await;
}

/// A statement that inserts no row notifies no one: PostgreSQL holds a cluster-wide lock from
/// a notifying commit's pre-commit to its WAL flush, so a needless NOTIFY queues every
/// database's commits. Notifications arrive in commit order: an empty insert is committed,
/// then a marker is notified on the same channel; the listener's first notification must be
/// the marker. Checked for each table whose trigger wakes someone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_insert_of_no_rows_wakes_no_one() {
    let stack = TestStack::spawn().await;
    for (service, table, channel) in [
        ("orchestrator", "outbox", "sagapay_outbox"),
        (
            "provider-adapter",
            "provider_operations",
            "sagapay_provider_operations",
        ),
        ("notification", "webhook_deliveries", "webhook_deliveries"),
    ] {
        let db = stack.db(service).await;
        let mut listener = sqlx::postgres::PgListener::connect_with(&db).await.unwrap();
        listener.listen(channel).await.unwrap();
        let inserted = sqlx::query(&format!(
            "INSERT INTO {table} SELECT * FROM {table} WHERE false"
        ))
        .execute(&db)
        .await
        .unwrap();
        assert_eq!(inserted.rows_affected(), 0, "{table}");
        sqlx::query("SELECT pg_notify($1, 'marker')")
            .bind(channel)
            .execute(&db)
            .await
            .unwrap();
        let first = tokio::time::timeout(Duration::from_secs(10), listener.recv())
            .await
            .expect("the marker arrives")
            .unwrap();
        assert_eq!(
            first.payload(),
            "marker",
            "{table}: an insert of no rows notified {channel}"
        );
    }
    // A row inserted still notifies (the trigger was not simply dropped): inserted and deleted
    // in one transaction, so no relay finds it, but the statement inserted a row.
    let db = stack.db("orchestrator").await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&db).await.unwrap();
    listener.listen("sagapay_outbox").await.unwrap();
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, topic, message_key, payload)
         VALUES (gen_random_uuid(), 'test.noop', 'test.noop', 'k', '{}')",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    sqlx::query("DELETE FROM outbox WHERE event_type = 'test.noop'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("an insert of a row notifies the relay")
        .unwrap();
    assert_eq!(woken.payload(), "");
    stack.teardown().await;
}
