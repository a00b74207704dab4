//! Configuration shared by all services, from environment variables. Every default works
//! against `scripts/stack.sh up`. Each variable is documented once, in the settings catalogue
//! (`crate::settings`, rendered as `docs/configuration.md`); the readers here refuse a name
//! that is not in it, and a service refuses to start with an unknown `SAGAPAY_*` variable.

use anyhow::Context;
use sagapay_domain::Namespace;
use sagapay_messaging::{ConsumerSettings, KafkaSettings, RelaySettings};
use secrecy::{ExposeSecret, SecretString};
use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Local stack and tests: the development merchant key and ops key are accepted.
    Development,
    Production,
}

#[derive(Debug, Clone)]
pub struct CommonConfig {
    pub service: &'static str,
    pub namespace: Namespace,
    /// This instance's id, when several instances of the service run.
    pub instance_id: Option<String>,
    pub environment: Environment,
    /// `postgres://user:password@host:port`, without a database name (a secret: it holds the
    /// password).
    pub postgres_url: SecretString,
    pub kafka: KafkaSettings,
    pub http_addr: SocketAddr,
    /// HTTPS with this certificate (`SAGAPAY_TLS_CERT_FILE`, `SAGAPAY_TLS_KEY_FILE`); none:
    /// plain HTTP.
    pub tls: Option<crate::tls_server::TlsFiles>,
    pub http_limits: crate::http::HttpLimits,
    pub db_pool_size: u32,
    /// `statement_timeout` of the service's connections.
    pub db_statement_timeout: std::time::Duration,
    /// Messages the inbox consumer handles at once (one payment's events stay sequential).
    pub consumer_lanes: usize,
    /// Most waiting messages a lane commits in one transaction.
    pub consumer_batch: usize,
    /// How long a lane with a backlog waits for more messages before its batch starts.
    pub consumer_linger: std::time::Duration,
    /// A transiently failing message is given up after this many attempts and this long.
    pub consumer_retry_attempts: u32,
    pub consumer_retry_budget: std::time::Duration,
    pub relay: RelaySettings,
    /// How long a starting service waits for PostgreSQL and Kafka to answer.
    pub startup_wait: std::time::Duration,
}

/// The default of `SAGAPAY_STARTUP_WAIT_MS`: longer than a PostgreSQL restart or failover and
/// a broker's restart, short enough that a wrong address ends the start within minutes.
pub const DEFAULT_STARTUP_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The local stack's server over its Unix socket (`scripts/stack.sh`): no TLS on a connection
/// that never leaves the machine (a handshake and the system's CA bundle per connection were
/// a quarter of the test suite's CPU).
pub const DEFAULT_POSTGRES_URL: &str = "postgres://sagapay:sagapay@%2Fvar%2Frun%2Fpostgresql:5432";

