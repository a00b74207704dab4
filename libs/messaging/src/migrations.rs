//! Applying migrations: the shared outbox/inbox set of this crate and a service's own set,
//! each with its own refinery history table, under a PostgreSQL advisory lock so that several
//! instances starting at once migrate one at a time.

use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("../../migrations/messaging");
}

/// Arbitrary constant: the advisory lock key every SagaPay migration run takes.
const MIGRATION_LOCK_KEY: i64 = 0x5a6a_9a7e;

/// Applies the messaging tables, then the service's migrations, to the database at `url`.
pub async fn apply(url: &str, mut service_runner: refinery::Runner) -> anyhow::Result<()> {
    let (mut client, conn_task) = crate::postgres_url::connect_migration_client(url)
        .await
        .context("connecting to run migrations")?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await?;
    let result = async {
        embedded::migrations::runner()
            .set_migration_table_name("refinery_history_messaging")
            .run_async(&mut client)
            .await
            .context("applying messaging migrations")?;
        service_runner
            .set_migration_table_name("refinery_history_service")
            .run_async(&mut client)
            .await
            .context("applying service migrations")?;
        anyhow::Ok(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .ok();
    drop(client);
    conn_task.abort();
    result
}
