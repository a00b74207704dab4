use sagapay_e2e::TestStack;
use serde_json::json;
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

/// A journal transaction typed by hand, in `currency`, without entries yet: its id.
async fn open_journal_transaction(conn: &mut PgConnection, currency: &str) -> Uuid {
    let tx_id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO journal_transactions (transaction_id, payment_id, posting_kind, currency, description)
         VALUES ($1, $2, 'MANUAL', $3, 'by hand')",
    )
    .bind(tx_id)
    .bind(Uuid::now_v7())
    .bind(currency)
    .execute(conn)
    .await
    .unwrap();
    tx_id
}

/// The ledger's rules hold even against SQL typed by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_rejects_altered_deleted_and_unbalanced_ledger_entries() {
    let stack = TestStack::spawn().await;
    let pid = stack.settled_payment("sql", 5_000, "USD").await;
    let url = sagapay_e2e::config("ledger", &stack.ns).database_url();
    let mut conn = PgConnection::connect(secrecy::ExposeSecret::expose_secret(&url))
        .await
        .unwrap();

    let err = |r: Result<sqlx::postgres::PgQueryResult, sqlx::Error>| -> String {
        match r {
            Ok(_) => panic!("the statement must fail"),
            Err(e) => e.to_string(),
        }
    };
    let e = err(
        sqlx::query("UPDATE ledger_entries SET amount_minor = amount_minor + 1")
            .execute(&mut conn)
            .await,
    );
    assert!(e.contains("append-only"), "{e}");
    let e = err(sqlx::query("DELETE FROM ledger_entries")
        .execute(&mut conn)
        .await);
    assert!(e.contains("append-only"), "{e}");
    let e = err(sqlx::query("TRUNCATE ledger_entries CASCADE")
        .execute(&mut conn)
        .await);
    assert!(e.contains("append-only"), "{e}");
    let e = err(
        sqlx::query("UPDATE journal_transactions SET currency = 'EUR'")
            .execute(&mut conn)
            .await,
    );
    assert!(e.contains("append-only"), "{e}");
    let e = err(sqlx::query("UPDATE account_balances SET credits_minor = 0")
        .execute(&mut conn)
        .await);
    assert!(e.contains("derived from ledger entries"), "{e}");
    let e = err(sqlx::query("TRUNCATE account_balances CASCADE")
        .execute(&mut conn)
        .await);
    assert!(e.contains("derived from ledger entries"), "{e}");

    // A committed journal transaction is closed: a balanced pair of entries added to the
    // payment's capture later is refused at once.
    let e = err(sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account_id, direction, amount_minor, currency)
         SELECT transaction_id, a, d, 100, 'USD' FROM journal_transactions,
                (VALUES ('USD:provider_clearing', 'DEBIT'), ('USD:fee_revenue', 'CREDIT')) AS x(a, d)
          WHERE payment_id = $1",
    )
    .bind(Uuid::parse_str(&pid).unwrap())
    .execute(&mut conn)
    .await);
    assert!(e.contains("already committed"), "{e}");

    // An entry is in its account's currency, even inside a transaction that balances.
    let mut tx = conn.begin().await.unwrap();
    let tx_id = open_journal_transaction(&mut tx, "EUR").await;
    let e = err(sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account_id, direction, amount_minor, currency)
         VALUES ($1, 'USD:provider_clearing', 'DEBIT', 100, 'EUR'),
                ($1, 'USD:fee_revenue', 'CREDIT', 100, 'EUR')",
    )
    .bind(tx_id)
    .execute(&mut *tx)
    .await);
    assert!(e.contains("cannot be posted to account"), "{e}");
    tx.rollback().await.unwrap();

    // An unbalanced journal transaction: each statement succeeds, the commit fails.
    let mut tx = conn.begin().await.unwrap();
    let tx_id = open_journal_transaction(&mut tx, "USD").await;
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account_id, direction, amount_minor, currency)
         VALUES ($1, 'USD:provider_clearing', 'DEBIT', 100, 'USD'),
                ($1, 'USD:fee_revenue', 'CREDIT', 99, 'USD')",
    )
    .bind(tx_id)
    .execute(&mut *tx)
    .await
    .expect("the insert itself is accepted; the check is deferred to commit");
    let e = tx
        .commit()
        .await
        .expect_err("an unbalanced transaction cannot commit");
    assert!(e.to_string().contains("unbalanced"), "{e}");

    // Nothing changed: the payment's posting is intact and everything reconciles.
    let (status, report) = stack.ledger_get("/reconciliation").await;
    assert_eq!(status, 200);
    assert_eq!(report["transactions_checked"], 1);
    assert_eq!(report["imbalanced_count"], 0);
    assert_eq!(report["balance_mismatches"], json!([]));
    let postings: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_entries e JOIN journal_transactions t USING (transaction_id) WHERE t.payment_id = $1")
            .bind(Uuid::parse_str(&pid).unwrap())
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(postings, 3, "the payment's capture posting is intact");
    stack.teardown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balances_and_reconciliation_agree_with_the_entries() {
    let stack = TestStack::spawn().await;
    let amounts = [2_500, 1_000, 10, 99_999];
    for (i, amount) in amounts.iter().enumerate() {
        stack
            .settled_payment(&format!("bal-{i}"), *amount, "USD")
            .await;
    }
    let (status, report) = stack.ledger_get("/reconciliation").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            report["transactions_checked"].clone(),
            report["imbalanced_count"].clone()
        ),
        (json!(4), json!(0))
    );
    assert_eq!(report["imbalanced_transactions"], json!([]));

    // Fees: 2.9 % half up + 30, capped at the amount: 103, 59, 10, 2930.
    let total: i64 = amounts.iter().sum();
    let fees = 103 + 59 + 10 + 2_930;
    let (_, clearing) = stack
        .ledger_get("/accounts/USD:provider_clearing/balance")
        .await;
    assert_eq!(clearing["balance_minor"], total);
    assert_eq!(clearing["consistent"], true);
    let (_, revenue) = stack.ledger_get("/accounts/USD:fee_revenue/balance").await;
    assert_eq!(revenue["balance_minor"], fees);
    let (status, accounts) = stack.ledger_get("/accounts").await;
    assert_eq!(status, 200);
    let payable: i64 = accounts
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| {
            a["account_id"]
                .as_str()
                .unwrap()
                .starts_with("USD:merchant_payable:")
        })
        .map(|a| a["balance_minor"].as_i64().unwrap())
        .sum();
    assert_eq!(payable, total - fees, "merchant payable is net of fees");

    let (status, missing) = stack.ledger_get("/accounts/USD:nothing/balance").await;
    assert_eq!(status, 404, "{missing}");
    let ledger = stack.db("ledger").await;
    let tx_id: Uuid = sqlx::query_scalar("SELECT transaction_id FROM journal_transactions LIMIT 1")
        .fetch_one(&ledger)
        .await
        .unwrap();
    let (status, one) = stack.ledger_get(&format!("/reconciliation/{tx_id}")).await;
    assert_eq!(status, 200);
    assert_eq!(one["balanced"], true);
    assert_eq!(one["debits_minor"], one["credits_minor"]);
    let (status, _) = stack
        .ledger_get(&format!("/reconciliation/{}", Uuid::now_v7()))
        .await;
    assert_eq!(status, 404);
    stack.teardown().await;
}

