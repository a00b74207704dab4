//! Test harness: the six services started in-process against the real PostgreSQL, Redis and
//! Kafka of `scripts/stack.sh`, isolated by a fresh namespace (its own databases, topics and
//! consumer groups), so tests run in parallel against one broker and one server.

pub mod browser;
pub mod chaos;
pub mod servers;
pub mod tls;

use anyhow::Context;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use sagapay_domain::{Envelope, Namespace};
use sagapay_service_kit::{CommonConfig, ServiceHandle};
use serde_json::Value;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::future::Future;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub const DEV_API_KEY: &str = "dev-secret";
pub const DEV_OPS_KEY: &str = "dev-ops-secret";

/// Who signs a request of [`TestStack::signed_request`] (a service, with its own key), and
/// when.
pub struct Signer<'a> {
    pub key: &'a sagapay_service_kit::ServiceSigner,
    /// Unix seconds.
    pub signed_at: i64,
}

impl<'a> Signer<'a> {
    /// `key`'s service signing now.
    pub fn now(key: &'a sagapay_service_kit::ServiceSigner) -> Self {
        Self {
            key,
            signed_at: chrono::Utc::now().timestamp(),
        }
    }
}

/// A namespace no other test uses.
pub fn fresh_namespace() -> Namespace {
    let id = Uuid::new_v4().simple().to_string();
    Namespace::parse(&format!("t_{}", &id[..12])).expect("valid namespace")
}

/// The PostgreSQL server the tests use (`SAGAPAY_POSTGRES_URL`, without a database).
pub fn postgres_server_url() -> String {
    use secrecy::ExposeSecret;
    sagapay_service_kit::config::postgres_url_from_env()
        .expose_secret()
        .to_owned()
}

pub fn config(service: &'static str, ns: &Namespace) -> CommonConfig {
    let mut c = CommonConfig::for_test(service, ns.clone());
    // Keep claims short so tests of crashed relays do not wait long.
    c.relay.claim_timeout = Duration::from_secs(2);
    c
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub use sagapay_service_kit::SERVICES;

/// One row of a payment's timeline, as `GET /payments/{id}` shows it.
#[derive(Debug, Clone)]
pub struct TimelineRow {
    /// TRANSITION or STEP.
    pub kind: String,
    pub from_state: Option<String>,
    pub to_state: String,
    pub reason: String,
}

pub struct TestStack {
    pub ns: Namespace,
    pub options: StackOptions,
    pub gateway: Option<ServiceHandle>,
    pub orchestrator: Option<ServiceHandle>,
    pub others: Vec<ServiceHandle>,
    pub http: reqwest::Client,
    /// This stack's share of the machine (see [`StackOptions::alone`]); released when the
    /// stack is dropped.
    _share: MachineShare,
    /// Set by [`TestStack::teardown`]; a stack dropped without it (a failed assertion, an
    /// early return) is cleaned up by `Drop`.
    torn_down: bool,
}

/// A stack dropped without [`TestStack::teardown`] (its test failed, or returned early) still
/// leaves nothing behind: its namespace's databases (their connections terminated) and topics
/// are dropped here. `teardown` remains the way to end a test that passed, because it also
/// checks that every service stops cleanly.
impl Drop for TestStack {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        let ns = self.ns.clone();
        // Drop runs inside the test's runtime, which cannot block on a future: the cleanup gets
        // a thread and a runtime of its own, and is waited for.
        let cleanup =
            std::thread::spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(cleanup_namespace(&ns)),
                    Err(e) => eprintln!("cleaning up {}: no runtime: {e}", ns.as_str()),
                }
            });
        let _ = cleanup.join();
    }
}

/// Stacks share the machine; a test that measures latency runs alone. Every stack holds a
/// read share, a stack started `alone` the write share: it waits for the running stacks to
/// end, and stacks started after it wait for it (the lock is fair).
static MACHINE: std::sync::LazyLock<std::sync::Arc<tokio::sync::RwLock<()>>> =
    std::sync::LazyLock::new(Default::default);

/// Holds the machine alone until dropped (stacks started meanwhile wait, and this waits for
/// the running ones): for tests that load the whole machine or measure time.
pub async fn machine_alone() -> tokio::sync::OwnedRwLockWriteGuard<()> {
    MACHINE.clone().write_owned().await
}

