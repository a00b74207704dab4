//! Faults under load, and what must hold after them: the parts of the chaos tests
//! (`tests/e2e/tests/e2e/chaos.rs`) and of `scripts/chaos.sh`'s long soaks.
//!
//! A [`ChaosStack`] is the six services as processes against a Kafka cluster and a
//! PostgreSQL server of its own (so restarting them touches no other test), every service a
//! static group member (`SAGAPAY_INSTANCE_ID`). [`Load`] creates payments at a steady rate
//! through the gateway the way a merchant's client would: a request that gets no answer, or
//! a 5xx, is sent again with the same idempotency key until it is accepted. [`ChaosStack::verify`]
//! then checks every accepted payment ended, exactly once everywhere, and measures how long
//! payments took and how long any consumer went without consuming.

use crate::servers::{KafkaCluster, PgServer};
use crate::{eventually, Processes, DEV_API_KEY, SERVICES};
use sagapay_domain::Namespace;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The services that consume (all but the gateway).
pub const CONSUMERS: [&str; 5] = [
    "orchestrator",
    "risk",
    "provider-adapter",
    "ledger",
    "notification",
];

/// The whole system on servers of its own.
pub struct ChaosStack {
    pub ns: Namespace,
    pub kafka: KafkaCluster,
    pub postgres: PgServer,
    pub procs: Processes,
    pub http: reqwest::Client,
}

impl ChaosStack {
    /// Starts a Kafka cluster of `brokers` nodes, a PostgreSQL server and the six services,
    /// each on ports from `ports`, and waits until every service is ready.
    pub async fn start(brokers: usize, ports: std::ops::Range<u16>) -> ChaosStack {
        let (kafka, postgres) = tokio::task::block_in_place(|| {
            (
                KafkaCluster::start(brokers, ports.clone())
                    .expect("a Kafka cluster of the test's own"),
                PgServer::start(ports.clone()).expect("a PostgreSQL server of the test's own"),
            )
        });
        let ns = crate::fresh_namespace();
        let bootstrap = kafka.bootstrap();
        let pg = postgres.url();
        let replicas = if brokers == 3 { "3" } else { "1" };
        let procs = Processes::new(
            ns.clone(),
            ports,
            &[
                ("SAGAPAY_KAFKA_BROKERS", bootstrap.as_str()),
                ("SAGAPAY_KAFKA_REPLICATION_FACTOR", replicas),
                ("SAGAPAY_POSTGRES_URL", pg.as_str()),
                // Static group membership, with one instance each.
                ("SAGAPAY_INSTANCE_ID", "1"),
                // The key's own rate limit out of the way: the load's retries (every 200 ms,
                // for each payment in flight while a service restarts) exceed 100/s at 20
                // payments/s; a 429 left is the key lookups' (the defect the check is for).
                ("SAGAPAY_RATE_LIMIT_PER_SECOND", "100000"),
                ("SAGAPAY_RATE_LIMIT_BURST", "100000"),
                // One merchant's load: its share as deep as the pipeline's limit (256), as
                // before shares existed, so the times measure recovery from the faults, not a
                // merchant's share during them (shares have tests of their own: parked.rs).
                ("SAGAPAY_ADMISSION_MERCHANT_MAX_IN_FLIGHT", "256"),
                // What a failed run needs to be understood (the logs are kept then).
                ("RUST_LOG", "info,librdkafka=warn,rdkafka=warn,sqlx=warn"),
            ],
        );
        let mut stack = ChaosStack {
            ns,
            kafka,
            postgres,
            procs,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        };
        stack.procs.start_all();
        stack.procs.wait_all_ready(&stack.http).await;
        stack
    }

    pub fn gateway(&self) -> String {
        self.procs.url("gateway")
    }

