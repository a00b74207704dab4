//! The capture postings of a consumer's batch, staged as the batch is handled and written
//! together when it is finished (`Handler::finish`): the journal transactions in one
//! statement, their entries in one, and the `payments.settled` events that report them in one,
//! where each posting took three. The database's rules need nothing new: they already work per
//! statement (`migrations/ledger/V4__rules_per_statement.sql`: entries only for journal
//! transactions of this database transaction, running balances per account in account-id
//! order, each journal transaction's balance checked at commit).
//!
//! A capture already posted (a second command for it) is answered with the existing journal
//! transaction, as a posting handled alone is.

use crate::book::{Direction, Entry};
use sagapay_domain::events::{LedgerPostRequested, PaymentSettled};
use sagapay_domain::Envelope;
use sagapay_messaging::{MessageHeaders, Outbox, OutboxBatch, OUTBOX_COLUMNS};
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// One capture posting waiting for the batch's end.
#[derive(Debug)]
struct Staged {
    transaction_id: Uuid,
    command: Envelope,
    cmd: LedgerPostRequested,
    fee_minor: i64,
    /// Entries of zero left out (the schema requires positive amounts).
    entries: Vec<(String, Direction, i64)>,
    headers: MessageHeaders,
}

/// The batch's capture postings (see the module).
#[derive(Debug, Default)]
pub struct StagedPostings(Vec<Staged>);

impl StagedPostings {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Stages the posting of `cmd` (its `command` envelope) with its fee and entries.
    pub fn stage(
        &mut self,
        command: &Envelope,
        cmd: LedgerPostRequested,
        fee_minor: i64,
        entries: &[Entry<'_>],
        headers: MessageHeaders,
    ) {
        let mut entries: Vec<(String, Direction, i64)> = entries
            .iter()
            .filter(|e| e.amount_minor > 0)
            .map(|e| (e.account_id.to_owned(), e.direction, e.amount_minor))
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        self.0.push(Staged {
            transaction_id: Uuid::now_v7(),
            command: command.clone(),
            cmd,
            fee_minor,
            entries,
            headers,
        });
    }

    /// Writes every staged posting and the events that report them, then forgets them.
    pub async fn write(&mut self, conn: &mut PgConnection, outbox: &Outbox) -> sqlx::Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.0);
        let inserted = insert_journals(conn, &staged).await?;
        let existing = existing_journals(conn, &staged, &inserted).await?;
        insert_entries(conn, &staged, &inserted).await?;
        let mut events = Vec::with_capacity(staged.len());
        for s in &staged {
            let transaction_id = if inserted.contains(&s.transaction_id) {
                s.transaction_id
            } else {
                tracing::info!(payment_id = %s.command.payment_id, "capture already posted");
                // Not inserted, so its capture's journal exists: read above.
                *existing
                    .get(&s.command.payment_id)
                    .ok_or(sqlx::Error::RowNotFound)?
            };
            events.push(s.command.follow_up(&PaymentSettled {
                journal_transaction_id: transaction_id,
                amount_minor: s.cmd.amount_minor,
                currency: s.cmd.currency,
            }));
        }
        let mut rows = OutboxBatch::default();
        for (s, event) in staged.iter().zip(&events) {
            rows.push(&outbox.row(event, &s.headers));
        }
        let sql = format!(
            "INSERT INTO outbox ({OUTBOX_COLUMNS}) {}",
            OutboxBatch::rows(1)
        );
        rows.bind(sqlx::query(&sql)).execute(conn).await?;
        Ok(())
    }
}

/// Inserts the journal transactions; returns the ids of those inserted (a capture already
/// posted, or twice in the batch, is not).
async fn insert_journals(conn: &mut PgConnection, staged: &[Staged]) -> sqlx::Result<Vec<Uuid>> {
    let ids: Vec<Uuid> = staged.iter().map(|s| s.transaction_id).collect();
    let payments: Vec<Uuid> = staged.iter().map(|s| s.command.payment_id).collect();
    let currencies: Vec<&str> = staged.iter().map(|s| s.cmd.currency.as_str()).collect();
    let descriptions: Vec<String> = staged
        .iter()
        .map(|s| format!("capture {}", s.cmd.capture_id))
        .collect();
    let events: Vec<Uuid> = staged.iter().map(|s| s.command.event_id).collect();
    let amounts: Vec<i64> = staged.iter().map(|s| s.cmd.amount_minor.get()).collect();
    let fees: Vec<i64> = staged.iter().map(|s| s.fee_minor).collect();
    sqlx::query_scalar(
        "INSERT INTO journal_transactions (transaction_id, payment_id, posting_kind, currency,
                                           description, event_id, amount_minor, fee_minor)
         SELECT t, p, 'CAPTURE', c, d, e, a, f
           FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::uuid[], $6::int8[],
                       $7::int8[]) WITH ORDINALITY AS j(t, p, c, d, e, a, f, n)
          ORDER BY n
         ON CONFLICT (payment_id, posting_kind) DO NOTHING
         RETURNING transaction_id",
    )
    .bind(&ids)
    .bind(&payments)
    .bind(&currencies)
    .bind(&descriptions)
    .bind(&events)
    .bind(&amounts)
    .bind(&fees)
    .fetch_all(conn)
    .await
}

/// The capture journal transactions of the staged payments whose posting was not inserted.
async fn existing_journals(
    conn: &mut PgConnection,
    staged: &[Staged],
    inserted: &[Uuid],
) -> sqlx::Result<HashMap<Uuid, Uuid>> {
    let missing: Vec<Uuid> = staged
        .iter()
        .filter(|s| !inserted.contains(&s.transaction_id))
        .map(|s| s.command.payment_id)
        .collect();
    if missing.is_empty() {
        return Ok(HashMap::new());
    }
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(
        "SELECT payment_id, transaction_id FROM journal_transactions
          WHERE posting_kind = 'CAPTURE' AND payment_id = ANY($1)",
    )
    .bind(&missing)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// The entries of the journal transactions inserted, in one statement.
async fn insert_entries(
    conn: &mut PgConnection,
    staged: &[Staged],
    inserted: &[Uuid],
) -> sqlx::Result<()> {
    let (mut ids, mut accounts, mut directions, mut amounts, mut currencies) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for s in staged
        .iter()
        .filter(|s| inserted.contains(&s.transaction_id))
    {
        for (account, direction, amount) in &s.entries {
            ids.push(s.transaction_id);
            accounts.push(account.as_str());
            directions.push(*direction);
            amounts.push(*amount);
            currencies.push(s.cmd.currency.as_str());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account_id, direction, amount_minor, currency)
         SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::text[])",
    )
    .bind(&ids)
    .bind(&accounts)
    .bind(&directions)
    .bind(&amounts)
    .bind(&currencies)
    .execute(conn)
    .await?;
    Ok(())
}
