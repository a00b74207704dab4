//! Every `SAGAPAY_*` variable, once: its name, its default, who reads it and what it means.
//!
//! This catalogue is the one way configuration is read. The readers (`config::env_or`,
//! `env_parse`, `env_or_off`, [`secret`]) look a name up here and refuse one that is not in it,
//! so a setting cannot be read without being documented; in debug builds they also check that
//! the default the code passes is the default written here, so the table cannot drift from
//! the code (any test that starts a service reads its settings). `docs/configuration.md` is
//! this table rendered (`sagapayctl settings`), and a test keeps it so.
//!
//! At start a service refuses a `SAGAPAY_*` variable that is not in the catalogue, naming the
//! closest known one: a misspelt setting must not fall back to its default without a word.
//! Variables of other services count as known (one environment file may serve all six).

use secrecy::SecretString;

/// A setting's default, as the table shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultValue {
    /// A literal value: what the code uses when the variable is unset or empty.
    Value(&'static str),
    /// A default computed by the code, described.
    Computed(&'static str),
    /// Unset means off or absent.
    Unset,
}

#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub name: &'static str,
    pub default: DefaultValue,
    /// Who reads it: services, tools, scripts.
    pub read_by: &'static str,
    pub meaning: &'static str,
    /// A credential: held as a `secrecy` secret, never logged or printed.
    pub secret: bool,
}

macro_rules! catalogue {
    ($($name:literal, $default:expr, $read_by:literal, $secret:literal, $meaning:literal;)+) => {
        /// Every setting, in the order of the documentation.
        pub const ALL: &[Setting] = &[$(Setting {
            name: $name,
            default: $default,
            read_by: $read_by,
            meaning: $meaning,
            secret: $secret,
        },)+];
    };
}

use DefaultValue::{Computed, Unset, Value};

