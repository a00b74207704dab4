//! Read-only ledger API: accounts and balances, and reconciliation. Every route needs the ops
//! key (`x-ops-key`): it shows every merchant's balances.
//!
//! - `GET /accounts`: every account with its running balance.
//! - `GET /accounts/{account_id}/balance`: one account's balance, with the sum of its entries
//!   recomputed and compared to the running balance.
//! - `GET /reconciliation`: `{"transactions_checked", "imbalanced_count",
//!   "imbalanced_transactions"}` over every journal transaction (the seed's shape), plus the
//!   running balances checked against their entries.
//! - `GET /reconciliation/{transaction_id}`: one journal transaction and its entries.

use crate::book::{AccountKind, Direction};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use sagapay_service_kit::ops_auth::{require_ops_key, OpsKey};
use sagapay_service_kit::ApiError;
use serde::Serialize;
use sqlx::{PgPool, Row};
use uuid::Uuid;

pub fn routes(pool: PgPool, key: OpsKey) -> Router {
    let routes = Router::new()
        .route("/accounts", get(list_accounts))
        .route("/accounts/{account_id}/balance", get(account_balance))
        .route("/reconciliation", get(reconcile_all))
        .route("/reconciliation/{transaction_id}", get(reconcile_one));
    require_ops_key(routes, key).with_state(pool)
}

#[derive(Debug, Serialize)]
pub struct AccountView {
    pub account_id: String,
    pub kind: AccountKind,
    pub currency: String,
    pub merchant_id: Option<Uuid>,
    pub frozen: bool,
    pub debits_minor: i64,
    pub credits_minor: i64,
    /// On the account's normal side: debits − credits for assets and expenses,
    /// credits − debits for liabilities, revenue and equity.
    pub balance_minor: i64,
    pub entries: i64,
}

const ACCOUNT_SQL: &str =
    "SELECT a.account_id, a.kind, a.currency, a.merchant_id, a.frozen_at IS NOT NULL AS frozen,
        COALESCE(b.debits_minor, 0) AS debits_minor, COALESCE(b.credits_minor, 0) AS credits_minor,
        COALESCE(b.entries, 0) AS entries
   FROM accounts a LEFT JOIN account_balances b USING (account_id)";

fn account_from_row(r: &sqlx::postgres::PgRow) -> sqlx::Result<AccountView> {
    let kind: AccountKind = r.try_get("kind")?;
    let debits: i64 = r.try_get("debits_minor")?;
    let credits: i64 = r.try_get("credits_minor")?;
    Ok(AccountView {
        account_id: r.try_get("account_id")?,
        balance_minor: kind.normal_balance(debits, credits),
        kind,
        currency: r.try_get("currency")?,
        merchant_id: r.try_get("merchant_id")?,
        frozen: r.try_get("frozen")?,
        debits_minor: debits,
        credits_minor: credits,
        entries: r.try_get("entries")?,
    })
}

async fn list_accounts(State(pool): State<PgPool>) -> Result<Json<Vec<AccountView>>, ApiError> {
    let rows = sqlx::query(&format!("{ACCOUNT_SQL} ORDER BY a.account_id"))
        .fetch_all(&pool)
        .await?;
    Ok(Json(
        rows.iter()
            .map(account_from_row)
            .collect::<sqlx::Result<_>>()?,
    ))
}

#[derive(Debug, Serialize)]
struct BalanceView {
    #[serde(flatten)]
    account: AccountView,
    /// The same figures summed from the entries now.
    summed_debits_minor: i64,
    summed_credits_minor: i64,
    /// True when the running balance equals the sum of the entries.
    consistent: bool,
}

async fn account_balance(
    State(pool): State<PgPool>,
    Path(account_id): Path<String>,
) -> Result<Json<BalanceView>, ApiError> {
    let mut tx = pool.begin().await?;
    // One snapshot for both figures.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(&format!("{ACCOUNT_SQL} WHERE a.account_id = $1"))
        .bind(&account_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| {
            ApiError::not_found("account_not_found", format!("no account {account_id:?}"))
                .with_param("account_id")
        })?;
    let account = account_from_row(&row)?;
    let (d, c): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(amount_minor) FILTER (WHERE direction = 'DEBIT'), 0)::bigint,
                COALESCE(sum(amount_minor) FILTER (WHERE direction = 'CREDIT'), 0)::bigint
           FROM ledger_entries WHERE account_id = $1",
    )
    .bind(&account_id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(BalanceView {
        consistent: d == account.debits_minor && c == account.credits_minor,
        summed_debits_minor: d,
        summed_credits_minor: c,
        account,
    }))
}

