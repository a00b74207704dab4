//! Amounts stated per currency: fixed fees, review thresholds, anything configured in money.
//!
//! Why: a number of minor units means different money in different currencies. 30 minor
//! units is $0.30 but ¥30 and 0.030 KWD; 100,000 is $1,000 but ¥100,000 (about $650) and
//! 100.000 KWD (about $325). A setting in money is therefore a table, one amount per currency,
//! each in that currency's own minor units (`PER_CURRENCY_EXPLICIT`). A currency the table does
//! not name gets the table's reference amount (USD's) converted by exponent only, which keeps
//! the number of major units (`30` at exponent 2 is `0.30`: 300 at exponent 3, 0 at exponent 0
//! after rounding half up): a floor for a new currency, never a substitute for stating it.

use crate::money::{Currency, MoneyError};
use std::collections::BTreeMap;
use std::fmt;

/// The currency whose amount stands for unlisted ones.
const REFERENCE: &str = "USD";

/// Roughly how many minor units of each currency a US dollar buys. For *defaults* of
/// settings in money only (so that "about $0.30" or "about $1,000" means about the same in
/// every currency); never for converting a payment. Every supported currency has a rate.
const INDICATIVE_MINOR_PER_USD: &[(&str, i64)] = &[
    ("USD", 100),
    ("EUR", 90),
    ("GBP", 80),
    ("CHF", 90),
    ("CAD", 140),
    ("AUD", 150),
    ("SEK", 1_000),
    ("NOK", 1_000),
    ("DKK", 700),
    ("PLN", 400),
    ("JPY", 150),
    ("KWD", 300),
    ("BHD", 400),
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PerCurrencyError {
    #[error("{entry:?} is not CUR:amount (for example USD:30)")]
    Syntax { entry: String },
    #[error(transparent)]
    Currency(#[from] MoneyError),
    #[error("{currency} is given twice")]
    Repeated { currency: Currency },
    #[error("amounts must be whole, non-negative minor units: {entry:?}")]
    Amount { entry: String },
    #[error("the table must state {REFERENCE}, the amount unlisted currencies are scaled from")]
    NoReference,
}

/// Non-negative amounts in minor units, one per currency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerCurrency {
    minor: BTreeMap<Currency, i64>,
}

impl PerCurrency {
    /// A default of about `usd_minor` US cents in every supported currency, each rounded half
    /// up to a whole minor unit of its currency (`about_usd(30)`: 30 USD cents, ¥45, 0.090 KWD).
    pub fn about_usd(usd_minor: i64) -> Self {
        let minor = INDICATIVE_MINOR_PER_USD
            .iter()
            .map(|(code, rate)| {
                let currency = Currency::parse(code).expect("rates are for supported currencies");
                let amount = (i128::from(usd_minor) * i128::from(*rate) + 50) / 100;
                (currency, i64::try_from(amount).unwrap_or(i64::MAX))
            })
            .collect();
        Self { minor }
    }

    /// A table from `(code, minor units)` pairs; it must name USD.
    pub fn from_pairs(pairs: &[(&str, i64)]) -> Result<Self, PerCurrencyError> {
        let mut minor = BTreeMap::new();
        for (code, amount) in pairs {
            let currency = Currency::parse(code)?;
            if *amount < 0 {
                return Err(PerCurrencyError::Amount {
                    entry: format!("{code}:{amount}"),
                });
            }
            if minor.insert(currency, *amount).is_some() {
                return Err(PerCurrencyError::Repeated { currency });
            }
        }
        let table = Self { minor };
        table.reference()?;
        Ok(table)
    }

    /// Parses `USD:30,EUR:25,JPY:30` over `defaults`: named currencies replace their default.
    /// A bare number (`30`, the older single-amount form) is the USD amount, and every
    /// currency then follows it by exponent (no per-currency defaults).
    pub fn parse_over(text: &str, defaults: &PerCurrency) -> Result<Self, PerCurrencyError> {
        let text = text.trim();
        if !text.is_empty() && !text.contains(':') {
            let amount: i64 = text.parse().map_err(|_| PerCurrencyError::Amount {
                entry: text.to_owned(),
            })?;
            return Self::from_pairs(&[(REFERENCE, amount)]);
        }
        let mut table = defaults.clone();
        let mut seen = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (code, amount) = entry
                .split_once(':')
                .ok_or_else(|| PerCurrencyError::Syntax {
                    entry: entry.to_owned(),
                })?;
            let currency = Currency::parse(code.trim())?;
            let amount: i64 = amount
                .trim()
                .parse()
                .ok()
                .filter(|a| *a >= 0)
                .ok_or_else(|| PerCurrencyError::Amount {
                    entry: entry.to_owned(),
                })?;
            if seen.contains(&currency) {
                return Err(PerCurrencyError::Repeated { currency });
            }
            seen.push(currency);
            table.minor.insert(currency, amount);
        }
        Ok(table)
    }

    fn reference(&self) -> Result<(Currency, i64), PerCurrencyError> {
        let usd = Currency::parse(REFERENCE).expect("USD is supported");
        self.minor
            .get(&usd)
            .map(|a| (usd, *a))
            .ok_or(PerCurrencyError::NoReference)
    }

    /// The amount for `currency`, in its minor units.
    pub fn minor_for(&self, currency: Currency) -> i64 {
        if let Some(amount) = self.minor.get(&currency) {
            return *amount;
        }
        let (usd, amount) = self.reference().expect("checked when built");
        rescale(
            amount,
            usd.minor_unit_exponent(),
            currency.minor_unit_exponent(),
        )
    }

    /// Whether `currency` is named in the table (rather than scaled from USD).
    pub fn states(&self, currency: Currency) -> bool {
        self.minor.contains_key(&currency)
    }
}

