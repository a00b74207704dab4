//! One bad message never stops a service: every consumer dead-letters what it can never
//! process and keeps going; a database outage is retried in place, shows as a stall, and is
//! bounded by the retry budget; the orchestrator's internal API applies the gateway's limits.

use sagapay_domain::events::{
    CaptureRequested, LedgerPostRequested, PaymentAuthorized, PaymentFinalized, PaymentRequested,
};
use sagapay_domain::{AmountMinor, Currency, CustomerId, Envelope, PaymentMethod, PaymentStatus};
use sagapay_e2e::{
    database_available, eventually, outbox_envelopes, Signer, StackOptions, TestStack,
};
use sagapay_messaging::{Classification, DeadLetter};
use sagapay_service_kit::ServiceSigner;
use sagapayctl::dlq::{self, Filter};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);
/// "Payments sent right after it settle within seconds."
const SETTLE: Duration = Duration::from_secs(20);

fn usd(amount: i64) -> (AmountMinor, Currency) {
    (
        AmountMinor::new(amount).unwrap(),
        Currency::parse("USD").unwrap(),
    )
}

/// A valid envelope of the payload, for a payment nobody knows.
fn envelope<P: sagapay_domain::events::EventPayload>(payload: &P) -> Envelope {
    Envelope::new(Uuid::now_v7(), None, "poison-test", payload)
}

/// `env` with `field` of its payload set to `value` (serialized as is: nothing checks on the
/// way out, as a buggy or hostile producer would not).
fn with_field(env: &Envelope, field: &str, value: Value) -> Envelope {
    let mut bad = env.clone();
    bad.event_id = Uuid::now_v7();
    bad.payload[field] = value;
    bad
}

/// One poison message and what its dead letters must say.
struct Poison {
    /// Every service that consumes the event type dead-letters it (risk also reads
    /// `payments.finalized`).
    services: &'static [&'static str],
    event_type: &'static str,
    envelope: Envelope,
    error_says: &'static str,
}

