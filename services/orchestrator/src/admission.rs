//! Admission control: a new payment is refused (503 `overloaded`, `Retry-After`) while the
//! pipeline holds more payments in flight than it can finish within their deadlines, instead
//! of accepted into a queue that only grows. Under overload, accepting everything makes every
//! payment slow and leaves thousands of authorizations on hold; refusing the excess quickly
//! keeps the accepted ones fast and tells the merchant to come back.
//!
//! Two limits, in the spirit of Stripe's concurrent-requests limiter inside its load shedder:
//! the pipeline's (`SAGAPAY_ADMISSION_MAX_IN_FLIGHT`, protects the platform) and, inside it,
//! each merchant's share (`SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT`, by default half the
//! pipeline's; per merchant in the table `merchant_limits`, set by `sagapayctl merchant
//! limit`), so one merchant whose payments are slow (cards that time out, a burst) is refused
//! at its share while the others are served. A refusal says which limit it hit (header
//! `sagapay-overload-scope`: `merchant` or `pipeline`), so the gateway sheds only that
//! merchant or everyone.
//!
//! "In flight" is what the automatic pipeline still has to do: payments waiting for risk
//! (CREATED), for their authorization (APPROVED), for their capture (AUTHORIZED, automatic
//! capture) or for their posting (CAPTURED). Payments waiting for a person hold no place: in
//! review, a manual capture not yet asked for, and any payment flagged for an operator (a
//! capture of another amount, a refused void, a step that was never answered). A flagged
//! payment leaves the count when it is flagged and comes back if an operator retries it.
//!
//! The counts are sampled from the database by one background task (every
//! [`Admission::SAMPLE_EVERY`]) and, between two samples, moved locally by what this instance
//! does: raised by each payment it accepts, moved by each decision it commits that takes a
//! payment in or out of the pipeline (settled, declined, flagged, retried, ...). Without the
//! local moves, a closed loop exactly as deep as the limit was refused a sample's
//! settlements' worth of payments every 100 ms. Other instances' moves reach the counts at the
//! next sample. Only creation is refused: reads, refunds, captures, cancels, operators'
//! requests and idempotent replays of payments already accepted always pass.

use anyhow::Context;
use prometheus::{IntCounter, IntGauge, Registry};
use sagapay_domain::events::CaptureMethod;
use sagapay_domain::PaymentStatus;
use sagapay_service_kit::config::env_parse;
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Which limit a refusal hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The pipeline's, shared by every merchant.
    Pipeline,
    /// The merchant's own share.
    Merchant,
}

impl Scope {
    /// As the `sagapay-overload-scope` header says it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Pipeline => "pipeline",
            Scope::Merchant => "merchant",
        }
    }
}

/// What the admission check decided for one new payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Refused: `in_flight` payments are in flight within `scope`, `limit` at most.
    Overloaded {
        scope: Scope,
        in_flight: i64,
        limit: i64,
    },
}

/// Whether a payment in `status` is the automatic pipeline's work (see the module's header;
/// the same rule as the sampling query's). A parked payment (flagged for an operator) never is.
pub fn in_pipeline(status: PaymentStatus, capture: CaptureMethod, parked: bool) -> bool {
    if parked {
        return false;
    }
    match status {
        PaymentStatus::Created | PaymentStatus::Approved | PaymentStatus::Captured => true,
        PaymentStatus::Authorized => capture == CaptureMethod::Automatic,
        PaymentStatus::RiskReview
        | PaymentStatus::Settled
        | PaymentStatus::Failed
        | PaymentStatus::Reversed
        | PaymentStatus::PartiallyRefunded
        | PaymentStatus::Refunded
        | PaymentStatus::Canceled => false,
    }
}

/// The limits in force: the pipeline's and a merchant's (0: no limit of that kind).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub pipeline: i64,
    pub merchant: i64,
}

/// The decision, pure: a payment is admitted while fewer than the pipeline's limit are in
/// flight and fewer than its merchant's limit are its merchant's. A limit of 0 is off.
pub fn verdict(total: i64, merchant: i64, limits: Limits) -> Verdict {
    if limits.pipeline > 0 && total >= limits.pipeline {
        return Verdict::Overloaded {
            scope: Scope::Pipeline,
            in_flight: total,
            limit: limits.pipeline,
        };
    }
    if limits.merchant > 0 && merchant >= limits.merchant {
        return Verdict::Overloaded {
            scope: Scope::Merchant,
            in_flight: merchant,
            limit: limits.merchant,
        };
    }
    Verdict::Admit
}

