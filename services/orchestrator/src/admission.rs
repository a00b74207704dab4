//! Admission control: a new payment is refused (503 `overloaded`, `Retry-After`) while the
//! pipeline holds more payments in flight than it can finish within their deadlines, instead
//! of accepted into a queue that only grows. Under overload, accepting everything makes every
//! payment slow and leaves thousands of authorizations on hold; refusing the excess quickly
//! keeps the accepted ones fast and tells the merchant to come back.
//!
//! "In flight" is what the automatic pipeline still has to do: payments waiting for risk
//! (CREATED), for their authorization (APPROVED), for their capture (AUTHORIZED, automatic
//! capture) or for their posting (CAPTURED). Payments waiting for a person (RISK_REVIEW, a
//! manual capture not yet asked for) are not the pipeline's work and do not count.
//!
//! The count is sampled from the database by one background task (every
//! [`Admission::SAMPLE_EVERY`]) and, between two samples, moved locally by what this instance
//! does: raised by each payment it accepts, lowered by each payment whose transition it commits
//! out of the pipeline (settled, declined, sent to review, ...). Without the lowering, a
//! closed loop exactly as deep as the limit was refused a sample's settlements' worth of
//! payments every 100 ms, and each refused payment came back a second later: refusals that
//! cost CPU and left the pipeline shallower than the limit. Other instances' moves reach the
//! count at the next sample. Only creation is refused: reads, refunds, captures, cancels and idempotent
//! replays of payments already accepted always pass.

use anyhow::Context;
use prometheus::{IntCounter, IntGauge, Registry};
use sagapay_domain::events::CaptureMethod;
use sagapay_domain::PaymentStatus;
use sagapay_service_kit::config::env_parse;
use sqlx::PgPool;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What the admission check decided for one new payment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Refused: `in_flight` payments are in the pipeline, `limit` at most.
    Overloaded {
        in_flight: i64,
        limit: i64,
    },
}

/// Whether a payment in `status` is the automatic pipeline's work (see the module's header;
/// the same rule as the sampling query's).
pub fn in_pipeline(status: PaymentStatus, capture: CaptureMethod) -> bool {
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

/// The decision, pure: a payment is admitted while fewer than `limit` are in flight; a limit
/// of 0 turns admission control off.
pub fn verdict(in_flight: i64, limit: i64) -> Verdict {
    if limit == 0 || in_flight < limit {
        Verdict::Admit
    } else {
        Verdict::Overloaded { in_flight, limit }
    }
}

#[derive(Clone)]
pub struct Admission {
    in_flight: Arc<AtomicI64>,
    limit: i64,
    gauge: IntGauge,
    refused: IntCounter,
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

    pub fn register(registry: &Registry, limit: i64) -> anyhow::Result<Self> {
        let gauge = IntGauge::new(
            "admission_payments_in_flight",
            "Payments the automatic pipeline still has to finish, as admission control sees them",
        )?;
        let refused = IntCounter::new(
            "admission_refused_total",
            "New payments refused with 503 overloaded",
        )?;
        registry.register(Box::new(gauge.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        Ok(Self {
            in_flight: Arc::new(AtomicI64::new(0)),
            limit,
            gauge,
            refused,
        })
    }

    /// Whether one more payment may be accepted now.
    pub fn check(&self) -> Verdict {
        verdict(self.in_flight.load(Ordering::Relaxed), self.limit)
    }

    /// A new payment was refused (a replay answered while overloaded is not counted).
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// A payment was accepted: counted until the next sample sees it.
    pub fn accepted(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A transition of a payment captured `capture` from `from` to `to` committed here: the
    /// count follows it until the next sample.
    pub fn moved(&self, from: PaymentStatus, to: PaymentStatus, capture: CaptureMethod) {
        let delta = i64::from(in_pipeline(to, capture)) - i64::from(in_pipeline(from, capture));
        if delta != 0 {
            self.in_flight.fetch_add(delta, Ordering::Relaxed);
        }
    }

    /// Samples the pipeline's depth until `shutdown`. A failed sample keeps the last count
    /// (the database being down refuses creation on its own).
    pub async fn run(self, pool: PgPool, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            match in_flight(&pool).await {
                Ok(n) => {
                    self.in_flight.store(n, Ordering::Relaxed);
                    self.gauge.set(n);
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
        .filter(|(s, c)| in_pipeline(*s, *c))
        .map(|(s, c)| (s.as_str(), c.as_str()))
        .unzip()
}

/// The payments in the automatic pipeline (see the module's header).
async fn in_flight(pool: &PgPool) -> anyhow::Result<i64> {
    let (statuses, captures) = pipeline_keys();
    sqlx::query_scalar(
        "SELECT count(*) FROM payments p
           JOIN unnest($1::text[], $2::text[]) AS k(status, capture_method)
             ON p.status = k.status AND p.capture_method = k.capture_method",
    )
    .bind(&statuses)
    .bind(&captures)
    .fetch_one(pool)
    .await
    .context("counting payments in flight")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_below_the_limit_and_refuses_at_it() {
        assert_eq!(verdict(0, 3), Verdict::Admit);
        assert_eq!(verdict(2, 3), Verdict::Admit);
        assert_eq!(
            verdict(3, 3),
            Verdict::Overloaded {
                in_flight: 3,
                limit: 3
            }
        );
        assert_eq!(
            verdict(10, 3),
            Verdict::Overloaded {
                in_flight: 10,
                limit: 3
            }
        );
    }

    #[test]
    fn the_pipeline_holds_what_it_still_has_to_do_alone() {
        use CaptureMethod::{Automatic, Manual};
        use PaymentStatus::*;
        let waiting_for_the_pipeline = [Created, Approved, Captured];
        for status in PaymentStatus::ALL {
            let always = waiting_for_the_pipeline.contains(&status);
            assert_eq!(in_pipeline(status, Manual), always, "{status:?}, manual");
            let automatic = always || status == Authorized;
            assert_eq!(in_pipeline(status, Automatic), automatic, "{status:?}");
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
    fn a_settlement_lowers_the_count_and_a_review_approved_raises_it() {
        let admission = Admission::register(&Registry::new(), 2).unwrap();
        admission.accepted();
        admission.accepted();
        assert!(matches!(admission.check(), Verdict::Overloaded { .. }));
        let auto = CaptureMethod::Automatic;
        admission.moved(PaymentStatus::Captured, PaymentStatus::Settled, auto);
        assert_eq!(admission.check(), Verdict::Admit);
        admission.moved(PaymentStatus::Approved, PaymentStatus::Authorized, auto);
        assert_eq!(admission.check(), Verdict::Admit, "still in the pipeline");
        admission.moved(PaymentStatus::RiskReview, PaymentStatus::Approved, auto);
        assert!(matches!(admission.check(), Verdict::Overloaded { .. }));
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        assert_eq!(verdict(1_000_000, 0), Verdict::Admit);
    }
}
