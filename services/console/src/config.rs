//! The console's settings: the services it watches and calls, its ops key, its sessions'
//! lifetimes, and whether TLS is in front of it (production refuses it without).

use sagapay_service_kit::config::{env_ms, env_or};
use sagapay_service_kit::{CommonConfig, Environment, OpsKey};
use std::time::Duration;

pub const SERVICE: &str = "console";
pub const DEFAULT_PORT: u16 = 8006;

/// The services the console watches and calls, by name, with their base URLs.
#[derive(Debug, Clone)]
pub struct ServiceUrls(pub Vec<(&'static str, String)>);

impl ServiceUrls {
    /// `SAGAPAY_<SERVICE>_URL` of each of the six services (the local stack's ports by default).
    pub fn from_env() -> Self {
        Self(
            sagapay_service_kit::config::SERVICE_URLS
                .iter()
                .map(|(s, name, default)| {
                    (*s, env_or(name, default).trim_end_matches('/').to_owned())
                })
                .collect(),
        )
    }

    /// The base URL of `service`.
    pub fn of(&self, service: &str) -> &str {
        self.0
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, u)| u.as_str())
            .unwrap_or_else(|| panic!("no URL for service {service}"))
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub common: CommonConfig,
    pub services: ServiceUrls,
    /// The ops key the console calls the ops routes with (`SAGAPAY_OPS_KEY`).
    pub ops_key: OpsKey,
    /// A session ends after this long without a request (`SAGAPAY_CONSOLE_SESSION_IDLE_MS`).
    pub session_idle: Duration,
    /// ... and this long after its login whatever happens (`SAGAPAY_CONSOLE_SESSION_MAX_MS`).
    pub session_max: Duration,
    /// TLS is terminated in front of the console (`SAGAPAY_CONSOLE_BEHIND_TLS_PROXY=true`).
    pub behind_tls_proxy: bool,
    /// How often the services' metrics are sampled for the health charts.
    pub sample_every: Duration,
}

impl Config {
    /// The console's settings (`SAGAPAY_CONSOLE_*`, see `docs/configuration.md`).
    pub fn from_env() -> anyhow::Result<Self> {
        let common = CommonConfig::from_env(SERVICE, DEFAULT_PORT)?;
        let behind_tls_proxy = match env_or("SAGAPAY_CONSOLE_BEHIND_TLS_PROXY", "false").as_str() {
            "true" => true,
            "false" => false,
            other => {
                anyhow::bail!("SAGAPAY_CONSOLE_BEHIND_TLS_PROXY is true or false, not {other:?}")
            }
        };
        let config = Self {
            ops_key: OpsKey::from_env(common.environment)?,
            services: ServiceUrls::from_env(),
            session_idle: env_ms(
                "SAGAPAY_CONSOLE_SESSION_IDLE_MS",
                Duration::from_secs(30 * 60),
            )?,
            session_max: env_ms(
                "SAGAPAY_CONSOLE_SESSION_MAX_MS",
                Duration::from_secs(8 * 3600),
            )?,
            behind_tls_proxy,
            sample_every: Duration::from_secs(5),
            common,
        };
        config.refuse_clear_text()?;
        Ok(config)
    }

    /// Production serves the console only over TLS: its own certificate, or a proxy in front
    /// that terminates TLS (declared): a password or a session cookie never crosses a network
    /// in clear.
    fn refuse_clear_text(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.common.environment == Environment::Development
                || self.common.tls.is_some()
                || self.behind_tls_proxy,
            "the console serves passwords and sessions: in production give it a certificate \
             (SAGAPAY_TLS_CERT_FILE, SAGAPAY_TLS_KEY_FILE) or put it behind a proxy that \
             terminates TLS and say so (SAGAPAY_CONSOLE_BEHIND_TLS_PROXY=true)"
        );
        Ok(())
    }

    /// A console for an in-process test, calling the services at `services`.
    pub fn for_test(common: CommonConfig, services: ServiceUrls) -> Self {
        Self {
            common,
            services,
            ops_key: OpsKey::development(),
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(8 * 3600),
            behind_tls_proxy: false,
            sample_every: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(environment: Environment, tls: bool, behind_tls_proxy: bool) -> Config {
        let mut common =
            CommonConfig::for_test(SERVICE, sagapay_domain::Namespace::parse("t").unwrap());
        common.environment = environment;
        if tls {
            common.tls = Some(sagapay_service_kit::tls_server::TlsFiles {
                cert: "cert.pem".into(),
                key: "key.pem".into(),
            });
        }
        let mut c = Config::for_test(common, ServiceUrls(Vec::new()));
        c.behind_tls_proxy = behind_tls_proxy;
        c
    }

    #[test]
    fn production_serves_the_console_over_tls_only() {
        let refused = config(Environment::Production, false, false).refuse_clear_text();
        assert!(
            refused
                .unwrap_err()
                .to_string()
                .contains("SAGAPAY_CONSOLE_BEHIND_TLS_PROXY"),
            "the refusal names the way out"
        );
        assert!(config(Environment::Production, true, false)
            .refuse_clear_text()
            .is_ok());
        assert!(config(Environment::Production, false, true)
            .refuse_clear_text()
            .is_ok());
        assert!(config(Environment::Development, false, false)
            .refuse_clear_text()
            .is_ok());
    }
}
