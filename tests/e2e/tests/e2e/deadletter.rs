use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sagapay_e2e::{read_until, topic_reader, TestStack};
use sagapay_messaging::{Classification, DeadLetter};
use serde_json::json;
use std::time::Duration;

/// Bytes that are not an envelope go to the dead-letter topic, classified NON_RETRYABLE, with
/// what is needed to inspect and replay them; the consumer moves on to the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_message_is_dead_lettered_and_the_consumer_keeps_going() {
    let stack = TestStack::spawn().await;
    let topic = stack.ns.topic("payments.requested");
    let producer: FutureProducer = sagapay_e2e::config("gateway", &stack.ns)
        .kafka
        .producer("poison")
        .unwrap();
    let garbage = b"{\"this is\": \"not an envelope\"";
    producer
        .send(
            FutureRecord::to(&topic)
                .key("poison-key")
                .payload(&garbage[..]),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce garbage");

    // The same consumer (risk) still processes the payment that follows.
    let payment_id = stack
        .create_payment_id(json!({
            "customer_id": "cust-after-poison", "amount_cents": 700, "currency": "USD",
            "idempotency_key": "after-poison"
        }))
        .await;
    stack
        .wait_for_status(&payment_id, "SETTLED", Duration::from_secs(30))
        .await;

    let reader = topic_reader(&stack.ns, &stack.ns.dead_letter_topic()).unwrap();
    let raw = read_until(&reader, Duration::from_secs(20), |_| true).await;
    let letter: DeadLetter = serde_json::from_slice(&raw).expect("a dead letter");
    assert_eq!(letter.classification, Classification::NonRetryable);
    assert_eq!(letter.original_topic, topic);
    assert_eq!(letter.original_key.as_deref(), Some("poison-key"));
    assert_eq!(letter.failing_service, "risk");
    assert_eq!(letter.original_value(), garbage.to_vec());
    assert!(
        letter.error.starts_with("envelope is not valid JSON"),
        "{}",
        letter.error
    );
    assert_eq!(
        stack
            .metric(
                "risk",
                "dlq_published_total{classification=\"NON_RETRYABLE\",service=\"risk\"}"
            )
            .await,
        1.0
    );
    stack.teardown().await;
}