/// Poison for each consumer; the orchestrator's is about `decided`, an existing payment, so
/// that its payload is what gets refused.
fn poisons(decided: Uuid) -> Vec<Poison> {
    let (amount, currency) = usd(1_000);
    let nul = json!("abc\u{0}def");
    let oversized = json!("x".repeat(2_000));
    let requested = envelope(&PaymentRequested {
        merchant_id: Uuid::now_v7(),
        customer_id: CustomerId::parse("cust-poison").unwrap(),
        amount_minor: amount,
        currency,
        payment_method: PaymentMethod::default_card(),
    });
    let unknown_payment = envelope(&PaymentAuthorized {
        provider: "simulated".into(),
        authorization_id: "auth_1".into(),
        amount_minor: amount,
        currency,
    });
    let mut authorized = unknown_payment.clone();
    authorized.payment_id = decided;
    let capture = envelope(&CaptureRequested {
        authorization_id: "auth_1".into(),
        amount_minor: amount,
        currency,
    });
    let post = envelope(&LedgerPostRequested {
        merchant_id: Uuid::now_v7(),
        capture_id: "cap_1".into(),
        amount_minor: amount,
        currency,
    });
    let finalized = envelope(&PaymentFinalized {
        status: PaymentStatus::Settled,
        merchant_id: Uuid::now_v7(),
        customer_id: CustomerId::parse("cust-poison").unwrap(),
        amount_minor: amount,
        currency,
        amount_captured_minor: Some(amount),
        reason: "settled".into(),
        created_at: chrono::Utc::now(),
    });
    let p = |services, event_type, envelope, error_says| Poison {
        services,
        event_type,
        envelope,
        error_says,
    };
    vec![
        // risk
        p(
            &["risk"],
            "payments.requested",
            with_field(&requested, "customer_id", nul.clone()),
            "payload.customer_id contains a NUL",
        ),
        p(
            &["risk"],
            "payments.requested",
            with_field(&requested, "payment_method", oversized.clone()),
            "payload.payment_method is 2000 bytes long",
        ),
        p(
            &["risk"],
            "payments.requested",
            with_field(&requested, "amount_minor", json!("12.50")),
            "payload of payments.requested is invalid",
        ),
        // orchestrator
        p(
            &["orchestrator"],
            "payments.authorized",
            with_field(&authorized, "authorization_id", nul.clone()),
            "payload.authorization_id contains a NUL",
        ),
        p(
            &["orchestrator"],
            "payments.authorized",
            with_field(&authorized, "provider", oversized.clone()),
            "payload.provider is 2000 bytes long",
        ),
        p(
            &["orchestrator"],
            "payments.authorized",
            with_field(&authorized, "currency", json!(840)),
            "payload of payments.authorized is invalid",
        ),
        p(
            &["orchestrator"],
            "payments.authorized",
            unknown_payment,
            "unknown payment",
        ),
        // provider adapter
        p(
            &["provider-adapter"],
            "provider.capture.requested",
            with_field(&capture, "authorization_id", nul.clone()),
            "payload.authorization_id contains a NUL",
        ),
        p(
            &["provider-adapter"],
            "provider.capture.requested",
            with_field(&capture, "authorization_id", oversized.clone()),
            "payload.authorization_id is 2000 bytes long",
        ),
        p(
            &["provider-adapter"],
            "provider.capture.requested",
            with_field(&capture, "amount_minor", json!(-5)),
            "payload of provider.capture.requested is invalid",
        ),
        // ledger (the capture id with a NUL is the message that once stopped settlement)
        p(
            &["ledger"],
            "ledger.post.requested",
            with_field(&post, "capture_id", nul.clone()),
            "payload.capture_id contains a NUL",
        ),
        p(
            &["ledger"],
            "ledger.post.requested",
            with_field(&post, "capture_id", oversized.clone()),
            "payload.capture_id is 2000 bytes long",
        ),
        p(
            &["ledger"],
            "ledger.post.requested",
            with_field(&post, "merchant_id", json!("not-a-uuid")),
            "payload of ledger.post.requested is invalid",
        ),
        // notification
        p(
            &["notification", "risk"],
            "payments.finalized",
            with_field(&finalized, "reason", nul),
            "payload.reason contains a NUL",
        ),
        p(
            &["notification", "risk"],
            "payments.finalized",
            with_field(&finalized, "reason", oversized),
            "payload.reason is 2000 bytes long",
        ),
        p(
            &["notification", "risk"],
            "payments.finalized",
            with_field(&finalized, "status", json!("MAYBE")),
            "payload of payments.finalized is invalid",
        ),
    ]
}

async fn letters(stack: &TestStack) -> Vec<DeadLetter> {
    dlq::read_all(&stack.kafka(), &stack.ns)
        .await
        .expect("read the dead-letter topic")
        .into_iter()
        .map(|e| e.letter)
        .collect()
}