enum MachineShare {
    Shared(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
    Alone(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
}

/// Which parts of the stack to start differently.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Start the orchestrator without its outbox relay.
    pub orchestrator_relay_disabled: bool,
    /// Currencies the ledger can post (default: all).
    pub ledger_currencies: Option<Vec<sagapay_domain::Currency>>,
    /// Gateway rate limit per API key: (per second, burst). Default: practically none.
    pub gateway_rate_limit: Option<(u32, u32)>,
    /// Gateway's database lookups of uncached keys per client address: (per second, burst).
    /// Default: practically none.
    pub gateway_key_lookups: Option<(u32, u32)>,
    /// Gateway's uncached key lookups at once on the instance (default: practically none).
    pub gateway_key_lookups_concurrent: Option<usize>,
    /// Gateway's Redis for the idempotency fast path (default: the stack's Redis).
    pub gateway_redis_url: Option<String>,
    /// Every consumer's retry budget: (attempts, time) before RETRY_EXHAUSTED.
    pub consumer_retry: Option<(u32, Duration)>,
    /// The orchestrator's deadlines (default: the service's defaults).
    pub deadlines: Option<sagapay_orchestrator::deadlines::Deadlines>,
    /// Run with no other test stack on the machine (for tests that measure latency).
    pub alone: bool,
    /// The notification service's webhook settings (default: the tests' short retries).
    pub webhooks: Option<sagapay_notification::WebhookSettings>,
    /// The provider adapter's retry policy (default: the tests' default, 1 s calls).
    pub provider_retry: Option<sagapay_provider_adapter::policy::RetrySettings>,
    /// The orchestrator's request timeout (default: the service's).
    pub orchestrator_request_timeout: Option<Duration>,
    /// The orchestrator's admission limit, payments in flight (default: the service's).
    pub admission_max_in_flight: Option<i64>,
    /// A merchant's default share of it (default: the service's, half of the limit; 0: none).
    pub admission_merchant_max_in_flight: Option<i64>,
}

impl StackOptions {
    /// The configuration of `service` in `ns` with these options applied.
    pub fn config(&self, service: &'static str, ns: &Namespace) -> CommonConfig {
        let mut c = config(service, ns);
        if let Some((attempts, budget)) = self.consumer_retry {
            c.consumer_retry_attempts = attempts;
            c.consumer_retry_budget = budget;
        }
        c
    }
}

async fn start_ledger(
    ns: &Namespace,
    options: &StackOptions,
    currencies: Option<Vec<sagapay_domain::Currency>>,
) -> anyhow::Result<ServiceHandle> {
    let mut cfg = sagapay_ledger::Config::for_test(options.config(sagapay_ledger::SERVICE, ns));
    if let Some(c) = currencies {
        cfg.currencies = c;
    }
    sagapay_ledger::start(cfg).await
}

impl TestStack {
    pub async fn spawn() -> TestStack {
        Self::spawn_with(StackOptions::default()).await
    }

    pub async fn spawn_with(options: StackOptions) -> TestStack {
        let share = if options.alone {
            MachineShare::Alone(MACHINE.clone().write_owned().await)
        } else {
            MachineShare::Shared(MACHINE.clone().read_owned().await)
        };
        let ns = fresh_namespace();
        // The gateway calls both: they start first.
        let (orchestrator, notification) = tokio::join!(
            start_orchestrator(&ns, &options, !options.orchestrator_relay_disabled),
            sagapay_notification::start({
                let mut n = sagapay_notification::Config::for_test(
                    options.config(sagapay_notification::SERVICE, &ns),
                );
                if let Some(w) = &options.webhooks {
                    n.webhooks = w.clone();
                }
                n
            }),
        );
        let notification = notification.expect("notification starts");
        let (risk, provider, ledger, gateway) = tokio::join!(
            sagapay_risk::start(sagapay_risk::Config::for_test(
                options.config(sagapay_risk::SERVICE, &ns)
            )),
            sagapay_provider_adapter::start({
                let mut p = sagapay_provider_adapter::Config::for_test(
                    options.config(sagapay_provider_adapter::SERVICE, &ns),
                );
                if let Some(retry) = &options.provider_retry {
                    p.retry = retry.clone();
                }
                p
            }),
            start_ledger(&ns, &options, options.ledger_currencies.clone()),
            sagapay_gateway::start({
                let mut g = sagapay_gateway::Config::for_test(
                    options.config(sagapay_gateway::SERVICE, &ns),
                    orchestrator.base_url(),
                );
                g.notification_url = notification.base_url();
                if let Some((per_second, burst)) = options.gateway_rate_limit {
                    g.rate_limit_per_second = per_second;
                    g.rate_limit_burst = burst;
                }
                if let Some((per_second, burst)) = options.gateway_key_lookups {
                    g.key_lookups_per_second = per_second;
                    g.key_lookups_burst = burst;
                }
                if let Some(concurrent) = options.gateway_key_lookups_concurrent {
                    g.key_lookups_concurrent = concurrent;
                }
                if let Some(url) = &options.gateway_redis_url {
                    g.idempotency.redis_url = Some(secrecy::SecretString::from(url.clone()));
                }
                g
            }),
        );
        TestStack {
            ns,
            options,
            gateway: Some(gateway.expect("gateway starts")),
            orchestrator: Some(orchestrator),
            others: vec![
                risk.expect("risk starts"),
                provider.expect("provider-adapter starts"),
                ledger.expect("ledger starts"),
                notification,
            ],
            http: reqwest::Client::new(),
            _share: share,
            torn_down: false,
        }
    }

    /// Starts the operators' console on this stack (its own database in the stack's
    /// namespace, the services' URLs of this stack); stop it with `ServiceHandle::stop`.
    pub async fn start_console(&self) -> ServiceHandle {
        self.start_console_with(|_| {}).await
    }

    /// [`TestStack::start_console`] with `change` applied to its configuration.
    pub async fn start_console_with(
        &self,
        change: impl FnOnce(&mut sagapay_console::Config),
    ) -> ServiceHandle {
        let services = sagapay_console::ServiceUrls(
            SERVICES.iter().map(|s| (*s, self.service_url(s))).collect(),
        );
        let mut config = sagapay_console::Config::for_test(
            self.options.config(sagapay_console::SERVICE, &self.ns),
            services,
        );
        change(&mut config);
        sagapay_console::start(config)
            .await
            .expect("the console starts")
    }

    pub fn gateway_url(&self) -> String {
        self.gateway.as_ref().expect("gateway running").base_url()
    }

