//! What a failed attempt at a message means: try the same message again (transient), or never
//! (permanent). One function, [`classify`], decides for every consumer, from what the error
//! *is* rather than from which line returned it.
//!
//! Why it matters: a permanent failure treated as transient stops the partition for good
//! (the consumer retries the one message forever and nothing behind it is processed), and a
//! transient failure treated as permanent parks a message that would have succeeded a second
//! later. PostgreSQL says which one it is through the SQLSTATE of its errors:
//!
//! | SQLSTATE | meaning | class |
//! |---|---|---|
//! | `22xxx` | data exception (a NUL in text, a value out of range, a malformed literal) | permanent |
//! | `23xxx` | integrity constraint violation (unique, foreign key, check, not null) | permanent |
//! | `42xxx` | syntax error or undefined object | permanent |
//! | `P0001` | a trigger's `RAISE EXCEPTION`: a database rule refused the data | permanent |
//! | `08xxx` | connection exception | transient |
//! | `40001`, `40P01` | serialization failure, deadlock | transient |
//! | `53xxx` | insufficient resources (disk, memory, connections) | transient |
//! | `57014`, `57P01`-`57P03` | statement cancelled or timed out; the server is shutting down or starting | transient |
//! | `55P03` | lock not available | transient |
//! | anything else | not known to be hopeless | transient |
//!
//! Errors that never reached the server (pool timeout, I/O, TLS) are transient; errors
//! reading a row the query did return (a missing row, a column that does not decode) are
//! permanent. A handler's own `HandlerError::Permanent` is permanent, whatever it wraps.
//! Transient is the default because it is bounded: after the consumer's retry budget the
//! message is dead-lettered as `RETRY_EXHAUSTED` and the partition moves on.

use crate::handler::HandlerError;

/// Whether trying the same message again can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The world may change (the database comes back, a lock is released): retry in place.
    Transient,
    /// The message itself is wrong for this service: dead-letter it and move on.
    Permanent,
}

/// A failed attempt, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub retry: Retry,
    /// The SQLSTATE of the database error behind the failure, if one is.
    pub sqlstate: Option<String>,
}

/// The class of a PostgreSQL SQLSTATE (see the module table).
pub fn classify_sqlstate(code: &str) -> Retry {
    match code {
        "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" => Retry::Transient,
        "P0001" => Retry::Permanent,
        _ => match code.get(..2) {
            Some("22" | "23" | "42") => Retry::Permanent,
            _ => Retry::Transient,
        },
    }
}

/// The class of a database-access error, with its SQLSTATE when the server sent one.
pub fn classify_sqlx(error: &sqlx::Error) -> Classified {
    use sqlx::Error as E;
    let (retry, sqlstate) = match error {
        E::Database(db) => match db.code() {
            Some(code) => (classify_sqlstate(&code), Some(code.into_owned())),
            None => (Retry::Transient, None),
        },
        E::RowNotFound
        | E::ColumnNotFound(_)
        | E::ColumnIndexOutOfBounds { .. }
        | E::ColumnDecode { .. }
        | E::Decode(_)
        | E::TypeNotFound { .. }
        | E::Encode(_) => (Retry::Permanent, None),
        // Pool timeouts and closures, I/O, TLS, protocol and anything new: may pass.
        _ => (Retry::Transient, None),
    };
    Classified { retry, sqlstate }
}

/// The class of a handler's failure. A `Permanent` error stays permanent; a `Transient` one
/// is permanent when a database error in its chain says so (a handler that wrapped a NUL
/// error as transient would otherwise stop its partition).
pub fn classify(error: &HandlerError) -> Classified {
    let (declared, chain) = match error {
        HandlerError::Permanent(e) => (Retry::Permanent, e),
        HandlerError::Transient(e) => (Retry::Transient, e),
    };
    let database = chain
        .chain()
        .find_map(|cause| cause.downcast_ref::<sqlx::Error>())
        .map(classify_sqlx);
    match database {
        Some(found) => Classified {
            retry: if declared == Retry::Permanent {
                Retry::Permanent
            } else {
                found.retry
            },
            sqlstate: found.sqlstate,
        },
        None => Classified {
            retry: declared,
            sqlstate: None,
        },
    }
}

