//! Bootstrapping a SagaPay service: configuration from the environment, its database
//! (created when absent, migrated), the `/health`, `/ready` and `/metrics` routes, the one
//! error shape of every HTTP API, and a handle that runs and stops the service's tasks.
//!
//! Each service crate is a library whose `start(config)` returns a [`ServiceHandle`], so tests
//! can run any set of services in-process; its `main.rs` only reads the environment and waits.

pub mod api_error;
pub mod body_limit;
pub mod config;
pub mod constant_time;
pub mod db;
pub mod http;
pub mod json_body;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod ops_auth;
pub mod platform;
pub mod runtime;
pub mod service_auth;
pub mod service_client;
pub mod settings;
pub mod startup;
pub mod tls_server;

pub use api_error::ApiError;
pub use config::{CommonConfig, Environment};
pub use ops_auth::OpsKey;
pub use platform::Platform;
pub use runtime::{ServiceBuilder, ServiceHandle, TaskHealth};
pub use service_auth::{NonceStore, ServiceSigner, TrustedCallers, VerifiedCaller};

/// The six services; each has the database `<namespace>_<service>` (see `Namespace::database`).
pub const SERVICES: [&str; 6] = [
    "gateway",
    "orchestrator",
    "risk",
    "provider-adapter",
    "ledger",
    "notification",
];

/// The operators' console: not a service of the saga (it consumes and produces no event), but
/// a process of the deployment with a database of its own, `<namespace>_console`.
pub const CONSOLE: &str = "console";

/// Drops a namespace: its six databases and the console's (open connections terminated) and
/// its Kafka topics. Everything in them is gone.
pub async fn drop_namespace(
    postgres_url: &str,
    kafka: &sagapay_messaging::KafkaSettings,
    ns: &sagapay_domain::Namespace,
) -> anyhow::Result<()> {
    for service in SERVICES.into_iter().chain([CONSOLE]) {
        db::drop_database(postgres_url, &ns.database(service)).await?;
    }
    kafka.delete_topics(&ns.all_topics()).await
}
