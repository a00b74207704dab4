//! Which due operations the worker claims, in one statement per round, so that no merchant
//! can take the provider from the others and payments finish before new ones start.
//!
//! An attempt holds one of the worker's places for as long as the call takes, up to the call
//! timeout: a merchant whose cards all time out used to fill every place with calls that
//! answer nothing, two seconds each, and stall every other merchant's payments. Now:
//! - **a cap per merchant**: a merchant holds at most `merchant_cap` of the worker's places
//!   (half of them by default); its due operations beyond that wait for one of its own
//!   operations to finish, whatever the room left;
//! - **in turns**: what finishes a payment (a capture, void or refund, or a status query of any
//!   operation, which may already have moved money) goes before what starts one (a new
//!   authorization), across merchants too: an authorized payment keeps money on its
//!   customer's card until it is captured or voided, a new authorization keeps nothing on
//!   hold yet. Within each, the merchant that holds the fewest places goes next (its in-flight
//!   operations plus its rank in this claim), then the longest due. That is round robin
//!   where every merchant with work starts from what it already holds, so the places are
//!   shared max-min fairly: a merchant with 30 in flight gets nothing more while one with
//!   none is waiting, and a merchant alone gets up to its cap. A merchant's critical
//!   operations count against its turns for authorizations, so a merchant's captures do
//!   not also buy it a head start on new payments;
//! - **no spinning on a full merchant**: a merchant at its cap with due operations is
//!   reported back (`deferred`), its operations do not set the timer, and the worker claims
//!   again when one of that merchant's operations finishes.
//!
//! The statement reads index entries in proportion to the merchants with pending operations,
//! not to the pending operations (`provider_operations_merchant_due_idx`, see migration V7):
//! a loose index scan finds the merchants (one descent each); each merchant's due operations
//! are a range of the index read only as far as its room; its earliest operation left, for
//! the timer, is the first entry of each priority (about 12 ms for 1,100 merchants with
//! pending operations and 5,000 due, where the claim that sorted every pending operation took
//! 80 ms). Nothing is locked until the operations are picked, so the rows locked are the rows
//! claimed (a row lock is a write); two instances claiming at the same moment may pick the
//! same rows, and the second then claims fewer (`SKIP LOCKED`) and claims again 1 ms later.
//! A provider with tens of thousands of merchants pending at once would want a table of the
//! merchants with due work instead.

use super::{Claimed, Worker};
use crate::policy;
use crate::provider::PaymentProvider;
use anyhow::Context;
use sagapay_messaging::MessageHeaders;
use sqlx::postgres::PgRow;
use sqlx::Row;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::LazyLock;
use std::time::Duration;
use uuid::Uuid;

/// The merchant an operation counts for and its priority (0: it finishes a payment, or asks
/// what became of an operation; 1: it starts a payment), written exactly as
/// `provider_operations_merchant_due_idx` indexes them, so that the planner uses it.
/// Operations recorded before merchants were count as one merchant, the nil UUID.
const MERCHANT: &str = "COALESCE(o.merchant_id, '00000000-0000-0000-0000-000000000000'::uuid)";
const PRIORITY: &str =
    "(CASE WHEN o.operation = 'AUTHORIZE' AND NOT o.resolving THEN 1 ELSE 0 END)";

/// An operation the worker may claim: pending, not claimed (or its claim expired), and not a
/// void while an operation it waits for (an authorization or capture of its payment,
/// [`policy::VOID_WAITS_FOR`]) is pending: it must never run before what it undoes.
fn claimable() -> String {
    let waits_for: Vec<String> = policy::VOID_WAITS_FOR
        .iter()
        .map(|o| format!("'{}'", o.as_str()))
        .collect();
    format!(
        "o.status = 'PENDING'
    AND (o.claimed_until IS NULL OR o.claimed_until < now())
    AND NOT (o.operation = 'VOID' AND EXISTS (
        SELECT 1 FROM provider_operations a
         WHERE a.payment_id = o.payment_id AND a.operation IN ({})
           AND a.status = 'PENDING'))",
        waits_for.join(", ")
    )
}

/// The claimable operations of priority `priority` of the merchant `s.merchant_id` that also
/// meet `and`, by due time, at most `limit`, as `columns`: a range of the index.
fn in_turn(priority: u8, columns: &str, and: &str, limit: &str) -> String {
    let claimable = claimable();
    format!(
        "(SELECT {columns} FROM provider_operations o
           WHERE {MERCHANT} = s.merchant_id AND {PRIORITY} = {priority} AND {claimable}{and}
           ORDER BY o.next_attempt_at LIMIT {limit})"
    )
}

