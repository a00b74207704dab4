use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sagapay_e2e::{eventually, outbox_envelopes, TestStack};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

/// Every row each service wrote for the payment, counted.
async fn effects(stack: &TestStack, pid: Uuid) -> Vec<(&'static str, i64)> {
    let orch = stack.db("orchestrator").await;
    let risk = stack.db("risk").await;
    let provider = stack.db("provider-adapter").await;
    let ledger = stack.db("ledger").await;
    let notification = stack.db("notification").await;
    vec![
        ("timeline", sagapay_e2e::count_rows(&orch, "SELECT count(*) FROM payment_timeline WHERE payment_id = $1", pid).await),
        ("orchestrator outbox", sagapay_e2e::count_rows(&orch, "SELECT count(*) FROM outbox WHERE message_key = $1::text", pid).await),
        ("risk decisions", sagapay_e2e::count_rows(&risk, "SELECT count(*) FROM risk_decisions WHERE payment_id = $1", pid).await),
        ("provider attempts", sagapay_e2e::count_rows(&provider, "SELECT count(*) FROM provider_attempts WHERE payment_id = $1", pid).await),
        ("provider operations", sagapay_e2e::count_rows(&provider, "SELECT count(*) FROM simulated_provider_operations WHERE payment_id = $1", pid).await),
        ("journal transactions", sagapay_e2e::count_rows(&ledger, "SELECT count(*) FROM journal_transactions WHERE payment_id = $1", pid).await),
        ("ledger entries", sagapay_e2e::count_rows(&ledger, "SELECT count(*) FROM ledger_entries e JOIN journal_transactions t USING (transaction_id) WHERE t.payment_id = $1", pid).await),
        ("notifications", sagapay_e2e::count_rows(&notification, "SELECT count(*) FROM notifications WHERE payment_id = $1", pid).await),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivering_every_event_of_a_settled_payment_again_changes_nothing() {
    let stack = TestStack::spawn().await;
    let payment_id = stack
        .create_payment_id(json!({
            "customer_id": "cust-dup", "amount_cents": 1234, "currency": "EUR",
            "idempotency_key": "dup-1"
        }))
        .await;
    let pid = Uuid::parse_str(&payment_id).unwrap();
    stack
        .wait_for_status(&payment_id, "SETTLED", Duration::from_secs(30))
        .await;
    let notification = stack.db("notification").await;
    eventually(Duration::from_secs(15), "the notification", || async {
        (sagapay_e2e::count_rows(
            &notification,
            "SELECT count(*) FROM notifications WHERE payment_id = $1",
            pid,
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let before = effects(&stack, pid).await;
    // A provider call that timed out on a busy machine is tried again: at least one attempt
    // per operation (authorize, capture), whatever the count, and the redelivery adds none.
    let attempts = before[3].1;
    assert!(attempts >= 2, "{before:?}");
    assert_eq!(
        before,
        vec![
            ("timeline", 5),
            // payments.requested, the authorize command, the ledger command, payments.finalized
            // (the adapter captures by itself: no capture command)
            ("orchestrator outbox", 4),
            ("risk decisions", 1),
            ("provider attempts", attempts),
            ("provider operations", 2),
            ("journal transactions", 1),
            ("ledger entries", 3),
            ("notifications", 1),
        ]
    );

    // Each consumer's count of skipped duplicates before the redelivery: a duplicate of the
    // payment's own run (a retried message) may already be in it, and the wait below must be
    // for the redelivered ones.
    let expected_skips = [
        ("risk", "payments.requested"),
        ("orchestrator", "risk.approved"),
        ("provider-adapter", "provider.authorize.requested"),
        ("orchestrator", "payments.authorized"),
        ("orchestrator", "payments.captured"),
        ("ledger", "ledger.post.requested"),
        ("orchestrator", "payments.settled"),
        ("notification", "payments.finalized"),
    ];
    let sample = |event_type: &str, service: &str| {
        format!(
            "duplicate_events_skipped_total{{event_type=\"{event_type}\",service=\"{service}\"}}"
        )
    };
    let mut baseline = Vec::new();
    for (service, event_type) in expected_skips {
        baseline.push(stack.metric(service, &sample(event_type, service)).await);
    }

    // Publish every event of the payment again, byte for byte, with its original event_id:
    // what Kafka does after a consumer crashes before committing its offset.
    let mut events = Vec::new();
    for service in ["orchestrator", "risk", "provider-adapter", "ledger"] {
        events.extend(outbox_envelopes(&stack.db(service).await, pid).await);
    }
    assert_eq!(
        events.len(),
        8,
        "the whole saga: 4 commands/finalized + 4 replies"
    );
    let producer: FutureProducer = sagapay_e2e::config("gateway", &stack.ns)
        .kafka
        .producer("redeliver")
        .unwrap();
    for (topic, envelope) in &events {
        let value = envelope.to_json();
        let key = envelope.payment_id.to_string();
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload(&value),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("redeliver");
    }

    // Each consumer sees its redelivered duplicate and skips it: only then are the effects
    // compared (before, they could be read while the duplicates were still on their way).
    for ((service, event_type), before) in expected_skips.into_iter().zip(baseline) {
        let sample = sample(event_type, service);
        eventually(Duration::from_secs(20), &sample, || async {
            (stack.metric(service, &sample).await >= before + 1.0).then_some(())
        })
        .await;
    }
    assert_eq!(
        effects(&stack, pid).await,
        before,
        "redelivery changed nothing"
    );
    let payment = stack.get_payment(&payment_id).await;
    assert_eq!(payment["status"], "SETTLED");
    stack.teardown().await;
}