catalogue! {
    // Every service.
    "SAGAPAY_ENVIRONMENT", Value("development"), "every service", false,
        "`development` or `production` (production refuses development credentials and insecure connections)";
    "SAGAPAY_NAMESPACE", Value("sagapay"), "every service, sagapayctl, loadtest", false,
        "prefix of topics, consumer groups and databases";
    "SAGAPAY_INSTANCE_ID", Unset, "every service", false,
        "this instance's id when several run (1-32 of `a-z 0-9 _ -`): Kafka static group membership, the `service_instance` label of metrics and logs";
    "SAGAPAY_POSTGRES_URL", Value("postgres://sagapay:sagapay@%2Fvar%2Frun%2Fpostgresql:5432"), "every service, sagapayctl, loadtest", true,
        "PostgreSQL server, without database: its Unix socket (a host that is a percent-encoded path) or, over a network, `?sslmode=verify-full&sslrootcert=<CA>` (production accepts nothing else)";
    "SAGAPAY_DB_POOL_SIZE", Value("16"), "every service", false,
        "connections in the service's pool";
    "SAGAPAY_DB_STATEMENT_TIMEOUT_MS", Value("30000"), "every service", false,
        "longest any statement may run (lock waits included)";
    "SAGAPAY_KAFKA_BROKERS", Value("127.0.0.1:9092"), "every service, sagapayctl, loadtest", false,
        "Kafka bootstrap servers";
    "SAGAPAY_KAFKA_PARTITIONS", Value("12"), "every service", false,
        "partitions of the channels a service creates (the most instances of one service that can share a channel)";
    "SAGAPAY_KAFKA_REPLICATION_FACTOR", Computed("1 (development), 3 (production)"), "every service", false,
        "replicas of the topics a service creates";
    "SAGAPAY_KAFKA_MIN_REPLICATION_FACTOR", Computed("3"), "every service (production)", false,
        "production refuses to start with a replication factor below it";
    "SAGAPAY_KAFKA_PRODUCER_CONFIG", Unset, "every service", false,
        "librdkafka producer properties over ours, `k=v,k=v`";
    "SAGAPAY_KAFKA_CONSUMER_CONFIG", Unset, "every service", false,
        "librdkafka consumer properties over ours, `k=v,k=v`";
    "SAGAPAY_KAFKA_CLIENT_CONFIG", Unset, "every service, sagapayctl", false,
        "librdkafka properties of every client, `k=v,k=v`: the connection's security (`security.protocol=SASL_SSL,sasl.mechanisms=SCRAM-SHA-512,...`)";
    "SAGAPAY_KAFKA_SASL_PASSWORD_FILE", Unset, "every service", false,
        "a file holding `sasl.password` (kept out of the environment)";
    "SAGAPAY_HTTP_ADDR", Computed("`127.0.0.1:<service port>`"), "every service", false,
        "where the HTTP API listens";
    "SAGAPAY_HTTP_ADDR_FILE", Unset, "every service", false,
        "a file where the service writes the address its HTTP API is bound to, once bound: how a supervisor that gave port 0 in `SAGAPAY_HTTP_ADDR` (the tests' harness) learns the port";
    "SAGAPAY_HTTP_BODY_LIMIT_BYTES", Value("1048576"), "every service", false,
        "largest request body any route reads (413 above; the gateway's routes allow 16 KiB)";
    "SAGAPAY_HTTP_REQUEST_TIMEOUT_MS", Value("30000"), "every service", false,
        "longest a request may take: then 503 `request_timeout`, and the handler is dropped (its transaction rolls back)";
    "SAGAPAY_CONSUMER_LANES", Computed("CPUs, 2 to 8"), "every service", false,
        "Kafka messages a service handles at once (by payment; below the pool size); the ledger always uses one";
    "SAGAPAY_CONSUMER_BATCH", Value("32"), "every service", false,
        "most messages waiting for a lane that share one transaction (1: none)";
    "SAGAPAY_CONSUMER_LINGER_MS", Value("2"), "every service", false,
        "how long a lane that found more than one message waiting waits for more before its transaction starts (a lane that found one never waits; 0: never)";
    "SAGAPAY_CONSUMER_RETRY_ATTEMPTS", Value("10"), "every service", false,
        "a message failing transiently is dead-lettered as RETRY_EXHAUSTED once it failed this many times and for `SAGAPAY_CONSUMER_RETRY_BUDGET_MS`";
    "SAGAPAY_CONSUMER_RETRY_BUDGET_MS", Value("120000"), "every service", false,
        "see `SAGAPAY_CONSUMER_RETRY_ATTEMPTS`";
    "SAGAPAY_OUTBOX_CLAIM_TIMEOUT_MS", Value("30000"), "every service", false,
        "how long a crashed relay's claimed rows wait before another relay takes them";
    "SAGAPAY_OUTBOX_LINGER_MS", Value("2"), "every service", false,
        "how long a busy relay (its last claim found more than one row) waits after a commit's notification before it claims, so the commits of that moment share one claim and one produce (0: never)";
    "SAGAPAY_STARTUP_WAIT_MS", Value("120000"), "every service", false,
        "how long a starting service waits for PostgreSQL and Kafka to answer (retrying with back-off, logging what it waits for) before it gives up and exits; Redis is never waited for";
    // Credentials.
    "SAGAPAY_OPS_KEY", Computed("`dev-ops-secret` in development; required in production"), "orchestrator, risk, ledger, provider-adapter, console, sagapayctl", true,
        "the operators' key (`x-ops-key`) of the ops routes, 16+ characters";
    "SAGAPAY_SERVICE_SIGNING_KEY", Computed("the service's development key in development; required in production"), "gateway", true,
        "this service's own Ed25519 private key (base64 of its 32-byte seed; `sagapayctl service-key generate` makes one): its calls to other services are signed with it, as itself";
    "SAGAPAY_SERVICE_SIGNING_KEY_FILE", Unset, "gateway", false,
        "a file holding `SAGAPAY_SERVICE_SIGNING_KEY` instead (not both)";
    "SAGAPAY_TRUSTED_CALLERS", Computed("the development keys of the callers in development; required in production"), "orchestrator, notification", false,
        "the services that may call this one and their Ed25519 public keys: `gateway=<base64>[ <base64>]`, comma separated by service; any key listed verifies (two during a rotation)";
    // Gateway.
    "SAGAPAY_ORCHESTRATOR_URL", Value("http://127.0.0.1:8001"), "gateway, console, sagapayctl", false,
        "the orchestrator's internal API";
    "SAGAPAY_NOTIFICATION_URL", Value("http://127.0.0.1:8005"), "gateway, console", false,
        "the notification service's internal API (webhooks and events)";
    "SAGAPAY_ORCHESTRATOR_TIMEOUT_MS", Value("10000"), "gateway", false,
        "longest wait for the orchestrator's answer before the client gets 503 (and may retry with the same idempotency key)";
    "SAGAPAY_DEV_API_KEY", Value("dev-secret"), "gateway (development)", true,
        "the development merchant's key, seeded in development only";
    "SAGAPAY_MAX_AMOUNT_CENTS", Computed("about $1,000,000 in each currency"), "gateway", false,
        "the largest payment per currency in its minor units, `USD:100000000,JPY:150000000,...` (a bare number is USD's, the others follow by exponent)";
    "SAGAPAY_RATE_LIMIT_PER_SECOND", Value("100"), "gateway", false,
        "requests per second per API key, per gateway instance";
    "SAGAPAY_RATE_LIMIT_BURST", Value("200"), "gateway", false,
        "requests at once per API key above the rate";
    "SAGAPAY_REDIS_URL", Value("redis://127.0.0.1:6379"), "gateway", true,
        "the idempotency fast path's Redis (`rediss://:password@host` in production); empty: off, only the durable guard";
    "SAGAPAY_TLS_CERT_FILE", Unset, "every service", false,
        "the service's certificate chain (PEM): with `SAGAPAY_TLS_KEY_FILE`, its API is served over HTTPS only; reloaded when the file changes";
    "SAGAPAY_TLS_KEY_FILE", Unset, "every service", false,
        "the private key (PEM) of `SAGAPAY_TLS_CERT_FILE`";
    "SAGAPAY_SERVICE_CA_FILE", Unset, "gateway, sagapayctl", false,
        "the CA (PEM) that signed the services' certificates: the only one trusted for calls to them over https";
    "SAGAPAY_REDIS_CA_FILE", Unset, "gateway", false,
        "a PEM CA trusted for `rediss://` besides the system's (a Redis behind a deployment's own CA)";
    "SAGAPAY_KEY_CACHE_TTL_MS", Value("1000"), "gateway", false,
        "how long a key found is trusted without the database (at most 1000; 0: off), so how long a revoked key may still work";
    "SAGAPAY_KEY_LOOKUPS_PER_SECOND", Value("20"), "gateway", false,
        "database lookups of uncached keys per client address";
    "SAGAPAY_KEY_LOOKUPS_BURST", Value("100"), "gateway", false,
        "lookups at once per client address above the rate";
    "SAGAPAY_KEY_LOOKUPS_CONCURRENT", Value("4"), "gateway", false,
        "uncached key lookups at once on the instance, all addresses together; beyond it, 429 at once";
    // Orchestrator.
    "SAGAPAY_DEADLINE_CREATED_MS", Value("60000"), "orchestrator", false,
        "how long a payment may wait for risk's decision before the step is sent again";
    "SAGAPAY_DEADLINE_RISK_REVIEW_MS", Value("86400000"), "orchestrator", false,
        "how long a payment may wait for an operator's review";
    "SAGAPAY_DEADLINE_APPROVED_MS", Value("120000"), "orchestrator", false,
        "how long an approved payment may wait for its authorization";
    "SAGAPAY_DEADLINE_AUTHORIZED_MS", Value("120000"), "orchestrator", false,
        "how long an authorized payment may wait for its capture";
    "SAGAPAY_AUTHORIZATION_EXPIRY_MS", Value("604800000"), "orchestrator", false,
        "a manual-capture payment not captured within this is voided (CANCELED)";
    "SAGAPAY_DEADLINE_CAPTURED_MS", Value("60000"), "orchestrator", false,
        "how long a captured payment may wait for its ledger posting";
    "SAGAPAY_DEADLINE_COMPENSATING_MS", Value("600000"), "orchestrator", false,
        "how long a compensation (void or refund) may take";
    "SAGAPAY_DEADLINE_REFUND_MS", Value("600000"), "orchestrator", false,
        "how long a merchant refund may take";
    "SAGAPAY_DEADLINE_NUDGES", Value("3"), "orchestrator", false,
        "re-sends of an overdue step before the payment needs an operator";
    "SAGAPAY_SWEEP_INTERVAL_MS", Value("1000"), "orchestrator", false,
        "how often the sweeper looks for payments past their deadline";
    "SAGAPAY_ADMISSION_MAX_IN_FLIGHT", Value("256"), "orchestrator", false,
        "payments in the automatic pipeline (waiting for risk, authorization, capture or posting; not those parked for an operator) from which new payments are refused with 503 `overloaded` and `Retry-After` (0: off); reads, refunds, captures and replays still pass";
    "SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT", Computed("half of SAGAPAY_ADMISSION_MAX_IN_FLIGHT"), "orchestrator", false,
        "one merchant's payments in the automatic pipeline from which its new payments are refused with 503 `overloaded` (header `sagapay-overload-scope: merchant`) while other merchants are served (0: no share of its own); `sagapayctl merchant limit` sets it per merchant";
    // Risk.
    "SAGAPAY_RISK_REVIEW_AMOUNT_CENTS", Computed("about $1,000 in each currency"), "risk", false,
        "amounts above it go to review, per currency, `USD:100000,JPY:150000,...` (a bare number is USD's)";
    "SAGAPAY_RISK_VELOCITY_REVIEW_PER_HOUR", Value("10"), "risk", false,
        "a customer's payments in an hour above which one goes to review";
    "SAGAPAY_RISK_VELOCITY_DENY_PER_HOUR", Value("20"), "risk", false,
        "a customer's payments in an hour above which one is denied";
    "SAGAPAY_RISK_RECENT_FAILURES_REVIEW", Value("3"), "risk", false,
        "a customer's recent failed payments from which one goes to review";
    // Provider adapter.
    "SAGAPAY_PROVIDER_TIMEOUT_MS", Value("2000"), "provider-adapter", false,
        "longest wait for one provider call";
    "SAGAPAY_PROVIDER_SLOW_MS", Value("500"), "provider-adapter", false,
        "how long the simulated provider's slow card takes";
    "SAGAPAY_PROVIDER_BACKOFF_MS", Value("1000,2000,4000"), "provider-adapter", false,
        "the short retry schedule (attempts = entries + 1)";
    "SAGAPAY_PROVIDER_LONG_BACKOFF_MS", Value("5000,15000,30000,60000,120000,300000,600000"), "provider-adapter", false,
        "then, for captures, voids and refunds, the long schedule (its last step repeating)";
    "SAGAPAY_PROVIDER_GIVE_UP_MS", Value("86400000"), "provider-adapter", false,
        "captures, voids and refunds are given up after this (RETRY_EXHAUSTED dead letter)";
    "SAGAPAY_PROVIDER_AUTHORIZE_GIVE_UP_MS", Value("0"), "provider-adapter", false,
        "how long an authorization with an unknown outcome is asked about (0: once)";
    "SAGAPAY_PROVIDER_CLAIM_TIMEOUT_MS", Value("60000"), "provider-adapter", false,
        "a crashed worker's operations are taken over after this";
    "SAGAPAY_PROVIDER_MERCHANT_MAX_IN_FLIGHT", Value("32"), "provider-adapter", false,
        "provider operations of one merchant in flight at once per instance, of its 64 (0: no bound of its own): a merchant whose calls hang holds at most this many places, the others keep the rest";
    // Ledger.
    "SAGAPAY_LEDGER_CURRENCIES", Computed("every supported currency"), "ledger", false,
        "currencies the ledger keeps accounts in, comma separated";
    "SAGAPAY_FEE_BPS", Value("290"), "ledger", false,
        "the platform fee in basis points of each capture";
    "SAGAPAY_FEE_FIXED_MINOR", Computed("30 minor units, per currency by exponent"), "ledger", false,
        "the fixed part of the fee, per currency, `USD:30,JPY:30,...`";
    // Notification.
    "SAGAPAY_WEBHOOK_TIMEOUT_MS", Value("10000"), "notification", false,
        "longest wait for a webhook receiver's answer";
    "SAGAPAY_WEBHOOK_RETRY_INITIAL_MS", Value("60000"), "notification", false,
        "the first retry's wait, doubled per failure";
    "SAGAPAY_WEBHOOK_RETRY_MAX_MS", Value("21600000"), "notification", false,
        "the longest wait between retries";
    "SAGAPAY_WEBHOOK_RETRY_FOR_MS", Value("259200000"), "notification", false,
        "no retry later than this after the event";
    "SAGAPAY_WEBHOOK_DISABLE_AFTER_MS", Value("259200000"), "notification", false,
        "an endpoint without a success for this long is disabled";
    "SAGAPAY_WEBHOOK_ENDPOINT_CONCURRENCY", Value("4"), "notification", false,
        "deliveries in flight per endpoint";
    "SAGAPAY_WEBHOOK_MERCHANT_CONCURRENCY", Value("16"), "notification", false,
        "webhook deliveries in flight per merchant, all its endpoints together, per instance (one merchant's slow endpoints hold at most this many of the instance's 64)";
    "SAGAPAY_WEBHOOK_CA_FILE", Unset, "notification", false,
        "a PEM bundle of CAs trusted for webhook receivers besides the public roots (Mozilla's): for receivers behind a private CA";
    "SAGAPAY_WEBHOOK_ALLOWED_NETWORKS", Unset, "notification (production)", false,
        "networks webhook receivers may be in although they are not public, CIDRs comma separated (a private network the operator trusts); https is still required";
    "SAGAPAY_EVENT_RETENTION_DAYS", Value("30"), "notification", false,
        "how long events and their deliveries are kept";
    // Console.
    "SAGAPAY_GATEWAY_URL", Value("http://127.0.0.1:8000"), "console", false,
        "the gateway, whose readiness and metrics the console shows";
    "SAGAPAY_RISK_URL", Value("http://127.0.0.1:8002"), "console", false,
        "risk's ops routes (the review queue) and its readiness and metrics";
    "SAGAPAY_PROVIDER_ADAPTER_URL", Value("http://127.0.0.1:8003"), "console", false,
        "the provider adapter's readiness and metrics";
    "SAGAPAY_LEDGER_URL", Value("http://127.0.0.1:8004"), "console", false,
        "the ledger's readiness and metrics";
    "SAGAPAY_CONSOLE_SESSION_IDLE_MS", Value("1800000"), "console", false,
        "an operator's session ends after this long without a request";
    "SAGAPAY_CONSOLE_SESSION_MAX_MS", Value("28800000"), "console", false,
        "an operator's session ends this long after its login, whatever happens";
    "SAGAPAY_CONSOLE_BEHIND_TLS_PROXY", Value("false"), "console (production)", false,
        "`true`: a proxy in front of the console terminates TLS (production refuses to serve the console without TLS: its own certificate, or this)";
    // Scripts and tests.
    "SAGAPAY_LOCAL_DIR", Computed("`.local` in the checkout"), "scripts", false,
        "where the scripts keep the local stack's data and logs";
    "SAGAPAY_TEST_PG_CA", Computed("the local stack's CA"), "tests", false,
        "the CA the production-mode tests verify PostgreSQL with";
}

