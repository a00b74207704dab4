#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = sagapay_orchestrator::Config::from_env()?;
    sagapay_orchestrator::start(config)
        .await?
        .run_until_stopped()
        .await
}
