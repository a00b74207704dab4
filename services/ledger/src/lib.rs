//! The ledger records money movements as balanced double-entry journal transactions. Its
//! database enforces balance and immutability (see `migrations/ledger`); this code only ever
//! inserts.
//!
//! Posting a capture of amount A with platform fee F (see [`fees`]) for merchant M in
//! currency C:
//!
//! | account | kind | debit | credit |
//! |---|---|---|---|
//! | `C:provider_clearing` | asset: owed to us by the provider | A | |
//! | `C:merchant_payable:M` | liability: owed by us to the merchant | | A − F |
//! | `C:fee_revenue` | revenue: the platform's fee | | F |
//!
//! (An entry of zero is not written: a fee of 0, or a fee that takes the whole amount.)

pub mod api;
pub mod book;
pub mod fees;
mod postings;

use anyhow::anyhow;
use book::{AccountKind, Entry};
use postings::StagedPostings;
use sagapay_domain::events::{
    LedgerPostFailed, LedgerPostRequested, LedgerRefundRequested, RefundPosted,
};
use sagapay_domain::{Currency, Envelope, EventType};
use sagapay_messaging::{Handler, HandlerError, MessageContext, Outbox};
use sagapay_service_kit::{CommonConfig, OpsKey, Platform, ServiceHandle};
use sqlx::PgConnection;
use std::sync::Arc;
use uuid::Uuid;

pub const SERVICE: &str = "ledger";
pub const DEFAULT_PORT: u16 = 8004;
pub const CONSUMES: &[EventType] = &[
    EventType::LedgerPostRequested,
    EventType::LedgerRefundRequested,
];
pub const PRODUCES: &[EventType] = &[
    EventType::PaymentSettled,
    EventType::LedgerPostFailed,
    EventType::RefundPosted,
];

mod embedded {
    refinery::embed_migrations!("../../migrations/ledger");
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    /// Currencies the ledger has a chart of accounts for (`SAGAPAY_LEDGER_CURRENCIES`, comma
    /// separated; default: every currency the platform supports). A posting in another
    /// currency cannot be processed: it is dead-lettered until the chart exists, then replayed.
    pub currencies: Vec<Currency>,
    /// `SAGAPAY_FEE_BPS` (default 290) and `SAGAPAY_FEE_FIXED_MINOR`, per currency
    /// (`USD:30,JPY:40,...`, over the default of about $0.30 in each currency; a bare number
    /// is USD's and the others follow by exponent).
    pub fees: fees::FeeSchedule,
    /// `SAGAPAY_OPS_KEY`: the ledger's API (every merchant's balances, reconciliation) is for
    /// operators only.
    pub ops_key: OpsKey,
}

impl Config {
    pub fn from_env() -> anyhow::Result<Self> {
        let currencies = match sagapay_service_kit::config::env_or("SAGAPAY_LEDGER_CURRENCIES", "")
        {
            v if v.is_empty() => all_currencies(),
            v => v
                .split(',')
                .map(|c| Currency::parse(c.trim()))
                .collect::<Result<Vec<_>, _>>()?,
        };
        let d = fees::FeeSchedule::default();
        let common = CommonConfig::from_env(SERVICE, DEFAULT_PORT)?;
        Ok(Self {
            ops_key: OpsKey::from_env(common.environment)?,
            common,
            currencies,
            fees: fees::FeeSchedule {
                bps: sagapay_service_kit::config::env_parse("SAGAPAY_FEE_BPS", d.bps)?,
                fixed: sagapay_domain::PerCurrency::parse_over(
                    &sagapay_service_kit::config::env_or("SAGAPAY_FEE_FIXED_MINOR", ""),
                    &d.fixed,
                )
                .map_err(|e| anyhow::anyhow!("SAGAPAY_FEE_FIXED_MINOR: {e}"))?,
            },
        })
    }

    pub fn for_test(common: CommonConfig) -> Self {
        Self {
            common,
            currencies: all_currencies(),
            fees: fees::FeeSchedule::default(),
            ops_key: OpsKey::development(),
        }
    }
}

pub fn all_currencies() -> Vec<Currency> {
    Currency::supported()
        .map(|c| Currency::parse(c).expect("supported currencies parse"))
        .collect()
}

pub fn provider_clearing_account(currency: Currency) -> String {
    format!("{currency}:provider_clearing")
}