/// The claim: $1 the room, $2 the claim's duration (s), $3 its token, $4 the cap per
/// merchant, $5 and $6 the merchants with operations in flight here and how many.
static CLAIM_SQL: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH RECURSIVE {}, {}
         SELECT next.next_due_s, next.deferred, claimed.* FROM next LEFT JOIN claimed ON true",
        taking(),
        leaving()
    )
});

/// The claim's part that takes: the merchants with pending operations and their rooms,
/// their due operations in turns, and the claim of those (`claimed`).
fn taking() -> String {
    let due = |p| {
        let columns = format!("o.operation_id, {p} AS priority, o.next_attempt_at");
        let and = " AND o.next_attempt_at <= now()";
        in_turn(p, &columns, and, "LEAST(s.room, $1)")
    };
    format!(
        "-- Every merchant with pending operations: a loose index scan, one descent each.
         merchants AS (
             (SELECT {MERCHANT} AS merchant_id FROM provider_operations o
               WHERE o.status = 'PENDING' ORDER BY 1 LIMIT 1)
             UNION ALL
             SELECT (SELECT {MERCHANT} FROM provider_operations o
                      WHERE o.status = 'PENDING' AND {MERCHANT} > m.merchant_id
                      ORDER BY 1 LIMIT 1)
               FROM merchants m WHERE m.merchant_id IS NOT NULL),
         -- What each holds in this worker, and the room its cap leaves it.
         shares AS (
             SELECT m.merchant_id, COALESCE(b.busy, 0) AS busy,
                    GREATEST($4 - COALESCE(b.busy, 0), 0) AS room
               FROM merchants m
               LEFT JOIN unnest($5::uuid[], $6::int8[]) AS b(merchant_id, busy) USING (merchant_id)
              WHERE m.merchant_id IS NOT NULL),
         -- Each merchant's due operations, as many as its room, ranked: finishing first.
         candidates AS (
             SELECT s.merchant_id, s.busy, c.operation_id, c.priority, c.next_attempt_at,
                    row_number() OVER (PARTITION BY s.merchant_id
                                       ORDER BY c.priority, c.next_attempt_at) AS nth
               FROM shares s CROSS JOIN LATERAL ({} UNION ALL {} LIMIT LEAST(s.room, $1)) c
              WHERE s.room > 0),
         -- In turns: finishing before starting, then the merchant holding the fewest places.
         picked AS (
             SELECT operation_id FROM candidates
              ORDER BY priority, busy + nth, next_attempt_at
              LIMIT $1),
         locked AS MATERIALIZED (
             SELECT o.operation_id, {MERCHANT} AS merchant_id FROM provider_operations o
              WHERE o.operation_id = ANY (ARRAY(SELECT operation_id FROM picked))
                AND o.status = 'PENDING' AND (o.claimed_until IS NULL OR o.claimed_until < now())
              FOR UPDATE OF o SKIP LOCKED),
         claimed AS (
             UPDATE provider_operations o
                SET claimed_until = now() + make_interval(secs => $2), claim_token = $3
               FROM locked WHERE o.operation_id = locked.operation_id
             RETURNING o.operation_id, o.payment_id, o.merchant_id, o.operation,
                       o.operation_key, o.request, o.attempts, o.source_event_id,
                       o.correlation_id, o.headers, o.resolving, o.outcome_unknown,
                       o.give_up_at)",
        due(0),
        due(1),
    )
}

/// The claim's part that finds what it left (`next`): when the next claim is due, and the
/// merchants whose due operations wait for their cap.
fn leaving() -> String {
    let not_claimed = " AND o.operation_id NOT IN (SELECT operation_id FROM locked)";
    let left = |p| in_turn(p, "o.next_attempt_at", not_claimed, "1");
    format!(
        "taken AS (SELECT merchant_id, count(*) AS n FROM locked GROUP BY merchant_id),
         -- Each merchant's earliest operation left, and whether it holds its cap now.
         earliest AS (
             SELECT s.merchant_id, s.busy + COALESCE(t.n, 0) >= $4 AS at_cap,
                    (SELECT min(e.next_attempt_at) FROM ({} UNION ALL {}) e) AS next_attempt_at
               FROM shares s LEFT JOIN taken t USING (merchant_id)),
         -- The next claim is due with the earliest operation left, except the due ones of
         -- a merchant at its cap: they wait for one of its own operations to finish.
         next AS (
             SELECT EXTRACT(EPOCH FROM (min(next_attempt_at)
                        FILTER (WHERE NOT (at_cap AND next_attempt_at <= now())) - now()))::float8
                        AS next_due_s,
                    COALESCE(array_agg(merchant_id)
                        FILTER (WHERE at_cap AND next_attempt_at <= now()), '{{}}') AS deferred
               FROM earliest)",
        left(0),
        left(1),
    )
}

