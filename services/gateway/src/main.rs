#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = sagapay_gateway::Config::from_env()?;
    sagapay_gateway::start(config)
        .await?
        .run_until_stopped()
        .await
}