pub fn merchant_payable_account(currency: Currency, merchant_id: Uuid) -> String {
    format!("{currency}:merchant_payable:{merchant_id}")
}

pub fn fee_revenue_account(currency: Currency) -> String {
    format!("{currency}:fee_revenue")
}

/// The accounts a posting for `merchant_id` in `currency` touches.
struct Accounts {
    clearing: String,
    payable: String,
    revenue: String,
}

/// Opens the posting's accounts when they do not exist yet and, with `check_frozen`, returns
/// which of the provider clearing and merchant payable accounts are frozen, in one statement.
/// (An account the statement opens is never frozen; the check reads the accounts as they were
/// before it.)
async fn ensure_accounts(
    conn: &mut PgConnection,
    currency: Currency,
    merchant_id: Uuid,
    check_frozen: bool,
) -> sqlx::Result<(Accounts, Vec<String>)> {
    let accounts = Accounts {
        clearing: provider_clearing_account(currency),
        payable: merchant_payable_account(currency, merchant_id),
        revenue: fee_revenue_account(currency),
    };
    let frozen: Vec<String> = sqlx::query_scalar(
        "WITH opened AS (
             INSERT INTO accounts (account_id, kind, currency, merchant_id, description)
             VALUES ($1, $7, $4, NULL, 'funds owed by the payment provider'),
                    ($2, $8, $4, $5, 'funds owed to the merchant'),
                    ($3, $9, $4, NULL, 'platform fees')
             ON CONFLICT (account_id) DO NOTHING)
         SELECT account_id FROM accounts
          WHERE account_id = ANY($6) AND frozen_at IS NOT NULL
          ORDER BY account_id",
    )
    .bind(&accounts.clearing)
    .bind(&accounts.payable)
    .bind(&accounts.revenue)
    .bind(currency.as_str())
    .bind(merchant_id)
    .bind(if check_frozen {
        vec![accounts.clearing.clone(), accounts.payable.clone()]
    } else {
        Vec::new()
    })
    .bind(AccountKind::Asset)
    .bind(AccountKind::Liability)
    .bind(AccountKind::Revenue)
    .fetch_all(conn)
    .await?;
    Ok((accounts, frozen))
}

