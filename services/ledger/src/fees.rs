//! The platform fee: a percentage in basis points plus a fixed part stated per currency, in
//! the payment's minor units.
//!
//! Rounding rule: the percentage part is rounded half up to a whole minor unit
//! (`(amount × bps + 5000) / 10000`, exact integer arithmetic); the fixed part of the
//! payment's currency is added; the fee never exceeds the amount. Merchant payable is the
//! amount minus the fee. The fixed part is a table (see `sagapay_domain::per_currency`): 30
//! minor units are $0.30 but ¥30, so each currency states its own.

use sagapay_domain::{Currency, PerCurrency};

/// The fixed part of the fee by default: about $0.30 in every currency (30 USD cents, ¥45,
/// 0.090 KWD; see `PerCurrency::about_usd`).
pub const DEFAULT_FIXED_USD_MINOR: i64 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeeSchedule {
    /// Percentage part in basis points (290 = 2.90 %).
    pub bps: u32,
    /// Fixed part per currency, in minor units of that currency.
    pub fixed: PerCurrency,
}

impl Default for FeeSchedule {
    fn default() -> Self {
        Self {
            bps: 290,
            fixed: default_fixed(),
        }
    }
}

/// [`DEFAULT_FIXED_USD_MINOR`] in every currency.
pub fn default_fixed() -> PerCurrency {
    PerCurrency::about_usd(DEFAULT_FIXED_USD_MINOR)
}

impl FeeSchedule {
    pub fn none() -> FeeSchedule {
        FeeSchedule {
            bps: 0,
            fixed: PerCurrency::from_pairs(&[("USD", 0)]).expect("valid"),
        }
    }

    /// The fee on `amount_minor` (> 0) of `currency`: `0 <= fee <= amount_minor`.
    pub fn fee(&self, amount_minor: i64, currency: Currency) -> i64 {
        assert!(amount_minor > 0, "fees apply to positive amounts");
        let pct = (i128::from(amount_minor) * i128::from(self.bps) + 5_000) / 10_000;
        let fee = pct + i128::from(self.fixed.minor_for(currency).max(0));
        let fee = fee.min(i128::from(amount_minor));
        i64::try_from(fee).expect("fee <= amount fits in i64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn percentage_rounds_half_up_and_the_fixed_part_is_added() {
        let f = FeeSchedule::default();
        // 2.9 % of 2,500 = 72.5 -> 73, + 30
        assert_eq!(f.fee(2_500, c("USD")), 103);
        // 2.9 % of 1,000 = 29.0 -> 29, + 30
        assert_eq!(f.fee(1_000, c("USD")), 59);
        // 2.9 % of 10 = 0.29 -> 0, + 30 = 30 > 10: capped at the amount
        assert_eq!(f.fee(10, c("USD")), 10);
        assert_eq!(FeeSchedule::none().fee(12_345, c("USD")), 0);
    }

    #[test]
    fn the_fixed_part_is_the_currencys_own() {
        let f = FeeSchedule::default();
        // ¥2,500: 2.9 % = 72.5 -> 73, + ¥45 (not ¥30 read as cents)
        assert_eq!(f.fee(2_500, c("JPY")), 118);
        // 25.000 KWD = 25,000 fils: 2.9 % = 725, + 0.090 KWD = 90 fils
        assert_eq!(f.fee(25_000, c("KWD")), 815);
        // 1.000 BHD: 2.9 % = 29 fils, + 0.120 BHD
        assert_eq!(f.fee(1_000, c("BHD")), 149);
    }

    #[test]
    fn large_amounts_do_not_overflow() {
        let f = FeeSchedule {
            bps: 10_000,
            fixed: PerCurrency::from_pairs(&[("USD", 0)]).unwrap(),
        };
        let max = sagapay_domain::AmountMinor::HARD_MAX_MINOR;
        assert_eq!(f.fee(max, c("USD")), max);
    }

    #[test]
    fn fee_is_always_between_zero_and_the_amount() {
        for bps in [0, 1, 290, 9_999, 10_000] {
            for fixed_minor in [0, 1, 30, 1_000] {
                let f = FeeSchedule {
                    bps,
                    fixed: PerCurrency::from_pairs(&[("USD", fixed_minor)]).unwrap(),
                };
                for currency in ["USD", "JPY", "KWD"] {
                    for amount in [1, 2, 99, 100, 101, 2_500, 1_000_000] {
                        let fee = f.fee(amount, c(currency));
                        assert!((0..=amount).contains(&fee), "{f:?} {amount} -> {fee}");
                    }
                }
            }
        }
    }
}
