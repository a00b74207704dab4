#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = sagapay_risk::Config::from_env()?;
    sagapay_risk::start(config).await?.run_until_stopped().await
}