/// The pipeline's depth, in all and per merchant, and the merchants' own limits.
#[derive(Debug, Default)]
struct Counts {
    total: i64,
    per_merchant: HashMap<Uuid, i64>,
    limits: HashMap<Uuid, i64>,
}

/// New payments refused per merchant by this instance since it started: (in all, at the
/// merchant's own limit). Operators read it (`GET /ops/admission`); the metrics count all
/// merchants together (a label per merchant would grow without bound).
type Refusals = HashMap<Uuid, (u64, u64)>;

/// A merchant as admission sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantAdmission {
    pub merchant_id: Uuid,
    pub in_flight: i64,
    pub refused: u64,
    pub refused_at_own_limit: u64,
}

#[derive(Clone)]
pub struct Admission {
    counts: Arc<Mutex<Counts>>,
    refusals: Arc<Mutex<Refusals>>,
    limit: i64,
    merchant_default: i64,
    gauge: IntGauge,
    refused: IntCounter,
    refused_merchant: IntCounter,
}

impl Admission {
    pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);
    /// The default limit: the deepest closed loop the benchmarks run (256) passes untouched.
    pub const DEFAULT_LIMIT: i64 = 256;

    /// `SAGAPAY_ADMISSION_MAX_IN_FLIGHT` (0: off).
    pub fn limit_from_env() -> anyhow::Result<i64> {
        let limit: i64 = env_parse("SAGAPAY_ADMISSION_MAX_IN_FLIGHT", Self::DEFAULT_LIMIT)?;
        anyhow::ensure!(
            limit >= 0,
            "SAGAPAY_ADMISSION_MAX_IN_FLIGHT must be 0 (off) or more, not {limit}"
        );
        Ok(limit)
    }

    /// A merchant's default share of `limit`: half of it (rounded up), so that one merchant
    /// alone can never take every place.
    pub fn default_share(limit: i64) -> i64 {
        (limit + 1) / 2
    }

    /// `SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT` (0: no share of its own; default: half of
    /// the pipeline's `limit`).
    pub fn merchant_limit_from_env(limit: i64) -> anyhow::Result<i64> {
        let share: i64 = env_parse(
            "SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT",
            Self::default_share(limit),
        )?;
        anyhow::ensure!(
            share >= 0,
            "SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT must be 0 (none) or more, not {share}"
        );
        Ok(share)
    }

    pub fn register(
        registry: &Registry,
        limit: i64,
        merchant_default: i64,
    ) -> anyhow::Result<Self> {
        let gauge = IntGauge::new(
            "admission_payments_in_flight",
            "Payments the automatic pipeline still has to finish, as admission control sees them",
        )?;
        let refused = IntCounter::new(
            "admission_refused_total",
            "New payments refused with 503 overloaded",
        )?;
        let refused_merchant = IntCounter::new(
            "admission_merchant_refused_total",
            "New payments refused with 503 overloaded at their merchant's own limit",
        )?;
        registry.register(Box::new(gauge.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(refused_merchant.clone()))?;
        Ok(Self {
            counts: Arc::new(Mutex::new(Counts::default())),
            refusals: Arc::default(),
            limit,
            merchant_default,
            gauge,
            refused,
            refused_merchant,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether one more payment of `merchant` may be accepted now.
    pub fn check(&self, merchant: Uuid) -> Verdict {
        let counts = self.lock();
        let own = counts.per_merchant.get(&merchant).copied().unwrap_or(0);
        let limits = Limits {
            pipeline: self.limit,
            merchant: counts
                .limits
                .get(&merchant)
                .copied()
                .unwrap_or(self.merchant_default),
        };
        verdict(counts.total, own, limits)
    }

    /// `merchant`'s payments in flight and the default share (for the ops routes).
    pub fn merchant(&self, merchant: Uuid) -> (i64, i64) {
        let counts = self.lock();
        let own = counts.per_merchant.get(&merchant).copied().unwrap_or(0);
        (own, self.merchant_default)
    }

    /// A new payment of `merchant` was refused (a replay answered while overloaded is not
    /// counted).
    pub fn refused(&self, scope: Scope, merchant: Uuid) {
        self.refused.inc();
        let own = scope == Scope::Merchant;
        if own {
            self.refused_merchant.inc();
        }
        let mut refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        let (all, at_own) = refusals.entry(merchant).or_insert((0, 0));
        *all += 1;
        *at_own += u64::from(own);
    }

    /// Every merchant with payments in flight or refused, most in flight first: the pipeline's
    /// limit, the default share, the total in flight, and each merchant.
    pub fn merchants(&self) -> (i64, i64, i64, Vec<MerchantAdmission>) {
        let (total, mut merchants) = {
            let counts = self.lock();
            let refusals = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
            let ids: std::collections::BTreeSet<Uuid> = counts
                .per_merchant
                .iter()
                .filter(|(_, n)| **n != 0)
                .map(|(id, _)| *id)
                .chain(refusals.keys().copied())
                .collect();
            let merchants: Vec<MerchantAdmission> = ids
                .into_iter()
                .map(|id| {
                    let (refused, refused_at_own_limit) =
                        refusals.get(&id).copied().unwrap_or((0, 0));
                    MerchantAdmission {
                        merchant_id: id,
                        in_flight: counts.per_merchant.get(&id).copied().unwrap_or(0),
                        refused,
                        refused_at_own_limit,
                    }
                })
                .collect();
            (counts.total, merchants)
        };
        merchants.sort_by_key(|m| (std::cmp::Reverse(m.in_flight), m.merchant_id));
        (self.limit, self.merchant_default, total, merchants)
    }

    /// A payment of `merchant` was accepted: counted until the next sample sees it.
    pub fn accepted(&self, merchant: Uuid) {
        self.moved(merchant, 1);
    }

    /// A decision committed here took a payment of `merchant` into the pipeline (+1) or out
    /// of it (-1): the counts follow it until the next sample.
    pub fn moved(&self, merchant: Uuid, delta: i64) {
        let mut counts = self.lock();
        counts.total += delta;
        *counts.per_merchant.entry(merchant).or_insert(0) += delta;
    }

    /// Samples the pipeline's depth until `shutdown`. A failed sample keeps the last counts
    /// (the database being down refuses creation on its own).
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            match sample(&pool).await {
                Ok(sampled) => {
                    self.gauge.set(sampled.total);
                    *self.lock() = sampled;
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "admission sample failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(Self::SAMPLE_EVERY) => {}
            }
        }
    }
}

/// The (status, capture method) pairs [`in_pipeline`] counts, as the sampling query's keys:
/// the rule is written once, in the function.
fn pipeline_keys() -> (Vec<&'static str>, Vec<&'static str>) {
    PaymentStatus::ALL
        .into_iter()
        .flat_map(|s| [CaptureMethod::Automatic, CaptureMethod::Manual].map(|c| (s, c)))
        .filter(|(s, c)| in_pipeline(*s, *c, false))
        .map(|(s, c)| (s.as_str(), c.as_str()))
        .unzip()
}

/// The payments in the automatic pipeline per merchant (see the module's header), and the
/// merchants' own limits, in one statement.
async fn sample(pool: &PgPool) -> anyhow::Result<Counts> {
    let (statuses, captures) = pipeline_keys();
    let rows: Vec<(Uuid, i64, Option<i32>)> = sqlx::query_as(
        "WITH counted AS (
             SELECT p.merchant_id, count(*) AS n FROM payments p
               JOIN unnest($1::text[], $2::text[]) AS k(status, capture_method)
                 ON p.status = k.status AND p.capture_method = k.capture_method
              WHERE p.attention_since IS NULL
              GROUP BY p.merchant_id)
         SELECT COALESCE(c.merchant_id, l.merchant_id), COALESCE(c.n, 0), l.max_in_flight
           FROM counted c FULL JOIN merchant_limits l USING (merchant_id)",
    )
    .bind(&statuses)
    .bind(&captures)
    .fetch_all(pool)
    .await
    .context("counting payments in flight")?;
    let mut counts = Counts::default();
    for (merchant, n, limit) in rows {
        counts.total += n;
        if n > 0 {
            counts.per_merchant.insert(merchant, n);
        }
        if let Some(limit) = limit {
            counts.limits.insert(merchant, i64::from(limit));
        }
    }
    Ok(counts)
}

/// Sets `merchant`'s own limit (`sagapayctl merchant limit`); `None` gives it the default
/// share again.
pub async fn set_merchant_limit(
    pool: &PgPool,
    merchant: Uuid,
    max_in_flight: Option<i32>,
    by: &str,
) -> sqlx::Result<()> {
    match max_in_flight {
        Some(limit) => {
            sqlx::query(
                "INSERT INTO merchant_limits (merchant_id, max_in_flight, updated_by)
                 VALUES ($1, $2, $3)
                 ON CONFLICT (merchant_id) DO UPDATE
                    SET max_in_flight = $2, updated_by = $3, updated_at = now()",
            )
            .bind(merchant)
            .bind(limit)
            .bind(by)
            .execute(pool)
            .await?;
        }
        None => {
            sqlx::query("DELETE FROM merchant_limits WHERE merchant_id = $1")
                .bind(merchant)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(pipeline: i64, merchant: i64) -> Limits {
        Limits { pipeline, merchant }
    }

    #[test]
    fn admits_below_the_limits_and_refuses_at_either() {
        assert_eq!(verdict(0, 0, limits(3, 2)), Verdict::Admit);
        assert_eq!(verdict(2, 1, limits(3, 2)), Verdict::Admit);
        let pipeline = |in_flight, limit| Verdict::Overloaded {
            scope: Scope::Pipeline,
            in_flight,
            limit,
        };
        assert_eq!(verdict(3, 0, limits(3, 2)), pipeline(3, 3));
        assert_eq!(verdict(10, 10, limits(3, 2)), pipeline(10, 3));
        assert_eq!(
            verdict(2, 2, limits(3, 2)),
            Verdict::Overloaded {
                scope: Scope::Merchant,
                in_flight: 2,
                limit: 2
            }
        );
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        assert_eq!(verdict(1_000_000, 1_000_000, limits(0, 0)), Verdict::Admit);
        assert!(matches!(
            verdict(1_000, 5, limits(0, 5)),
            Verdict::Overloaded {
                scope: Scope::Merchant,
                ..
            }
        ));
    }

    #[test]
    fn the_pipeline_holds_what_it_still_has_to_do_alone() {
        use CaptureMethod::{Automatic, Manual};
        use PaymentStatus::*;
        let waiting_for_the_pipeline = [Created, Approved, Captured];
        for status in PaymentStatus::ALL {
            let always = waiting_for_the_pipeline.contains(&status);
            assert_eq!(
                in_pipeline(status, Manual, false),
                always,
                "{status:?}, manual"
            );
            let automatic = always || status == Authorized;
            assert_eq!(
                in_pipeline(status, Automatic, false),
                automatic,
                "{status:?}"
            );
            assert!(!in_pipeline(status, Automatic, true), "{status:?} parked");
        }
        let (statuses, captures) = pipeline_keys();
        assert_eq!(statuses.len(), 7, "{statuses:?} {captures:?}");
        assert!(statuses
            .iter()
            .zip(&captures)
            .any(|k| k == (&"AUTHORIZED", &"AUTOMATIC")));
        assert!(!statuses
            .iter()
            .zip(&captures)
            .any(|k| k == (&"AUTHORIZED", &"MANUAL")));
    }

    #[test]
    fn moves_follow_each_merchant_and_the_pipeline() {
        let admission = Admission::register(&Registry::new(), 3, 2).unwrap();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        admission.accepted(a);
        admission.accepted(a);
        assert!(matches!(
            admission.check(a),
            Verdict::Overloaded {
                scope: Scope::Merchant,
                ..
            }
        ));
        assert_eq!(
            admission.check(b),
            Verdict::Admit,
            "another merchant is served"
        );
        admission.accepted(b);
        assert!(matches!(
            admission.check(b),
            Verdict::Overloaded {
                scope: Scope::Pipeline,
                ..
            }
        ));
        admission.moved(a, -1); // settled, or flagged for an operator
        assert_eq!(admission.check(a), Verdict::Admit);
        admission.moved(a, 1); // an operator retried it
        assert!(matches!(admission.check(b), Verdict::Overloaded { .. }));
    }

    #[test]
    fn refusals_are_counted_per_merchant_and_by_the_limit_they_hit() {
        let admission = Admission::register(&Registry::new(), 3, 2).unwrap();
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        admission.accepted(a);
        admission.accepted(a);
        admission.refused(Scope::Merchant, a);
        admission.refused(Scope::Merchant, a);
        admission.refused(Scope::Pipeline, b);
        admission.accepted(c);
        admission.moved(c, -1); // settled: in flight no more, and never refused
        let (limit, share, total, merchants) = admission.merchants();
        assert_eq!((limit, share, total), (3, 2, 2));
        let row = |id, in_flight, refused, own| MerchantAdmission {
            merchant_id: id,
            in_flight,
            refused,
            refused_at_own_limit: own,
        };
        assert_eq!(merchants, vec![row(a, 2, 2, 2), row(b, 0, 1, 0)]);
    }
}
