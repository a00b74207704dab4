//! How the domain's values are stored in PostgreSQL (feature `sqlx`): each maps to the column
//! type that holds it (names to TEXT, amounts to BIGINT), so a service binds and reads the
//! type itself and never a string or an integer it must remember to parse. Reading a value the
//! type refuses (a status no version knows, a zero amount) is a decode error naming the
//! column's value, not a default.
//!
//! [`sql_text!`](crate::sql_text) and [`stored_enum!`](crate::stored_enum) are exported for
//! the services' own enums, so one mapping serves them all.

/// Stores `$ty` as TEXT (and a `Vec<$ty>` as TEXT[]) through its `as_str()`, and reads it
/// back with `$parse` (`fn(&str) -> Option<$ty>`).
#[macro_export]
macro_rules! sql_text {
    ($ty:ty, $parse:expr) => {
        impl ::sqlx::Type<::sqlx::Postgres> for $ty {
            fn type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::type_info()
            }
            fn compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::Type<::sqlx::Postgres>>::compatible(ty)
            }
        }
        impl ::sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> ::sqlx::postgres::PgTypeInfo {
                <&str as ::sqlx::postgres::PgHasArrayType>::array_type_info()
            }
            fn array_compatible(ty: &::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as ::sqlx::postgres::PgHasArrayType>::array_compatible(ty)
            }
        }
        impl<'q> ::sqlx::Encode<'q, ::sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut ::sqlx::postgres::PgArgumentBuffer,
            ) -> ::std::result::Result<::sqlx::encode::IsNull, ::sqlx::error::BoxDynError> {
                <&str as ::sqlx::Encode<'q, ::sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }
        impl<'r> ::sqlx::Decode<'r, ::sqlx::Postgres> for $ty {
            fn decode(
                value: ::sqlx::postgres::PgValueRef<'r>,
            ) -> ::std::result::Result<Self, ::sqlx::error::BoxDynError> {
                let text = <&str as ::sqlx::Decode<'r, ::sqlx::Postgres>>::decode(value)?;
                let parse: fn(&str) -> Option<$ty> = $parse;
                parse(text).ok_or_else(|| format!("{:?} is not a {}", text, stringify!($ty)).into())
            }
        }
    };
}

/// Declares an enum a service stores: its variants with their stored names, `ALL`, `as_str`,
/// `parse`, `Display`, and its column mapping (for the services' own state: a provider
/// attempt's outcome, a ledger entry's direction).
#[macro_export]
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        $crate::sql_text!($name, $name::parse);
    };
}

use crate::events::{CaptureMethod, EventType, ProviderOperation};
use crate::{AmountMinor, Currency, MerchantEventType, PaymentStatus, RefundStatus};

sql_text!(PaymentStatus, |s| s.parse().ok());
sql_text!(RefundStatus, |s| s.parse().ok());
sql_text!(Currency, |s| Currency::parse(s).ok());
sql_text!(EventType, EventType::parse);
sql_text!(MerchantEventType, MerchantEventType::parse);
sql_text!(ProviderOperation, ProviderOperation::parse);
sql_text!(CaptureMethod, CaptureMethod::parse);

impl sqlx::Type<sqlx::Postgres> for AmountMinor {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        <i64 as sqlx::Type<sqlx::Postgres>>::type_info()
    }
}

impl<'q> sqlx::Encode<'q, sqlx::Postgres> for AmountMinor {
    fn encode_by_ref(
        &self,
        buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <i64 as sqlx::Encode<'q, sqlx::Postgres>>::encode_by_ref(&self.get(), buf)
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for AmountMinor {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        Ok(AmountMinor::new(<i64 as sqlx::Decode<
            'r,
            sqlx::Postgres,
        >>::decode(value)?)?)
    }
}
