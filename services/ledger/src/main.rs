#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = sagapay_ledger::Config::from_env()?;
    sagapay_ledger::start(config)
        .await?
        .run_until_stopped()
        .await
}