    pub fn service_url(&self, service: &str) -> String {
        match service {
            "gateway" => self.gateway_url(),
            "orchestrator" => self.orchestrator.as_ref().expect("running").base_url(),
            other => self
                .others
                .iter()
                .find(|h| h.service == other)
                .map(|h| h.base_url())
                .unwrap_or_else(|| panic!("{other} is not running")),
        }
    }

    /// A pool on a service's database, for assertions.
    pub async fn db(&self, service: &'static str) -> PgPool {
        use secrecy::ExposeSecret;
        let url = config(service, &self.ns).database_url();
        PgPoolOptions::new()
            .max_connections(2)
            .connect(url.expose_secret())
            .await
            .expect("connect to service database")
    }

    /// A pool on the server's `postgres` database, for what no service database can do
    /// (switching a service's database off and on, watching its sessions).
    pub async fn admin_pool(&self) -> PgPool {
        let url =
            sagapay_messaging::postgres_url::with_database(&postgres_server_url(), "postgres");
        PgPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("connect to postgres")
    }

    /// Stops the orchestrator and starts a new one (relay enabled) on the same namespace and
    /// address, so the gateway reaches it where it reached the old one.
    pub async fn restart_orchestrator(&mut self) {
        let old = self.orchestrator.take().expect("orchestrator running");
        let addr = old.addr;
        old.stop().await.expect("orchestrator stops cleanly");
        self.orchestrator = Some(start_orchestrator_at(&self.ns, &self.options, true, addr).await);
    }

    /// Stops the ledger and starts a new one that can post every currency.
    pub async fn restart_ledger_with_all_currencies(&mut self) {
        let at = self
            .others
            .iter()
            .position(|h| h.service == sagapay_ledger::SERVICE)
            .expect("ledger running");
        let old = self.others.remove(at);
        old.stop().await.expect("ledger stops cleanly");
        let fresh = start_ledger(&self.ns, &self.options, None)
            .await
            .expect("ledger starts");
        self.others.push(fresh);
    }

    /// `sagapayctl reconcile` over the whole namespace, nothing left out as still settling.
    pub async fn reconcile(&self) -> sagapayctl::reconcile::Report {
        reconcile(&self.ns).await
    }

    /// Reconciliation finds no difference and compared all `accepted` payments (see
    /// [`assert_reconciled`]).
    pub async fn reconciled(&self, accepted: usize) -> sagapayctl::reconcile::Report {
        let report = self.reconcile().await;
        assert_reconciled(&report, accepted);
        report
    }

    /// POST /payments with `api_key` (another merchant's than the development one).
    pub async fn post_payment_as(&self, api_key: &str, body: &Value) -> reqwest::Response {
        self.http
            .post(format!("{}/payments", self.gateway_url()))
            .header("x-api-key", api_key)
            .json(body)
            .send()
            .await
            .expect("POST /payments")
    }

    /// A new merchant with its first API key, made the way `sagapayctl merchant create` makes
    /// them: `(merchant_id, key)`.
    pub async fn merchant(&self, name: &str) -> (Uuid, String) {
        let pool = self.db("gateway").await;
        let (merchant, key) = sagapay_gateway::keys::create_merchant(&pool, name)
            .await
            .expect("create merchant");
        (merchant.merchant_id, key.secret)
    }