/// Passwords production refuses: the local stack's.
const DEVELOPMENT_PASSWORDS: [&str; 2] = ["sagapay", "postgres"];
/// Services with ops routes.
const USES_OPS_KEY: [&str; 5] = [
    "orchestrator",
    "risk",
    "ledger",
    "provider-adapter",
    "console",
];
/// Services with a Redis connection (the gateway's idempotency fast path), and its default.
const USES_REDIS: [&str; 1] = ["gateway"];
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Services that sign calls to other services, and services that receive them (from the
/// gateway).
const SIGNS_CALLS: [&str; 1] = ["gateway"];
/// The services the callers call, by the setting of their URL, with its default.
const CALLED_SERVICES: [(&str, &str); 2] = [
    ("SAGAPAY_ORCHESTRATOR_URL", "http://127.0.0.1:8001"),
    ("SAGAPAY_NOTIFICATION_URL", "http://127.0.0.1:8005"),
];
const RECEIVES_CALLS: [&str; 2] = ["orchestrator", "notification"];

/// Every service's URL as a caller that watches them all (the console) sets it: (service,
/// setting, default).
pub const SERVICE_URLS: [(&str, &str, &str); 6] = [
    ("gateway", "SAGAPAY_GATEWAY_URL", "http://127.0.0.1:8000"),
    (
        "orchestrator",
        "SAGAPAY_ORCHESTRATOR_URL",
        "http://127.0.0.1:8001",
    ),
    ("risk", "SAGAPAY_RISK_URL", "http://127.0.0.1:8002"),
    (
        "provider-adapter",
        "SAGAPAY_PROVIDER_ADAPTER_URL",
        "http://127.0.0.1:8003",
    ),
    ("ledger", "SAGAPAY_LEDGER_URL", "http://127.0.0.1:8004"),
    (
        "notification",
        "SAGAPAY_NOTIFICATION_URL",
        "http://127.0.0.1:8005",
    ),
];

fn default_replication(environment: Environment) -> i32 {
    match environment {
        Environment::Development => 1,
        Environment::Production => 3,
    }
}

/// The password in a URL's user information (`scheme://user:password@host`), if any.
fn url_password(url: &str) -> Option<String> {
    // Still percent-encoded: enough to tell absent and development passwords apart.
    let url = url::Url::parse(url).ok()?;
    url.password().filter(|p| !p.is_empty()).map(str::to_owned)
}

/// What production refuses in `SAGAPAY_POSTGRES_URL`: a development or missing password, and
/// any way to the server but its Unix socket or TLS that checks who the server is.
fn postgres_problems(url: &str) -> Vec<String> {
    let mut problems = Vec::new();
    match url_password(url) {
        None => problems.push(
            "SAGAPAY_POSTGRES_URL has no password: set the database user's password".to_owned(),
        ),
        Some(p) if DEVELOPMENT_PASSWORDS.contains(&p.as_str()) => problems.push(
            "SAGAPAY_POSTGRES_URL has the development password: set the database user's own"
                .to_owned(),
        ),
        Some(_) => {}
    }
    match sagapay_messaging::postgres_url::tls_params(url) {
        // A Unix socket: nothing travels on a network, and the socket's permissions say
        // who the server is. Production's only other way is verify-full (or verify-ca).
        Ok(_) if sagapay_messaging::postgres_url::unix_socket(url).is_some() => {}
        Ok(tls) if tls.mode.authenticates_server() && tls.root_cert.is_some() => {}
        // Without sslrootcert, verify-ca and verify-full trust every CA of the host's
        // store, and verify-ca checks no name: any public certificate would pass.
        Ok(tls) if tls.mode.authenticates_server() => problems.push(format!(
            "SAGAPAY_POSTGRES_URL has sslmode={} without sslrootcert: production needs sslrootcert=<CA file>, the only CA trusted for the database",
            tls.mode.as_str()
        )),
        Ok(tls) => problems.push(format!(
            "SAGAPAY_POSTGRES_URL has sslmode={}: production needs sslmode=verify-full (or verify-ca) and sslrootcert=<CA file>, so the database's identity is checked and nothing travels in clear (or the server's Unix socket)",
            tls.mode.as_str()
        )),
        Err(e) => problems.push(format!("SAGAPAY_POSTGRES_URL: {e:#}")),
    }
    problems
}

/// What production refuses in the gateway's Redis URL: no password, no TLS (the password and
/// the cached answers would cross the network in clear), or certificate checks turned off
/// (`#insecure`).
fn redis_problems(url: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if url_password(url).is_none() {
        problems.push("SAGAPAY_REDIS_URL has no password: set rediss://:<password>@host, or leave it empty to turn the idempotency fast path off".to_owned());
    }
    let parsed = url::Url::parse(url).ok();
    if parsed.as_ref().is_none_or(|u| u.scheme() != "rediss") {
        problems
            .push("SAGAPAY_REDIS_URL is not rediss://: production needs TLS to Redis".to_owned());
    }
    if parsed.is_some_and(|u| u.fragment().is_some()) {
        problems.push("SAGAPAY_REDIS_URL has a #fragment (#insecure turns certificate checks off): production refuses it".to_owned());
    }
    problems
}

/// What production refuses in the Kafka clients' settings (`SAGAPAY_KAFKA_CLIENT_CONFIG`):
/// anything but an encrypted connection whose client is known to the broker (SASL over TLS,
/// or TLS with a client certificate), and any switch that turns the broker's certificate or
/// name check off. Without it anyone who reaches the broker reads every payment event and
/// can write a forged one.
fn kafka_problems(overrides: &[(String, String)]) -> Vec<String> {
    let get = |key: &str| {
        overrides
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.trim().to_ascii_lowercase())
    };
    let mut problems = Vec::new();
    let protocol = get("security.protocol").unwrap_or_else(|| "plaintext".to_owned());
    let client_certificate = get("ssl.certificate.location").is_some()
        || get("ssl.certificate.pem").is_some()
        || get("ssl.keystore.location").is_some();
    match protocol.as_str() {
        "sasl_ssl" => {}
        "ssl" if client_certificate => {}
        "ssl" => problems.push("SAGAPAY_KAFKA_CLIENT_CONFIG has security.protocol=SSL without a client certificate (ssl.certificate.location): the broker cannot tell the services apart; production needs SASL_SSL or SSL with a certificate per service".to_owned()),
        other => problems.push(format!("SAGAPAY_KAFKA_CLIENT_CONFIG has security.protocol={}: production needs SASL_SSL (or SSL with a client certificate), so events travel encrypted and only known services write them", other.to_ascii_uppercase())),
    }
    if get("enable.ssl.certificate.verification").as_deref() == Some("false") {
        problems.push("SAGAPAY_KAFKA_CLIENT_CONFIG has enable.ssl.certificate.verification=false: production checks the broker's certificate".to_owned());
    }
    if get("ssl.endpoint.identification.algorithm").as_deref() == Some("none") {
        problems.push("SAGAPAY_KAFKA_CLIENT_CONFIG has ssl.endpoint.identification.algorithm=none: production checks the broker's name against its certificate".to_owned());
    }
    problems
}