    /// A pool on a service's database on this stack's server.
    pub async fn db(&self, service: &str) -> PgPool {
        let url = sagapay_messaging::postgres_url::with_database(
            &self.postgres.url(),
            &self.ns.database(service),
        );
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("database of {service}: {e}"))
    }

    /// SIGKILL of `service`, then a new process at once (what its supervisor would do).
    pub fn kill_and_restart(&mut self, service: &'static str) {
        self.procs.kill(service);
        self.procs.start(service);
    }

    /// Waits until every payment of `ids` is SETTLED, FAILED or REVERSED (at most `timeout`).
    pub async fn wait_terminal(&self, ids: &[Uuid], timeout: Duration) {
        let orchestrator = self.db("orchestrator").await;
        let polls = std::sync::atomic::AtomicU32::new(0);
        eventually(timeout, "every accepted payment terminal", || async {
            let open: Vec<(Uuid, String)> = sqlx::query_as(
                "SELECT payment_id, status FROM payments
                  WHERE payment_id = ANY($1) AND status NOT IN ('SETTLED', 'FAILED', 'REVERSED')
                  LIMIT 5",
            )
            .bind(ids)
            .fetch_all(&orchestrator)
            .await
            .ok()?;
            let n = polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !open.is_empty() && n % 100 == 99 {
                eprintln!("chaos: still open (first 5): {open:?}");
            }
            open.is_empty().then_some(())
        })
        .await;
    }

    /// Everything that must hold once the faults stopped and every accepted payment ended;
    /// returns the measurements. `faults` is the time window faults were injected in.
    pub async fn verify(&self, accepted: &[Accepted], faults: (Instant, Instant)) -> Report {
        let ids: Vec<Uuid> = accepted.iter().map(|a| a.payment_id).collect();
        let rate_limited: u32 = accepted.iter().map(|a| a.rate_limited).sum();
        assert_eq!(
            rate_limited, 0,
            "the merchant's valid key got 429 (around gateway restarts?)"
        );
        self.wait_terminal(&ids, Duration::from_secs(120)).await;
        let orchestrator = self.db("orchestrator").await;
        let statuses: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, count(*) FROM payments WHERE payment_id = ANY($1) GROUP BY status",
        )
        .bind(&ids)
        .fetch_all(&orchestrator)
        .await
        .unwrap();
        let settled: i64 = statuses
            .iter()
            .filter(|(s, _)| s == "SETTLED")
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            settled as usize,
            ids.len(),
            "every payment of the load settles (good cards, ordinary amounts): {statuses:?}"
        );
        // A service SIGKILLed near the end may still be starting: every service ready first
        // (the promise), then the stack quiet, since counts read the moment the last payment
        // ended could miss a duplicate still in flight.
        for s in SERVICES {
            self.procs.wait_ready(&self.http, s).await;
        }
        self.wait_quiet().await;
        self.exactly_once(&ids).await;
        self.books_agree().await;
        Report {
            accepted: accepted.len(),
            to_terminal_during_faults: self
                .times_to_terminal(&orchestrator, accepted, faults)
                .await,
            longest_gap: self.longest_consumer_gaps(faults).await,
        }
    }

    /// One authorization and one capture at the provider, one posting, one merchant event and
    /// one notification per payment; nothing else.
    async fn exactly_once(&self, ids: &[Uuid]) {
        let checks: [(&str, &str); 5] = [
            (
                "provider-adapter",
                "SELECT payment_id, count(*) FROM simulated_provider_operations
                  WHERE payment_id = ANY($1) AND operation = 'AUTHORIZE' GROUP BY payment_id",
            ),
            (
                "provider-adapter",
                "SELECT payment_id, count(*) FROM simulated_provider_operations
                  WHERE payment_id = ANY($1) AND operation = 'CAPTURE' GROUP BY payment_id",
            ),
            (
                "ledger",
                "SELECT payment_id, count(*) FROM journal_transactions
                  WHERE payment_id = ANY($1) GROUP BY payment_id",
            ),
            (
                "notification",
                "SELECT payment_id, count(*) FROM notifications
                  WHERE payment_id = ANY($1) GROUP BY payment_id",
            ),
            (
                "notification",
                "SELECT payment_id, count(*) FROM merchant_events
                  WHERE payment_id = ANY($1) GROUP BY payment_id",
            ),
        ];
        for (service, sql) in checks {
            let pool = self.db(service).await;
            let counts: Vec<(Uuid, i64)> = sqlx::query_as(sql)
                .bind(ids)
                .fetch_all(&pool)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
            assert_eq!(
                counts.len(),
                ids.len(),
                "{service}: one row per payment: {sql}"
            );
            let more: Vec<_> = counts.iter().filter(|(_, n)| *n != 1).collect();
            assert!(
                more.is_empty(),
                "{service}: exactly one each: {sql}: {more:?}"
            );
            let others: i64 = sqlx::query_scalar(
                &sql.replace("payment_id, count(*)", "count(*)")
                    .replace("= ANY($1)", "<> ALL($1)")
                    .replace(" GROUP BY payment_id", ""),
            )
            .bind(ids)
            .fetch_one(&pool)
            .await
            .unwrap();
            assert_eq!(
                others, 0,
                "{service}: nothing for payments nobody made: {sql}"
            );
        }
    }

    /// The ledger balances, and the provider's books, the payments and the ledger agree.
    async fn books_agree(&self) {
        let ledger = self.db("ledger").await;
        let unbalanced: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries
               GROUP BY transaction_id
              HAVING sum(CASE direction WHEN 'DEBIT' THEN amount_minor ELSE 0 END)
                  <> sum(CASE direction WHEN 'CREDIT' THEN amount_minor ELSE 0 END)) t",
        )
        .fetch_one(&ledger)
        .await
        .unwrap();
        assert_eq!(unbalanced, 0, "every journal transaction balances");
        let report = sagapayctl::reconcile::run(
            &sagapayctl::reconcile::Databases::of(&self.postgres.url(), &self.ns),
            &sagapayctl::reconcile::Window {
                settling: Duration::ZERO,
                ..Default::default()
            },
        )
        .await
        .expect("reconciliation runs");
        assert!(
            report.differences.is_empty(),
            "three-way reconciliation is clean: {:?}",
            report.differences
        );
    }

    /// Waits until the stack is quiet (see [`crate::wait_quiet`]).
    async fn wait_quiet(&self) {
        let mut services = Vec::new();
        for s in SERVICES {
            services.push((s, self.procs.url(s), self.db(s).await));
        }
        crate::wait_quiet(&self.http, &services).await;
    }

    /// Time from creation to the terminal state of the payments created while faults were
    /// injected, from the orchestrator's own clock.
    async fn times_to_terminal(
        &self,
        orchestrator: &PgPool,
        accepted: &[Accepted],
        faults: (Instant, Instant),
    ) -> Vec<Duration> {
        let during: Vec<Uuid> = accepted
            .iter()
            .filter(|a| a.sent_at >= faults.0 && a.sent_at <= faults.1)
            .map(|a| a.payment_id)
            .collect();
        let ms: Vec<f64> = sqlx::query_scalar(
            "SELECT (EXTRACT(EPOCH FROM (t.occurred_at - p.created_at)) * 1000)::float8
               FROM payments p
               JOIN payment_timeline t ON t.payment_id = p.payment_id AND t.to_state = p.status
              WHERE p.payment_id = ANY($1)",
        )
        .bind(&during)
        .fetch_all(orchestrator)
        .await
        .unwrap();
        let mut times: Vec<Duration> = ms
            .into_iter()
            .map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0))
            .collect();
        times.sort();
        times
    }

    /// Per consuming service, the longest time between two events it committed while the
    /// faults ran (under steady load every service has events all the time, so a gap is time
    /// it was not consuming: killed and restarting, fenced, or waiting for the broker).
    async fn longest_consumer_gaps(&self, faults: (Instant, Instant)) -> Vec<(String, Duration)> {
        let window_s = faults.1.duration_since(faults.0).as_secs_f64();
        let ago_s = faults.1.elapsed().as_secs_f64();
        let mut gaps = Vec::new();
        for service in CONSUMERS {
            let pool = self.db(service).await;
            let gap_ms: Option<f64> = sqlx::query_scalar(
                "SELECT max(gap) FROM (
                   SELECT (EXTRACT(EPOCH FROM processed_at - lag(processed_at)
                           OVER (ORDER BY processed_at)) * 1000)::float8 AS gap
                     FROM inbox
                    WHERE processed_at BETWEEN now() - make_interval(secs => $1 + $2)
                                           AND now() - make_interval(secs => $2)) g",
            )
            .bind(window_s)
            .bind(ago_s)
            .fetch_one(&pool)
            .await
            .unwrap();
            gaps.push((
                service.to_owned(),
                Duration::from_secs_f64(gap_ms.unwrap_or(0.0) / 1000.0),
            ));
        }
        gaps
    }
}

