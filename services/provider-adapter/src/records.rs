//! The values the adapter stores, as types: an operation's status, an attempt's outcome and
//! kind, and the key that tells a payment's operations of one kind apart. Each maps to the
//! TEXT column that holds it (`sagapay_domain::stored_enum!`), so no status or outcome is a
//! string in Rust and a value the code does not know is a decode error, not a fall-through.

use sagapay_domain::stored_enum;
use uuid::Uuid;

stored_enum! {
    /// Where a provider operation stands (`provider_operations.status`).
    OperationStatus {
        /// Waiting for its next attempt, or being attempted.
        Pending = "PENDING",
        Succeeded = "SUCCEEDED",
        Declined = "DECLINED",
        /// Known never to have been performed (an authorization refused every time).
        NotPerformed = "NOT_PERFORMED",
        /// Given up; a new command re-arms it.
        Exhausted = "EXHAUSTED",
    }
}

stored_enum! {
    /// What one attempt got (`provider_attempts.outcome`).
    AttemptOutcome {
        Succeeded = "SUCCEEDED",
        Declined = "DECLINED",
        /// A status query found nothing under the idempotency key.
        NotFound = "NOT_FOUND",
        Timeout = "TIMEOUT",
        Unavailable = "UNAVAILABLE",
        Error = "ERROR",
    }
}

stored_enum! {
    /// What one attempt was (`provider_attempts.kind`).
    AttemptKind {
        /// The operation itself.
        Call = "CALL",
        /// A status query by idempotency key, after an attempt whose outcome is unknown.
        Status = "STATUS",
    }
}

/// Which operation of its kind an operation is, for its payment: the merchant refund it
/// performs, or none (the payment's one authorization, capture, void or compensating
/// refund). Stored as `operation_key`, part of the operation's unique key: the refund's id, or
/// the empty string for none (a NULL would not conflict with itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OperationKey(pub Option<Uuid>);

impl OperationKey {
    /// The payment's one operation of its kind.
    pub const NONE: Self = Self(None);

    pub fn refund(refund_id: Option<Uuid>) -> Self {
        Self(refund_id)
    }

    fn stored(self) -> String {
        self.0.map(|id| id.to_string()).unwrap_or_default()
    }
}

impl sqlx::Type<sqlx::Postgres> for OperationKey {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <String as sqlx::Type<sqlx::Postgres>>::type_info()
    }
    fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
        <String as sqlx::Type<sqlx::Postgres>>::compatible(ty)
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for OperationKey {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <String as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.stored(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for OperationKey {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        match <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)? {
            "" => Ok(Self(None)),
            id => Ok(Self(Some(Uuid::parse_str(id)?))),
        }
    }
}

impl std::fmt::Display for OperationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.stored())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_parse_back() {
        for s in OperationStatus::ALL {
            assert_eq!(OperationStatus::parse(s.as_str()), Some(*s));
        }
        for o in AttemptOutcome::ALL {
            assert_eq!(AttemptOutcome::parse(o.as_str()), Some(*o));
        }
        for k in AttemptKind::ALL {
            assert_eq!(AttemptKind::parse(k.as_str()), Some(*k));
        }
        assert_eq!(OperationStatus::parse("pending"), None);
    }
}