/// `SAGAPAY_KAFKA_CLIENT_CONFIG`, with `sasl.password` from `SAGAPAY_KAFKA_SASL_PASSWORD_FILE`:
/// the connection's security of every Kafka client, the services' and the tools'.
pub fn kafka_client_overrides() -> anyhow::Result<Vec<(String, String)>> {
    let mut overrides =
        sagapay_messaging::kafka::parse_overrides(&env_or("SAGAPAY_KAFKA_CLIENT_CONFIG", ""))
            .context("SAGAPAY_KAFKA_CLIENT_CONFIG")?;
    let file = env_or("SAGAPAY_KAFKA_SASL_PASSWORD_FILE", "");
    if !file.is_empty() {
        let password = std::fs::read_to_string(&file)
            .with_context(|| format!("SAGAPAY_KAFKA_SASL_PASSWORD_FILE {file}"))?;
        overrides.push(("sasl.password".to_owned(), password.trim().to_owned()));
    }
    Ok(overrides)
}

/// `SAGAPAY_TLS_CERT_FILE` and `SAGAPAY_TLS_KEY_FILE`: both or neither.
fn tls_files() -> anyhow::Result<Option<crate::tls_server::TlsFiles>> {
    match (env_or("SAGAPAY_TLS_CERT_FILE", ""), env_or("SAGAPAY_TLS_KEY_FILE", "")) {
        (cert, key) if cert.is_empty() && key.is_empty() => Ok(None),
        (cert, key) if cert.is_empty() || key.is_empty() => anyhow::bail!(
            "SAGAPAY_TLS_CERT_FILE and SAGAPAY_TLS_KEY_FILE go together: set both to serve HTTPS, or neither"
        ),
        (cert, key) => Ok(Some(crate::tls_server::TlsFiles {
            cert: cert.into(),
            key: key.into(),
        })),
    }
}

