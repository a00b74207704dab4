//! Three-way reconciliation: the provider's books (what money moved), the orchestrator
//! (what the payments and refunds say) and the ledger (what was posted), compared payment by
//! payment, amounts and currencies included.
//!
//! The simulated provider's books (`simulated_provider_operations` in the provider adapter's
//! database) stand in for a PSP's settlement report. With a real PSP, its report is read
//! instead; the comparison is the same.
//!
//! Runs on a time window (`since`, `until`) of payment creation, and leaves out payments still
//! moving: a payment that is not terminal and not past its deadline, a refund in flight and
//! not past its deadline. `settling` (60 s by default) keeps the newest payments out too, so
//! that a run during load reports no payment half-way through its saga. The databases are read
//! in the saga's order of truth, orchestrator first: whatever it says happened, the provider
//! and the ledger already have.
//!
//! What is reported (`kind`):
//!
//! | kind | meaning |
//! |---|---|
//! | `capture_without_posting` | the provider captured, the ledger has no posting (a charge without a record) |
//! | `posting_without_capture` | the ledger posted a capture the provider did not make |
//! | `amount_differs`, `currency_differs` | provider, payment and posting disagree |
//! | `duplicate` | two captures or two postings of one payment |
//! | `authorization_open` | an authorization neither captured nor voided (a card hold left) |
//! | `refund_unrecorded` | the provider refunded, no refund or posting says so |
//! | `refund_not_at_provider` | a refund succeeded or was posted, the provider has no refund |
//! | `refund_without_posting` | a refund succeeded without its posting |
//! | `captured_past_deadline` | a payment CAPTURED past its deadline, without a posting |
//! | `stuck` | a payment or refund past its deadline in a non-terminal state |
//! | `unknown_payment` | the provider or the ledger has a payment the orchestrator does not |

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;
use uuid::Uuid;

/// The three databases' URLs.
#[derive(Debug, Clone)]
pub struct Databases {
    pub orchestrator: String,
    pub ledger: String,
    pub provider: String,
}

impl Databases {
    /// The databases of namespace `ns` on the server at `postgres_url`.
    pub fn of(postgres_url: &str, ns: &sagapay_domain::Namespace) -> Self {
        let url = |service: &str| {
            sagapay_messaging::postgres_url::with_database(postgres_url, &ns.database(service))
        };
        Self {
            orchestrator: url("orchestrator"),
            ledger: url("ledger"),
            provider: url("provider-adapter"),
        }
    }
}

/// Which payments to compare: created in `[since, until)`, and not in the last `settling`.
#[derive(Debug, Clone)]
pub struct Window {
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub settling: Duration,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            since: None,
            until: None,
            settling: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Difference {
    pub payment_id: Uuid,
    /// A machine-readable kind (see the module table).
    pub kind: &'static str,
    pub problem: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub since: Option<DateTime<Utc>>,
    /// Payments created from this moment on were not compared.
    pub until: DateTime<Utc>,
    pub payments_checked: usize,
    /// Payments and refunds left out because they are still moving.
    pub in_flight: usize,
    pub provider_operations_checked: usize,
    pub postings_checked: usize,
    pub refunds_checked: usize,
    pub differences: Vec<Difference>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Payment {
    pub payment_id: Uuid,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub deadline_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Refund {
    pub refund_id: Uuid,
    pub payment_id: Uuid,
    pub status: String,
    pub amount_minor: i64,
    pub currency: String,
    pub deadline_at: Option<DateTime<Utc>>,
}

/// A money movement at the provider (only what it did: declines are not movements).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderOp {
    pub payment_id: Uuid,
    pub operation: String,
    pub idempotency_key: String,
    pub amount_minor: i64,
    pub currency: String,
}

impl ProviderOp {
    /// The merchant refund a REFUND is for (its key is `refund:<payment>:<refund>`); `None`
    /// for the saga's own refund of a capture.
    fn refund_id(&self) -> Option<Uuid> {
        self.idempotency_key
            .splitn(3, ':')
            .nth(2)
            .and_then(|id| Uuid::parse_str(id).ok())
    }
}

/// A journal transaction: its kind and what its entries move.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Posting {
    pub payment_id: Uuid,
    pub posting_kind: String,
    pub currency: String,
    /// The debits of its entries: the amount it moves.
    pub moved_minor: i64,
}

/// What was read, for [`compare`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub payments: Vec<Payment>,
    pub refunds: Vec<Refund>,
    pub provider: Vec<ProviderOp>,
    pub postings: Vec<Posting>,
}