/// A payment the gateway accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub payment_id: Uuid,
    /// When its first request was sent.
    pub sent_at: Instant,
    /// Requests it took (more than one: the gateway was down or answered 5xx).
    pub attempts: u32,
    /// Answers 429 among them (a valid key within its rate limit should never get one).
    pub rate_limited: u32,
}

/// Payments created at a steady rate until stopped.
pub struct Load {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<Accepted>>,
}

impl Load {
    /// Starts creating `rate` payments a second through `gateway`; keys are `<prefix>-<n>`.
    pub fn start(http: reqwest::Client, gateway: String, rate: f64, prefix: &str) -> Load {
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let prefix = prefix.to_owned();
        let task = tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut payments = tokio::task::JoinSet::new();
            let mut n = 0u64;
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = pace.tick() => {}
                }
                n += 1;
                let (http, gateway, key) = (http.clone(), gateway.clone(), format!("{prefix}-{n}"));
                payments.spawn(async move { pay(&http, &gateway, &key).await });
            }
            let mut accepted = Vec::new();
            while let Some(done) = payments.join_next().await {
                accepted.push(done.expect("a payment's client task"));
            }
            accepted
        });
        Load { stop, task }
    }

    /// Stops creating payments and returns those accepted (waiting for the requests still
    /// being retried).
    pub async fn finish(self) -> Vec<Accepted> {
        self.stop.cancel();
        self.task.await.expect("load task")
    }
}