    /// Publishes raw bytes to a topic of the namespace, as a producer outside SagaPay would.
    pub async fn publish_raw(&self, event_type: &str, key: &str, bytes: &[u8]) {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let producer: FutureProducer = self.kafka().producer("e2e-publisher").expect("producer");
        producer
            .send(
                FutureRecord::to(&self.ns.topic(event_type))
                    .key(key)
                    .payload(bytes),
                rdkafka::util::Timeout::After(Duration::from_secs(10)),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("publish");
    }

    pub fn kafka(&self) -> sagapay_messaging::KafkaSettings {
        config("gateway", &self.ns).kafka
    }

    /// Messages ever written to the channel that carries `event_type` in this namespace: the
    /// sum of its partitions' high watermarks.
    pub async fn messages_in_channel_of(&self, event_type: &str) -> i64 {
        let (kafka, topic) = (self.kafka(), self.ns.topic(event_type));
        tokio::task::spawn_blocking(move || {
            let probe = kafka
                .consumer(&format!("{topic}.probe.{}", Uuid::new_v4()), "e2e-probe")
                .expect("consumer");
            let timeout = Duration::from_secs(10);
            let metadata = probe
                .fetch_metadata(Some(&topic), timeout)
                .expect("topic metadata");
            metadata.topics()[0]
                .partitions()
                .iter()
                .map(|p| {
                    probe
                        .fetch_watermarks(&topic, p.id(), timeout)
                        .expect("watermarks")
                        .1
                })
                .sum()
        })
        .await
        .expect("watermarks task")
    }

    /// Takes the simulated provider down for `seconds` (0 ends it), for `operations` or all.
    pub async fn provider_outage(&self, seconds: u64, operations: Option<&[&str]>) {
        let mut body = serde_json::json!({ "seconds": seconds });
        if let Some(ops) = operations {
            body["operations"] = serde_json::json!(ops);
        }
        let resp = self
            .http
            .post(format!(
                "{}/dev/provider/outage",
                self.service_url("provider-adapter")
            ))
            .header("x-ops-key", DEV_OPS_KEY)
            .json(&body)
            .send()
            .await
            .expect("POST /dev/provider/outage");
        assert_eq!(
            resp.status(),
            200,
            "{}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// POST /payments as a careful client (see [`create_payment_at`]).
    pub async fn create_payment(&self, body: Value) -> (reqwest::StatusCode, Value) {
        create_payment_at(&self.http, &self.gateway_url(), &body).await
    }

    /// Creates a payment that must be accepted (201) and returns its id.
    pub async fn create_payment_id(&self, body: Value) -> String {
        let (status, created) = self.create_payment(body).await;
        assert_eq!(status, 201, "{created}");
        created["payment_id"]
            .as_str()
            .expect("payment_id")
            .to_owned()
    }

    /// Creates a payment (customer `cust-<key>`, idempotency key `key`) and waits until it is
    /// SETTLED; its id.
    pub async fn settled_payment(&self, key: &str, amount_minor: i64, currency: &str) -> String {
        let pid = self
            .create_payment_id(serde_json::json!({
                "customer_id": format!("cust-{key}"), "amount_cents": amount_minor,
                "currency": currency, "idempotency_key": key
            }))
            .await;
        self.wait_for_status(&pid, "SETTLED", Duration::from_secs(40))
            .await;
        pid
    }

    pub async fn get_payment(&self, payment_id: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}/payments/{payment_id}", self.gateway_url()))
            .header("x-api-key", DEV_API_KEY)
            .send()
            .await
            .expect("GET /payments/{id}");
        assert!(resp.status().is_success(), "GET payment: {}", resp.status());
        resp.json().await.expect("JSON body")
    }

    /// `POST {risk}/ops/reviews/{payment_id}/{action}` with the ops key.
    pub async fn review(
        &self,
        payment_id: &str,
        action: &str,
        reviewed_by: &str,
    ) -> (reqwest::StatusCode, Value) {
        let resp = self
            .http
            .post(format!(
                "{}/ops/reviews/{payment_id}/{action}",
                self.service_url("risk")
            ))
            .header("x-ops-key", DEV_OPS_KEY)
            .json(&serde_json::json!({ "reviewed_by": reviewed_by }))
            .send()
            .await
            .expect("POST review decision");
        let status = resp.status();
        (status, resp.json().await.expect("JSON body"))
    }

    /// A request to `service` signed by `signer`, acting for `merchant` (what the gateway
    /// sends the orchestrator; tests use it to call the internal API the gateway's way, or to
    /// forge variations of it).
    pub fn signed_request(
        &self,
        service: &str,
        signer: &Signer<'_>,
        method: reqwest::Method,
        path_and_query: &str,
        merchant: Option<Uuid>,
        body: Option<&Value>,
    ) -> reqwest::RequestBuilder {
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap())
            .unwrap_or_default();
        let signed = signer.key.sign(
            service,
            method.as_str(),
            path_and_query,
            merchant,
            &bytes,
            signer.signed_at,
        );
        let mut req = self.http.request(
            method,
            format!("{}{path_and_query}", self.service_url(service)),
        );
        for (name, value) in signed {
            req = req.header(name, value);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json").body(bytes);
        }
        req
    }

    /// `GET` on the ledger's ops API (`path` from the root), with the ops key: status and body.
    pub async fn ledger_get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.service_url("ledger")))
            .header("x-ops-key", DEV_OPS_KEY)
            .send()
            .await
            .expect("GET on the ledger");
        let status = resp.status().as_u16();
        (status, resp.json().await.expect("JSON body"))
    }

    /// The payment's timeline as `(from_state, to_state, reason)`.
    pub async fn timeline(&self, payment_id: &str) -> Vec<TimelineRow> {
        self.get_payment(payment_id).await["timeline"]
            .as_array()
            .expect("timeline")
            .iter()
            .map(|t| {
                let text = |k: &str| t[k].as_str().unwrap_or_default().to_owned();
                TimelineRow {
                    kind: text("kind"),
                    from_state: t["from_state"].as_str().map(str::to_owned),
                    to_state: text("to_state"),
                    reason: text("reason"),
                }
            })
            .collect()
    }

    /// Polls the payment until its status is `status`.
    pub async fn wait_for_status(
        &self,
        payment_id: &str,
        status: &str,
        timeout: Duration,
    ) -> Value {
        eventually(
            timeout,
            &format!("payment {payment_id} to be {status}"),
            || async {
                let p = self.get_payment(payment_id).await;
                (p["status"] == status).then_some(p)
            },
        )
        .await
    }

    /// The payment as the API's own type (`GET /payments/{id}`, parsed into
    /// `sagapay_api_models::Payment`: an answer the type does not describe fails here).
    pub async fn payment(&self, payment_id: &str) -> sagapay_api_models::Payment {
        let body = self.get_payment(payment_id).await;
        serde_json::from_value(body.clone())
            .unwrap_or_else(|e| panic!("GET /payments/{payment_id} is not a Payment ({e}): {body}"))
    }

    /// Waits until the payment is `status` (at most `timeout`) and returns it typed.
    pub async fn wait_for(
        &self,
        payment_id: &str,
        status: sagapay_domain::PaymentStatus,
        timeout: Duration,
    ) -> sagapay_api_models::Payment {
        eventually(
            timeout,
            &format!("payment {payment_id} to be {status}"),
            || async {
                let p = self.payment(payment_id).await;
                (p.status == status).then_some(p)
            },
        )
        .await
    }

    /// Waits until every service of the stack is quiet (see [`wait_quiet`]).
    pub async fn wait_quiet(&self) {
        let mut services = Vec::new();
        for s in SERVICES {
            services.push((s, self.service_url(s), self.db(s).await));
        }
        wait_quiet(&self.http, &services).await;
    }

    /// The value of one sample of a service's `/metrics`, 0 when absent.
    pub async fn metric(&self, service: &str, name_and_labels: &str) -> f64 {
        metric_at(&self.http, &self.service_url(service), name_and_labels).await
    }

    /// Stops every service and drops the namespace's databases and topics.
    pub async fn teardown(mut self) {
        let mut handles: Vec<ServiceHandle> = self.others.drain(..).collect();
        handles.extend(self.gateway.take());
        handles.extend(self.orchestrator.take());
        for h in handles {
            let name = h.service;
            if let Err(e) = h.stop().await {
                panic!("{name} did not stop cleanly: {e:#}");
            }
        }
        cleanup_namespace(&self.ns).await;
        self.torn_down = true;
    }
}