/// Every consuming service gets poison of each kind it can meet: a NUL in a text field, an
/// oversized field, a value of the wrong type, an event about a payment that does not exist.
/// Each is dead-lettered NON_RETRYABLE by every service that reads it, with what was wrong,
/// and payments made right after settle within seconds. (The database refusals, SQLSTATE by
/// SQLSTATE, are in `consumer_failures.rs`: valid commands no longer reach one here. A second
/// `payments.requested` for a payment risk already decided, which once violated its primary
/// key, is answered with the decision instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_consumer_dead_letters_poison_and_keeps_settling_payments() {
    let stack = TestStack::spawn().await;
    // A decided payment whose payments.requested, sent again under a new event id, makes risk's
    // insert of its decision violate the primary key.
    let decided = stack.settled_payment("poison-decided", 1_200, "USD").await;
    let orchestrator = stack.db("orchestrator").await;
    let (_, original) = outbox_envelopes(&orchestrator, Uuid::parse_str(&decided).unwrap())
        .await
        .into_iter()
        .find(|(topic, _)| *topic == stack.ns.topic("payments.requested"))
        .expect("payments.requested in the outbox");
    let mut again = original.clone();
    again.event_id = Uuid::now_v7();
    let approvals = "events_consumed_total{event_type=\"risk.approved\",service=\"orchestrator\"}";
    let approvals_before = stack.metric("orchestrator", approvals).await;
    stack
        .publish_raw("payments.requested", &decided, &again.to_json())
        .await;
    eventually(
        WAIT,
        "risk to answer the repeated request again",
        || async {
            (stack.metric("orchestrator", approvals).await > approvals_before).then_some(())
        },
    )
    .await;
    let poisons = poisons(Uuid::parse_str(&decided).unwrap());

    for (i, p) in poisons.iter().enumerate() {
        stack
            .publish_raw(
                p.event_type,
                &p.envelope.payment_id.to_string(),
                &p.envelope.to_json(),
            )
            .await;
        // Payments keep settling between poisons, not only after all of them.
        if i % 4 == 3 {
            let pid = stack
                .create_payment_id(json!({
                    "customer_id": format!("cust-after-{i}"), "amount_cents": 700 + i,
                    "currency": "USD", "idempotency_key": format!("after-poison-{i}")
                }))
                .await;
            stack.wait_for_status(&pid, "SETTLED", SETTLE).await;
        }
    }
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-after-all", "amount_cents": 990, "currency": "USD",
            "idempotency_key": "after-all-poison"
        }))
        .await;
    stack.wait_for_status(&pid, "SETTLED", SETTLE).await;

    let expected_letters: usize = poisons.iter().map(|p| p.services.len()).sum();
    eventually(WAIT, "a dead letter for every poison message", || async {
        let l = letters(&stack).await;
        (l.len() >= expected_letters).then_some(l)
    })
    .await;
    // Counted once nothing is left in flight (a second letter for one message would arrive
    // after the first), not the moment the count was reached.
    stack.wait_quiet().await;
    let all = letters(&stack).await;
    assert_eq!(
        all.len(),
        expected_letters,
        "nothing else was dead-lettered"
    );
    for p in &poisons {
        let id = p.envelope.event_id.to_string();
        for service in p.services {
            let letter = all
                .iter()
                .find(|l| {
                    l.event_id.as_deref() == Some(id.as_str()) && l.failing_service == *service
                })
                .unwrap_or_else(|| panic!("no dead letter from {service} for {}", p.error_says));
            assert_eq!(
                letter.classification,
                Classification::NonRetryable,
                "{}",
                letter.error
            );
            assert_eq!(letter.original_topic, stack.ns.topic(p.event_type));
            assert!(
                letter.error.contains(p.error_says),
                "{:?} should say {:?}",
                letter.error,
                p.error_says
            );
            assert_eq!(
                letter.sqlstate, None,
                "refused before the database: {}",
                letter.error
            );
            assert_eq!(
                letter.original_value(),
                p.envelope.to_json(),
                "replayable bytes"
            );
        }
    }
    for service in [
        "risk",
        "orchestrator",
        "provider-adapter",
        "ledger",
        "notification",
    ] {
        let expected = poisons
            .iter()
            .filter(|p| p.services.contains(&service))
            .count() as f64;
        let sample = format!(
            "dlq_published_total{{classification=\"NON_RETRYABLE\",service=\"{service}\"}}"
        );
        assert_eq!(stack.metric(service, &sample).await, expected, "{service}");
    }
    // Nothing of the refused messages reached a table.
    let risk = stack.db("risk").await;
    let decisions: i64 = sqlx::query_scalar("SELECT count(*) FROM risk_decisions")
        .fetch_one(&risk)
        .await
        .unwrap();
    assert_eq!(
        decisions, 6,
        "the six real payments, nothing else, none twice"
    );
    stack.teardown().await;
}