/// Capture postings that wait together (sent while the ledger was stopped) are handled as one
/// batch and written together: each payment posted once, for its amount; a repeated command
/// (a new event id) answered with the same journal transaction. That they were a batch (what
/// makes the ledger stage its postings and write them together) shows in fewer database
/// transactions than postings: each journal row's `xmin` is the transaction that wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn capture_postings_waiting_together_are_posted_once_each_in_one_batch() {
    use sagapay_domain::events::LedgerPostRequested;
    use sagapay_domain::{AmountMinor, Currency, Envelope};
    let mut stack = TestStack::spawn().await;
    let at = stack
        .others
        .iter()
        .position(|h| h.service == sagapay_ledger::SERVICE)
        .expect("ledger running");
    stack.others.remove(at).stop().await.expect("ledger stops");
    let merchant = Uuid::now_v7();
    let payments: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();
    let command = |pid: Uuid, amount: i64| {
        Envelope::new(
            pid,
            None,
            "batch-post",
            &LedgerPostRequested {
                merchant_id: merchant,
                capture_id: format!("cap_{pid}"),
                amount_minor: AmountMinor::new(amount).unwrap(),
                currency: Currency::parse("USD").unwrap(),
            },
        )
    };
    for (i, pid) in payments.iter().enumerate() {
        let post = command(*pid, 1_000 + i as i64);
        stack
            .publish_raw("ledger.post.requested", &pid.to_string(), &post.to_json())
            .await;
    }
    let again = command(payments[0], 1_000);
    stack
        .publish_raw(
            "ledger.post.requested",
            &payments[0].to_string(),
            &again.to_json(),
        )
        .await;
    let ledger = sagapay_ledger::start(sagapay_ledger::Config::for_test(
        stack.options.config(sagapay_ledger::SERVICE, &stack.ns),
    ))
    .await
    .expect("ledger starts again");
    stack.others.push(ledger);

    let db = stack.db("ledger").await;
    let settled: Vec<sqlx::types::Json<Envelope>> = sagapay_e2e::eventually(
        std::time::Duration::from_secs(60),
        "eleven payments.settled answers",
        || async {
            let rows: Vec<sqlx::types::Json<Envelope>> = sqlx::query_scalar(
                "SELECT payload FROM outbox WHERE event_type = 'payments.settled' ORDER BY id",
            )
            .fetch_all(&db)
            .await
            .ok()?;
            (rows.len() == 11).then_some(rows)
        },
    )
    .await;
    for (i, pid) in payments.iter().enumerate() {
        let (journal, amount): (Uuid, i64) = sqlx::query_as(
            "SELECT transaction_id, amount_minor FROM journal_transactions
              WHERE payment_id = $1 AND posting_kind = 'CAPTURE'",
        )
        .bind(pid)
        .fetch_one(&db)
        .await
        .expect("posted once");
        assert_eq!(amount, 1_000 + i as i64);
        let answers: Vec<&serde_json::Value> = settled
            .iter()
            .filter(|e| e.payment_id == *pid)
            .map(|e| &e.payload["journal_transaction_id"])
            .collect();
        let expected = if i == 0 { 2 } else { 1 };
        assert_eq!(answers.len(), expected, "{pid}");
        for answer in answers {
            assert_eq!(answer, &json!(journal), "{pid}: answered with its journal");
        }
    }
    let (journals, commits): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT xmin::text) FROM journal_transactions
          WHERE payment_id = ANY($1)",
    )
    .bind(&payments)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(journals, 10);
    assert!(commits < 10, "10 postings in {commits} transactions");
    stack.teardown().await;
}