/// What production refuses in a service URL of `name`: plain HTTP to another machine (the
/// request would cross the network in clear: customers' details, the ops key, secrets).
fn service_url_problems(name: &str, url: &str) -> Vec<String> {
    let Ok(parsed) = url::Url::parse(url) else {
        return vec![format!("{name} is not a URL: {url:?}")];
    };
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match parsed.scheme() {
        "https" => Vec::new(),
        "http" if loopback => Vec::new(),
        scheme => vec![format!(
            "{name} is {scheme}:// to {}: production calls another machine over https only (serve it with SAGAPAY_TLS_CERT_FILE, trust its CA with SAGAPAY_SERVICE_CA_FILE)",
            parsed.host_str().unwrap_or("?")
        )],
    }
}

/// `SAGAPAY_POSTGRES_URL`, or the local stack's.
pub fn postgres_url_from_env() -> SecretString {
    crate::settings::secret("SAGAPAY_POSTGRES_URL")
        .unwrap_or_else(|| SecretString::from(DEFAULT_POSTGRES_URL))
}

/// Reads `name`, or `default` when unset or empty. `name` must be in the settings catalogue
/// (`crate::settings`), with `default` as its documented default.
pub fn env_or(name: &str, default: &str) -> String {
    crate::settings::check_default(name, &default);
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => default.to_owned(),
    }
}

/// A setting that can be switched off: unset gives `default`, set but empty gives `None`.
pub fn env_or_off(name: &str, default: &str) -> Option<String> {
    crate::settings::check_default(name, &default);
    match std::env::var(name) {
        Ok(v) if v.is_empty() => None,
        Ok(v) => Some(v),
        Err(_) => Some(default.to_owned()),
    }
}

/// One lane per CPU, from 2 to 8. More lanes than CPUs do not make handlers faster (they are
/// short and mostly wait on PostgreSQL, which needs the same CPUs); they spread a burst over
/// more, smaller batches. On the 2-core development machine, 2 lanes instead of 8 cut the
/// time to SETTLED p99 at 75 payments/s from about 1.1 s to 0.4 s.
/// A lane with a backlog waits this long for more messages (`SAGAPAY_CONSUMER_LINGER_MS`).
const DEFAULT_CONSUMER_LINGER_MS: u64 = 2;

fn default_consumer_lanes() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8)
}

/// Reads and parses `name`, or `default` when unset or empty (see [`env_or`]).
pub fn env_parse<T: std::str::FromStr + std::fmt::Display>(
    name: &str,
    default: T,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    crate::settings::check_default(name, &default);
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|e| anyhow::anyhow!("{name}={v:?} is invalid: {e}")),
        _ => Ok(default),
    }
}

/// A duration setting in milliseconds (`..._MS`), or `default` when unset or empty.
pub fn env_ms(name: &str, default: std::time::Duration) -> anyhow::Result<std::time::Duration> {
    Ok(std::time::Duration::from_millis(env_parse(
        name,
        default.as_millis() as u64,
    )?))
}

