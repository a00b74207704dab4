#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = sagapay_notification::Config::from_env()?;
    sagapay_notification::start(config)
        .await?
        .run_until_stopped()
        .await
}
