//! A service's database: created on the shared server when absent, migrated, pooled.

use crate::config::CommonConfig;
use anyhow::Context;
use sagapay_messaging::postgres_url::with_database;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// Creates the service's database if needed, applies the messaging and service migrations,
/// and returns a connection pool.
pub async fn prepare(
    config: &CommonConfig,
    migrations: refinery::Runner,
) -> anyhow::Result<PgPool> {
    let db_name = config.database_name();
    ensure_database(config.postgres_url.expose_secret(), &db_name).await?;
    sagapay_messaging::migrations::apply(config.database_url().expose_secret(), migrations)
        .await
        .with_context(|| format!("migrating database {db_name}"))?;
    // No statement waits forever (on a lock, say): a consumer's handler that would block its
    // lane silently fails instead (SQLSTATE 57014), is retried, and shows as a stall.
    let statement_timeout = format!("{}ms", config.db_statement_timeout.as_millis());
    let options = PgConnectOptions::from_str(config.database_url().expose_secret())?
        .application_name(config.service)
        .options([("statement_timeout", statement_timeout.as_str())])
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_millis(500));
    // No ping before each checkout: that is a round trip per statement outside a transaction.
    // A connection that died in the pool fails its next statement, which every caller treats
    // as transient (a consumer retries its batch, a relay or worker its cycle, the API
    // answers 503 and the client retries with its idempotency key); the failure marks it
    // broken and it is closed on release (vendor/README.md, `WriteBuffer::broken`).
    PgPoolOptions::new()
        .max_connections(config.db_pool_size)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .with_context(|| format!("connecting to database {db_name}"))
}

/// `CREATE DATABASE` unless it exists. Safe when several instances race to create it.
pub async fn ensure_database(postgres_url: &str, db_name: &str) -> anyhow::Result<()> {
    assert!(
        db_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "database names come from a parsed Namespace and a service name"
    );
    let url = with_database(postgres_url, "postgres");
    let mut conn = PgConnection::connect(&url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(postgres_url)))?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(db_name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        match sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = db_name, "database created"),
            // 42P04 duplicate_database, 23505 unique_violation: another instance won the race.
            Err(sqlx::Error::Database(e))
                if matches!(e.code().as_deref(), Some("42P04") | Some("23505")) => {}
            Err(e) => return Err(e).with_context(|| format!("creating database {db_name}")),
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// Drops a database (test clean-up); connections still open to it are terminated.
pub async fn drop_database(postgres_url: &str, db_name: &str) -> anyhow::Result<()> {
    let url = with_database(postgres_url, "postgres");
    let mut conn = PgConnection::connect(&url).await?;
    sqlx::query(&format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    ))
    .execute(&mut conn)
    .await?;
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_the_password() {
        assert_eq!(
            super::redact("postgres://u:secret@h:5432"),
            "postgres://u:***@h:5432"
        );
        assert_eq!(super::redact("postgres://h:5432"), "postgres://h:5432");
    }
}
