//! Money is an integer count of a currency's minor units (cents for USD) and an ISO 4217
//! currency. There are no floats anywhere in SagaPay's money path.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("amount must be a positive integer number of minor units, got {0}")]
    NotPositive(i64),
    #[error("amount {amount_minor} exceeds the maximum of {max_minor} minor units")]
    AboveMaximum { amount_minor: i64, max_minor: i64 },
    #[error("currency must be a supported ISO 4217 code, got {0:?}")]
    UnsupportedCurrency(String),
}

/// A strictly positive amount in minor units. Zero and negative amounts cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "i64")]
pub struct AmountMinor(i64);

/// Any JSON number is read: a whole number written with a fraction (`2500.0`, an integer to
/// JSON Schema) is that number; a fraction or a number beyond `i64` is refused as an amount
/// (with the amount's rule) rather than as a value of the wrong type.
impl<'de> Deserialize<'de> for AmountMinor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Minor;
        impl serde::de::Visitor<'_> for Minor {
            type Value = AmountMinor;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer number of minor units")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<AmountMinor, E> {
                AmountMinor::new(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<AmountMinor, E> {
                let v = i64::try_from(v).unwrap_or(i64::MAX);
                AmountMinor::new(v).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<AmountMinor, E> {
                // Exact: every whole f64 up to 2^53 is an integer; beyond the hard maximum
                // (far below 2^53) nothing is an amount anyway.
                if v.fract() == 0.0 && v >= 1.0 && v <= AmountMinor::HARD_MAX_MINOR as f64 {
                    return AmountMinor::new(v as i64).map_err(E::custom);
                }
                Err(E::custom(format_args!(
                    "amount must be a whole number of minor units, 1 to {}",
                    AmountMinor::HARD_MAX_MINOR
                )))
            }
        }
        d.deserialize_any(Minor)
    }
}

impl AmountMinor {
    /// Largest amount any single payment may carry, whatever the configured limit:
    /// it keeps sums of many amounts far away from `i64::MAX`.
    pub const HARD_MAX_MINOR: i64 = 1_000_000_000_000;

    pub fn new(amount_minor: i64) -> Result<Self, MoneyError> {
        if amount_minor <= 0 {
            return Err(MoneyError::NotPositive(amount_minor));
        }
        if amount_minor > Self::HARD_MAX_MINOR {
            return Err(MoneyError::AboveMaximum {
                amount_minor,
                max_minor: Self::HARD_MAX_MINOR,
            });
        }
        Ok(Self(amount_minor))
    }

    /// Parses and applies a configured maximum (which is itself capped by `HARD_MAX_MINOR`).
    pub fn new_with_max(amount_minor: i64, max_minor: i64) -> Result<Self, MoneyError> {
        let amount = Self::new(amount_minor)?;
        let max_minor = max_minor.min(Self::HARD_MAX_MINOR);
        if amount.0 > max_minor {
            return Err(MoneyError::AboveMaximum {
                amount_minor,
                max_minor,
            });
        }
        Ok(amount)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl TryFrom<i64> for AmountMinor {
    type Error = MoneyError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<AmountMinor> for i64 {
    fn from(value: AmountMinor) -> Self {
        value.0
    }
}

impl fmt::Display for AmountMinor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The ISO 4217 currencies the platform settles, with their minor-unit exponent.
/// Adding one here is a product decision (provider and ledger support), not a code change elsewhere.
const SUPPORTED: &[(&str, u8)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("CHF", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("SEK", 2),
    ("NOK", 2),
    ("DKK", 2),
    ("PLN", 2),
    ("JPY", 0),
    ("KWD", 3),
    ("BHD", 3),
];

/// A supported ISO 4217 alphabetic currency code, always upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        SUPPORTED
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(c, _)| {
                let b = c.as_bytes();
                Self([b[0], b[1], b[2]])
            })
            .ok_or_else(|| MoneyError::UnsupportedCurrency(code.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        // Invariant: built only from entries of SUPPORTED, which are ASCII.
        std::str::from_utf8(&self.0).expect("currency codes are ASCII")
    }

    /// Number of decimal places of the minor unit (2 for USD, 0 for JPY).
    pub fn minor_unit_exponent(&self) -> u8 {
        SUPPORTED
            .iter()
            .find(|(c, _)| *c == self.as_str())
            .map(|(_, e)| *e)
            .expect("a Currency is always a SUPPORTED entry")
    }

    pub fn supported() -> impl Iterator<Item = &'static str> {
        SUPPORTED.iter().map(|(c, _)| *c)
    }
}

impl FromStr for Currency {
    type Err = MoneyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<Currency> for String {
    fn from(value: Currency) -> Self {
        value.as_str().to_owned()
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_must_be_positive_and_bounded() {
        assert_eq!(AmountMinor::new(1).unwrap().get(), 1);
        assert_eq!(AmountMinor::new(0), Err(MoneyError::NotPositive(0)));
        assert_eq!(AmountMinor::new(-5), Err(MoneyError::NotPositive(-5)));
        assert!(AmountMinor::new(i64::MAX).is_err());
        assert!(AmountMinor::new_with_max(1_001, 1_000).is_err());
        assert!(AmountMinor::new_with_max(1_000, 1_000).is_ok());
    }

    #[test]
    fn amounts_deserialize_through_the_parser() {
        assert!(serde_json::from_str::<AmountMinor>("-1").is_err());
        assert!(serde_json::from_str::<AmountMinor>("2.5").is_err());
        assert_eq!(
            serde_json::from_str::<AmountMinor>("2500").unwrap().get(),
            2500
        );
    }

    #[test]
    fn currencies_are_iso_codes_we_support() {
        assert_eq!(Currency::parse("USD").unwrap().as_str(), "USD");
        assert_eq!(Currency::parse("JPY").unwrap().minor_unit_exponent(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().minor_unit_exponent(), 3);
        assert!(Currency::parse("usd").is_err(), "codes are upper case");
        assert!(Currency::parse("XXX").is_err());
        assert!(Currency::parse("US").is_err());
        assert!(serde_json::from_str::<Currency>("\"EUR\"").is_ok());
        assert!(serde_json::from_str::<Currency>("\"EURO\"").is_err());
    }
}
