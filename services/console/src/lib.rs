//! The operators' console: what an operator does in a bad hour (find a payment, see why it is
//! stuck, decide a review, replay dead letters, resend a webhook, see whether the system keeps
//! up), as pages in a browser.
//!
//! Why a service of its own, not the orchestrator's ops side: the console reads every
//! service's database and calls every service's ops routes, holds operators' accounts and
//! sessions, and serves a browser; none of that belongs in the saga's hot path, and a console
//! that crashes or is attacked must not take payments with it. It holds no state of the saga.
//!
//! What it does not do itself: every action is an operation of `sagapay-operations` (the same
//! function `sagapayctl` calls, through the same ops routes and their rules), called with the
//! console's own ops key and the operator's name, never a key the browser holds; every action
//! is written to `operator_actions` with who, why and how it ended ([`audit`]).
//!
//! Security: operators log in with a password (Argon2id, [`operators`]); a session is a random
//! token in a `Secure`, `HttpOnly`, `SameSite=Strict` cookie, only its hash stored, ending after
//! its idle time or its lifetime ([`session`]); every form that changes something carries the
//! session's CSRF token; logins are rate limited per name and per client address ([`login`]);
//! every answer says `Cache-Control: no-store` and a strict content security policy
//! ([`security`]). Viewers see, admins act. Production refuses to start unless the console
//! serves HTTPS itself or is declared behind a TLS-terminating proxy.
//!
//! One module a job: [`config`] its settings, [`state`] what every page is given, [`limits`]
//! the login limits, [`layout`] the frame of every page, [`pages`] the pages, [`reads`] the
//! read-only queries on the services' databases, [`history`] the last hour of the services'
//! metrics behind the health charts; this root starts it and routes.

pub mod audit;
pub mod config;
pub mod history;
pub mod layout;
pub mod limits;
pub mod login;
pub mod operators;
pub mod pages;
pub mod reads;
pub mod security;
pub mod session;
pub mod state;

use sagapay_service_kit::{Environment, Platform, ServiceHandle};

pub use config::{Config, ServiceUrls, DEFAULT_PORT, SERVICE};

mod embedded {
    refinery::embed_migrations!("../../migrations/console");
}

/// Every route of the console, each answer with the security headers.
fn routes(state: state::Console) -> axum::Router {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/login", get(login::form).post(login::login))
        .route("/logout", post(login::logout))
        .merge(pages::routes())
        .layer(axum::middleware::from_fn(security::headers))
        .with_state(state)
}

/// The console's database of namespace `ns` on the server at `postgres_url`, made and migrated
/// when absent: `sagapayctl operators` works before the console first ran.
pub async fn database(
    postgres_url: &str,
    ns: &sagapay_domain::Namespace,
) -> anyhow::Result<sqlx::PgPool> {
    let name = ns.database(SERVICE);
    sagapay_service_kit::db::ensure_database(postgres_url, &name).await?;
    let url = sagapay_messaging::postgres_url::with_database(postgres_url, &name);
    sagapay_messaging::migrations::apply(&url, embedded::migrations::runner()).await?;
    Ok(sqlx::PgPool::connect(&url).await?)
}

/// Starts the console: its database (operators, sessions, actions), the metrics sampler, and
/// its pages. In development the operator `ops` is made, with the development ops key as its
/// password, so the demo stack needs no setup.
pub async fn start(config: Config) -> anyhow::Result<ServiceHandle> {
    let platform = Platform::init(
        config.common.clone(),
        embedded::migrations::runner,
        &[],
        &[],
    )
    .await?;
    if config.common.environment == Environment::Development {
        operators::seed_development(&platform.pool).await?;
    }
    let mut builder = platform.builder();
    let state = state::Console::new(&config, platform.pool.clone())?;
    let history = state.history.clone();
    let every = config.sample_every;
    builder.spawn("metrics-sampler", move |shutdown| {
        history::run(history, every, shutdown)
    });
    let router = platform.router(routes(state));
    builder
        .serve(config.common.http_addr, config.common.tls.clone(), router)
        .await
}
