//! Features that are each right alone, tried together: each test is named after a defect that
//! combination had (issue 24), and fails on the revision before its fix.

use sagapay_e2e::{eventually, StackOptions, TestStack, DEV_API_KEY, DEV_OPS_KEY};
use sagapay_provider_adapter::policy::RetrySettings;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// What the simulated provider's books did for a payment: (operation, amount), oldest first.
async fn books(stack: &TestStack, pid: &str) -> Vec<(String, i64)> {
    let provider = stack.db("provider-adapter").await;
    sqlx::query_as(
        "SELECT operation, amount_minor FROM simulated_provider_operations
          WHERE payment_id = $1 AND outcome = 'SUCCEEDED' ORDER BY created_at",
    )
    .bind(Uuid::parse_str(pid).unwrap())
    .fetch_all(&provider)
    .await
    .unwrap()
}

/// A manual payment of 10000, a capture of 4000 asked while the provider's captures fail, then
/// an operator's fail: the void waits for the capture, the capture goes through for 4000, and
/// the void becomes the refund of that capture. It refunds 4000, what was captured (it
/// refunded 10000, the authorized amount: the provider paid back more than it took), and the
/// payment ends REVERSED with the books agreeing three ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_fail_after_a_partial_capture_refunds_what_was_captured_not_what_was_authorized(
) {
    let stack = TestStack::spawn_with(StackOptions {
        provider_retry: Some(RetrySettings {
            call_timeout: Duration::from_secs(1),
            long_backoff: vec![Duration::from_secs(1)],
            give_up_after: Duration::from_secs(120),
            ..RetrySettings::default()
        }),
        ..StackOptions::default()
    })
    .await;
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-partial-fail", "amount_cents": 10_000, "currency": "USD",
            "idempotency_key": "partial-fail", "capture_method": "manual"
        }))
        .await;
    stack
        .wait_for_status(&pid, "AUTHORIZED", Duration::from_secs(40))
        .await;
    stack.provider_outage(60, Some(&["CAPTURE"])).await;
    let captured = stack
        .http
        .post(format!("{}/payments/{pid}/capture", stack.gateway_url()))
        .header("x-api-key", DEV_API_KEY)
        .header("idempotency-key", "partial-fail-capture")
        .json(&json!({ "amount_cents": 4_000 }))
        .send()
        .await
        .unwrap();
    assert_eq!(captured.status(), 200, "{}", captured.text().await.unwrap());
    // The capture is being tried (and refused by the outage) when the operator fails it.
    let provider = stack.db("provider-adapter").await;
    eventually(WAIT, "the capture to be attempted", || async {
        let tried: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM provider_attempts a JOIN provider_operations o USING (operation_id)
              WHERE o.payment_id = $1 AND o.operation = 'CAPTURE'",
        )
        .bind(Uuid::parse_str(&pid).unwrap())
        .fetch_one(&provider)
        .await
        .ok()?;
        (tried > 0).then_some(())
    })
    .await;
    let ops = sagapayctl::payments::Ops {
        orchestrator_url: stack.service_url("orchestrator"),
        ops_key: DEV_OPS_KEY.into(),
    };
    let failed: Value = ops
        .fail(Uuid::parse_str(&pid).unwrap(), "merchant asked", "ops-ann")
        .await
        .unwrap();
    assert!(failed["action"].is_string(), "{failed}");
    stack.provider_outage(0, Some(&["CAPTURE"])).await;
    let reversed = stack.wait_for_status(&pid, "REVERSED", WAIT).await;
    assert_eq!(
        books(&stack, &pid).await,
        vec![
            ("AUTHORIZE".to_owned(), 10_000),
            ("CAPTURE".to_owned(), 4_000),
            ("REFUND".to_owned(), 4_000)
        ],
        "the provider refunds what it captured: {reversed}"
    );
    stack.reconciled(1).await;

    // The void sent again (what the sweeper or an operator does when its answer is lost):
    // the adapter answers it as the first time, the refund of what was captured. (It answered
    // a void of the captured amount, which the saga flagged as a mismatch: the payment could
    // never end.)
    let id = Uuid::parse_str(&pid).unwrap();
    let again = sagapay_domain::Envelope::new(
        id,
        None,
        "void-again",
        &sagapay_domain::events::VoidRequested {
            authorization_id: None,
            amount_minor: sagapay_domain::AmountMinor::new(10_000).unwrap(),
            currency: sagapay_domain::Currency::parse("USD").unwrap(),
            reason: "sent again".into(),
        },
    );
    stack
        .publish_raw("provider.void.requested", &pid, &again.to_json())
        .await;
    let answers = eventually(WAIT, "the second answer to the void", || async {
        let answers: Vec<_> = sagapay_e2e::outbox_envelopes(&provider, id)
            .await
            .into_iter()
            .filter(|(_, e)| e.event_type == "payments.reversed")
            .map(|(_, e)| e.payload)
            .collect();
        (answers.len() == 2).then_some(answers)
    })
    .await;
    for answer in &answers {
        assert_eq!(
            (&answer["operation"], &answer["amount_minor"]),
            (&json!("REFUND"), &json!(4_000)),
            "{answers:?}"
        );
    }
    assert_eq!(
        books(&stack, &pid).await.len(),
        3,
        "nothing more at the provider"
    );
    stack.teardown().await;
}