/// The catalogue's entry for `name`.
pub fn find(name: &str) -> Option<&'static Setting> {
    ALL.iter().find(|s| s.name == name)
}

/// The catalogue's entry for a name the code reads; a name missing from the catalogue is a
/// bug (a setting nobody documented), so it panics.
pub(crate) fn known(name: &str) -> &'static Setting {
    find(name).unwrap_or_else(|| panic!("{name} is read but not in the settings catalogue"))
}

/// Refuses a name the catalogue does not have (a bug: a setting nobody documented) and, in
/// debug builds, a default the code passes that is not the one the catalogue documents.
pub(crate) fn check_default(name: &str, code_default: &dyn std::fmt::Display) {
    let setting = known(name);
    if cfg!(debug_assertions) {
        if let Value(documented) = setting.default {
            let code_default = code_default.to_string();
            assert_eq!(
                documented, code_default,
                "{name}: the catalogue documents the default {documented:?}, the code uses {code_default:?}"
            );
        }
    }
}

/// `name` as a secret, or `None` when unset or empty.
pub fn secret(name: &str) -> Option<SecretString> {
    let setting = known(name);
    debug_assert!(setting.secret, "{name} is not a secret in the catalogue");
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

/// A `SAGAPAY_*` variable no SagaPay program reads, with the known name it is closest to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown {
    pub name: String,
    pub closest: Option<&'static str>,
}

