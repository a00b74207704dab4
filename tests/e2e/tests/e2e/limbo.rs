//! No money in limbo: a provider outage, answers that are lost, a lost event and a parked
//! compensation all end with every payment terminal, no card hold left, and the provider,
//! the payments and the ledger agreeing.

use sagapay_e2e::{eventually, StackOptions, TestStack, DEV_OPS_KEY};
use sagapay_messaging::Classification;
use sagapay_orchestrator::deadlines::Deadlines;
use sagapay_provider_adapter::policy::RetrySettings;
use sagapayctl::dlq::{self, Filter};
use serde_json::{json, Value};
use sqlx::PgPool;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);
const TERMINAL: [&str; 5] = [
    "SETTLED",
    "FAILED",
    "REVERSED",
    "REFUNDED",
    "PARTIALLY_REFUNDED",
];

/// The tests' provider policy: 1 s calls, the short schedule of 1, 2, 4 s, then every second.
fn quick_retries() -> RetrySettings {
    RetrySettings {
        call_timeout: Duration::from_secs(1),
        long_backoff: vec![Duration::from_secs(1)],
        give_up_after: Duration::from_secs(120),
        ..RetrySettings::default()
    }
}

async fn pay(stack: &TestStack, key: &str, method: &str, amount: i64) -> String {
    stack
        .create_payment_id(json!({
            "customer_id": format!("cust-{key}"), "amount_cents": amount, "currency": "USD",
            "idempotency_key": key, "payment_method": method
        }))
        .await
}

async fn wait_terminal(stack: &TestStack, pid: &str) -> Value {
    eventually(WAIT * 2, &format!("payment {pid} to end"), || async {
        let p = stack.get_payment(pid).await;
        TERMINAL
            .contains(&p["status"].as_str().unwrap_or_default())
            .then_some(p)
    })
    .await
}

/// Every authorization the provider made is captured or voided: no card hold is left.
async fn assert_no_card_hold(provider: &PgPool) {
    let open: Vec<Uuid> = sqlx::query_scalar(
        "SELECT a.payment_id FROM simulated_provider_operations a
          WHERE a.operation = 'AUTHORIZE' AND a.outcome = 'SUCCEEDED'
            AND NOT EXISTS (SELECT 1 FROM simulated_provider_operations c
                             WHERE c.payment_id = a.payment_id AND c.outcome = 'SUCCEEDED'
                               AND c.operation IN ('CAPTURE', 'VOID'))",
    )
    .fetch_all(provider)
    .await
    .unwrap();
    assert_eq!(open, Vec::<Uuid>::new(), "authorizations left open");
}

/// The provider refuses every connection for 15 s while 50 payments are made. Every payment
/// ends: those whose authorization never reached the provider fail (nothing to undo), the
/// others settle once the provider is back (their captures are tried again on the long
/// schedule). No authorization is left open, and the three-way reconciliation is clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fifteen_second_provider_outage_leaves_no_money_in_limbo() {
    let stack = TestStack::spawn_with(StackOptions {
        provider_retry: Some(quick_retries()),
        ..StackOptions::default()
    })
    .await;
    let mut pids = Vec::new();
    for i in 0..10 {
        pids.push(pay(&stack, &format!("outage-{i}"), "pm_card_ok", 1_000 + i).await);
    }
    stack.provider_outage(15, None).await;
    // The other 40 arrive during the outage, four a second (a load, not a synchronisation).
    let mut pace = tokio::time::interval(Duration::from_millis(250));
    for i in 10..50 {
        pace.tick().await;
        pids.push(pay(&stack, &format!("outage-{i}"), "pm_card_ok", 1_000 + i).await);
    }
    let mut by_status = std::collections::BTreeMap::<String, usize>::new();
    for pid in &pids {
        let p = wait_terminal(&stack, pid).await;
        *by_status
            .entry(p["status"].as_str().unwrap().to_owned())
            .or_default() += 1;
        if p["status"] == "FAILED" {
            let reasons: Vec<&str> = p["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|t| t["reason"].as_str())
                .collect();
            assert!(
                reasons.iter().any(|r| r.contains("provider_unavailable")),
                "{pid} failed for another reason: {reasons:?}"
            );
        }
    }
    // Which payment ends how depends on when its attempts fell in the outage; that each one
    // ended SETTLED or FAILED (for the outage), with the outage really refusing calls, does not.
    let ended = by_status.get("SETTLED").copied().unwrap_or(0)
        + by_status.get("FAILED").copied().unwrap_or(0);
    assert_eq!(ended, 50, "{by_status:?}");
    let provider = stack.db("provider-adapter").await;
    let refused: i64 =
        sqlx::query_scalar("SELECT count(*) FROM provider_attempts WHERE outcome = 'UNAVAILABLE'")
            .fetch_one(&provider)
            .await
            .unwrap();
    assert!(refused > 0, "the outage refused no call");
    assert_no_card_hold(&provider).await;
    stack.reconciled(50).await;
    stack.teardown().await;
}