/// A manual payment of 10000 captured for 4000 settles with 4000 moved: the merchant's
/// `payment.settled` event says so (`amount_captured_cents`, as `GET /payments/{id}` does),
/// and so do the notification and the finalized-amount metric. They said 10000, the amount
/// authorized, though only 4000 was ever taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partial_capture_is_announced_with_what_was_captured() {
    let stack = TestStack::spawn().await;
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-partial-news", "amount_cents": 10_000, "currency": "USD",
            "idempotency_key": "partial-news", "capture_method": "manual"
        }))
        .await;
    stack
        .wait_for_status(&pid, "AUTHORIZED", Duration::from_secs(40))
        .await;
    let captured = stack
        .http
        .post(format!("{}/payments/{pid}/capture", stack.gateway_url()))
        .header("x-api-key", DEV_API_KEY)
        .header("idempotency-key", "partial-news-capture")
        .json(&json!({ "amount_cents": 4_000 }))
        .send()
        .await
        .unwrap();
    assert_eq!(captured.status(), 200);
    let settled = stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    assert_eq!(settled["amount_captured_cents"], 4_000);
    let event = eventually(WAIT, "the payment.settled event", || async {
        let body: Value = stack
            .http
            .get(format!(
                "{}/events?type=payment.settled&limit=10",
                stack.gateway_url()
            ))
            .header("x-api-key", DEV_API_KEY)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["data"]
            .as_array()?
            .iter()
            .find(|e| e["data"]["object"]["payment_id"] == pid.as_str())
            .cloned()
    })
    .await;
    let object = &event["data"]["object"];
    assert_eq!(
        (&object["amount_cents"], &object["amount_captured_cents"]),
        (&json!(10_000), &json!(4_000)),
        "{event}"
    );
    let notification = stack.db("notification").await;
    let payload: Value =
        sqlx::query_scalar("SELECT payload FROM notifications WHERE payment_id = $1")
            .bind(Uuid::parse_str(&pid).unwrap())
            .fetch_one(&notification)
            .await
            .unwrap();
    assert_eq!(payload["amount_captured_cents"], 4_000, "{payload}");
    let moved = stack
        .metric(
            "orchestrator",
            "payments_finalized_amount_minor_total{currency=\"USD\",status=\"SETTLED\",service=\"orchestrator\"}",
        )
        .await;
    assert_eq!(
        moved, 4_000.0,
        "the settled amount counted is the captured one"
    );
    stack.teardown().await;
}

