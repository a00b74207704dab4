use sagapay_domain::Currency;
use sagapay_e2e::{eventually, StackOptions, TestStack};
use sagapay_messaging::Classification;
use sagapayctl::dlq::{self, Filter};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(40);

/// What a replay to the ledger would change: the messages of the ledger's channel (what was
/// published), the ledger's dead letters (what it made of a command it still cannot post) and
/// the payment's postings.
#[derive(Debug, PartialEq)]
struct LedgerSide {
    channel_messages: i64,
    dead_letters: usize,
    postings: Vec<(String, i64, i64)>,
}

impl LedgerSide {
    async fn read(stack: &TestStack, letters: &Filter, payment_id: &str) -> LedgerSide {
        LedgerSide {
            channel_messages: stack.messages_in_channel_of("ledger.post.requested").await,
            dead_letters: dead_letters(stack, letters).await.len(),
            postings: postings(stack, payment_id).await,
        }
    }
}

/// The payment's journal transactions: (posting kind, debits, credits) each.
async fn postings(stack: &TestStack, payment_id: &str) -> Vec<(String, i64, i64)> {
    sqlx::query_as(
        "SELECT t.posting_kind,
                COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'DEBIT'), 0)::bigint,
                COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'CREDIT'), 0)::bigint
           FROM journal_transactions t LEFT JOIN ledger_entries e USING (transaction_id)
          WHERE t.payment_id = $1
          GROUP BY t.transaction_id, t.posting_kind
          ORDER BY t.posting_kind",
    )
    .bind(Uuid::parse_str(payment_id).unwrap())
    .fetch_all(&stack.db("ledger").await)
    .await
    .unwrap()
}

async fn dead_letters(stack: &TestStack, filter: &Filter) -> Vec<dlq::Entry> {
    dlq::read_all(&stack.kafka(), &stack.ns)
        .await
        .expect("read the dead-letter topic")
        .into_iter()
        .filter(|e| filter.matches(e))
        .collect()
}

/// The ledger cannot post EUR (no chart of accounts): its command is dead-lettered and the
/// payment waits in CAPTURED. A dry run changes nothing. Once the ledger can post EUR,
/// replaying the dead letter completes the payment with one posting, and replaying it again
/// posts nothing more: counted once the stack is quiet, and reconciled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_a_dead_lettered_event_after_its_cause_is_fixed_completes_the_payment() {
    let mut stack = TestStack::spawn_with(StackOptions {
        ledger_currencies: Some(vec![Currency::parse("USD").unwrap()]),
        ..StackOptions::default()
    })
    .await;
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-eur", "amount_cents": 4_000, "currency": "EUR",
            "idempotency_key": "eur-1"
        }))
        .await;
    let ledger_letters = Filter {
        service: Some("ledger".into()),
        ..Filter::default()
    };
    let letters = eventually(WAIT, "the ledger's dead letter", || async {
        let l = dead_letters(&stack, &ledger_letters).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].letter;
    assert_eq!(letter.classification, Classification::NonRetryable);
    assert_eq!(letter.event_type.as_deref(), Some("ledger.post.requested"));
    assert!(
        letter.error.contains("no chart of accounts for EUR"),
        "{}",
        letter.error
    );
    assert_eq!(stack.get_payment(&pid).await["status"], "CAPTURED");

    // A dry run replays nothing. The payment's status cannot tell (a command replayed to the
    // ledger that still cannot post EUR is dead-lettered again, the payment stays CAPTURED):
    // the ledger's side is compared, before and after, once the stack is quiet.
    stack.wait_quiet().await;
    let before = LedgerSide::read(&stack, &ledger_letters, &pid).await;
    assert_eq!(
        (before.dead_letters, before.postings.len()),
        (1, 0),
        "{before:?}"
    );
    assert_eq!(
        dlq::replay(&stack.kafka(), &letters, true).await.unwrap(),
        1
    );
    stack.wait_quiet().await;
    assert_eq!(
        LedgerSide::read(&stack, &ledger_letters, &pid).await,
        before,
        "the dry run changed nothing"
    );
    assert_eq!(stack.get_payment(&pid).await["status"], "CAPTURED");

    stack.restart_ledger_with_all_currencies().await;
    assert_eq!(
        dlq::replay(&stack.kafka(), &letters, false).await.unwrap(),
        1
    );
    stack.wait_for_status(&pid, "SETTLED", WAIT).await;
    // Replayed again (an operator's second try): nothing more is posted. One posting, its
    // entries once, counted once the stack is quiet.
    assert_eq!(
        dlq::replay(&stack.kafka(), &letters, false).await.unwrap(),
        1
    );
    stack.wait_quiet().await;
    assert_eq!(
        postings(&stack, &pid).await,
        vec![("CAPTURE".to_owned(), 4_000, 4_000)],
        "one posting of the payment's amount, its entries once"
    );
    stack.reconciled(1).await;
    stack.teardown().await;
}