/// Creates one payment the way a careful client does: the same idempotency key until the
/// gateway accepts it (no answer, 5xx, 429 and 409 `idempotency_request_in_progress` are
/// retried every 200 ms, for two minutes).
async fn pay(http: &reqwest::Client, gateway: &str, key: &str) -> Accepted {
    let sent_at = Instant::now();
    let body = serde_json::json!({
        "customer_id": format!("cust-{key}"), "amount_cents": 1_000,
        "currency": "USD", "idempotency_key": key
    });
    let mut attempts = 0;
    let mut rate_limited = 0;
    let mut last = String::new();
    while sent_at.elapsed() < Duration::from_secs(120) {
        attempts += 1;
        let sent = http
            .post(format!("{gateway}/payments"))
            .header("x-api-key", DEV_API_KEY)
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status() == 201 || resp.status() == 200 => {
                let created: serde_json::Value = resp.json().await.expect("JSON body");
                let id = created["payment_id"].as_str().expect("payment_id");
                return Accepted {
                    payment_id: Uuid::parse_str(id).expect("a UUID"),
                    sent_at,
                    attempts,
                    rate_limited,
                };
            }
            Ok(resp) if resp.status().is_server_error() || resp.status() == 429 => {
                rate_limited += u32::from(resp.status() == 429);
                last = format!(
                    "{} {}",
                    resp.status(),
                    resp.text().await.unwrap_or_default()
                );
            }
            Ok(resp) if resp.status() == 409 => {
                let text = resp.text().await.unwrap_or_default();
                assert!(
                    text.contains("idempotency_request_in_progress"),
                    "payment {key} refused: 409 {text}"
                );
                last = format!("409 {text}");
            }
            Ok(resp) => panic!(
                "payment {key} refused: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            ),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("payment {key} not accepted within 2 minutes; last answer: {last}");
}

/// What a chaos run measured.
#[derive(Debug)]
pub struct Report {
    pub accepted: usize,
    /// Sorted.
    pub to_terminal_during_faults: Vec<Duration>,
    pub longest_gap: Vec<(String, Duration)>,
}

impl Report {
    pub fn percentile(&self, p: f64) -> Duration {
        let t = &self.to_terminal_during_faults;
        if t.is_empty() {
            return Duration::ZERO;
        }
        t[((t.len() - 1) as f64 * p).round() as usize]
    }

    pub fn longest_gap(&self) -> Duration {
        self.longest_gap
            .iter()
            .map(|(_, d)| *d)
            .max()
            .unwrap_or_default()
    }

    /// One line for the test's output and the soak's log.
    pub fn summary(&self) -> String {
        let gaps: HashMap<&str, u128> = self
            .longest_gap
            .iter()
            .map(|(s, d)| (s.as_str(), d.as_millis()))
            .collect();
        format!(
            "accepted {} payments, {} during faults: time to terminal p50 {:.2} s, p99 {:.2} s, max {:.2} s; longest consumer gap {:.2} s (ms by service: {gaps:?})",
            self.accepted,
            self.to_terminal_during_faults.len(),
            self.percentile(0.5).as_secs_f64(),
            self.percentile(0.99).as_secs_f64(),
            self.to_terminal_during_faults
                .last()
                .copied()
                .unwrap_or_default()
                .as_secs_f64(),
            self.longest_gap().as_secs_f64(),
        )
    }
}