const SETTLED_STATES: [&str; 3] = ["SETTLED", "PARTIALLY_REFUNDED", "REFUNDED"];
const TERMINAL_STATES: [&str; 6] = [
    "SETTLED",
    "PARTIALLY_REFUNDED",
    "REFUNDED",
    "FAILED",
    "REVERSED",
    "CANCELED",
];

/// Reads the three databases (orchestrator first) and compares them.
pub async fn run(dbs: &Databases, window: &Window) -> anyhow::Result<Report> {
    let now = Utc::now();
    let settled_before = now - chrono::Duration::from_std(window.settling)?;
    let until = window
        .until
        .map_or(settled_before, |u| u.min(settled_before));
    let since = window.since;
    let connect = |url: String| async move {
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to {}: {e}", redact(&url)))
    };
    let orch = connect(dbs.orchestrator.clone()).await?;
    let payments: Vec<Payment> = sqlx::query_as(
        // What moves is what was captured: a manual capture may take less than the amount, and
        // a capture of another amount that an operator failed or accepted took what the
        // provider reported.
        "SELECT payment_id, status,
                CASE WHEN provider_mismatch = 'CAPTURE' THEN provider_mismatch_minor
                     ELSE COALESCE(capture_amount_minor, amount_minor) END AS amount_minor,
                currency, deadline_at FROM payments
          WHERE ($1::timestamptz IS NULL OR created_at >= $1) AND created_at < $2",
    )
    .bind(since)
    .bind(until)
    .fetch_all(&orch)
    .await?;
    let ids: Vec<Uuid> = payments.iter().map(|p| p.payment_id).collect();
    let refunds: Vec<Refund> = sqlx::query_as(
        "SELECT refund_id, payment_id, status, amount_minor, currency, deadline_at FROM refunds
          WHERE payment_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&orch)
    .await?;
    orch.close().await;
    // The other two: the payments in the window, and anything else created in it (which the
    // orchestrator should know).
    let provider_db = connect(dbs.provider.clone()).await?;
    let provider: Vec<ProviderOp> = sqlx::query_as(
        "SELECT payment_id, operation, idempotency_key, amount_minor, currency
           FROM simulated_provider_operations
          WHERE outcome = 'SUCCEEDED'
            AND (payment_id = ANY($1)
                 OR (($2::timestamptz IS NULL OR created_at >= $2) AND created_at < $3))",
    )
    .bind(&ids)
    .bind(since)
    .bind(until)
    .fetch_all(&provider_db)
    .await?;
    provider_db.close().await;
    let ledger = connect(dbs.ledger.clone()).await?;
    let postings: Vec<Posting> = sqlx::query_as(
        "SELECT t.payment_id, t.posting_kind, t.currency,
                COALESCE(sum(e.amount_minor) FILTER (WHERE e.direction = 'DEBIT'), 0)::bigint
                    AS moved_minor
           FROM journal_transactions t LEFT JOIN ledger_entries e USING (transaction_id)
          WHERE t.payment_id = ANY($1)
             OR (($2::timestamptz IS NULL OR t.created_at >= $2) AND t.created_at < $3)
          GROUP BY t.transaction_id, t.payment_id, t.posting_kind, t.currency",
    )
    .bind(&ids)
    .bind(since)
    .bind(until)
    .fetch_all(&ledger)
    .await?;
    ledger.close().await;
    let mut report = compare(
        &Snapshot {
            payments,
            refunds,
            provider,
            postings,
        },
        now,
    );
    report.since = window.since;
    report.until = until;
    Ok(report)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Whether the ledger reversed payment `id`'s capture posting (of `amount`) in full.
fn reversal_posted(posts: &[&Posting], id: Uuid, amount: i64) -> bool {
    let kind = format!("REFUND:{}", sagapay_domain::events::capture_reversal_id(id));
    posts
        .iter()
        .any(|t| t.posting_kind == kind && t.moved_minor == amount)
}

/// The comparison itself, pure (unit-tested); `now` decides what is past its deadline.
pub fn compare(s: &Snapshot, now: DateTime<Utc>) -> Report {
    let mut out = Vec::new();
    let mut diff = |payment_id: Uuid, kind: &'static str, problem: String| {
        out.push(Difference {
            payment_id,
            kind,
            problem,
        })
    };
    let mut ops: HashMap<Uuid, Vec<&ProviderOp>> = HashMap::new();
    for op in &s.provider {
        ops.entry(op.payment_id).or_default().push(op);
    }
    let mut posts: HashMap<Uuid, Vec<&Posting>> = HashMap::new();
    for p in &s.postings {
        posts.entry(p.payment_id).or_default().push(p);
    }
    let mut refunds: HashMap<Uuid, Vec<&Refund>> = HashMap::new();
    for r in &s.refunds {
        refunds.entry(r.payment_id).or_default().push(r);
    }
    let known: HashSet<Uuid> = s.payments.iter().map(|p| p.payment_id).collect();
    let overdue = |deadline: Option<DateTime<Utc>>| deadline.is_some_and(|d| d <= now);
    let mut in_flight = 0;
    let mut checked = 0;
    let mut refunds_checked = 0;
    for p in &s.payments {
        let id = p.payment_id;
        let terminal = TERMINAL_STATES.contains(&p.status.as_str());
        if !terminal && !overdue(p.deadline_at) {
            in_flight += 1;
            continue;
        }
        checked += 1;
        let ops = ops.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let posts = posts.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let of = |operation: &str| -> Vec<&ProviderOp> {
            ops.iter()
                .filter(|o| o.operation == operation)
                .copied()
                .collect()
        };
        let (auths, captures, voids, refunds_at_provider) =
            (of("AUTHORIZE"), of("CAPTURE"), of("VOID"), of("REFUND"));
        let capture_posts: Vec<&Posting> = posts
            .iter()
            .filter(|t| t.posting_kind == "CAPTURE")
            .copied()
            .collect();
        // Money matches the payment, movement by movement.
        for (what, amount, currency) in captures
            .iter()
            .map(|c| {
                (
                    "the provider's capture",
                    c.amount_minor,
                    c.currency.as_str(),
                )
            })
            .chain(
                capture_posts
                    .iter()
                    .map(|t| ("the capture posting", t.moved_minor, t.currency.as_str())),
            )
        {
            if amount != p.amount_minor {
                diff(
                    id,
                    "amount_differs",
                    format!(
                        "{what} moves {amount} but the payment is {} {}",
                        p.amount_minor, p.currency
                    ),
                );
            }
            if currency != p.currency {
                diff(
                    id,
                    "currency_differs",
                    format!(
                        "{what} is in {currency} but the payment is in {}",
                        p.currency
                    ),
                );
            }
        }
        if captures.len() > 1 || capture_posts.len() > 1 {
            diff(
                id,
                "duplicate",
                format!(
                    "{} captures at the provider, {} capture postings",
                    captures.len(),
                    capture_posts.len()
                ),
            );
        }
        let settled = SETTLED_STATES.contains(&p.status.as_str());
        match (settled, captures.is_empty(), capture_posts.is_empty()) {
            (true, false, false) => {}
            (true, true, _) if !capture_posts.is_empty() => diff(
                id,
                "posting_without_capture",
                format!(
                    "{} with a capture posting but no capture at the provider",
                    p.status
                ),
            ),
            (true, true, _) => diff(
                id,
                "posting_without_capture",
                format!(
                    "{} without a capture at the provider or a posting",
                    p.status
                ),
            ),
            (true, false, true) => diff(
                id,
                "capture_without_posting",
                format!(
                    "{} and captured at the provider, but nothing is posted",
                    p.status
                ),
            ),
            // A capture posted although the saga was refunding it: reversed in the ledger.
            (false, _, false) if reversal_posted(posts, id, p.amount_minor) => {}
            (false, _, false) => diff(
                id,
                "posting_without_capture",
                format!("{} but the ledger has a capture posting", p.status),
            ),
            (false, false, true) if p.status == "CAPTURED" => diff(
                id,
                "captured_past_deadline",
                format!(
                    "CAPTURED past its deadline ({}) and nothing is posted",
                    p.deadline_at.map(|d| d.to_rfc3339()).unwrap_or_default()
                ),
            ),
            (false, false, true) => {
                // Captured and not settled: the capture must have been given back.
                let compensated: i64 = refunds_at_provider
                    .iter()
                    .filter(|r| r.refund_id().is_none())
                    .map(|r| r.amount_minor)
                    .sum();
                let captured: i64 = captures.iter().map(|c| c.amount_minor).sum();
                if compensated != captured {
                    diff(id, "capture_without_posting", format!(
                        "{}: captured {captured} at the provider, refunded {compensated}, nothing posted",
                        p.status
                    ));
                }
            }
            (false, true, true) => {}
        }
        // No card hold left: every authorization is captured or voided.
        if !auths.is_empty() && captures.is_empty() && voids.is_empty() && terminal {
            diff(
                id,
                "authorization_open",
                format!(
                    "{} but its authorization at the provider was neither captured nor voided",
                    p.status
                ),
            );
        }
        if !terminal && p.status != "CAPTURED" {
            diff(
                id,
                "stuck",
                format!(
                    "{} past its deadline ({})",
                    p.status,
                    p.deadline_at.map(|d| d.to_rfc3339()).unwrap_or_default()
                ),
            );
        }
        // Merchant refunds: each one at the provider, in the orchestrator and in the ledger.
        let payment_refunds = refunds.get(&id).map(Vec::as_slice).unwrap_or(&[]);
        let mut by_refund: BTreeMap<Uuid, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
        for r in refunds_at_provider
            .iter()
            .filter_map(|r| Some((r.refund_id()?, r)))
        {
            by_refund.entry(r.0).or_default().0.push(r.1.amount_minor);
        }
        // A capture reversal (`REFUND:<capture_reversal_id>`, the ledger undoing a capture it
        // posted while the saga refunded it) is no merchant refund: it is checked with the
        // capture above.
        let reversal = sagapay_domain::events::capture_reversal_id(id);
        for t in posts {
            if let Some(refund_id) = t
                .posting_kind
                .strip_prefix("REFUND:")
                .and_then(|r| Uuid::parse_str(r).ok())
                .filter(|r| *r != reversal)
            {
                by_refund
                    .entry(refund_id)
                    .or_default()
                    .1
                    .push(t.moved_minor);
            }
        }
        for r in payment_refunds {
            let (at_provider, posted) = by_refund.remove(&r.refund_id).unwrap_or_default();
            let in_flight_refund = matches!(r.status.as_str(), "REQUESTED" | "PROCESSED");
            if in_flight_refund && !overdue(r.deadline_at) {
                in_flight += 1;
                continue;
            }
            refunds_checked += 1;
            let rid = r.refund_id;
            match r.status.as_str() {
                "SUCCEEDED" => {
                    if at_provider != [r.amount_minor] {
                        diff(id, "refund_not_at_provider", format!(
                            "refund {rid} of {} succeeded; the provider refunded {at_provider:?}",
                            r.amount_minor
                        ));
                    }
                    if posted != [r.amount_minor] {
                        diff(id, "refund_without_posting", format!(
                            "refund {rid} of {} succeeded; its postings move {posted:?}",
                            r.amount_minor
                        ));
                    }
                    if r.currency != p.currency {
                        diff(id, "currency_differs", format!(
                            "refund {rid} is in {} but the payment is in {}", r.currency, p.currency
                        ));
                    }
                }
                "FAILED" if !at_provider.is_empty() || !posted.is_empty() => {
                    diff(id, "refund_unrecorded", format!(
                        "refund {rid} FAILED, but the provider refunded {at_provider:?} and the ledger posted {posted:?}"
                    ));
                }
                "FAILED" => {}
                other => diff(id, "stuck", format!(
                    "refund {rid} {other} past its deadline ({}); the provider refunded {at_provider:?}",
                    r.deadline_at.map(|d| d.to_rfc3339()).unwrap_or_default()
                )),
            }
        }
        for (refund_id, (at_provider, posted)) in by_refund {
            if !at_provider.is_empty() {
                diff(id, "refund_unrecorded", format!(
                    "the provider refunded {at_provider:?} for refund {refund_id}, which the orchestrator does not have"
                ));
            } else {
                diff(id, "refund_not_at_provider", format!(
                    "the ledger posted {posted:?} for refund {refund_id}, which neither the orchestrator nor the provider has"
                ));
            }
        }
    }
    let mut strangers: Vec<Uuid> = s
        .provider
        .iter()
        .map(|o| o.payment_id)
        .chain(s.postings.iter().map(|t| t.payment_id))
        .filter(|id| !known.contains(id))
        .collect();
    strangers.sort();
    strangers.dedup();
    for id in strangers {
        diff(
            id,
            "unknown_payment",
            "the provider or the ledger has money of a payment the orchestrator does not know"
                .into(),
        );
    }
    out.sort_by(|a, b| (a.payment_id, a.kind, &a.problem).cmp(&(b.payment_id, b.kind, &b.problem)));
    Report {
        since: None,
        until: now,
        payments_checked: checked,
        in_flight,
        provider_operations_checked: s.provider.len(),
        postings_checked: s.postings.len(),
        refunds_checked,
        differences: out,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment(n: u128, status: &str, amount: i64) -> Payment {
        Payment {
            payment_id: Uuid::from_u128(n),
            status: status.into(),
            amount_minor: amount,
            currency: "USD".into(),
            deadline_at: None,
        }
    }

    fn op(n: u128, operation: &str, amount: i64) -> ProviderOp {
        ProviderOp {
            payment_id: Uuid::from_u128(n),
            operation: operation.into(),
            idempotency_key: format!("{}:{}", operation.to_lowercase(), Uuid::from_u128(n)),
            amount_minor: amount,
            currency: "USD".into(),
        }
    }

    fn post(n: u128, kind: &str, amount: i64) -> Posting {
        Posting {
            payment_id: Uuid::from_u128(n),
            posting_kind: kind.into(),
            currency: "USD".into(),
            moved_minor: amount,
        }
    }

    fn kinds(r: &Report) -> Vec<(u128, &'static str)> {
        r.differences
            .iter()
            .map(|d| (d.payment_id.as_u128(), d.kind))
            .collect()
    }

    #[test]
    fn a_clean_history_has_no_difference() {
        let refund = Uuid::from_u128(99);
        let mut refunded = op(3, "REFUND", 40);
        refunded.idempotency_key = format!("refund:{}:{refund}", Uuid::from_u128(3));
        let s = Snapshot {
            payments: vec![
                payment(1, "SETTLED", 100),
                payment(2, "REVERSED", 100),
                payment(3, "PARTIALLY_REFUNDED", 100),
                payment(4, "FAILED", 100),
            ],
            refunds: vec![Refund {
                refund_id: refund,
                payment_id: Uuid::from_u128(3),
                status: "SUCCEEDED".into(),
                amount_minor: 40,
                currency: "USD".into(),
                deadline_at: None,
            }],
            provider: vec![
                op(1, "AUTHORIZE", 100),
                op(1, "CAPTURE", 100),
                op(2, "AUTHORIZE", 100),
                op(2, "VOID", 100),
                op(3, "AUTHORIZE", 100),
                op(3, "CAPTURE", 100),
                refunded,
            ],
            postings: vec![
                post(1, "CAPTURE", 100),
                post(3, "CAPTURE", 100),
                post(3, &format!("REFUND:{refund}"), 40),
            ],
        };
        let r = compare(&s, Utc::now());
        assert_eq!(kinds(&r), vec![]);
        assert_eq!((r.payments_checked, r.refunds_checked), (4, 1));
    }

    /// An operator failed a CAPTURED payment while its posting was in flight: the capture was
    /// refunded at the provider, and the ledger reversed the posting that came through after
    /// all (`REFUND:<capture_reversal_id>`). Nothing differs: the reversal is no merchant
    /// refund (it was reported as `refund_not_at_provider`).
    #[test]
    fn a_capture_reversal_is_not_a_refund_missing_at_the_provider() {
        let id = Uuid::from_u128(5);
        let reversal = sagapay_domain::events::capture_reversal_id(id);
        let s = Snapshot {
            payments: vec![payment(5, "REVERSED", 100)],
            refunds: vec![],
            provider: vec![
                op(5, "AUTHORIZE", 100),
                op(5, "CAPTURE", 100),
                op(5, "REFUND", 100),
            ],
            postings: vec![
                post(5, "CAPTURE", 100),
                post(5, &format!("REFUND:{reversal}"), 100),
            ],
        };
        assert_eq!(kinds(&compare(&s, Utc::now())), vec![]);
    }

    #[test]
    fn each_kind_of_difference_is_found() {
        let later = Utc::now() + chrono::Duration::hours(1);
        let earlier = Utc::now() - chrono::Duration::hours(1);
        let mut moving = payment(8, "AUTHORIZED", 100);
        moving.deadline_at = Some(later);
        let mut stuck = payment(9, "CAPTURED", 100);
        stuck.deadline_at = Some(earlier);
        let mut in_yen = op(5, "CAPTURE", 100);
        in_yen.currency = "JPY".into();
        let s = Snapshot {
            payments: vec![
                payment(1, "SETTLED", 100),
                payment(2, "SETTLED", 100),
                payment(3, "FAILED", 100),
                payment(4, "SETTLED", 100),
                payment(5, "SETTLED", 100),
                payment(6, "REVERSED", 100),
                moving,
                stuck,
            ],
            refunds: vec![],
            provider: vec![
                op(1, "CAPTURE", 100),
                op(3, "AUTHORIZE", 100),
                op(4, "CAPTURE", 90),
                in_yen,
                op(6, "CAPTURE", 100),
                op(9, "CAPTURE", 100),
                op(7, "CAPTURE", 5),
            ],
            postings: vec![
                post(2, "CAPTURE", 100),
                post(4, "CAPTURE", 100),
                post(5, "CAPTURE", 100),
            ],
        };
        let r = compare(&s, Utc::now());
        assert_eq!(
            kinds(&r),
            vec![
                (1, "capture_without_posting"),
                (2, "posting_without_capture"),
                (3, "authorization_open"),
                (4, "amount_differs"),
                (5, "currency_differs"),
                (6, "capture_without_posting"),
                (7, "unknown_payment"),
                (9, "captured_past_deadline"),
            ]
        );
        assert_eq!(r.in_flight, 1, "the moving payment is left out");
    }
}
