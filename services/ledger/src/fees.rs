//! The platform fee: a percentage in basis points plus a fixed part, in the payment's minor
//! units.
//!
//! Rounding rule: the percentage part is rounded half up to a whole minor unit
//! (`(amount × bps + 5000) / 10000`, exact integer arithmetic); the fixed part is added; the
//! fee never exceeds the amount. Merchant payable is the amount minus the fee.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeSchedule {
    /// Percentage part in basis points (290 = 2.90 %).
    pub bps: u32,
    /// Fixed part in minor units of the payment's currency.
    pub fixed_minor: i64,
}

impl Default for FeeSchedule {
    fn default() -> Self {
        Self {
            bps: 290,
            fixed_minor: 30,
        }
    }
}

impl FeeSchedule {
    pub const NONE: FeeSchedule = FeeSchedule {
        bps: 0,
        fixed_minor: 0,
    };

    /// The fee on `amount_minor` (> 0): `0 <= fee <= amount_minor`.
    pub fn fee(&self, amount_minor: i64) -> i64 {
        assert!(amount_minor > 0, "fees apply to positive amounts");
        let pct = (i128::from(amount_minor) * i128::from(self.bps) + 5_000) / 10_000;
        let fee = pct + i128::from(self.fixed_minor.max(0));
        let fee = fee.min(i128::from(amount_minor));
        i64::try_from(fee).expect("fee <= amount fits in i64")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentage_rounds_half_up_and_the_fixed_part_is_added() {
        let f = FeeSchedule::default();
        // 2.9 % of 2,500 = 72.5 -> 73, + 30
        assert_eq!(f.fee(2_500), 103);
        // 2.9 % of 1,000 = 29.0 -> 29, + 30
        assert_eq!(f.fee(1_000), 59);
        // 2.9 % of 10 = 0.29 -> 0, + 30 = 30 > 10: capped at the amount
        assert_eq!(f.fee(10), 10);
        assert_eq!(FeeSchedule::NONE.fee(12_345), 0);
    }

    #[test]
    fn large_amounts_do_not_overflow() {
        let f = FeeSchedule {
            bps: 10_000,
            fixed_minor: 0,
        };
        let max = sagapay_domain::AmountMinor::HARD_MAX_MINOR;
        assert_eq!(f.fee(max), max);
    }

    #[test]
    fn fee_is_always_between_zero_and_the_amount() {
        for bps in [0, 1, 290, 9_999, 10_000] {
            for fixed_minor in [0, 1, 30, 1_000] {
                let f = FeeSchedule { bps, fixed_minor };
                for amount in [1, 2, 99, 100, 101, 2_500, 1_000_000] {
                    let fee = f.fee(amount);
                    assert!((0..=amount).contains(&fee), "{f:?} {amount} -> {fee}");
                }
            }
        }
    }
}