async fn start_orchestrator(
    ns: &Namespace,
    options: &StackOptions,
    relay_enabled: bool,
) -> ServiceHandle {
    let addr = config(sagapay_orchestrator::SERVICE, ns).http_addr;
    start_orchestrator_at(ns, options, relay_enabled, addr).await
}

async fn start_orchestrator_at(
    ns: &Namespace,
    options: &StackOptions,
    relay_enabled: bool,
    addr: std::net::SocketAddr,
) -> ServiceHandle {
    let mut common = options.config(sagapay_orchestrator::SERVICE, ns);
    common.http_addr = addr;
    if let Some(timeout) = options.orchestrator_request_timeout {
        common.http_limits.request_timeout = timeout;
    }
    let mut config = sagapay_orchestrator::Config::for_test(common);
    config.relay_enabled = relay_enabled;
    if let Some(deadlines) = &options.deadlines {
        config.deadlines = deadlines.clone();
    }
    if let Some(limit) = options.admission_max_in_flight {
        config.admission_max_in_flight = limit;
        config.admission_merchant_max_in_flight =
            sagapay_orchestrator::admission::Admission::default_share(limit);
    }
    if let Some(share) = options.admission_merchant_max_in_flight {
        config.admission_merchant_max_in_flight = share;
    }
    sagapay_orchestrator::start(config)
        .await
        .expect("orchestrator starts")
}

/// POST /payments with the development key, as a careful merchant does it: a 503
/// `overloaded` (admission control: the pipeline is behind) is retried with the same body and
/// idempotency key after its `Retry-After`, for up to a minute; any other answer is returned.
pub async fn create_payment_at(
    http: &reqwest::Client,
    gateway: &str,
    body: &Value,
) -> (reqwest::StatusCode, Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let resp = http
            .post(format!("{gateway}/payments"))
            .header("x-api-key", DEV_API_KEY)
            .json(body)
            .send()
            .await
            .expect("POST /payments");
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let answer: Value = resp.json().await.expect("JSON body");
        let overloaded = status == 503 && answer["error"]["code"] == "overloaded";
        if !overloaded || std::time::Instant::now() >= deadline {
            return (status, answer);
        }
        // The back-off the server asked for (a client's retry policy, not a synchronisation).
        tokio::time::sleep(Duration::from_secs(retry_after.unwrap_or(1))).await;
    }
}