/// `amount` minor units at exponent `from` as minor units at exponent `to`, rounding half up.
fn rescale(amount: i64, from: u8, to: u8) -> i64 {
    let amount = i128::from(amount);
    let scaled = if to >= from {
        amount * 10i128.pow(u32::from(to - from))
    } else {
        let d = 10i128.pow(u32::from(from - to));
        (amount + d / 2) / d
    };
    i64::try_from(scaled).unwrap_or(i64::MAX)
}

impl fmt::Display for PerCurrency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.minor.iter().map(|(c, a)| format!("{c}:{a}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(code: &str) -> Currency {
        Currency::parse(code).unwrap()
    }

    #[test]
    fn stated_currencies_use_their_own_amount_and_others_follow_usd_by_exponent() {
        let t = PerCurrency::from_pairs(&[("USD", 30), ("JPY", 40)]).unwrap();
        assert_eq!(t.minor_for(c("USD")), 30);
        assert_eq!(t.minor_for(c("JPY")), 40, "stated");
        assert_eq!(t.minor_for(c("EUR")), 30, "same exponent");
        assert_eq!(t.minor_for(c("KWD")), 300, "0.30 at exponent 3");
        let bare = PerCurrency::parse_over("30", &t).unwrap();
        assert_eq!(
            bare.minor_for(c("JPY")),
            0,
            "0.30 rounds to 0 at exponent 0"
        );
        let half = PerCurrency::from_pairs(&[("USD", 150)]).unwrap();
        assert_eq!(half.minor_for(c("JPY")), 2, "1.50 rounds half up to 2");
    }

    #[test]
    fn defaults_about_a_dollar_amount_exist_for_every_supported_currency() {
        let t = PerCurrency::about_usd(30);
        for code in Currency::supported() {
            assert!(t.states(c(code)), "{code} has no indicative rate");
        }
        assert_eq!(t.minor_for(c("USD")), 30);
        assert_eq!(t.minor_for(c("JPY")), 45);
        assert_eq!(t.minor_for(c("KWD")), 90);
        assert_eq!(PerCurrency::about_usd(100_000).minor_for(c("JPY")), 150_000);
    }

    #[test]
    fn configuration_text_overrides_the_defaults_it_names() {
        let defaults = PerCurrency::from_pairs(&[("USD", 30), ("EUR", 25)]).unwrap();
        let t = PerCurrency::parse_over(" EUR:20 , KWD:100 ", &defaults).unwrap();
        assert_eq!(t.minor_for(c("USD")), 30);
        assert_eq!(t.minor_for(c("EUR")), 20);
        assert_eq!(t.minor_for(c("KWD")), 100);
        assert_eq!(PerCurrency::parse_over("", &defaults).unwrap(), defaults);
        for bad in ["EUR", "EUR:-1", "EUR:1.5", "XXX:1", "EUR:1,EUR:2", "abc"] {
            assert!(PerCurrency::parse_over(bad, &defaults).is_err(), "{bad}");
        }
        assert_eq!(
            PerCurrency::from_pairs(&[("EUR", 1)]),
            Err(PerCurrencyError::NoReference)
        );
    }
}