/// The capture happens at the provider but its answers are lost: after the short schedule the
/// adapter asks, finds the capture, and the payment settles with its posting: never a charge
/// without a record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_capture_whose_answers_are_lost_is_found_by_asking_and_settles() {
    let stack = TestStack::spawn().await;
    let pid = pay(&stack, "capture-lost", "pm_card_capture_timeout", 4_200).await;
    stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    let provider = stack.db("provider-adapter").await;
    let attempts: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, outcome FROM provider_attempts
          WHERE payment_id = $1 AND operation = 'CAPTURE' ORDER BY attempt_id",
    )
    .bind(Uuid::parse_str(&pid).unwrap())
    .fetch_all(&provider)
    .await
    .unwrap();
    let attempts: Vec<(&str, &str)> = attempts
        .iter()
        .map(|(k, o)| (k.as_str(), o.as_str()))
        .collect();
    assert_eq!(attempts[..4], [("CALL", "TIMEOUT"); 4], "{attempts:?}");
    assert_eq!(
        attempts.last(),
        Some(&("STATUS", "SUCCEEDED")),
        "{attempts:?}"
    );
    assert!(
        attempts[4..].iter().all(|(kind, _)| *kind == "STATUS"),
        "only status queries after the short schedule: {attempts:?}"
    );
    stack.reconciled(1).await;
    stack.teardown().await;
}

async fn refund(stack: &TestStack, pid: &str, key: &str, amount: i64) -> (u16, Value) {
    let resp = stack
        .http
        .post(format!("{}/payments/{pid}/refunds", stack.gateway_url()))
        .header("x-api-key", sagapay_e2e::DEV_API_KEY)
        .json(&json!({"amount_cents": amount, "idempotency_key": key}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap())
}

/// A refund whose answers are lost for a while stays pending, and while it is pending it
/// counts against what is left to refund: a second refund for more than the rest is refused,
/// one for the rest is admitted, and the provider never refunds more than was captured.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refund_with_lost_answers_stays_pending_and_still_counts() {
    let stack = TestStack::spawn().await;
    let pid = pay(&stack, "refund-lost", "pm_card_refund_timeout", 1_000).await;
    stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    let (status, first) = refund(&stack, &pid, "r-600", 600).await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["status"], "REQUESTED");
    let (status, refused) = refund(&stack, &pid, "r-500", 500).await;
    let pending = stack.get_payment(&pid).await;
    assert_eq!(
        pending["refunds"][0]["status"], "REQUESTED",
        "the first refund was still pending when the second was refused"
    );
    assert_eq!(status, 422, "{refused}");
    assert_eq!(refused["error"]["code"], "refund_exceeds_captured");
    let (status, rest) = refund(&stack, &pid, "r-400", 400).await;
    assert_eq!(status, 201, "{rest}");
    stack.wait_for_status(&pid, "REFUNDED", WAIT).await;
    let refunded: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM simulated_provider_operations
          WHERE payment_id = $1 AND operation = 'REFUND' AND outcome = 'SUCCEEDED'",
    )
    .bind(Uuid::parse_str(&pid).unwrap())
    .fetch_one(&stack.db("provider-adapter").await)
    .await
    .unwrap();
    assert_eq!(refunded, 1_000, "never more than was captured");
    stack.reconciled(1).await;
    stack.teardown().await;
}

/// Deadlines short enough for a test: CAPTURED waits 2 s, the sweeper looks every 200 ms.
fn short_capture_deadline(max_nudges: i32) -> Deadlines {
    Deadlines {
        captured: Duration::from_secs(2),
        max_nudges,
        sweep_interval: Duration::from_millis(200),
        ..Deadlines::default()
    }
}

/// Drops, in the orchestrator's outbox, the saga's own `ledger.post.requested` (those caused
/// by an event; `all` drops re-sent ones too): the event is lost as if deleted by hand.
async fn lose_ledger_commands(orchestrator: &PgPool, all: bool) {
    let condition = if all {
        "NEW.event_type = 'ledger.post.requested'"
    } else {
        "NEW.event_type = 'ledger.post.requested' AND NEW.payload->>'causation_id' IS NOT NULL"
    };
    sqlx::raw_sql(&format!(
        "CREATE OR REPLACE FUNCTION lose_ledger_command() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN IF {condition} THEN RETURN NULL; END IF; RETURN NEW; END $$;
         DROP TRIGGER IF EXISTS lose_ledger_command ON outbox;
         CREATE TRIGGER lose_ledger_command BEFORE INSERT ON outbox
           FOR EACH ROW EXECUTE FUNCTION lose_ledger_command();"
    ))
    .execute(orchestrator)
    .await
    .unwrap();
}