/// Inserts a journal transaction's entries in one statement; entries of zero are skipped
/// (the schema allows only positive amounts). Each entry's trigger locks its account's
/// balance row, so entries go in account-id order: two postings never lock the same two
/// balances in opposite orders (a capture and a refund of one merchant, for instance).
async fn insert_entries(
    conn: &mut PgConnection,
    transaction_id: Uuid,
    currency: Currency,
    entries: &[Entry<'_>],
) -> sqlx::Result<()> {
    let mut entries: Vec<&Entry> = entries.iter().filter(|e| e.amount_minor > 0).collect();
    entries.sort_by_key(|e| e.account_id);
    let accounts: Vec<&str> = entries.iter().map(|e| e.account_id).collect();
    let directions: Vec<book::Direction> = entries.iter().map(|e| e.direction).collect();
    let amounts: Vec<i64> = entries.iter().map(|e| e.amount_minor).collect();
    sqlx::query(
        "INSERT INTO ledger_entries (transaction_id, account_id, direction, amount_minor, currency)
         SELECT $1, a, d, m, $5 FROM unnest($2::text[], $3::text[], $4::bigint[]) AS e(a, d, m)",
    )
    .bind(transaction_id)
    .bind(&accounts)
    .bind(&directions)
    .bind(&amounts)
    .bind(currency.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

struct LedgerHandler {
    outbox: Outbox,
    currencies: Vec<Currency>,
    fees: fees::FeeSchedule,
}

impl LedgerHandler {
    /// A refund moves money back from the merchant to the provider (who returns it to the
    /// customer): DR merchant payable, CR provider clearing. The platform fee is kept.
    async fn post_refund(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let cmd: LedgerRefundRequested = env.decode()?;
        // Refund postings are not checked against frozen accounts.
        let (
            Accounts {
                clearing, payable, ..
            },
            _,
        ) = ensure_accounts(conn, cmd.currency, cmd.merchant_id, false).await?;
        let kind = format!("REFUND:{}", cmd.refund_id);
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO journal_transactions (transaction_id, payment_id, posting_kind, currency, description,
                                               event_id, amount_minor, fee_minor)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 0)
             ON CONFLICT (payment_id, posting_kind) DO NOTHING
             RETURNING transaction_id",
        )
        .bind(Uuid::now_v7())
        .bind(env.payment_id)
        .bind(&kind)
        .bind(cmd.currency.as_str())
        .bind(format!("refund {}", cmd.refund_id))
        .bind(env.event_id)
        .bind(cmd.amount_minor.get())
        .fetch_optional(&mut *conn)
        .await?;
        let transaction_id = match inserted {
            Some(id) => {
                let amount = cmd.amount_minor.get();
                let entries = [
                    Entry::debit(&payable, amount),
                    Entry::credit(&clearing, amount),
                ];
                insert_entries(conn, id, cmd.currency, &entries).await?;
                id
            }
            None => sqlx::query_scalar(
                "SELECT transaction_id FROM journal_transactions WHERE payment_id = $1 AND posting_kind = $2",
            )
            .bind(env.payment_id)
            .bind(&kind)
            .fetch_one(&mut *conn)
            .await?,
        };
        let next = env.follow_up(&RefundPosted {
            refund_id: cmd.refund_id,
            journal_transaction_id: transaction_id,
            amount_minor: cmd.amount_minor,
            currency: cmd.currency,
        });
        self.outbox
            .enqueue(conn, &next, &ctx.headers.propagated())
            .await?;
        Ok(())
    }
}

impl Handler for LedgerHandler {
    type Prepared = StagedPostings;

    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        staged: &mut StagedPostings,
    ) -> Result<(), HandlerError> {
        match env.event_type() {
            Some(EventType::LedgerPostRequested) => {}
            Some(EventType::LedgerRefundRequested) => {
                // After the staged postings: events keep the order they were decided in.
                staged.write(conn, &self.outbox).await?;
                return self.post_refund(conn, env, ctx).await;
            }
            _ => {
                return Err(HandlerError::permanent(anyhow!(
                    "ledger does not handle {}",
                    env.event_type
                )))
            }
        }
        let cmd: LedgerPostRequested = env.decode()?;
        if !self.currencies.contains(&cmd.currency) {
            return Err(HandlerError::permanent(anyhow!(
                "the ledger has no chart of accounts for {}",
                cmd.currency
            )));
        }
        let (accounts, frozen) = ensure_accounts(conn, cmd.currency, cmd.merchant_id, true).await?;
        if !frozen.is_empty() {
            // A business refusal, not an outage: answer it, so the saga can compensate.
            tracing::warn!(payment_id = %env.payment_id, accounts = ?frozen, "posting refused: frozen account");
            let next = env.follow_up(&LedgerPostFailed {
                reason: format!("account {} is frozen", frozen.join(", ")),
            });
            staged.write(conn, &self.outbox).await?;
            self.outbox
                .enqueue(conn, &next, &ctx.headers.propagated())
                .await?;
            return Ok(());
        }
        let amount = cmd.amount_minor.get();
        let fee = self.fees.fee(amount, cmd.currency);
        let net = amount - fee;
        debug_assert!(fee >= 0 && net >= 0 && fee + net == amount);
        let entries = [
            Entry::debit(&accounts.clearing, amount),
            Entry::credit(&accounts.payable, net),
            Entry::credit(&accounts.revenue, fee),
        ];
        staged.stage(env, cmd, fee, &entries, ctx.headers.propagated());
        Ok(())
    }

    async fn finish(
        &self,
        conn: &mut PgConnection,
        staged: &mut StagedPostings,
    ) -> Result<(), HandlerError> {
        Ok(staged.write(conn, &self.outbox).await?)
    }
}

pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner,
        CONSUMES,
        PRODUCES,
    )
    .await?;
    let mut builder = platform.builder();
    platform.spawn_relay(&mut builder)?;
    let handler = Arc::new(LedgerHandler {
        outbox: platform.outbox.clone(),
        currencies: config.currencies.clone(),
        fees: config.fees,
    });
    // One lane: every posting locks its currency's shared balances (provider clearing, fee
    // revenue), so parallel lanes would only wait for each other, and a batch holds the locks
    // of all its postings until it commits: two batches in parallel could take them in
    // opposite orders and deadlock. One lane posts batch after batch, never waiting on itself.
    platform.spawn_consumer_in_lanes(&mut builder, handler, CONSUMES, 1)?;
    let router = platform.router(api::routes(platform.pool.clone(), config.ops_key.clone()));
    builder
        .serve(config.common.http_addr, config.common.tls.clone(), router)
        .await
}