/// What a claim took, and what it left.
pub(super) struct Claim {
    pub ops: Vec<Claimed>,
    /// How long to wait for the next claim, unless something happens first.
    pub wait: Duration,
    /// The merchants whose due operations wait because they hold their cap.
    pub deferred: Vec<Uuid>,
}

impl<P: PaymentProvider> Worker<P> {
    /// Claims up to `room` due operations, each merchant's within its cap counting what
    /// `places` holds for it, and, in the same statement, finds when the earliest operation
    /// left unclaimed is due: the wait before the next claim, capped at 250 ms (the polling
    /// fallback).
    pub(super) async fn claim(
        &self,
        room: usize,
        places: &MerchantPlaces,
    ) -> anyhow::Result<Claim> {
        let token = Uuid::new_v4();
        let (merchants, busy) = places.held();
        let rows = sqlx::query(&CLAIM_SQL)
            .bind(room as i64)
            .bind(self.settings.claim_timeout.as_secs_f64())
            .bind(token)
            .bind(self.settings.merchant_cap() as i64)
            .bind(&merchants)
            .bind(&busy)
            .fetch_all(&self.pool)
            .await
            .context("claiming due operations")?;
        // One row at least: the next due time, and the claimed operations if any.
        let (next_due_s, deferred) = match rows.first() {
            Some(r) => (r.try_get("next_due_s")?, r.try_get("deferred")?),
            None => (None, Vec::new()),
        };
        let mut ops = Vec::with_capacity(rows.len());
        for r in &rows {
            ops.extend(Claimed::from_row(r, token)?);
        }
        Ok(Claim {
            ops,
            wait: wait_for(next_due_s),
            deferred,
        })
    }
}

impl Claimed {
    /// The operation a row of the claim holds; `None` for the row that carries only the
    /// next due time (nothing was claimed).
    fn from_row(r: &PgRow, token: Uuid) -> anyhow::Result<Option<Self>> {
        let Some(operation_id) = r.try_get::<Option<Uuid>, _>("operation_id")? else {
            return Ok(None);
        };
        let request: sqlx::types::Json<super::OperationRequest> = r.try_get("request")?;
        let headers: sqlx::types::Json<MessageHeaders> = r.try_get("headers")?;
        Ok(Some(Claimed {
            operation_id,
            payment_id: r.try_get("payment_id")?,
            merchant_id: r.try_get("merchant_id")?,
            operation: r.try_get("operation")?,
            operation_key: r.try_get("operation_key")?,
            request: request.0,
            attempts: r.try_get("attempts")?,
            token,
            source_event_id: r.try_get("source_event_id")?,
            correlation_id: r.try_get("correlation_id")?,
            headers: headers.0,
            resolving: r.try_get("resolving")?,
            outcome_unknown: r.try_get("outcome_unknown")?,
            give_up_at: r.try_get("give_up_at")?,
        }))
    }
}

/// The wait before the next claim when the earliest operation left is due in `next_due_s`
/// (none left: the polling fallback, 250 ms at most).
fn wait_for(next_due_s: Option<f64>) -> Duration {
    let cap = Duration::from_millis(250);
    match next_due_s {
        Some(s) if s <= 0.0 => Duration::from_millis(1),
        Some(s) => Duration::from_secs_f64(s).min(cap),
        None => cap,
    }
}

/// The merchant of each operation in flight (by its task), and how many each holds: what
/// the claim counts against each merchant's cap.
#[derive(Debug)]
pub(super) struct MerchantPlaces<T = tokio::task::Id> {
    tasks: HashMap<T, Uuid>,
    held: HashMap<Uuid, usize>,
}

impl<T> Default for MerchantPlaces<T> {
    fn default() -> Self {
        Self {
            tasks: HashMap::new(),
            held: HashMap::new(),
        }
    }
}

impl<T: Eq + Hash> MerchantPlaces<T> {
    pub fn started(&mut self, task: T, merchant: Uuid) {
        if let Some(before) = self.tasks.insert(task, merchant) {
            self.release(before);
        }
        *self.held.entry(merchant).or_default() += 1;
    }

    /// The merchant whose operation `task` performed, its place given back.
    pub fn finished(&mut self, task: &T) -> Option<Uuid> {
        let merchant = self.tasks.remove(task)?;
        self.release(merchant);
        Some(merchant)
    }