/// A timed-out authorization is given up, dead-lettered RETRY_EXHAUSTED and voided. Its letter
/// carries the command as a new event, so a replay reaches the adapter (a replay of the
/// original bytes would be swallowed by the inbox) and would re-arm a given-up operation;
/// this one is being compensated, so the replay authorizes nothing again: no new attempt, no
/// new booking at the provider, the payment stays REVERSED.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_the_letter_of_a_voided_authorization_authorizes_nothing_again() {
    let stack = TestStack::spawn().await;
    let pid = stack
        .create_payment_id(json!({
            "customer_id": "cust-replay", "amount_cents": 2_000, "currency": "USD",
            "idempotency_key": "replay-1", "payment_method": "pm_card_timeout"
        }))
        .await;
    stack.wait_for_status(&pid, "REVERSED", WAIT).await;

    let exhausted = Filter {
        classification: Some(Classification::RetryExhausted),
        ..Filter::default()
    };
    let letters = eventually(WAIT, "the RETRY_EXHAUSTED dead letter", || async {
        let l = dead_letters(&stack, &exhausted).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 1);
    let letter = &letters[0].letter;
    assert_eq!(letter.failing_service, "provider-adapter");
    assert_eq!(
        letter.event_type.as_deref(),
        Some("provider.authorize.requested")
    );
    assert!(
        letter
            .error
            .contains("given up after 5 attempts (outcome unknown)"),
        "{}",
        letter.error
    );
    let replayed = sagapay_domain::Envelope::from_json(&letter.original_value()).unwrap();
    assert_eq!(letter.event_id, Some(replayed.event_id.to_string()));
    assert!(
        replayed.causation_id.is_some(),
        "it points at the original command"
    );

    let provider = stack.db("provider-adapter").await;
    let payment_uuid = Uuid::parse_str(&pid).unwrap();
    let count = |sql: &'static str| sagapay_e2e::count_rows(&provider, sql, payment_uuid);
    let attempts_before =
        count("SELECT count(*) FROM provider_attempts WHERE payment_id = $1").await;
    let books_before =
        count("SELECT count(*) FROM simulated_provider_operations WHERE payment_id = $1").await;

    let consumed = "events_consumed_total{event_type=\"provider.authorize.requested\",service=\"provider-adapter\"}";
    let consumed_before = stack.metric("provider-adapter", consumed).await;
    assert_eq!(
        dlq::replay(&stack.kafka(), &letters, false).await.unwrap(),
        1
    );
    eventually(WAIT, "the replayed command to be handled", || async {
        (stack.metric("provider-adapter", consumed).await > consumed_before).then_some(())
    })
    .await;
    // Counted once whatever the replay set off has run its course.
    stack.wait_quiet().await;
    let status: String = sqlx::query_scalar(
        "SELECT status FROM provider_operations WHERE payment_id = $1 AND operation = 'AUTHORIZE'",
    )
    .bind(payment_uuid)
    .fetch_one(&provider)
    .await
    .unwrap();
    assert_eq!(
        status, "EXHAUSTED",
        "not re-armed: the authorization was voided"
    );
    assert_eq!(
        count("SELECT count(*) FROM provider_attempts WHERE payment_id = $1").await,
        attempts_before
    );
    assert_eq!(
        count("SELECT count(*) FROM simulated_provider_operations WHERE payment_id = $1").await,
        books_before
    );
    assert_eq!(stack.get_payment(&pid).await["status"], "REVERSED");
    stack.reconciled(1).await;
    stack.teardown().await;
}