/// A payment's `ledger.post.requested` is lost: the payment waits in CAPTURED until its
/// deadline, the sweeper sends the command again (a new event; the timeline says so), and the
/// payment settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_ledger_command_is_sent_again_after_the_deadline_and_settles() {
    let stack = TestStack::spawn_with(StackOptions {
        deadlines: Some(short_capture_deadline(3)),
        ..StackOptions::default()
    })
    .await;
    let orchestrator = stack.db("orchestrator").await;
    lose_ledger_commands(&orchestrator, false).await;
    let pid = pay(&stack, "lost-post", "pm_card_ok", 2_300).await;
    let settled = stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    let steps: Vec<&str> = settled["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "STEP")
        .filter_map(|t| t["reason"].as_str())
        .collect();
    assert!(!steps.is_empty(), "no step re-sent");
    assert!(
        steps[0].starts_with("deadline passed in CAPTURED")
            && steps[0].contains("ledger.post.requested sent again (1 of 3)"),
        "{}",
        steps[0]
    );
    assert_eq!(
        stack
            .metric(
                "orchestrator",
                "deadline_nudges_total{status=\"CAPTURED\",service=\"orchestrator\"}"
            )
            .await,
        steps.len() as f64,
        "each re-send counted"
    );
    stack.reconciled(1).await;
    stack.teardown().await;
}