    fn release(&mut self, merchant: Uuid) {
        if let Some(n) = self.held.get_mut(&merchant) {
            *n -= 1;
            if *n == 0 {
                self.held.remove(&merchant);
            }
        }
    }

    /// The merchants holding places and how many each, as the claim binds them.
    pub fn held(&self) -> (Vec<Uuid>, Vec<i64>) {
        self.held.iter().map(|(m, n)| (*m, *n as i64)).unzip()
    }
}

/// What the last claim left behind that a finished operation's place could take.
#[derive(Debug, Default)]
pub(super) struct Backlog {
    /// The claim filled all the room it had: due operations may have been left.
    room_filled: bool,
    /// Merchants whose due operations waited because they held their cap.
    at_cap: HashSet<Uuid>,
}

impl Backlog {
    pub fn after(claimed: usize, room: usize, deferred: &[Uuid]) -> Self {
        Self {
            room_filled: claimed == room,
            at_cap: deferred.iter().copied().collect(),
        }
    }

    /// Whether the place an operation of `merchant` gave back should be claimed for now:
    /// when the last claim ran out of room, or when the merchant had due operations waiting
    /// for a place of its own. Another merchant's finished operation frees nothing for a
    /// merchant at its cap.
    pub fn freed_by(&self, merchant: Option<Uuid>) -> bool {
        self.room_filled || merchant.is_some_and(|m| self.at_cap.contains(&m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn merchant(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn held(places: &MerchantPlaces<u32>) -> Vec<(Uuid, i64)> {
        let (merchants, counts) = places.held();
        let mut held: Vec<_> = merchants.into_iter().zip(counts).collect();
        held.sort();
        held
    }

    #[test]
    fn a_void_waits_for_what_the_policy_names() {
        assert!(
            claimable().contains("a.operation IN ('AUTHORIZE', 'CAPTURE')"),
            "{}",
            claimable()
        );
    }

    #[test]
    fn places_are_counted_per_merchant_and_given_back() {
        let (a, b) = (merchant(1), merchant(2));
        let mut places = MerchantPlaces::<u32>::default();
        places.started(1, a);
        places.started(2, a);
        places.started(3, b);
        assert_eq!(held(&places), vec![(a, 2), (b, 1)]);
        assert_eq!(places.finished(&2), Some(a));
        assert_eq!(held(&places), vec![(a, 1), (b, 1)]);
        assert_eq!(places.finished(&3), Some(b));
        assert_eq!(
            held(&places),
            vec![(a, 1)],
            "a merchant with none is not bound"
        );
        assert_eq!(places.finished(&3), None, "a task is given back once");
        assert_eq!(places.finished(&9), None, "an unknown task frees nothing");
        assert_eq!(places.finished(&1), Some(a));
        assert_eq!(held(&places), vec![]);
    }

    #[test]
    fn a_finished_operation_claims_again_only_for_what_waits() {
        let (a, b) = (merchant(1), merchant(2));
        let full = Backlog::after(8, 8, &[]);
        assert!(full.freed_by(Some(a)), "the claim ran out of room");
        assert!(full.freed_by(None));
        let capped = Backlog::after(3, 8, &[a]);
        assert!(
            capped.freed_by(Some(a)),
            "a merchant at its cap got a place back"
        );
        assert!(!capped.freed_by(Some(b)), "nothing waits for b's place");
        assert!(!capped.freed_by(None));
        let idle = Backlog::after(0, 8, &[]);
        assert!(!idle.freed_by(Some(a)), "nothing was left");
    }

    #[test]
    fn the_next_claim_waits_for_the_next_due_operation_at_most_250_ms() {
        assert_eq!(wait_for(None), Duration::from_millis(250));
        assert_eq!(wait_for(Some(-3.0)), Duration::from_millis(1));
        assert_eq!(wait_for(Some(0.0)), Duration::from_millis(1));
        assert_eq!(wait_for(Some(0.1)), Duration::from_millis(100));
        assert_eq!(wait_for(Some(30.0)), Duration::from_millis(250));
    }

    #[test]
    fn the_claim_reads_the_index_as_the_migration_writes_it() {
        let migration = include_str!("../../../../migrations/provider-adapter/V7__fair_claims.sql");
        for expression in [MERCHANT, PRIORITY] {
            let indexed = expression.replace("o.", "");
            assert!(migration.contains(&indexed), "{indexed} is not indexed");
        }
        for placeholder in ["$1", "$2", "$3", "$4", "$5", "$6"] {
            assert!(CLAIM_SQL.contains(placeholder), "{placeholder} is not used");
        }
        assert!(!CLAIM_SQL.contains("$7"));
    }
}
