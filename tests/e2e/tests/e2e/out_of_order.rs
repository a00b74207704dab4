use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use sagapay_domain::events::{PaymentSettled, RiskApproved};
use sagapay_domain::{AmountMinor, Currency, Envelope};
use sagapay_e2e::{eventually, TestStack};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

async fn publish(stack: &TestStack, env: &Envelope) {
    let producer: FutureProducer = stack.kafka().producer("out-of-order").unwrap();
    let topic = stack.ns.topic(&env.event_type);
    let key = env.payment_id.to_string();
    let value = env.to_json();
    producer
        .send(
            FutureRecord::to(&topic).key(&key).payload(&value),
            Timeout::After(Duration::from_secs(10)),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// An event that would skip states is rejected and counted, never applied; an event for a
/// state the payment has left is ignored as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn illegal_and_stale_events_are_counted_and_never_applied() {
    let stack = TestStack::spawn().await;
    // Waits in review, so nothing else moves it.
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-ooo", "amount_cents": 150_000, "currency": "USD",
            "idempotency_key": "ooo-1"
        }))
        .await;
    stack.wait_for_status(&pid, "RISK_REVIEW", WAIT).await;
    let payment_id = Uuid::parse_str(&pid).unwrap();

    // RISK_REVIEW -> SETTLED is not in the transition table.
    let settled = Envelope::new(
        payment_id,
        None,
        "forged",
        &PaymentSettled {
            journal_transaction_id: Uuid::now_v7(),
            amount_minor: AmountMinor::new(150_000).unwrap(),
            currency: Currency::parse("USD").unwrap(),
        },
    );
    publish(&stack, &settled).await;
    let illegal = "saga_events_ignored_total{event_type=\"payments.settled\",reason=\"illegal_transition\",service=\"orchestrator\"}";
    eventually(WAIT, "the illegal event to be counted", || async {
        (stack.metric("orchestrator", illegal).await == 1.0).then_some(())
    })
    .await;
    let after = stack.get_payment(&pid).await;
    assert_eq!(after["status"], "RISK_REVIEW");
    assert_eq!(
        after["timeline"].as_array().unwrap().len(),
        2,
        "nothing was applied"
    );

    // Decide the review, let it settle, then deliver a late approval with a new event id.
    let (status, _) = stack.review(&pid, "approve", "ops-ann").await;
    assert_eq!(status, 200);
    stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    let timeline_len = stack.get_payment(&pid).await["timeline"]
        .as_array()
        .unwrap()
        .len();
    publish(
        &stack,
        &Envelope::new(
            payment_id,
            None,
            "late",
            &RiskApproved {
                reason: "late".into(),
            },
        ),
    )
    .await;
    let stale = "saga_events_ignored_total{event_type=\"risk.approved\",reason=\"stale\",service=\"orchestrator\"}";
    eventually(WAIT, "the stale event to be counted", || async {
        (stack.metric("orchestrator", stale).await == 1.0).then_some(())
    })
    .await;
    let after = stack.get_payment(&pid).await;
    assert_eq!(after["status"], "SETTLED");
    assert_eq!(after["timeline"].as_array().unwrap().len(), timeline_len);
    stack.teardown().await;
}