/// The samples of `name` whose labels contain `label`, from a service's `/metrics`.
async fn samples(stack: &TestStack, service: &str, name: &str, label: &str) -> Vec<f64> {
    let text = sagapay_e2e::metrics_text(&stack.http, &stack.service_url(service)).await;
    sagapay_e2e::metric_samples(&text, name, label)
}

/// The ledger's database goes away while a payment waits for its posting. The message is
/// retried in place, not dead-lettered: the stall shows in `consumer_stalled_seconds`, in
/// `consumer_lag_messages` and in `/ready`'s body, and the payment settles once the database
/// is back. An outage longer than the retry budget ends as RETRY_EXHAUSTED, the consumer
/// moves on, and replaying the letter once the database is back settles the payment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_is_retried_in_place_visible_and_bounded() {
    let budget = Duration::from_secs(15);
    let stack = TestStack::spawn_with(StackOptions {
        consumer_retry: Some((3, budget)),
        ..StackOptions::default()
    })
    .await;
    let admin = stack.admin_pool().await;
    let ledger_db = stack.ns.database("ledger");
    let topic = stack.ns.topic("ledger.post.requested");
    let topic_label = format!("topic=\"{topic}\"");

    // Within the budget: retried in place, visible, then settled.
    database_available(&admin, &ledger_db, false).await;
    let first = stack
        .create_payment_id(
            json!({"customer_id": "cust-outage-1", "amount_cents": 1_100,
                                  "currency": "USD", "idempotency_key": "outage-1"}),
        )
        .await;
    stack.wait_for_status(&first, "CAPTURED", WAIT).await;
    let ready: Value = eventually(WAIT, "/ready to name the stalled consumer", || async {
        let body: Value = stack
            .http
            .get(format!("{}/ready", stack.service_url("ledger")))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (!body["stalled_consumers"].as_array()?.is_empty()).then_some(body)
    })
    .await;
    assert_eq!(ready["checks"]["consumer"], "stalled", "{ready}");
    let stalled = &ready["stalled_consumers"][0];
    assert_eq!(stalled["consumer"], "ledger", "{ready}");
    assert_eq!(stalled["topic"], topic.as_str(), "{ready}");
    assert_eq!(stalled["event_type"], "ledger.post.requested", "{ready}");
    eventually(WAIT, "the stall and the lag in the metrics", || async {
        let stall = samples(&stack, "ledger", "consumer_stalled_seconds", &topic_label).await;
        let lag = samples(&stack, "ledger", "consumer_lag_messages", &topic_label).await;
        (stall.iter().any(|&s| s > 0.0) && lag.iter().any(|&l| l >= 1.0)).then_some(())
    })
    .await;
    database_available(&admin, &ledger_db, true).await;
    stack.wait_for_status(&first, "SETTLED", WAIT).await;
    assert!(
        letters(&stack).await.is_empty(),
        "an outage within the budget parks nothing"
    );
    let retries = stack
        .metric(
            "ledger",
            "handler_retries_total{event_type=\"ledger.post.requested\",service=\"ledger\"}",
        )
        .await;
    assert!(retries >= 1.0, "retried in place: {retries}");
    eventually(WAIT, "the stall and the lag to clear", || async {
        let stall = samples(&stack, "ledger", "consumer_stalled_seconds", &topic_label).await;
        let lag = samples(&stack, "ledger", "consumer_lag_messages", &topic_label).await;
        (stall.iter().all(|&s| s == 0.0) && lag.iter().all(|&l| l == 0.0)).then_some(())
    })
    .await;

    // Longer than the budget: dead-lettered RETRY_EXHAUSTED, then replayed.
    database_available(&admin, &ledger_db, false).await;
    let second = stack
        .create_payment_id(
            json!({"customer_id": "cust-outage-2", "amount_cents": 1_200,
                                  "currency": "USD", "idempotency_key": "outage-2"}),
        )
        .await;
    stack.wait_for_status(&second, "CAPTURED", WAIT).await;
    let exhausted = Filter {
        classification: Some(Classification::RetryExhausted),
        service: Some("ledger".into()),
        ..Filter::default()
    };
    let parked = eventually(WAIT + budget, "the RETRY_EXHAUSTED dead letter", || async {
        let l: Vec<dlq::Entry> = dlq::read_all(&stack.kafka(), &stack.ns)
            .await
            .ok()?
            .into_iter()
            .filter(|e| exhausted.matches(e))
            .collect();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(parked.len(), 1);
    let letter = &parked[0].letter;
    assert_eq!(letter.event_type.as_deref(), Some("ledger.post.requested"));
    assert!(letter.attempts.unwrap_or(0) >= 3, "{letter:?}");
    assert!(
        letter.error.starts_with("gave up after"),
        "{}",
        letter.error
    );
    eventually(WAIT, "the consumer to move on (no stall left)", || async {
        let stall = samples(&stack, "ledger", "consumer_stalled_seconds", &topic_label).await;
        stall.iter().all(|&s| s == 0.0).then_some(())
    })
    .await;
    database_available(&admin, &ledger_db, true).await;
    assert_eq!(stack.get_payment(&second).await["status"], "CAPTURED");
    assert_eq!(
        dlq::replay(&stack.kafka(), &parked, false).await.unwrap(),
        1
    );
    stack.wait_for_status(&second, "SETTLED", WAIT).await;
    admin.close().await;
    stack.teardown().await;
}

/// The internal API parses with the gateway's rules: a caller that skips the gateway cannot
/// store a 2 MB customer id (which once made an outbox row Kafka refused, retried forever), a
/// NUL, or an idempotency key the gateway would refuse. Each answer is a clear error and
/// nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_orchestrators_internal_api_applies_the_gateways_field_limits() {
    let stack = TestStack::spawn().await;
    let gateway = ServiceSigner::development("gateway");
    let merchant = Some(Uuid::now_v7());
    let post = |body: &Value| {
        stack.signed_request(
            "orchestrator",
            &Signer::now(&gateway),
            reqwest::Method::POST,
            "/internal/payments",
            merchant,
            Some(body),
        )
    };
    let valid = json!({"customer_id": "cust-1", "amount_cents": 100, "currency": "USD",
                       "idempotency_key": "k1"});
    let cases = [
        // Just over the 1 MiB limit: the service reads the body to its end and answers 413
        // (`service_kit::body_limit`); it once answered at once, and under load the client's
        // write broke before it read the answer.
        (
            "customer_id",
            json!("c".repeat((1 << 20) + 1024)),
            "body_too_large",
        ),
        ("customer_id", json!("c".repeat(100_000)), "invalid_request"),
        ("customer_id", json!("cust\u{0}1"), "invalid_request"),
        ("customer_id", json!("cust 1"), "invalid_request"),
        (
            "payment_method",
            json!("pm_card_ok\u{0}"),
            "invalid_request",
        ),
        ("idempotency_key", json!("k".repeat(256)), "invalid_request"),
    ];
    for (field, value, code) in cases {
        let mut body = valid.clone();
        body[field] = value;
        let resp = post(&body).send().await.unwrap();
        let status = resp.status();
        assert!(status.is_client_error(), "{field}: {status}");
        let error: Value = resp.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{field}: {error}");
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && message.len() < 1_000,
            "{field}: {message}"
        );
    }
    let orchestrator = stack.db("orchestrator").await;
    let (payments, outbox): (i64, i64) =
        sqlx::query_as("SELECT (SELECT count(*) FROM payments), (SELECT count(*) FROM outbox)")
            .fetch_one(&orchestrator)
            .await
            .unwrap();
    assert_eq!((payments, outbox), (0, 0), "nothing was written");
    let ok = post(&valid).send().await.unwrap();
    assert_eq!(ok.status(), 201, "the valid request still passes");
    assert_eq!(
        stack
            .metric(
                "orchestrator",
                "outbox_parked_total{service=\"orchestrator\"}"
            )
            .await,
        0.0
    );
    stack.teardown().await;
}
