#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = sagapay_provider_adapter::Config::from_env()?;
    sagapay_provider_adapter::start(config)
        .await?
        .run_until_stopped()
        .await
}
