//! The six services (and the operators' console) in one binary: `sagapay <service>` runs that service, its settings read
//! from the environment as the service documents them (`sagapayctl settings`).
//!
//! Why one binary: each service is a library (`start(config)` returns its handle), and a
//! release build of six thin binaries compiled and linked the shared graph (tokio, axum,
//! sqlx, rdkafka, ...) six times over, the largest part of a cold build (see
//! `docs/performance.md`, "Build"). One binary does it once; processes stay one per service.

use anyhow::bail;

const SERVICES: &str =
    "gateway, orchestrator, risk, provider-adapter, ledger, notification, console";

fn main() -> anyhow::Result<()> {
    let Some(service) = std::env::args().nth(1) else {
        bail!("usage: sagapay <service>, one of {SERVICES}");
    };
    if matches!(service.as_str(), "-h" | "--help" | "help") {
        println!("usage: sagapay <service>, one of {SERVICES}");
        return Ok(());
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(&service))
}

/// Starts `service` and waits until it stops (SIGTERM or SIGINT: graceful shutdown).
async fn run(service: &str) -> anyhow::Result<()> {
    macro_rules! serve {
        ($krate:ident) => {
            $krate::start($krate::Config::from_env()?)
                .await?
                .run_until_stopped()
                .await
        };
    }
    match service {
        "gateway" => serve!(sagapay_gateway),
        "orchestrator" => serve!(sagapay_orchestrator),
        "risk" => serve!(sagapay_risk),
        "provider-adapter" => serve!(sagapay_provider_adapter),
        "ledger" => serve!(sagapay_ledger),
        "notification" => serve!(sagapay_notification),
        "console" => serve!(sagapay_console),
        other => bail!("no service {other:?}: sagapay <service>, one of {SERVICES}"),
    }
}
