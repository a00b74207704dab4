//! Manual capture and cancel on the real stack: a manual payment stops at AUTHORIZED; a
//! capture (whole or part) goes on to SETTLED with the captured amount posted; a cancel, or
//! nobody acting before the authorization expires, voids it (CANCELED); what a state does not
//! allow is refused with 409; refunds are bounded by what was captured; the three databases
//! reconcile.

use sagapay_e2e::{StackOptions, TestStack, DEV_API_KEY};
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

async fn post(
    stack: &TestStack,
    path: &str,
    key: &str,
    idempotency_key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value, bool) {
    let mut req = stack
        .http
        .post(format!("{}{path}", stack.gateway_url()))
        .header("x-api-key", key);
    if let Some(k) = idempotency_key {
        req = req.header("idempotency-key", k);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    (status, resp.json().await.unwrap_or(Value::Null), replayed)
}

async fn manual_payment(stack: &TestStack, name: &str, amount: i64) -> String {
    let pid = stack
        .create_payment_id(
            json!({"customer_id": format!("cust-{name}"), "amount_cents": amount,
            "currency": "USD", "idempotency_key": name, "capture_method": "manual"}),
        )
        .await;
    stack
        .wait_for_status(&pid, "AUTHORIZED", Duration::from_secs(40))
        .await;
    pid
}

/// The ledger's capture posting for the payment: what the provider clearing account was
/// debited.
async fn posted(stack: &TestStack, pid: &str) -> Vec<i64> {
    let ledger = stack.db("ledger").await;
    sqlx::query_scalar(
        "SELECT e.amount_minor FROM ledger_entries e JOIN journal_transactions t USING (transaction_id)
          WHERE t.payment_id = $1 AND t.posting_kind = 'CAPTURE' AND e.direction = 'DEBIT'",
    )
    .bind(Uuid::parse_str(pid).unwrap())
    .fetch_all(&ledger)
    .await
    .unwrap()
}

fn code(body: &Value) -> Option<&str> {
    body["error"]["code"].as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_payments_are_captured_whole_or_in_part_canceled_and_refused_out_of_turn() {
    let stack = TestStack::spawn().await;

    // Whole: the capture is accepted once; the same request again is its replay.
    let whole = manual_payment(&stack, "manual-whole", 2_500).await;
    let p = stack.get_payment(&whole).await;
    assert_eq!(
        (p["capture_method"].as_str(), &p["amount_captured_cents"]),
        (Some("manual"), &Value::Null)
    );
    let path = format!("/payments/{whole}/capture");
    let (status, body, replayed) = post(&stack, &path, DEV_API_KEY, Some("cap-1"), None).await;
    assert_eq!((status, replayed), (200, false), "{body}");
    let (status, _, replayed) = post(&stack, &path, DEV_API_KEY, Some("cap-1"), None).await;
    assert_eq!((status, replayed), (200, true));
    let (status, body, _) = post(&stack, &path, DEV_API_KEY, Some("cap-2"), None).await;
    assert_eq!(
        (status, code(&body)),
        (409, Some("payment_action_taken")),
        "{body}"
    );
    stack
        .wait_for_status(&whole, "SETTLED", Duration::from_secs(40))
        .await;
    assert_eq!(
        stack.get_payment(&whole).await["amount_captured_cents"],
        2_500
    );
    assert_eq!(posted(&stack, &whole).await, vec![2_500]);

    // In part: 600 of 1,000 is captured and posted; refunds are bounded by the 600.
    let part = manual_payment(&stack, "manual-part", 1_000).await;
    let path = format!("/payments/{part}/capture");
    let (status, body, _) = post(
        &stack,
        &path,
        DEV_API_KEY,
        Some("cap-big"),
        Some(json!({"amount_cents": 1_001})),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (422, Some("capture_exceeds_authorized")),
        "{body}"
    );
    let (status, body, _) = post(
        &stack,
        &path,
        DEV_API_KEY,
        Some("cap-part"),
        Some(json!({"amount_cents": 600})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    stack
        .wait_for_status(&part, "SETTLED", Duration::from_secs(40))
        .await;
    assert_eq!(stack.get_payment(&part).await["amount_captured_cents"], 600);
    assert_eq!(posted(&stack, &part).await, vec![600]);
    let refunds = format!("/payments/{part}/refunds");
    let (status, body, _) = post(
        &stack,
        &refunds,
        DEV_API_KEY,
        Some("ref-big"),
        Some(json!({"amount_cents": 601})),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (422, Some("refund_exceeds_captured")),
        "{body}"
    );
    let (status, body, _) = post(
        &stack,
        &refunds,
        DEV_API_KEY,
        Some("ref-all"),
        Some(json!({"amount_cents": 600})),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    stack
        .wait_for_status(&part, "REFUNDED", Duration::from_secs(40))
        .await;

    // Cancel: voided, CANCELED; a capture after it is refused, the cancel again replayed.
    let canceled = manual_payment(&stack, "manual-cancel", 700).await;
    let cancel = format!("/payments/{canceled}/cancel");
    let (status, body, _) = post(&stack, &cancel, DEV_API_KEY, Some("can-1"), None).await;
    assert_eq!(status, 200, "{body}");
    stack
        .wait_for_status(&canceled, "CANCELED", Duration::from_secs(40))
        .await;
    let (status, body, _) = post(
        &stack,
        &format!("/payments/{canceled}/capture"),
        DEV_API_KEY,
        Some("cap-late"),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (409, Some("payment_action_taken")),
        "{body}"
    );
    let (status, _, replayed) = post(&stack, &cancel, DEV_API_KEY, Some("can-1"), None).await;
    assert_eq!((status, replayed), (200, true));
    assert!(
        posted(&stack, &canceled).await.is_empty(),
        "nothing posted for a cancel"
    );

    // Out of turn: an automatic payment, a captured one canceled, another merchant's, bad input.
    let automatic = stack.settled_payment("manual-auto", 300, "USD").await;
    let (status, body, _) = post(
        &stack,
        &format!("/payments/{automatic}/capture"),
        DEV_API_KEY,
        Some("x-1"),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (409, Some("payment_not_manual")),
        "{body}"
    );
    let (status, body, _) = post(
        &stack,
        &format!("/payments/{whole}/cancel"),
        DEV_API_KEY,
        Some("x-2"),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (409, Some("payment_action_taken")),
        "{body}"
    );
    let (_, other_key) = stack.merchant("manual-other").await;
    for action in ["capture", "cancel"] {
        let (status, body, _) = post(
            &stack,
            &format!("/payments/{canceled}/{action}"),
            &other_key,
            Some("o-1"),
            None,
        )
        .await;
        assert_eq!(
            (status, code(&body)),
            (404, Some("payment_not_found")),
            "{action}: {body}"
        );
    }
    let (status, body, _) = post(
        &stack,
        &format!("/payments/{part}/capture"),
        DEV_API_KEY,
        None,
        None,
    )
    .await;
    assert_eq!(status, 400, "no idempotency key: {body}");
    let (status, body, _) = post(
        &stack,
        &format!("/payments/{part}/cancel"),
        DEV_API_KEY,
        Some("x-3"),
        Some(json!({"amount_cents": 5})),
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (400, Some("unknown_field")),
        "{body}"
    );
    let (status, body) = stack
        .create_payment(
            json!({"customer_id": "cust-m", "amount_cents": 100, "currency": "USD",
            "idempotency_key": "manual-bad", "capture_method": "later"}),
        )
        .await;
    assert_eq!(
        (status.as_u16(), code(&body)),
        (400, Some("invalid_capture_method")),
        "{body}"
    );

    // The merchant heard of each: authorized (manual), canceled, the refund.
    let events_of = |kind: &'static str| {
        let stack = &stack;
        async move {
            let resp = stack
                .http
                .get(format!(
                    "{}/events?type={kind}&limit=100",
                    stack.gateway_url()
                ))
                .header("x-api-key", DEV_API_KEY)
                .send()
                .await
                .unwrap();
            let body: Value = resp.json().await.unwrap();
            body["data"].as_array().unwrap().clone()
        }
    };
    sagapay_e2e::eventually(Duration::from_secs(30), "merchant events", || async {
        let authorized = events_of("payment.authorized").await;
        let cancels = events_of("payment.canceled").await;
        let refunds = events_of("refund.succeeded").await;
        let payments = |events: &[Value]| -> Vec<String> {
            events
                .iter()
                .map(|e| {
                    e["data"]["object"]["payment_id"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect()
        };
        let ok = [&whole, &part, &canceled]
            .iter()
            .all(|p| payments(&authorized).contains(p))
            && payments(&cancels) == vec![canceled.clone()]
            && refunds.len() == 1
            && refunds[0]["data"]["object"]["amount_cents"] == 600
            && refunds[0]["data"]["object"]["payment_status"] == "REFUNDED";
        ok.then_some(())
    })
    .await;

    // Everything above agrees across the orchestrator, the provider and the ledger.
    let report = stack.reconcile().await;
    assert_eq!(report.differences, vec![]);
    // The four payments of the test: whole, part, canceled and automatic.
    assert_eq!(report.payments_checked, 4, "{report:?}");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_authorization_nobody_captures_is_voided_when_it_expires() {
    let deadlines = sagapay_orchestrator::deadlines::Deadlines {
        manual_capture: Duration::from_secs(2),
        sweep_interval: Duration::from_millis(200),
        ..Default::default()
    };
    let stack = TestStack::spawn_with(StackOptions {
        deadlines: Some(deadlines),
        ..Default::default()
    })
    .await;
    let pid = manual_payment(&stack, "manual-expire", 900).await;
    stack
        .wait_for_status(&pid, "CANCELED", Duration::from_secs(30))
        .await;
    let timeline = stack.get_payment(&pid).await["timeline"].to_string();
    assert!(timeline.contains("not captured within 2 s"), "{timeline}");
    let (status, body, _) = post(
        &stack,
        &format!("/payments/{pid}/capture"),
        DEV_API_KEY,
        Some("late"),
        None,
    )
    .await;
    assert_eq!(
        (status, code(&body)),
        (409, Some("payment_action_taken")),
        "{body}"
    );
    assert!(posted(&stack, &pid).await.is_empty());
    stack.teardown().await;
}
