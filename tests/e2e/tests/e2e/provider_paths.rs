use sagapay_e2e::{eventually, TestStack};
use serde_json::json;
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);

async fn pay(stack: &TestStack, key: &str, payment_method: &str, amount: i64) -> String {
    stack
        .create_payment_id(json!({
            "customer_id": format!("cust-{key}"), "amount_cents": amount, "currency": "USD",
            "idempotency_key": key, "payment_method": payment_method
        }))
        .await
}

#[derive(Debug, sqlx::FromRow)]
struct Attempt {
    /// CALL or STATUS (a status query).
    kind: String,
    outcome: String,
    started_at: chrono::DateTime<chrono::Utc>,
    finished_at: chrono::DateTime<chrono::Utc>,
    latency_ms: i32,
}

async fn attempts(pool: &PgPool, payment_id: &str, operation: &str) -> Vec<Attempt> {
    sqlx::query_as(
        "SELECT kind, outcome, started_at, finished_at, latency_ms FROM provider_attempts
              WHERE payment_id = $1 AND operation = $2 ORDER BY attempt_id",
    )
    .bind(Uuid::parse_str(payment_id).unwrap())
    .bind(operation)
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn provider_books(pool: &PgPool, payment_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT operation FROM simulated_provider_operations WHERE payment_id = $1 ORDER BY created_at",
    )
    .bind(Uuid::parse_str(payment_id).unwrap())
    .fetch_all(pool)
    .await
    .unwrap()
}