impl std::fmt::Display for Unknown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.closest {
            Some(c) => write!(f, "{} (did you mean {c}?)", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// The `SAGAPAY_*` names among `names` that are not in the catalogue. `SAGAPAY_ROOT` is the
/// scripts' own and never exported to a service, but tolerated.
pub fn unknown<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<Unknown> {
    let mut unknown: Vec<Unknown> = names
        .into_iter()
        .filter(|n| n.starts_with("SAGAPAY_") && *n != "SAGAPAY_ROOT" && find(n).is_none())
        .map(|n| Unknown {
            name: n.to_owned(),
            closest: closest(n),
        })
        .collect();
    unknown.sort_by(|a, b| a.name.cmp(&b.name));
    unknown
}

/// The unknown `SAGAPAY_*` variables of this process's environment.
pub fn unknown_in_environment() -> Vec<Unknown> {
    let names: Vec<String> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .collect();
    unknown(names.iter().map(String::as_str))
}

/// The known name within three edits of `name`, if one is.
fn closest(name: &str) -> Option<&'static str> {
    ALL.iter()
        .map(|s| (edit_distance(name, s.name), s.name))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, n)| n)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// The catalogue as the Markdown document `docs/configuration.md`.
pub fn markdown() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         Every setting SagaPay reads, from the environment. Generated from the catalogue in \
         `libs/service-kit/src/settings.rs` by `sagapayctl settings`; a test keeps this file \
         equal to it. A service refuses to start with a `SAGAPAY_*` variable that is not \
         listed here (a misspelt name would otherwise fall back to the default silently). \
         Empty counts as unset. Secrets are held as `secrecy` secrets and never printed; \
         production refuses the development defaults of the credentials.\n\n\
         | variable | default | read by | meaning |\n|---|---|---|---|\n",
    );
    for s in ALL {
        let default = match s.default {
            Value(v) if s.secret => format!("`{v}` (development)"),
            Value(v) => format!("`{v}`"),
            Computed(text) => text.to_owned(),
            Unset => "unset".to_owned(),
        };
        let meaning = if s.secret {
            format!("{} (secret)", s.meaning)
        } else {
            s.meaning.to_owned()
        };
        out.push_str(&format!(
            "| `{}` | {default} | {} | {meaning} |\n",
            s.name, s.read_by
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_prefixed() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        assert!(names.iter().all(|n| n.starts_with("SAGAPAY_")));
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(names.len(), before, "a setting is listed twice");
    }

    #[test]
    fn unknown_names_are_reported_with_the_closest_known_one() {
        let found = unknown([
            "SAGAPAY_RATE_LIMT_BURST",
            "SAGAPAY_NAMESPACE",
            "SAGAPAY_ROOT",
            "PATH",
            "SAGAPAY_SOMETHING_ELSE_ENTIRELY",
        ]);
        assert_eq!(
            found,
            vec![
                Unknown {
                    name: "SAGAPAY_RATE_LIMT_BURST".into(),
                    closest: Some("SAGAPAY_RATE_LIMIT_BURST"),
                },
                Unknown {
                    name: "SAGAPAY_SOMETHING_ELSE_ENTIRELY".into(),
                    closest: None,
                },
            ]
        );
        assert_eq!(
            found[0].to_string(),
            "SAGAPAY_RATE_LIMT_BURST (did you mean SAGAPAY_RATE_LIMIT_BURST?)"
        );
    }

    #[test]
    #[should_panic(expected = "the catalogue documents the default \"16\", the code uses \"17\"")]
    fn a_default_the_code_uses_must_be_the_documented_one() {
        check_default("SAGAPAY_DB_POOL_SIZE", &17);
    }

    #[test]
    #[should_panic(expected = "is read but not in the settings catalogue")]
    fn reading_an_undocumented_setting_is_a_bug() {
        known(&format!("SAGAPAY_{}", "NOT_DOCUMENTED"));
    }

    #[test]
    fn the_configuration_document_is_the_catalogue() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let written = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            written == markdown(),
            "docs/configuration.md differs from the catalogue: run \
             `cargo run -p sagapayctl -- settings > docs/configuration.md`"
        );
    }

    /// Every `SAGAPAY_*` name in the workspace's Rust sources, scripts and infrastructure is
    /// in the catalogue (so nothing reads or sets an undocumented one).
    #[test]
    fn every_name_the_workspace_uses_is_catalogued() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
        let mut missing = std::collections::BTreeSet::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    if !name.starts_with('.') && name != "target" {
                        stack.push(path);
                    }
                    continue;
                }
                let scanned = [".rs", ".sh", ".yml", ".yaml", ".toml"];
                // This file names misspelt settings on purpose (in its tests).
                if !scanned.iter().any(|ext| name.ends_with(ext))
                    || path.ends_with("src/settings.rs")
                {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for (i, _) in text.match_indices("SAGAPAY_") {
                    let word: String = text[i..]
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    // A family (`SAGAPAY_DEADLINE_*`) in prose, not a name.
                    if text[i + word.len()..].starts_with('*') {
                        continue;
                    }
                    let word = word.trim_end_matches('_');
                    if word.len() > "SAGAPAY_".len()
                        && word != "SAGAPAY_ROOT"
                        && find(word).is_none()
                    {
                        missing.insert(format!("{word} ({})", path.display()));
                    }
                }
            }
        }
        assert!(missing.is_empty(), "not in the catalogue: {missing:?}");
    }
}