/// The provider refuses voids for long enough that a compensation is given up: the payment is
/// flagged for an operator and the void dead-lettered RETRY_EXHAUSTED. Once voids work again,
/// replaying the letter re-arms the void, which completes: the payment ends REVERSED and no
/// card hold is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_retry_exhausted_void_completes() {
    let stack = TestStack::spawn_with(StackOptions {
        provider_retry: Some(RetrySettings {
            call_timeout: Duration::from_secs(1),
            backoff: vec![Duration::from_millis(200); 3],
            long_backoff: vec![Duration::from_millis(300)],
            give_up_after: Duration::from_secs(3),
            ..RetrySettings::default()
        }),
        ..StackOptions::default()
    })
    .await;
    stack.provider_outage(600, Some(&["VOID"])).await;
    // Its authorization is never answered: it is given up and voided, and the void is refused.
    let pid = pay(&stack, "void-parked", "pm_card_timeout", 3_100).await;
    let voids = Filter {
        classification: Some(Classification::RetryExhausted),
        event_type: Some("provider.void.requested".into()),
        ..Filter::default()
    };
    let letters = eventually(WAIT, "the void's RETRY_EXHAUSTED letter", || async {
        let l: Vec<dlq::Entry> = dlq::read_all(&stack.kafka(), &stack.ns)
            .await
            .ok()?
            .into_iter()
            .filter(|e| voids.matches(e))
            .collect();
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert!(
        letters[0].letter.error.contains("never performed"),
        "{}",
        letters[0].letter.error
    );
    let flagged = eventually(WAIT, "the payment to need attention", || async {
        let p = stack.get_payment(&pid).await;
        p["timeline"]
            .as_array()?
            .iter()
            .any(|t| {
                t["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("needs attention: VOID failed"))
            })
            .then_some(p)
    })
    .await;
    assert_eq!(flagged["status"], "APPROVED");
    stack.provider_outage(0, None).await;
    assert_eq!(
        dlq::replay(&stack.kafka(), &letters, false).await.unwrap(),
        1
    );
    stack.wait_for_status(&pid, "REVERSED", WAIT).await;
    assert_no_card_hold(&stack.db("provider-adapter").await).await;
    stack.teardown().await;
}

/// The provider captures a different amount than was asked: the capture is never applied nor
/// posted; the payment is flagged for an operator with both amounts, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_amount_the_provider_changed_is_never_posted() {
    let stack = TestStack::spawn().await;
    let pid = pay(&stack, "mismatch", "pm_card_amount_mismatch", 5_000).await;
    let ops = sagapayctl::payments::Ops {
        orchestrator_url: stack.service_url("orchestrator"),
        ops_key: DEV_OPS_KEY.into(),
    };
    let stuck = eventually(WAIT, "the payment to be listed as stuck", || async {
        let s = ops.stuck(100).await.ok()?;
        let row = s["payments"]
            .as_array()?
            .iter()
            .find(|p| p["payment_id"] == pid.as_str())?
            .clone();
        Some(row)
    })
    .await;
    assert_eq!(stuck["status"], "AUTHORIZED");
    let why = stuck["attention_reason"].as_str().unwrap();
    assert!(
        why.contains("capture of 4999 USD, but 5000 USD was requested"),
        "{why}"
    );
    assert_eq!(
        stack
            .metric(
                "orchestrator",
                "provider_amount_mismatches_total{operation=\"capture\",service=\"orchestrator\"}"
            )
            .await,
        1.0
    );
    let postings: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_transactions")
        .fetch_one(&stack.db("ledger").await)
        .await
        .unwrap();
    assert_eq!(postings, 0, "nothing was posted");
    stack.teardown().await;
}

/// Operators see stuck payments and act on them: a payment whose ledger command keeps being
/// lost is re-sent once, then flagged; `retry` sends it again (and it settles once the cause
/// is gone); `fail` ends a payment waiting for review at once, and refunds a captured one that
/// cannot be posted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operators_list_retry_and_fail_stuck_payments() {
    let stack = TestStack::spawn_with(StackOptions {
        deadlines: Some(short_capture_deadline(1)),
        ..StackOptions::default()
    })
    .await;
    let orchestrator = stack.db("orchestrator").await;
    lose_ledger_commands(&orchestrator, true).await;
    let ops = sagapayctl::payments::Ops {
        orchestrator_url: stack.service_url("orchestrator"),
        ops_key: DEV_OPS_KEY.into(),
    };
    let to_retry = pay(&stack, "ops-retry", "pm_card_ok", 1_500).await;
    let to_refund = pay(&stack, "ops-refund", "pm_card_ok", 1_600).await;
    let in_review = pay(&stack, "ops-review", "pm_card_ok", 150_000).await;
    stack.wait_for_status(&in_review, "RISK_REVIEW", WAIT).await;
    for pid in [&to_retry, &to_refund] {
        eventually(WAIT, "the payment to be flagged", || async {
            let s = ops.stuck(100).await.ok()?;
            s["payments"]
                .as_array()?
                .iter()
                .find(|p| p["payment_id"] == pid.as_str() && !p["attention_since"].is_null())
                .map(|p| {
                    assert_eq!(p["status"], "CAPTURED");
                    assert_eq!(p["nudges"], 1);
                    let why = p["attention_reason"].as_str().unwrap();
                    assert!(why.contains("no answer to ledger.post.requested"), "{why}");
                })
        })
        .await;
    }
    // Exactly the two flagged (the one in review waits a day before its deadline).
    eventually(WAIT, "the gauge to count both", || async {
        let n = stack
            .metric(
                "orchestrator",
                "payments_needing_attention{service=\"orchestrator\"}",
            )
            .await;
        (n == 2.0).then_some(())
    })
    .await;
    // Fail: the payment under review fails at once; the captured one is refunded.
    let failed = ops
        .fail(
            Uuid::parse_str(&in_review).unwrap(),
            "customer cancelled",
            "ops-ann",
        )
        .await
        .unwrap();
    assert_eq!(failed["action"], "failed");
    stack.wait_for_status(&in_review, "FAILED", WAIT).await;
    let refunding = ops
        .fail(
            Uuid::parse_str(&to_refund).unwrap(),
            "ledger unavailable",
            "ops-ann",
        )
        .await
        .unwrap();
    assert_eq!(refunding["action"], "refunding");
    stack.wait_for_status(&to_refund, "REVERSED", WAIT).await;
    let again = ops
        .fail(Uuid::parse_str(&to_refund).unwrap(), "twice", "ops-ann")
        .await
        .unwrap_err();
    assert!(again.to_string().contains("already REVERSED"), "{again}");
    // Retry, once the cause is gone.
    sqlx::query("DROP TRIGGER lose_ledger_command ON outbox")
        .execute(&orchestrator)
        .await
        .unwrap();
    let retried = ops
        .retry(Uuid::parse_str(&to_retry).unwrap(), "ops-ann")
        .await
        .unwrap();
    assert_eq!(retried["sent"][0], "ledger.post.requested");
    stack.wait_for_status(&to_retry, "SETTLED", WAIT).await;
    let timeline = stack.timeline(&to_retry).await;
    assert!(
        timeline
            .iter()
            .any(|t| t.reason.starts_with("ops-ann asked to retry")),
        "{timeline:?}"
    );
    stack.reconciled(3).await;
    stack.teardown().await;
}