/// An authorization whose answers never come is retried after 1, 2 and 4 s; its outcome is
/// then unknown, so the provider is asked (a status query) before anything is compensated;
/// with no answer to that either, it is voided (by its idempotency key) and REVERSED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn authorization_timeouts_are_retried_after_1_2_4_seconds_asked_about_then_voided() {
    let stack = TestStack::spawn().await;
    let pid = pay(&stack, "timeout", "pm_card_timeout", 5_000).await;
    stack.wait_for_status(&pid, "REVERSED", WAIT).await;

    let provider = stack.db("provider-adapter").await;
    let auth = attempts(&provider, &pid, "AUTHORIZE").await;
    assert_eq!(
        auth.iter()
            .map(|a| (a.kind.as_str(), a.outcome.as_str()))
            .collect::<Vec<_>>(),
        [
            ("CALL", "TIMEOUT"),
            ("CALL", "TIMEOUT"),
            ("CALL", "TIMEOUT"),
            ("CALL", "TIMEOUT"),
            ("STATUS", "TIMEOUT")
        ]
    );
    let asked_after = (auth[4].started_at - auth[3].finished_at).as_seconds_f64();
    assert!(
        asked_after < 0.75,
        "asked {asked_after:.3} s after the last call"
    );
    for (i, backoff_s) in [1.0, 2.0, 4.0].into_iter().enumerate() {
        let gap = (auth[i + 1].started_at - auth[i].finished_at).as_seconds_f64();
        assert!(
            gap >= backoff_s - 0.05 && gap <= backoff_s + 0.75,
            "gap before attempt {} was {gap:.3} s, expected about {backoff_s} s",
            i + 2
        );
    }
    let void = attempts(&provider, &pid, "VOID").await;
    assert_eq!(void.len(), 1);
    assert_eq!(void[0].outcome, "SUCCEEDED");
    // The provider had authorized (only its answer was lost); the void reversed it.
    assert_eq!(provider_books(&provider, &pid).await, ["AUTHORIZE", "VOID"]);

    let t = stack.timeline(&pid).await;
    let shape: Vec<(&str, &str)> = t
        .iter()
        .map(|r| (r.kind.as_str(), r.to_state.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("TRANSITION", "CREATED"),
            ("TRANSITION", "APPROVED"),
            ("STEP", "APPROVED"),
            ("TRANSITION", "REVERSED"),
        ]
    );
    assert!(
        t[2].reason.contains("outcome unknown after 5 attempts"),
        "{}",
        t[2].reason
    );
    assert!(
        t[3].reason.contains("authorization voided"),
        "{}",
        t[3].reason
    );
    assert_eq!(
        stack
            .metric(
                "provider-adapter",
                "retries_total{operation=\"AUTHORIZE\",service=\"provider-adapter\"}"
            )
            .await,
        4.0,
        "three calls again and one status query"
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_timeouts_then_an_answer_settles_the_payment() {
    let stack = TestStack::spawn().await;
    let pid = pay(&stack, "flaky", "pm_card_fail_twice", 1_500).await;
    stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    let provider = stack.db("provider-adapter").await;
    let auth = attempts(&provider, &pid, "AUTHORIZE").await;
    assert_eq!(
        auth.iter().map(|a| a.outcome.as_str()).collect::<Vec<_>>(),
        ["TIMEOUT", "TIMEOUT", "SUCCEEDED"]
    );
    assert_eq!(
        provider_books(&provider, &pid).await,
        ["AUTHORIZE", "CAPTURE"]
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_answer_within_the_timeout_settles_on_the_first_attempt() {
    let stack = TestStack::spawn().await;
    let pid = pay(&stack, "slow", "pm_card_slow", 1_500).await;
    stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    let provider = stack.db("provider-adapter").await;
    let auth = attempts(&provider, &pid, "AUTHORIZE").await;
    assert_eq!(auth.len(), 1);
    assert_eq!(auth[0].outcome, "SUCCEEDED");
    assert!(
        auth[0].latency_ms >= 200,
        "latency {} ms",
        auth[0].latency_ms
    );
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_stuck_in_retries_does_not_delay_the_others() {
    let stack = TestStack::spawn().await;
    let stuck = pay(&stack, "stuck", "pm_card_timeout", 900).await;
    stack.wait_for_status(&stuck, "APPROVED", WAIT).await;
    let started = Instant::now();
    let mut others = Vec::new();
    for i in 0..6 {
        others.push(pay(&stack, &format!("other-{i}"), "pm_card_ok", 100 + i).await);
    }
    for pid in &others {
        stack.wait_for_status(pid, "SETTLED", WAIT).await;
    }
    let took = started.elapsed();
    // The stuck payment needs 1 + 2 + 4 s of back-off plus four 1 s timeouts before it can end;
    // the others (two partitions: some share its partition) finished long before.
    assert_eq!(stack.get_payment(&stuck).await["status"], "APPROVED");
    assert!(took < Duration::from_secs(5), "others took {took:?}");
    stack.wait_for_status(&stuck, "REVERSED", WAIT).await;
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledger_refusal_after_capture_refunds_the_capture_and_reverses() {
    let stack = TestStack::spawn().await;
    let gateway = stack.db("gateway").await;
    let merchant: Uuid =
        sqlx::query_scalar("SELECT merchant_id FROM merchants WHERE name = 'dev-merchant'")
            .fetch_one(&gateway)
            .await
            .unwrap();
    let ledger = stack.db("ledger").await;
    sqlx::query(
        "INSERT INTO accounts (account_id, kind, currency, merchant_id, description, frozen_at)
         VALUES ($1, 'LIABILITY', 'USD', $2, 'frozen for the test', now())",
    )
    .bind(format!("USD:merchant_payable:{merchant}"))
    .bind(merchant)
    .execute(&ledger)
    .await
    .unwrap();

    let pid = pay(&stack, "frozen", "pm_card_ok", 3_300).await;
    stack.wait_for_status(&pid, "REVERSED", WAIT).await;
    let t = stack.timeline(&pid).await;
    let shape: Vec<(&str, &str)> = t
        .iter()
        .map(|r| (r.kind.as_str(), r.to_state.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            ("TRANSITION", "CREATED"),
            ("TRANSITION", "APPROVED"),
            ("TRANSITION", "AUTHORIZED"),
            ("TRANSITION", "CAPTURED"),
            ("STEP", "CAPTURED"),
            ("TRANSITION", "REVERSED"),
        ]
    );
    assert!(t[4].reason.contains("frozen"), "{}", t[4].reason);
    assert!(t[5].reason.contains("capture refunded"), "{}", t[5].reason);
    let provider = stack.db("provider-adapter").await;
    assert_eq!(
        provider_books(&provider, &pid).await,
        ["AUTHORIZE", "CAPTURE", "REFUND"]
    );
    let postings: i64 = sagapay_e2e::count_rows(
        &ledger,
        "SELECT count(*) FROM journal_transactions WHERE payment_id = $1",
        Uuid::parse_str(&pid).unwrap(),
    )
    .await;
    assert_eq!(postings, 0, "nothing was posted for the refused payment");
    let notification = stack.db("notification").await;
    let kinds = || async {
        let k: Vec<String> =
            sqlx::query_scalar("SELECT kind FROM notifications WHERE payment_id = $1")
                .bind(Uuid::parse_str(&pid).unwrap())
                .fetch_all(&notification)
                .await
                .unwrap();
        k
    };
    eventually(WAIT, "the reversal notification", || async {
        (!kinds().await.is_empty()).then_some(())
    })
    .await;
    // Exactly one: counted once nothing is left in flight.
    stack.wait_quiet().await;
    assert_eq!(kinds().await, ["payment.reversed"]);
    stack.teardown().await;
}

/// The simulated provider books the operations of one payment one after another, as a PSP
/// does, without a lock: eight refunds of 3,000 called at once on a capture of 10,000, each
/// under its own key, leave three refunded and five declined `amount_exceeds_captured`
/// (9,000 refunded, never 24,000), and a key called again answers what its first call did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refunds_at_once_at_the_simulated_provider_never_exceed_the_capture() {
    use sagapay_domain::events::ProviderOperation::{Authorize, Capture, Refund};
    use sagapay_domain::{AmountMinor, Currency};
    use sagapay_provider_adapter::provider::{
        Outage, PaymentProvider, ProviderOutcome, ProviderRequest, SimulatedProvider,
    };
    let ns = sagapay_e2e::fresh_namespace();
    let common = sagapay_e2e::config("provider-adapter", &ns);
    let pool = sagapay_service_kit::db::prepare(&common, sagapay_provider_adapter::migrations())
        .await
        .unwrap();
    let provider = SimulatedProvider::new(pool.clone(), Duration::ZERO, Outage::default());
    let payment_id = Uuid::now_v7();
    let request = |operation, key: &str, amount| ProviderRequest {
        payment_id,
        operation,
        idempotency_key: key.to_owned(),
        amount_minor: AmountMinor::new(amount).unwrap(),
        currency: Currency::parse("USD").unwrap(),
        payment_method: "pm_card_ok".into(),
        reference: None,
    };
    let succeeded = |o: &ProviderOutcome| matches!(o, ProviderOutcome::Succeeded { .. });
    for (operation, key) in [(Authorize, "authorize"), (Capture, "capture")] {
        let outcome = provider
            .call(&request(operation, key, 10_000))
            .await
            .unwrap();
        assert!(succeeded(&outcome), "{key}: {outcome:?}");
    }
    let refunds: Vec<ProviderRequest> = (0..8)
        .map(|i| request(Refund, &format!("refund-{i}"), 3_000))
        .collect();
    let outcomes: Vec<ProviderOutcome> =
        futures::future::join_all(refunds.iter().map(|r| provider.call(r)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    let refunded = outcomes.iter().filter(|o| succeeded(o)).count();
    let refused = outcomes
        .iter()
        .filter(|o| {
            matches!(o, ProviderOutcome::Declined { code } if code == "amount_exceeds_captured")
        })
        .count();
    assert_eq!((refunded, refused), (3, 5), "{outcomes:#?}");
    let books: i64 = sqlx::query_scalar(
        "SELECT sum(amount_minor)::bigint FROM simulated_provider_operations
          WHERE payment_id = $1 AND operation = 'REFUND' AND outcome = 'SUCCEEDED'",
    )
    .bind(payment_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(books, 9_000);
    for (r, first) in refunds.iter().zip(&outcomes) {
        assert_eq!(
            &provider.call(r).await.unwrap(),
            first,
            "{} again",
            r.idempotency_key
        );
    }
    pool.close().await;
    sagapay_e2e::cleanup_namespace(&ns).await;
}