#[derive(Debug, Serialize)]
pub struct Imbalance {
    pub transaction_id: Uuid,
    pub payment_id: Uuid,
    pub debits_minor: i64,
    pub credits_minor: i64,
    pub entries: i64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub transactions_checked: i64,
    pub imbalanced_count: i64,
    pub imbalanced_transactions: Vec<Imbalance>,
    pub accounts_checked: i64,
    /// Accounts whose running balance differs from the sum of their entries.
    pub balance_mismatches: Vec<String>,
}

async fn reconcile_all(State(pool): State<PgPool>) -> Result<Json<Report>, ApiError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let checked: i64 = sqlx::query_scalar("SELECT count(*) FROM journal_transactions")
        .fetch_one(&mut *tx)
        .await?;
    let rows = sqlx::query(
        "SELECT t.transaction_id, t.payment_id,
                COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'DEBIT'), 0)::bigint AS debits,
                COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'CREDIT'), 0)::bigint AS credits,
                count(e.entry_id) AS entries
           FROM journal_transactions t LEFT JOIN ledger_entries e USING (transaction_id)
          GROUP BY t.transaction_id, t.payment_id
         HAVING COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'DEBIT'), 0)
             <> COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'CREDIT'), 0)
             OR count(e.entry_id) < 2
          ORDER BY t.transaction_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let imbalanced = rows
        .iter()
        .map(|r| {
            Ok(Imbalance {
                transaction_id: r.try_get("transaction_id")?,
                payment_id: r.try_get("payment_id")?,
                debits_minor: r.try_get("debits")?,
                credits_minor: r.try_get("credits")?,
                entries: r.try_get("entries")?,
            })
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    let accounts_checked: i64 = sqlx::query_scalar("SELECT count(*) FROM accounts")
        .fetch_one(&mut *tx)
        .await?;
    let balance_mismatches: Vec<String> = sqlx::query_scalar(
        "SELECT a.account_id
           FROM accounts a
           LEFT JOIN account_balances b USING (account_id)
           LEFT JOIN (SELECT account_id,
                             sum(amount_minor) FILTER (WHERE direction = 'DEBIT') AS d,
                             sum(amount_minor) FILTER (WHERE direction = 'CREDIT') AS c
                        FROM ledger_entries GROUP BY account_id) s USING (account_id)
          WHERE COALESCE(b.debits_minor, 0) <> COALESCE(s.d, 0)
             OR COALESCE(b.credits_minor, 0) <> COALESCE(s.c, 0)
          ORDER BY a.account_id",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Json(Report {
        transactions_checked: checked,
        imbalanced_count: imbalanced.len() as i64,
        imbalanced_transactions: imbalanced,
        accounts_checked,
        balance_mismatches,
    }))
}

#[derive(Debug, Serialize)]
struct EntryView {
    account_id: String,
    direction: Direction,
    amount_minor: i64,
}

#[derive(Debug, Serialize)]
struct TransactionView {
    transaction_id: Uuid,
    payment_id: Uuid,
    posting_kind: String,
    currency: String,
    created_at: DateTime<Utc>,
    debits_minor: i64,
    credits_minor: i64,
    balanced: bool,
    entries: Vec<EntryView>,
}

async fn reconcile_one(
    State(pool): State<PgPool>,
    Path(transaction_id): Path<String>,
) -> Result<Json<TransactionView>, ApiError> {
    let not_found = || {
        ApiError::not_found("transaction_not_found", "no such journal transaction")
            .with_param("transaction_id")
    };
    let transaction_id = Uuid::parse_str(&transaction_id).map_err(|_| not_found())?;
    let t = sqlx::query(
        "SELECT payment_id, posting_kind, currency, created_at FROM journal_transactions
          WHERE transaction_id = $1",
    )
    .bind(transaction_id)
    .fetch_optional(&pool)
    .await?
    .ok_or_else(not_found)?;
    let entries = sqlx::query(
        "SELECT account_id, direction, amount_minor FROM ledger_entries
          WHERE transaction_id = $1 ORDER BY entry_id",
    )
    .bind(transaction_id)
    .fetch_all(&pool)
    .await?
    .iter()
    .map(|r| {
        Ok(EntryView {
            account_id: r.try_get("account_id")?,
            direction: r.try_get("direction")?,
            amount_minor: r.try_get("amount_minor")?,
        })
    })
    .collect::<sqlx::Result<Vec<_>>>()?;
    let sum = |dir: Direction| -> i64 {
        entries
            .iter()
            .filter(|e| e.direction == dir)
            .map(|e| e.amount_minor)
            .sum()
    };
    let (debits, credits) = (sum(Direction::Debit), sum(Direction::Credit));
    Ok(Json(TransactionView {
        transaction_id,
        payment_id: t.try_get("payment_id")?,
        posting_kind: t.try_get("posting_kind")?,
        currency: t.try_get::<String, _>("currency")?,
        created_at: t.try_get("created_at")?,
        debits_minor: debits,
        credits_minor: credits,
        balanced: debits == credits && entries.len() >= 2,
        entries,
    }))
}