/// A schedule in milliseconds, `1000,2000,4000` (at least one step), or `default` when unset
/// or empty.
pub fn env_ms_list(
    name: &str,
    default: &[std::time::Duration],
) -> anyhow::Result<Vec<std::time::Duration>> {
    let documented: Vec<String> = default.iter().map(|d| d.as_millis().to_string()).collect();
    let text = env_or(name, &documented.join(","));
    let steps = text
        .split(',')
        .map(|ms| {
            ms.trim()
                .parse::<u64>()
                .map(std::time::Duration::from_millis)
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{name}={text:?}: {e}"))?;
    anyhow::ensure!(!steps.is_empty(), "{name} needs at least one step");
    Ok(steps)
}

impl CommonConfig {
    /// Configuration of `service` from the environment; `default_port` is its well-known port.
    pub fn from_env(service: &'static str, default_port: u16) -> anyhow::Result<Self> {
        let unknown = crate::settings::unknown_in_environment();
        anyhow::ensure!(
            unknown.is_empty(),
            "{service} refuses to start: unknown setting(s) {} (every setting is listed in docs/configuration.md)",
            unknown
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        let namespace = Namespace::parse(&env_or("SAGAPAY_NAMESPACE", Namespace::DEFAULT))?;
        let environment = match env_or("SAGAPAY_ENVIRONMENT", "development").as_str() {
            "development" => Environment::Development,
            "production" => Environment::Production,
            other => anyhow::bail!(
                "SAGAPAY_ENVIRONMENT must be development or production, got {other:?}"
            ),
        };
        let http_addr = env_or("SAGAPAY_HTTP_ADDR", &format!("127.0.0.1:{default_port}"))
            .parse()
            .context("SAGAPAY_HTTP_ADDR")?;
        let instance_id = match env_or("SAGAPAY_INSTANCE_ID", "") {
            id if id.is_empty() => None,
            id => {
                anyhow::ensure!(
                    id.len() <= 32
                        && id.bytes().all(|b| b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || b == b'_'
                            || b == b'-'),
                    "SAGAPAY_INSTANCE_ID must be 1-32 of a-z, 0-9, '_', '-', got {id:?}"
                );
                Some(id)
            }
        };
        let config = Self {
            service,
            namespace,
            instance_id,
            environment,
            postgres_url: postgres_url_from_env(),
            kafka: KafkaSettings {
                brokers: env_or("SAGAPAY_KAFKA_BROKERS", "127.0.0.1:9092"),
                partitions: env_parse("SAGAPAY_KAFKA_PARTITIONS", 12)?,
                producer_overrides: sagapay_messaging::kafka::parse_overrides(&env_or(
                    "SAGAPAY_KAFKA_PRODUCER_CONFIG",
                    "",
                ))
                .context("SAGAPAY_KAFKA_PRODUCER_CONFIG")?,
                consumer_overrides: sagapay_messaging::kafka::parse_overrides(&env_or(
                    "SAGAPAY_KAFKA_CONSUMER_CONFIG",
                    "",
                ))
                .context("SAGAPAY_KAFKA_CONSUMER_CONFIG")?,
                client_overrides: kafka_client_overrides()?,
                replication_factor: env_parse(
                    "SAGAPAY_KAFKA_REPLICATION_FACTOR",
                    default_replication(environment),
                )?,
            },
            http_addr,
            tls: tls_files()?,
            http_limits: crate::http::HttpLimits {
                body_bytes: env_parse(
                    "SAGAPAY_HTTP_BODY_LIMIT_BYTES",
                    crate::http::HttpLimits::default().body_bytes,
                )?,
                request_timeout: env_ms(
                    "SAGAPAY_HTTP_REQUEST_TIMEOUT_MS",
                    crate::http::HttpLimits::default().request_timeout,
                )?,
            },
            db_pool_size: env_parse("SAGAPAY_DB_POOL_SIZE", 16)?,
            db_statement_timeout: env_ms(
                "SAGAPAY_DB_STATEMENT_TIMEOUT_MS",
                std::time::Duration::from_secs(30),
            )?,
            consumer_lanes: env_parse("SAGAPAY_CONSUMER_LANES", default_consumer_lanes())?,
            consumer_batch: env_parse("SAGAPAY_CONSUMER_BATCH", 32)?,
            consumer_linger: env_ms(
                "SAGAPAY_CONSUMER_LINGER_MS",
                std::time::Duration::from_millis(DEFAULT_CONSUMER_LINGER_MS),
            )?,
            consumer_retry_attempts: env_parse(
                "SAGAPAY_CONSUMER_RETRY_ATTEMPTS",
                ConsumerSettings::DEFAULT_RETRY_ATTEMPTS,
            )?,
            consumer_retry_budget: env_ms(
                "SAGAPAY_CONSUMER_RETRY_BUDGET_MS",
                ConsumerSettings::DEFAULT_RETRY_BUDGET,
            )?,
            relay: RelaySettings {
                claim_timeout: env_ms(
                    "SAGAPAY_OUTBOX_CLAIM_TIMEOUT_MS",
                    std::time::Duration::from_secs(30),
                )?,
                linger: env_ms("SAGAPAY_OUTBOX_LINGER_MS", RelaySettings::default().linger)?,
                ..RelaySettings::default()
            },
            startup_wait: env_ms("SAGAPAY_STARTUP_WAIT_MS", DEFAULT_STARTUP_WAIT)?,
        };
        if environment == Environment::Production {
            let problems = config.production_problems()?;
            anyhow::ensure!(
                problems.is_empty(),
                "production mode refuses to start {service}:\n  - {}",
                problems.join("\n  - ")
            );
        }
        Ok(config)
    }

    /// What production mode refuses in this service's settings, one sentence per problem
    /// (the table in `docs/architecture.md`, "Production mode").
    pub fn production_problems(&self) -> anyhow::Result<Vec<String>> {
        let mut problems = postgres_problems(self.postgres_url.expose_secret());
        let minimum: i32 = env_parse(
            "SAGAPAY_KAFKA_MIN_REPLICATION_FACTOR",
            default_replication(Environment::Production),
        )?;
        if self.kafka.replication_factor < minimum {
            problems.push(format!(
                "SAGAPAY_KAFKA_REPLICATION_FACTOR is {}, below the minimum of {minimum} (SAGAPAY_KAFKA_MIN_REPLICATION_FACTOR): a broker's loss would lose events",
                self.kafka.replication_factor
            ));
        }
        problems.extend(kafka_problems(&self.kafka.client_overrides));
        if USES_OPS_KEY.contains(&self.service) {
            if let Err(e) = crate::OpsKey::from_env(Environment::Production) {
                problems.push(e.to_string());
            }
        }
        if USES_REDIS.contains(&self.service) {
            if let Some(url) = env_or_off("SAGAPAY_REDIS_URL", DEFAULT_REDIS_URL) {
                problems.extend(redis_problems(&url));
            }
        }
        if SIGNS_CALLS.contains(&self.service) {
            if let Err(e) = crate::ServiceSigner::from_env(self.service, Environment::Production) {
                problems.push(e.to_string());
            }
            for (name, default) in CALLED_SERVICES {
                problems.extend(service_url_problems(name, &env_or(name, default)));
            }
        }
        if self.service == crate::CONSOLE {
            for (_, name, default) in SERVICE_URLS {
                problems.extend(service_url_problems(name, &env_or(name, default)));
            }
        }
        if RECEIVES_CALLS.contains(&self.service) {
            if let Err(e) = crate::TrustedCallers::from_env(Environment::Production, &[]) {
                problems.push(e.to_string());
            }
        }
        Ok(problems)
    }

    /// Configuration for an in-process test: given namespace, ephemeral port, small pool.
    pub fn for_test(service: &'static str, namespace: Namespace) -> Self {
        Self {
            service,
            namespace,
            instance_id: None,
            environment: Environment::Development,
            postgres_url: postgres_url_from_env(),
            kafka: KafkaSettings {
                brokers: env_or("SAGAPAY_KAFKA_BROKERS", "127.0.0.1:9092"),
                partitions: 2,
                // Three on the local stack's three-node cluster (scripts/stack.sh up --brokers 3).
                replication_factor: env_parse(
                    "SAGAPAY_KAFKA_REPLICATION_FACTOR",
                    default_replication(Environment::Development),
                )
                .unwrap_or(1),
                ..KafkaSettings::default()
            },
            http_addr: "127.0.0.1:0".parse().expect("valid address"),
            tls: None,
            http_limits: crate::http::HttpLimits::default(),
            db_pool_size: 5,
            db_statement_timeout: std::time::Duration::from_secs(30),
            consumer_lanes: 3,
            consumer_batch: 32,
            consumer_linger: std::time::Duration::from_millis(DEFAULT_CONSUMER_LINGER_MS),
            consumer_retry_attempts: ConsumerSettings::DEFAULT_RETRY_ATTEMPTS,
            consumer_retry_budget: ConsumerSettings::DEFAULT_RETRY_BUDGET,
            relay: RelaySettings::default(),
            startup_wait: DEFAULT_STARTUP_WAIT,
        }
    }

    pub fn database_name(&self) -> String {
        self.namespace.database(self.service)
    }

    /// The service's own database's URL (it holds the password: for connecting only).
    pub fn database_url(&self) -> SecretString {
        SecretString::from(sagapay_messaging::postgres_url::with_database(
            self.postgres_url.expose_secret(),
            &self.database_name(),
        ))
    }

    pub fn topic(&self, event_type: sagapay_domain::EventType) -> String {
        self.namespace.topic(event_type.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::{kafka_problems, postgres_problems, redis_problems};

    fn kafka(config: &str) -> Vec<String> {
        kafka_problems(&sagapay_messaging::kafka::parse_overrides(config).unwrap())
    }

    #[test]
    fn production_calls_other_machines_over_https_only() {
        use super::service_url_problems as problems;
        for ok in [
            "https://orchestrator.internal:8001",
            "http://127.0.0.1:8001",
            "http://127.4.5.6:8001",
            "http://localhost:8001",
            "http://[::1]:8001",
        ] {
            assert!(problems("SAGAPAY_ORCHESTRATOR_URL", ok).is_empty(), "{ok}");
        }
        for refused in [
            "http://orchestrator.internal:8001",
            "http://10.0.0.5:8001",
            "ftp://x",
        ] {
            let found = problems("SAGAPAY_ORCHESTRATOR_URL", refused);
            assert_eq!(found.len(), 1, "{refused}");
            assert!(
                found[0].starts_with("SAGAPAY_ORCHESTRATOR_URL is"),
                "{found:?}"
            );
        }
    }

    #[test]
    fn production_kafka_needs_tls_and_a_known_client() {
        for ok in [
            "security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,sasl.username=risk,ssl.ca.location=/ca.pem",
            "security.protocol=ssl,ssl.certificate.location=/risk.pem,ssl.key.location=/risk.key",
        ] {
            assert!(kafka(ok).is_empty(), "{ok}: {:?}", kafka(ok));
        }
        for (config, named) in [
            ("", "security.protocol=PLAINTEXT"),
            ("security.protocol=PLAINTEXT", "security.protocol=PLAINTEXT"),
            (
                "security.protocol=SASL_PLAINTEXT,sasl.username=risk",
                "security.protocol=SASL_PLAINTEXT",
            ),
            ("security.protocol=SSL", "without a client certificate"),
            (
                "security.protocol=SASL_SSL,enable.ssl.certificate.verification=false",
                "enable.ssl.certificate.verification=false",
            ),
            (
                "security.protocol=SASL_SSL,ssl.endpoint.identification.algorithm=none",
                "ssl.endpoint.identification.algorithm=none",
            ),
        ] {
            let problems = kafka(config);
            assert_eq!(problems.len(), 1, "{config}: {problems:?}");
            assert!(problems[0].contains(named), "{config}: {problems:?}");
        }
    }

    #[test]
    fn production_postgres_needs_a_password_and_a_socket_or_checked_tls() {
        for url in [
            "postgres://u:pw@%2Fvar%2Frun%2Fpostgresql:5432",
            "postgres://u:pw@db.internal:5432?sslmode=verify-full&sslrootcert=/ca.crt",
        ] {
            assert!(postgres_problems(url).is_empty(), "{url}");
        }
        for (url, says) in [
            ("postgres://u@%2Fvar%2Frun%2Fpostgresql:5432", "no password"),
            (
                "postgres://u:sagapay@%2Fvar%2Frun%2Fpostgresql:5432",
                "development password",
            ),
            ("postgres://u:pw@127.0.0.1:5432", "sslmode=prefer"),
            (
                "postgres://u:pw@db.internal:5432?sslmode=verify-full",
                "without sslrootcert",
            ),
        ] {
            let problems = postgres_problems(url).join("\n");
            assert!(problems.contains(says), "{url}: {problems}");
        }
    }

    #[test]
    fn production_redis_needs_a_password_tls_and_certificate_checks() {
        assert!(redis_problems("rediss://:pw@redis.internal:6380").is_empty());
        for (url, says) in [
            ("redis://127.0.0.1:6379", "no password"),
            ("redis://:pw@redis.internal:6379", "not rediss://"),
            ("rediss://:pw@redis.internal:6380/#insecure", "#fragment"),
        ] {
            let problems = redis_problems(url).join("\n");
            assert!(problems.contains(says), "{url}: {problems}");
        }
    }
}