/// The waits between retries of a transient failure: `initial`, doubled each time, at most
/// `max`, in whole milliseconds, for ever (the caller decides when to give up). One schedule
/// for the consumer's retries in place, the dead-letter publisher's and the webhook
/// dispatcher's.
pub fn retry_delays(
    initial: std::time::Duration,
    max: std::time::Duration,
) -> impl Iterator<Item = std::time::Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(initial)
        .with_max_delay(max)
        .with_factor(2.0)
        .without_max_times()
        .build()
        // backon multiplies in floating point: keep the schedule in whole milliseconds.
        .map(|d| std::time::Duration::from_millis((d.as_secs_f64() * 1000.0).round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_up_to_the_most() {
        use std::time::Duration;
        let ms = |v: u64| Duration::from_millis(v);
        let delays: Vec<Duration> = retry_delays(ms(100), ms(1000)).take(6).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
    }

    #[test]
    fn sqlstates_are_classified_by_what_they_mean() {
        let table = [
            ("22021", Retry::Permanent), // character_not_in_repertoire (NUL in text)
            ("22P05", Retry::Permanent), // untranslatable_character (NUL in JSONB)
            ("22001", Retry::Permanent), // string_data_right_truncation
            ("22003", Retry::Permanent), // numeric_value_out_of_range
            ("22P02", Retry::Permanent), // invalid_text_representation
            ("23505", Retry::Permanent), // unique_violation
            ("23503", Retry::Permanent), // foreign_key_violation
            ("23514", Retry::Permanent), // check_violation
            ("23502", Retry::Permanent), // not_null_violation
            ("42P01", Retry::Permanent), // undefined_table
            ("42703", Retry::Permanent), // undefined_column
            ("42601", Retry::Permanent), // syntax_error
            ("P0001", Retry::Permanent), // raise_exception (a trigger's rule)
            ("08000", Retry::Transient), // connection_exception
            ("08006", Retry::Transient), // connection_failure
            ("08001", Retry::Transient), // sqlclient_unable_to_establish_sqlconnection
            ("40001", Retry::Transient), // serialization_failure
            ("40P01", Retry::Transient), // deadlock_detected
            ("53100", Retry::Transient), // disk_full
            ("53300", Retry::Transient), // too_many_connections
            ("57014", Retry::Transient), // query_canceled (statement_timeout)
            ("57P01", Retry::Transient), // admin_shutdown
            ("57P02", Retry::Transient), // crash_shutdown
            ("57P03", Retry::Transient), // cannot_connect_now
            ("55P03", Retry::Transient), // lock_not_available
            ("55000", Retry::Transient), // object_not_in_prerequisite_state (connections refused)
            ("XX000", Retry::Transient), // internal_error: not known to be hopeless
        ];
        for (code, expected) in table {
            assert_eq!(classify_sqlstate(code), expected, "SQLSTATE {code}");
        }
    }

    #[test]
    fn errors_that_never_reached_the_server_are_transient_and_row_errors_permanent() {
        let table = [
            (sqlx::Error::PoolTimedOut, Retry::Transient),
            (sqlx::Error::PoolClosed, Retry::Transient),
            (
                sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
                Retry::Transient,
            ),
            (sqlx::Error::Protocol("unexpected".into()), Retry::Transient),
            (sqlx::Error::RowNotFound, Retry::Permanent),
            (sqlx::Error::ColumnNotFound("x".into()), Retry::Permanent),
            (sqlx::Error::Decode("bad".into()), Retry::Permanent),
        ];
        for (error, expected) in table {
            let label = error.to_string();
            let got = classify_sqlx(&error);
            assert_eq!(got.retry, expected, "{label}");
            assert_eq!(got.sqlstate, None, "{label}");
        }
    }

    #[test]
    fn a_handlers_declaration_yields_only_to_a_permanent_database_error() {
        let wrapped = |e: sqlx::Error| anyhow::Error::from(e).context("posting the entry");
        // Declared transient, but a pool timeout: stays transient.
        let c = classify(&HandlerError::transient(wrapped(sqlx::Error::PoolTimedOut)));
        assert_eq!(c.retry, Retry::Transient);
        // Declared transient, but the database refused the data: permanent.
        let c = classify(&HandlerError::transient(wrapped(sqlx::Error::RowNotFound)));
        assert_eq!(c.retry, Retry::Permanent);
        // Declared permanent: permanent, whatever the cause.
        let c = classify(&HandlerError::permanent(wrapped(sqlx::Error::PoolTimedOut)));
        assert_eq!(c.retry, Retry::Permanent);
        // No database error at all: the declaration decides.
        let c = classify(&HandlerError::transient(anyhow::anyhow!("lost a race")));
        assert_eq!((c.retry, c.sqlstate), (Retry::Transient, None));
        let c = classify(&HandlerError::permanent(anyhow::anyhow!("unknown payment")));
        assert_eq!(c.retry, Retry::Permanent);
    }
}
