//! The double-entry book's vocabulary, as types: an account's kind (which side it grows on),
//! an entry's direction, and an entry. Stored as the TEXT the schema's CHECKs allow
//! (`sagapay_domain::stored_enum!`).

use sagapay_domain::stored_enum;

stored_enum! {
    /// What an account holds (`accounts.kind`).
    #[derive(serde::Serialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    AccountKind {
        Asset = "ASSET",
        Liability = "LIABILITY",
        Revenue = "REVENUE",
        Expense = "EXPENSE",
        Equity = "EQUITY",
    }
}

impl AccountKind {
    /// The balance on the account's normal side: debits − credits for assets and expenses,
    /// credits − debits for liabilities, revenue and equity.
    pub fn normal_balance(self, debits_minor: i64, credits_minor: i64) -> i64 {
        match self {
            AccountKind::Asset | AccountKind::Expense => debits_minor - credits_minor,
            AccountKind::Liability | AccountKind::Revenue | AccountKind::Equity => {
                credits_minor - debits_minor
            }
        }
    }
}

stored_enum! {
    /// Which side of its account an entry is on (`ledger_entries.direction`).
    #[derive(serde::Serialize)]
    #[serde(rename_all = "SCREAMING_SNAKE_CASE")]
    Direction {
        Debit = "DEBIT",
        Credit = "CREDIT",
    }
}

/// One line of a journal transaction.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    pub account_id: &'a str,
    pub direction: Direction,
    pub amount_minor: i64,
}

impl<'a> Entry<'a> {
    pub fn debit(account_id: &'a str, amount_minor: i64) -> Self {
        Self {
            account_id,
            direction: Direction::Debit,
            amount_minor,
        }
    }

    pub fn credit(account_id: &'a str, amount_minor: i64) -> Self {
        Self {
            account_id,
            direction: Direction::Credit,
            amount_minor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_side_of_each_kind() {
        assert_eq!(AccountKind::Asset.normal_balance(10, 3), 7);
        assert_eq!(AccountKind::Expense.normal_balance(10, 3), 7);
        assert_eq!(AccountKind::Liability.normal_balance(3, 10), 7);
        assert_eq!(AccountKind::Revenue.normal_balance(3, 10), 7);
        assert_eq!(AccountKind::Equity.normal_balance(3, 10), 7);
        for k in AccountKind::ALL {
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::json!(k.as_str())
            );
        }
    }
}
