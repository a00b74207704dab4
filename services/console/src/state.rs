//! What every page is given: the console's own database, read-only pools of the services'
//! databases, the operations (with the console's ops key), Kafka for dead letters, the
//! metrics history and the login limits.

use crate::config::{Config, ServiceUrls};
use crate::history::History;
use crate::limits::LoginLimits;
use sagapay_domain::Namespace;
use sagapay_messaging::KafkaSettings;
use sagapay_operations::payments::Ops;
use sagapay_operations::reconcile::Databases;
use sagapay_operations::reviews::Reviews;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// Pools of the services' databases the pages read (never write: every change goes through an
/// operation).
#[derive(Clone)]
pub struct ServiceDbs {
    pub orchestrator: PgPool,
    pub provider: PgPool,
    pub ledger: PgPool,
    pub notification: PgPool,
    pub gateway: PgPool,
}

#[derive(Clone)]
pub struct Console {
    /// The console's own database: operators, sessions, actions.
    pub pool: PgPool,
    pub dbs: ServiceDbs,
    /// The URLs of the three databases the reconciliation reads.
    pub reconcile_dbs: Databases,
    pub ops: Ops,
    pub reviews: Reviews,
    pub kafka: KafkaSettings,
    pub namespace: Namespace,
    pub services: ServiceUrls,
    pub http: reqwest::Client,
    pub history: History,
    pub login_limits: Arc<LoginLimits>,
    pub session_idle: Duration,
    pub session_max: Duration,
    /// A TLS-terminating proxy is in front: its `X-Forwarded-For` tells the client.
    pub behind_tls_proxy: bool,
    /// One reconciliation at a time per instance (it reads three databases whole).
    pub reconciling: Arc<tokio::sync::Semaphore>,
}

impl Console {
    pub fn new(config: &Config, pool: PgPool) -> anyhow::Result<Self> {
        let server = config.common.postgres_url.expose_secret();
        let ns = &config.common.namespace;
        // The databases the console only reads are opened read only: a statement that would
        // write fails there. The gateway's (keys) and the notification service's (resends)
        // are written by the operations the command line shares.
        let db = |service: &str, read_only: bool| -> anyhow::Result<PgPool> {
            let url = sagapay_messaging::postgres_url::with_database(server, &ns.database(service));
            let mut options =
                PgConnectOptions::from_str(&url)?.application_name(crate::config::SERVICE);
            if read_only {
                options = options.options([("default_transaction_read_only", "on")]);
            }
            Ok(PgPoolOptions::new()
                .max_connections(2)
                .acquire_timeout(Duration::from_secs(5))
                .connect_lazy_with(options))
        };
        let ops_key = config.ops_key.expose().to_owned();
        let http = sagapay_service_kit::service_client::builder(
            sagapay_service_kit::service_client::ca_file_from_env().as_deref(),
        )?
        .timeout(Duration::from_secs(5))
        .build()?;
        Ok(Self {
            pool,
            dbs: ServiceDbs {
                orchestrator: db("orchestrator", true)?,
                provider: db("provider-adapter", true)?,
                ledger: db("ledger", true)?,
                notification: db("notification", false)?,
                gateway: db("gateway", false)?,
            },
            reconcile_dbs: Databases::of(server, ns),
            ops: Ops {
                orchestrator_url: config.services.of("orchestrator").to_owned(),
                ops_key: ops_key.clone(),
            },
            reviews: Reviews {
                risk_url: config.services.of("risk").to_owned(),
                ops_key,
            },
            kafka: config.common.kafka.clone(),
            namespace: ns.clone(),
            services: config.services.clone(),
            history: History::new(config.services.clone(), http.clone()),
            http,
            login_limits: Arc::new(LoginLimits::new()),
            session_idle: config.session_idle,
            session_max: config.session_max,
            behind_tls_proxy: config.behind_tls_proxy,
            reconciling: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }
}