/// A binary of the workspace, built next to the test binary (`cargo build --bins`, which
/// `scripts/test.sh` runs before the tests).
/// The workspace's root directory.
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn target_binary(name: &str) -> std::path::PathBuf {
    // target/debug/deps/e2e-<hash> -> target/debug/<name>
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the binaries first (cargo build --bins; scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// The command that runs `service` (one of `SERVICES`) from the workspace's one binary,
/// `sagapay <service>`, of the profile the tests were built in.
pub fn service_command(service: &str) -> std::process::Command {
    let mut command = std::process::Command::new(target_binary("sagapay"));
    command.arg(service);
    command
}

/// How a service started as a process tells where it listens: it binds port 0 and writes the
/// address the kernel gave it to a file (`SAGAPAY_HTTP_ADDR_FILE`). No port is picked free by
/// the test and handed to the process later, when another program may have taken it.
pub struct ReportedAddr {
    file: std::path::PathBuf,
}

impl ReportedAddr {
    /// Makes `command` bind port 0 on `host` and report the address to a file of its own.
    pub fn listen(command: &mut std::process::Command, host: std::net::IpAddr) -> ReportedAddr {
        let file = std::env::temp_dir().join(format!("sagapay-addr-{}", Uuid::new_v4().simple()));
        Self::listen_at(command, std::net::SocketAddr::new(host, 0), file)
    }

    /// Makes `command` bind `addr` (port 0: any) and report the address bound to `file`.
    fn listen_at(
        command: &mut std::process::Command,
        addr: std::net::SocketAddr,
        file: std::path::PathBuf,
    ) -> ReportedAddr {
        let _ = std::fs::remove_file(&file);
        command
            .env("SAGAPAY_HTTP_ADDR", addr.to_string())
            .env("SAGAPAY_HTTP_ADDR_FILE", &file);
        ReportedAddr { file }
    }

    /// The address, if the service reported it yet.
    fn read(&self) -> Option<std::net::SocketAddr> {
        std::fs::read_to_string(&self.file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until the service reports its address (a minute at most); an error when `child`
    /// exits first, or the minute passes.
    pub fn wait(&self, child: &mut std::process::Child) -> Result<std::net::SocketAddr, String> {
        blocking(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(addr) = self.read() {
                    return Ok(addr);
                }
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!("the service exited ({status}) before it listened"));
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "no address reported in {} within a minute",
                        self.file.display()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    }
}

impl Drop for ReportedAddr {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Runs `f`, which blocks its thread, off the runtime's workers when it runs on a
/// multi-threaded runtime (a current-thread runtime has no other worker to lose).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The six services as real processes (the debug binaries), logging to files in a directory of
/// the test's own. Killed when dropped. With several instances, instance `i` of a service has
/// the id `i` (`SAGAPAY_INSTANCE_ID`) and gateway `i` calls orchestrator `i`; the methods
/// without an instance act on instance 1.
///
/// Ports are bound once, by the services: each binds port 0 on a loopback address of this
/// set's own (127.x.y.z, not 127.0.0.1) and reports the port it got ([`ReportedAddr`]). A
/// service started again binds the address it had, so the gateway still reaches its
/// orchestrator and notification service there; nothing else binds on that address meanwhile
/// (other tests listen on 127.0.0.1, connections to the services come from 127.0.0.1).
pub struct Processes {
    pub ns: Namespace,
    pub log_dir: std::path::PathBuf,
    host: std::net::Ipv4Addr,
    instances: u32,
    started: std::sync::Mutex<std::collections::HashMap<(&'static str, u32), Started>>,
    env: Vec<(String, String)>,
}

/// A service instance started at least once.
struct Started {
    /// The running process (none once killed).
    child: Option<std::process::Child>,
    /// Where its first process said it listens (where every later one listens too).
    addr: Option<std::net::SocketAddr>,
    reported: ReportedAddr,
}

impl Processes {
    /// One instance of every service; `env` is added to every service's environment, with
    /// `{service}` in a value replaced by the service's name (its own Kafka user, say).
    pub fn in_namespace(ns: Namespace, env: &[(&str, &str)]) -> Processes {
        Self::with_instances(ns, env, 1)
    }

    /// `instances` instances of every service.
    pub fn with_instances(ns: Namespace, env: &[(&str, &str)], instances: u32) -> Processes {
        let log_dir = std::env::temp_dir().join(format!("sagapay-processes-{ns}"));
        std::fs::create_dir_all(&log_dir).expect("log directory");
        // 127.1.0.1 to 127.254.255.254: never 127.0.0.1, random enough that two sets of
        // processes running at once do not share one.
        let [a, b, c, ..] = Uuid::new_v4().into_bytes();
        let host = std::net::Ipv4Addr::new(127, 1 + a % 254, b, 1 + c % 254);
        Processes {
            ns,
            log_dir,
            host,
            instances,
            started: Default::default(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    pub fn url(&self, service: &str) -> String {
        self.url_of(service, 1)
    }

    /// The instance's base URL (https when the services are given a certificate); waits until
    /// its first process said where it listens.
    pub fn url_of(&self, service: &str, instance: u32) -> String {
        let tls = self.env.iter().any(|(k, _)| k == "SAGAPAY_TLS_CERT_FILE");
        let scheme = if tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr_of(service, instance))
    }

    /// The loopback address every service of this set listens on (a certificate names it).
    pub fn host(&self) -> std::net::Ipv4Addr {
        self.host
    }

    /// Adds `name=value` to every service's environment, for the processes started after.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_owned(), value.to_owned()));
    }

    fn addr_of(&self, service: &str, instance: u32) -> std::net::SocketAddr {
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let (key, s) = started
            .iter_mut()
            .find(|((s, i), _)| *s == service && *i == instance)
            .unwrap_or_else(|| panic!("{service}/{instance} was never started"));
        if let Some(addr) = s.addr {
            return addr;
        }
        let child = s.child.as_mut().expect("its first process runs");
        let addr = s.reported.wait(child).unwrap_or_else(|e| {
            let log = self
                .log_dir
                .join(format!("{}.log", self.name(key.0, key.1)));
            panic!(
                "{service}/{instance}: {e}; its log ({}):\n{}",
                log.display(),
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        s.addr = Some(addr);
        addr
    }

    fn name(&self, service: &str, instance: u32) -> String {
        if self.instances > 1 {
            format!("{service}.{instance}")
        } else {
            service.to_owned()
        }
    }

    /// Starts the service (instance 1). The gateway starts after the orchestrator and the
    /// notification service, whose addresses it is given.
    pub fn start(&mut self, service: &'static str) {
        self.start_instance(service, 1);
    }

    pub fn start_instance(&mut self, service: &'static str, instance: u32) {
        let name = self.name(service, instance);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{name}.log")))
            .expect("log file");
        let mut command = service_command(service);
        command
            .env("SAGAPAY_NAMESPACE", self.ns.as_str())
            .env("SAGAPAY_KAFKA_PARTITIONS", "2")
            .env("SAGAPAY_DB_POOL_SIZE", "5")
            .env("SAGAPAY_CONSUMER_LANES", "3")
            .env("SAGAPAY_OUTBOX_CLAIM_TIMEOUT_MS", "2000")
            .env("SAGAPAY_PROVIDER_CLAIM_TIMEOUT_MS", "3000")
            .env("SAGAPAY_PROVIDER_TIMEOUT_MS", "1000")
            .env("RUST_LOG", "warn");
        if service == "gateway" {
            command
                .env(
                    "SAGAPAY_ORCHESTRATOR_URL",
                    self.url_of("orchestrator", instance),
                )
                .env(
                    "SAGAPAY_NOTIFICATION_URL",
                    self.url_of("notification", instance),
                );
        }
        if self.instances > 1 {
            command.env("SAGAPAY_INSTANCE_ID", instance.to_string());
        }
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        let previous = started.remove(&(service, instance));
        assert!(
            previous.as_ref().is_none_or(|p| p.child.is_none()),
            "{name} is running"
        );
        // Where its first process listened, or port 0 for the first.
        let addr = previous.and_then(|p| p.addr);
        let reported = ReportedAddr::listen_at(
            &mut command,
            addr.unwrap_or((self.host, 0).into()),
            self.log_dir.join(format!("{name}.addr")),
        );
        let child = command
            .envs(
                self.env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.replace("{service}", service))),
            )
            .stdout(std::process::Stdio::from(
                log.try_clone().expect("log file"),
            ))
            .stderr(std::process::Stdio::from(log))
            .spawn()
            .expect("spawn service");
        started.insert(
            (service, instance),
            Started {
                child: Some(child),
                addr,
                reported,
            },
        );
    }

    /// Starts every instance of every service, the gateways last (see [`Processes::start`]).
    pub fn start_all(&mut self) {
        for i in 1..=self.instances {
            for s in SERVICES.into_iter().filter(|s| *s != "gateway") {
                self.start_instance(s, i);
            }
        }
        for i in 1..=self.instances {
            self.start_instance("gateway", i);
        }
    }

    /// SIGKILL, no warning.
    pub fn kill(&mut self, service: &'static str) {
        self.kill_instance(service, 1);
    }

    pub fn kill_instance(&mut self, service: &'static str, instance: u32) {
        let mut child = self.take_child(service, instance);
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
        child.wait().expect("reaped");
    }

    /// SIGTERM, then waits for the process to exit (a clean shutdown).
    pub fn terminate(&mut self, service: &'static str) {
        let mut child = self.take_child(service, 1);
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().expect("reaped");
    }

    /// The running process of the instance, which keeps its address for the next one (known
    /// first: a process killed before it said where it listens leaves none).
    fn take_child(&mut self, service: &'static str, instance: u32) -> std::process::Child {
        self.addr_of(service, instance);
        let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
        started
            .get_mut(&(service, instance))
            .and_then(|s| s.child.take())
            .unwrap_or_else(|| panic!("{service}/{instance} is not running"))
    }

    pub async fn wait_ready(&self, http: &reqwest::Client, service: &'static str) {
        self.wait_ready_instance(http, service, 1).await;
    }

    pub async fn wait_ready_instance(
        &self,
        http: &reqwest::Client,
        service: &'static str,
        instance: u32,
    ) {
        let url = format!("{}/ready", self.url_of(service, instance));
        eventually(
            Duration::from_secs(60),
            &format!("{service}/{instance} ready"),
            || async {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => Some(()),
                    _ => None,
                }
            },
        )
        .await;
    }

    pub async fn wait_all_ready(&self, http: &reqwest::Client) {
        for i in 1..=self.instances {
            for s in SERVICES {
                self.wait_ready_instance(http, s, i).await;
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        let started = self.started.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, s) in started.drain() {
            if let Some(mut c) = s.child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A free port in `range`, for programs that cannot bind port 0 and say where (Kafka's and
/// PostgreSQL's servers of a test's own, Redis). The port is free when this returns and is
/// bound by the program later, so ranges must not be shared: below Linux's ephemeral range
/// (32768+), where no port-0 bind or outgoing connection lands, and each test's apart from
/// every other's. In use: 10_000..10_500 (production_profile.rs), 13_000..13_500
/// (production.rs), 15_000..19_500 (chaos.rs), 30_000..32_000 (edge.rs).
pub fn free_port(range: std::ops::Range<u16>) -> u16 {
    let width = u128::from(range.end - range.start);
    loop {
        let port = range.start + (Uuid::new_v4().as_u128() % width) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until a stack is quiet: every service's outbox published everything, every consumer
/// read its channels to the end and no provider operation is still to be performed, without a
/// break for longer than consumer lag is reported (every second). Exactly-once counts are read
/// after it: read the moment a threshold is reached, a duplicate arriving a moment later would
/// pass unseen. `services` are
/// each a name, its base URL and a pool on its database.
pub async fn wait_quiet(http: &reqwest::Client, services: &[(&str, String, PgPool)]) {
    let quiet = || async {
        for (service, url, pool) in services {
            let pending: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(pool)
                    .await
                    .ok()?;
            if pending > 0 {
                return None;
            }
            // A provider operation still to be performed (or asked about) is work to come.
            if *service == "provider-adapter" {
                let due: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM provider_operations WHERE status = 'PENDING'",
                )
                .fetch_one(pool)
                .await
                .ok()?;
                if due > 0 {
                    return None;
                }
            }
            // A service that does not answer (restarting) is not quiet.
            let text = http
                .get(format!("{url}/metrics"))
                .send()
                .await
                .ok()?
                .text()
                .await
                .ok()?;
            let lag = metric_samples(&text, "consumer_lag_messages", "");
            if lag.iter().any(|l| *l > 0.0) {
                return None;
            }
        }
        Some(())
    };
    let quiet_since = std::cell::Cell::new(None::<Instant>);
    eventually(
        Duration::from_secs(60),
        "the stack quiet for a second",
        || async {
            if quiet().await.is_none() {
                quiet_since.set(None);
                return None;
            }
            let since = quiet_since.get().unwrap_or_else(Instant::now);
            quiet_since.set(Some(since));
            (since.elapsed() >= Duration::from_millis(1100)).then_some(())
        },
    )
    .await;
}

/// A port of the test's own where nothing answers: connections are accepted and dropped at
/// once (a peer that is down, without relying on a port nobody else uses, such as a default
/// one). Held until the returned guard is dropped.
pub fn dead_peer() -> (u16, std::net::TcpListener) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("address").port();
    let accepting = listener.try_clone().expect("listener");
    std::thread::spawn(move || {
        for conn in accepting.incoming() {
            drop(conn);
        }
    });
    (port, listener)
}

/// `sagapayctl reconcile` over namespace `ns` of the tests' PostgreSQL server, nothing left out
/// as still settling.
pub async fn reconcile(ns: &Namespace) -> sagapayctl::reconcile::Report {
    sagapayctl::reconcile::run(
        &sagapayctl::reconcile::Databases::of(&postgres_server_url(), ns),
        &sagapayctl::reconcile::Window {
            settling: Duration::ZERO,
            ..Default::default()
        },
    )
    .await
    .expect("reconciliation runs")
}

/// No difference, and every one of the `accepted` payments compared: none left out as in
/// flight. An empty `differences` alone passes on a report that compared nothing.
pub fn assert_reconciled(report: &sagapayctl::reconcile::Report, accepted: usize) {
    assert_eq!(report.differences, vec![], "three-way reconciliation");
    assert_eq!(
        (report.payments_checked, report.in_flight),
        (accepted, 0),
        "reconciliation compares every accepted payment, none in flight: {report:?}"
    );
}

/// Drops the databases and topics of a namespace (best effort).
pub async fn cleanup_namespace(ns: &Namespace) {
    let base = config("gateway", ns);
    let _ = sagapay_service_kit::drop_namespace(&postgres_server_url(), &base.kafka, ns).await;
}

/// Makes database `db` refuse every new connection and drops its open ones, or accepts them
/// again: an outage of one service's database while other tests share the server.
pub async fn database_available(admin: &PgPool, db: &str, available: bool) {
    sqlx::query(&format!(
        "ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS {available}"
    ))
    .execute(admin)
    .await
    .expect("ALTER DATABASE");
    if !available {
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(db)
        .execute(admin)
        .await
        .expect("terminate the database's connections");
    }
}

/// `SELECT count(*) …` with the payment id as `$1`.
pub async fn count_rows(pool: &PgPool, sql: &str, payment_id: Uuid) -> i64 {
    sqlx::query_scalar(sql)
        .bind(payment_id)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// One sample of the `/metrics` of the service at `base_url` (0 when absent).
pub async fn metric_at(http: &reqwest::Client, base_url: &str, name_and_labels: &str) -> f64 {
    metric_value(&metrics_text(http, base_url).await, name_and_labels)
}

/// The Prometheus text a service at `base_url` serves on `/metrics`.
pub async fn metrics_text(http: &reqwest::Client, base_url: &str) -> String {
    http.get(format!("{base_url}/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}

/// Every sample of `name` whose labels contain `label` (`""`: all of them).
pub fn metric_samples(text: &str, name: &str, label: &str) -> Vec<f64> {
    let prefix = format!("{name}{{");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(label))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .collect()
}

/// Parses one sample from Prometheus text (0 when absent): `name_and_labels` is everything
/// before the value, e.g. `duplicate_events_skipped_total{event_type="x",service="risk"}`;
/// labels must be given in the order the exposition prints them: the metric's own labels in
/// their declared order, then the registry's `service`.
pub fn metric_value(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            (key == name_and_labels).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}

/// A consumer of `topic` in a fresh group, from the beginning.
pub fn topic_reader(ns: &Namespace, topic: &str) -> anyhow::Result<StreamConsumer> {
    let settings = config("gateway", ns).kafka;
    let consumer =
        settings.consumer(&format!("{}.reader.{}", ns, Uuid::new_v4()), "test-reader")?;
    consumer.subscribe(&[topic]).context("subscribe")?;
    Ok(consumer)
}

/// Reads `topic` until a message satisfies `pred`, or fails after `timeout`.
pub async fn read_until<F>(consumer: &StreamConsumer, timeout: Duration, mut pred: F) -> Vec<u8>
where
    F: FnMut(&[u8]) -> bool,
{
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no matching message within {timeout:?}");
        if let Ok(Ok(msg)) = tokio::time::timeout(left, consumer.recv()).await {
            let payload = msg.payload().unwrap_or_default().to_vec();
            if pred(&payload) {
                return payload;
            }
        }
    }
}

/// The envelopes a service's outbox holds for one payment, oldest first.
pub async fn outbox_envelopes(pool: &PgPool, payment_id: Uuid) -> Vec<(String, Envelope)> {
    let rows: Vec<(String, sqlx::types::Json<Envelope>)> =
        sqlx::query_as("SELECT topic, payload FROM outbox WHERE message_key = $1 ORDER BY id")
            .bind(payment_id.to_string())
            .fetch_all(pool)
            .await
            .expect("read outbox");
    rows.into_iter().map(|(t, e)| (t, e.0)).collect()
}