/// Customer ids are each merchant's own. Three declines of merchant A's `cust-shared` send
/// A's next payment for that customer to review (the recent-failures rule), and leave
/// merchant B's first payment for its own `cust-shared` alone: it settles. Counts were by
/// customer id alone, and B's payment went to review.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn risk_counts_a_customer_per_merchant() {
    let stack = TestStack::spawn().await;
    let (_, key_b) = stack.merchant("merchant-b").await;
    let pay = |key: &str, idempotency_key: &str, method: &str| {
        let (http, url, key) = (stack.http.clone(), stack.gateway_url(), key.to_owned());
        let body = json!({
            "customer_id": "cust-shared", "amount_cents": 1_000, "currency": "USD",
            "idempotency_key": idempotency_key, "payment_method": method
        });
        async move {
            let resp = http
                .post(format!("{url}/payments"))
                .header("x-api-key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
            let created: Value = resp.json().await.unwrap();
            created["payment_id"].as_str().unwrap().to_owned()
        }
    };
    for i in 0..3 {
        let pid = pay(DEV_API_KEY, &format!("a-declined-{i}"), "pm_card_declined").await;
        stack.wait_for_status(&pid, "FAILED", WAIT).await;
    }
    // Risk has counted the three failures (it reads them from payments.finalized).
    let risk = stack.db("risk").await;
    eventually(WAIT, "risk to record the failures", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM customer_outcomes")
            .fetch_one(&risk)
            .await
            .ok()?;
        (n == 3).then_some(())
    })
    .await;
    let of_b = pay(&key_b, "b-first", "pm_card_ok").await;
    let settled = eventually(WAIT, "merchant B's payment to end", || async {
        let p: Value = stack
            .http
            .get(format!("{}/payments/{of_b}", stack.gateway_url()))
            .header("x-api-key", &key_b)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        matches!(p["status"].as_str(), Some("SETTLED" | "RISK_REVIEW")).then_some(p)
    })
    .await;
    assert_eq!(settled["status"], "SETTLED", "{settled}");
    let of_a = pay(DEV_API_KEY, "a-next", "pm_card_ok").await;
    stack.wait_for_status(&of_a, "RISK_REVIEW", WAIT).await;
    stack.teardown().await;
}

/// Found by the simulator (issue 25, seed 3702): a capture command that reaches the adapter
/// after the payment's void (a dead letter replayed after an operator failed the payment) is
/// not performed. It was: the provider refused to capture a voided authorization and the
/// adapter kept trying for a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_asked_after_the_void_is_not_performed() {
    let stack = TestStack::spawn().await;
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-late-capture", "amount_cents": 5_000, "currency": "USD",
            "idempotency_key": "late-capture", "capture_method": "manual"
        }))
        .await;
    stack.wait_for_status(&pid, "AUTHORIZED", WAIT).await;
    let id = Uuid::parse_str(&pid).unwrap();
    let ops = sagapayctl::payments::Ops {
        orchestrator_url: stack.service_url("orchestrator"),
        ops_key: DEV_OPS_KEY.into(),
    };
    ops.fail(id, "customer called", "ops-ann").await.unwrap();
    stack.wait_for_status(&pid, "REVERSED", WAIT).await;
    let provider = stack.db("provider-adapter").await;
    let authorization_id: String = sqlx::query_scalar(
        "SELECT result_reference FROM provider_operations
          WHERE payment_id = $1 AND operation = 'AUTHORIZE'",
    )
    .bind(id)
    .fetch_one(&provider)
    .await
    .unwrap();
    let late = sagapay_domain::Envelope::new(
        id,
        None,
        "late-capture",
        &sagapay_domain::events::CaptureRequested {
            authorization_id,
            amount_minor: sagapay_domain::AmountMinor::new(5_000).unwrap(),
            currency: sagapay_domain::Currency::parse("USD").unwrap(),
        },
    );
    stack
        .publish_raw("provider.capture.requested", &pid, &late.to_json())
        .await;
    eventually(WAIT, "the adapter to consume the late capture", || async {
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE event_id = $1")
            .bind(late.event_id)
            .fetch_one(&provider)
            .await
            .ok()?;
        (seen == 1).then_some(())
    })
    .await;
    let captures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM provider_operations WHERE payment_id = $1 AND operation = 'CAPTURE'",
    )
    .bind(id)
    .fetch_one(&provider)
    .await
    .unwrap();
    assert_eq!(captures, 0, "no capture operation for a voided payment");
    assert_eq!(
        books(&stack, &pid).await,
        vec![("AUTHORIZE".to_owned(), 5_000), ("VOID".to_owned(), 5_000)],
        "the provider authorized and voided, nothing else"
    );
    stack.teardown().await;
}
