//! Starting while a dependency is not there yet: a service started before PostgreSQL or
//! Kafka answers (a machine booting, a database restarting or failing over, a broker
//! restart) waits for it, retrying with a bounded back-off and saying what it waits for,
//! instead of exiting on the first refused connection. What cannot pass by waiting (a wrong
//! password, a certificate that does not verify, a setting librdkafka refuses) still ends the
//! start at once, and so does waiting past `SAGAPAY_STARTUP_WAIT_MS`.
//!
//! Redis is not waited for: the gateway connects to it on first use and goes the durable path
//! while it is away.

use std::future::Future;
use std::time::{Duration, Instant};

/// The back-off between attempts: from 200 ms, doubling, at most 5 s.
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// Runs `attempt` until it succeeds, its error is not one `passes` says may pass by waiting,
/// or `budget` is spent. `what` names the dependency in the log ("PostgreSQL at ...").
pub async fn wait_for<T, F, Fut>(
    what: &str,
    budget: Duration,
    passes: fn(&anyhow::Error) -> bool,
    mut attempt: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let started = Instant::now();
    let mut delays = sagapay_messaging::failure::retry_delays(FIRST_DELAY, MAX_DELAY);
    let mut attempts: u32 = 0;
    loop {
        attempts += 1;
        let error = match attempt().await {
            Ok(value) => {
                if attempts > 1 {
                    tracing::info!(
                        waited_for = what,
                        attempts,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "dependency answered"
                    );
                }
                return Ok(value);
            }
            Err(e) => e,
        };
        let delay = delays.next().unwrap_or(MAX_DELAY);
        if !passes(&error) {
            return Err(error);
        }
        if started.elapsed() + delay > budget {
            return Err(error.context(format!(
                "{what} did not answer within {} s (SAGAPAY_STARTUP_WAIT_MS)",
                budget.as_secs()
            )));
        }
        tracing::warn!(waiting_for = what, attempt = attempts, next_in_ms = delay.as_millis() as u64,
            error = %format!("{error:#}"), "waiting for a dependency");
        tokio::time::sleep(delay).await;
    }
}

/// SQLSTATEs of a server that is starting, stopping, recovering or full: they pass.
fn transient_sqlstate(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// Whether a failure to reach PostgreSQL (from sqlx or the migrations' tokio-postgres client)
/// may pass by waiting: the server refuses or drops connections, is starting up or shutting
/// down, or the TLS session broke off. A certificate that does not verify, a wrong password or
/// an error of ours does not.
pub fn postgres_may_pass(error: &anyhow::Error) -> bool {
    if error
        .chain()
        .any(|e| e.to_string().to_ascii_lowercase().contains("certificate"))
    {
        return false;
    }
    error.chain().any(|e| {
        if let Some(e) = e.downcast_ref::<sqlx::Error>() {
            return match e {
                sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|c| transient_sqlstate(&c)),
                _ => false,
            };
        }
        if let Some(e) = e.downcast_ref::<tokio_postgres::Error>() {
            return match e.as_db_error() {
                Some(db) => transient_sqlstate(db.code().code()),
                None => e.is_closed() || std::error::Error::source(e).is_some(),
            };
        }
        e.downcast_ref::<std::io::Error>().is_some()
    })
}

/// Whether a failure to reach Kafka may pass by waiting: every failure but a client
/// configuration librdkafka refuses.
pub fn kafka_may_pass(error: &anyhow::Error) -> bool {
    !error.chain().any(|e| {
        matches!(
            e.downcast_ref::<rdkafka::error::KafkaError>(),
            Some(
                rdkafka::error::KafkaError::ClientConfig(..)
                    | rdkafka::error::KafkaError::ClientCreation(_)
            )
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn refused() -> anyhow::Error {
        anyhow::Error::new(sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
        .context("connecting to PostgreSQL")
    }

    #[test]
    fn what_passes_by_waiting() {
        assert!(postgres_may_pass(&refused()));
        let eof = sqlx::Error::Tls("TLS connection: unexpected EOF".into());
        assert!(postgres_may_pass(&anyhow::Error::new(eof)));
        let verify =
            sqlx::Error::Tls("error:0A000086:SSL routines::certificate verify failed".into());
        assert!(!postgres_may_pass(&anyhow::Error::new(verify)));
        assert!(!postgres_may_pass(&anyhow::anyhow!(
            "password authentication failed"
        )));
        assert!(!postgres_may_pass(&anyhow::Error::new(
            sqlx::Error::RowNotFound
        )));
        let config = rdkafka::error::KafkaError::ClientCreation("bad property".into());
        assert!(!kafka_may_pass(
            &anyhow::Error::new(config).context("creating Kafka producer")
        ));
        assert!(kafka_may_pass(&anyhow::anyhow!(
            "topics not visible in metadata"
        )));
    }

    #[tokio::test]
    async fn waits_while_the_failure_may_pass_then_answers() {
        let calls = AtomicU32::new(0);
        let value = wait_for(
            "PostgreSQL",
            Duration::from_secs(10),
            postgres_may_pass,
            || async {
                match calls.fetch_add(1, Ordering::SeqCst) {
                    0 | 1 => Err(refused()),
                    _ => Ok(7),
                }
            },
        )
        .await
        .expect("answered on the third attempt");
        assert_eq!((value, calls.load(Ordering::SeqCst)), (7, 3));
    }

    #[tokio::test]
    async fn gives_up_at_once_on_what_cannot_pass_and_after_the_budget_on_the_rest() {
        let calls = AtomicU32::new(0);
        let err = wait_for(
            "PostgreSQL",
            Duration::from_secs(10),
            postgres_may_pass,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(anyhow::anyhow!("password authentication failed"))
            },
        )
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{err:#}");

        let calls = AtomicU32::new(0);
        let err = wait_for(
            "PostgreSQL",
            Duration::from_millis(500),
            postgres_may_pass,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(refused())
            },
        )
        .await
        .unwrap_err();
        assert!(
            calls.load(Ordering::SeqCst) >= 2,
            "retried within the budget"
        );
        assert!(
            format!("{err:#}").contains("did not answer within"),
            "{err:#}"
        );
    }
}
