//! The risk rules: pure functions of what the rules saw, so they can be tested alone.

use sagapay_domain::{Currency, PerCurrency};
use serde::Serialize;

/// The review threshold by default: about $1,000 in every currency ($1,000.00, ¥150,000,
/// 300.000 KWD; see `PerCurrency::about_usd`).
pub const DEFAULT_REVIEW_USD_MINOR: i64 = 100_000;

#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Payments above this amount (in the payment currency's minor units) go to review.
    pub review_amount: PerCurrency,
    /// A customer with more payments than this in the last hour goes to review...
    pub velocity_review_per_hour: i64,
    /// ...and with more than this, is denied.
    pub velocity_deny_per_hour: i64,
    /// A customer with at least this many failed payments in the last 24 hours goes to review.
    pub recent_failures_review: i64,
}

/// The thresholds one decision applied (recorded with it).
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub review_amount_minor: i64,
    pub velocity_review_per_hour: i64,
    pub velocity_deny_per_hour: i64,
    pub recent_failures_review: i64,
}

impl Thresholds {
    /// The thresholds as they apply to a payment in `currency`.
    pub fn applied(&self, currency: Currency) -> Applied {
        Applied {
            review_amount_minor: self.review_amount.minor_for(currency),
            velocity_review_per_hour: self.velocity_review_per_hour,
            velocity_deny_per_hour: self.velocity_deny_per_hour,
            recent_failures_review: self.recent_failures_review,
        }
    }
}

/// [`DEFAULT_REVIEW_USD_MINOR`] in every currency.
pub fn default_review_amount() -> PerCurrency {
    PerCurrency::about_usd(DEFAULT_REVIEW_USD_MINOR)
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            review_amount: default_review_amount(),
            velocity_review_per_hour: 10,
            velocity_deny_per_hour: 20,
            recent_failures_review: 3,
        }
    }
}

/// The values the rules looked at; persisted with the decision.
#[derive(Debug, Clone, Serialize)]
pub struct Inputs {
    pub amount_minor: i64,
    pub currency: Currency,
    /// The customer's payments in the last hour, this one included.
    pub payments_last_hour: i64,
    /// The customer's failed or reversed payments in the last 24 hours.
    pub failures_last_24h: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Review,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "APPROVE",
            Decision::Review => "REVIEW",
            Decision::Deny => "DENY",
        }
    }
}

/// Deny beats review beats approve; the reason names the first rule of the strongest outcome.
pub fn decide(t: &Thresholds, i: &Inputs) -> (Decision, String) {
    let review_amount_minor = t.review_amount.minor_for(i.currency);
    if i.payments_last_hour > t.velocity_deny_per_hour {
        return (
            Decision::Deny,
            format!(
                "velocity: {} payments in the last hour (deny above {})",
                i.payments_last_hour, t.velocity_deny_per_hour
            ),
        );
    }
    if i.amount_minor > review_amount_minor {
        return (
            Decision::Review,
            format!(
                "amount {} {} above the review threshold {review_amount_minor}",
                i.amount_minor, i.currency
            ),
        );
    }
    if i.payments_last_hour > t.velocity_review_per_hour {
        return (
            Decision::Review,
            format!(
                "velocity: {} payments in the last hour (review above {})",
                i.payments_last_hour, t.velocity_review_per_hour
            ),
        );
    }
    if i.failures_last_24h >= t.recent_failures_review {
        return (
            Decision::Review,
            format!(
                "{} failed payments in the last 24 hours (review from {})",
                i.failures_last_24h, t.recent_failures_review
            ),
        );
    }
    (Decision::Approve, "no rule matched".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(amount: i64, last_hour: i64, failures: i64) -> Inputs {
        Inputs {
            amount_minor: amount,
            currency: Currency::parse("USD").unwrap(),
            payments_last_hour: last_hour,
            failures_last_24h: failures,
        }
    }

    #[test]
    fn the_seed_examples_hold_with_default_thresholds() {
        let t = Thresholds::default();
        assert_eq!(decide(&t, &inputs(2_500, 1, 0)).0, Decision::Approve);
        assert_eq!(decide(&t, &inputs(150_000, 1, 0)).0, Decision::Review);
    }

    #[test]
    fn each_rule_fires_at_its_threshold_and_not_before() {
        let t = Thresholds::default();
        assert_eq!(decide(&t, &inputs(100_000, 1, 0)).0, Decision::Approve);
        assert_eq!(decide(&t, &inputs(100_001, 1, 0)).0, Decision::Review);
        assert_eq!(decide(&t, &inputs(100, 10, 0)).0, Decision::Approve);
        assert_eq!(decide(&t, &inputs(100, 11, 0)).0, Decision::Review);
        assert_eq!(decide(&t, &inputs(100, 20, 0)).0, Decision::Review);
        assert_eq!(decide(&t, &inputs(100, 21, 0)).0, Decision::Deny);
        assert_eq!(decide(&t, &inputs(100, 1, 2)).0, Decision::Approve);
        assert_eq!(decide(&t, &inputs(100, 1, 3)).0, Decision::Review);
    }

    #[test]
    fn the_review_threshold_is_the_payments_currencys_own() {
        let t = Thresholds::default();
        let in_currency = |amount, code| Inputs {
            currency: Currency::parse(code).unwrap(),
            ..inputs(amount, 1, 0)
        };
        // ¥100,001 is about $650: approved (it was sent to review when 100,000 meant cents).
        assert_eq!(
            decide(&t, &in_currency(100_001, "JPY")).0,
            Decision::Approve
        );
        assert_eq!(decide(&t, &in_currency(150_001, "JPY")).0, Decision::Review);
        // 150.000 KWD is 150,000 fils: about $490, approved; 300.001 KWD goes to review.
        assert_eq!(
            decide(&t, &in_currency(150_000, "KWD")).0,
            Decision::Approve
        );
        assert_eq!(decide(&t, &in_currency(300_001, "KWD")).0, Decision::Review);
    }

    #[test]
    fn deny_wins_over_review() {
        let (d, reason) = decide(&Thresholds::default(), &inputs(1_000_000, 25, 5));
        assert_eq!(d, Decision::Deny);
        assert!(reason.starts_with("velocity"), "{reason}");
    }
}
