//! Process-level: the six services as real processes (the debug binaries, built by
//! `scripts/test.sh` before the tests). The orchestrator and the provider adapter are killed
//! with SIGKILL while payments are in flight, then restarted.

use sagapay_domain::Namespace;
use sagapay_e2e::{cleanup_namespace, eventually, fresh_namespace, DEV_API_KEY, SERVICES};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn binary(service: &str) -> PathBuf {
    sagapay_e2e::target_binary(&format!("sagapay-{service}"))
}

/// A free port from this test's own range, below Linux's ephemeral range (see `free_port`).
fn free_port(taken: &[u16]) -> u16 {
    loop {
        let port = sagapay_e2e::free_port(20_000..30_000);
        if !taken.contains(&port) {
            return port;
        }
    }
}

struct Processes {
    ns: Namespace,
    ports: HashMap<&'static str, u16>,
    children: HashMap<&'static str, Child>,
    log_dir: PathBuf,
}

impl Processes {
    fn start(&mut self, service: &'static str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{service}.log")))
            .expect("log file");
        let child = Command::new(binary(service))
            .env("SAGAPAY_NAMESPACE", self.ns.as_str())
            .env(
                "SAGAPAY_HTTP_ADDR",
                format!("127.0.0.1:{}", self.ports[service]),
            )
            .env(
                "SAGAPAY_ORCHESTRATOR_URL",
                format!("http://127.0.0.1:{}", self.ports["orchestrator"]),
            )
            .env("SAGAPAY_KAFKA_PARTITIONS", "2")
            .env("SAGAPAY_DB_POOL_SIZE", "5")
            .env("SAGAPAY_OUTBOX_CLAIM_TIMEOUT_MS", "2000")
            .env("SAGAPAY_PROVIDER_CLAIM_TIMEOUT_MS", "3000")
            .env("SAGAPAY_PROVIDER_TIMEOUT_MS", "1000")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn service");
        self.children.insert(service, child);
    }

    fn kill(&mut self, service: &'static str) {
        let mut child = self.children.remove(service).expect("running");
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
        child.wait().expect("reaped");
    }

    async fn wait_ready(&self, http: &reqwest::Client, service: &'static str) {
        let url = format!("http://127.0.0.1:{}/ready", self.ports[service]);
        eventually(
            Duration::from_secs(60),
            &format!("{service} ready"),
            || async {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => Some(()),
                    _ => None,
                }
            },
        )
        .await;
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, mut c) in self.children.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_orchestrator_and_provider_adapter_loses_nothing_and_duplicates_nothing() {
    let ns = fresh_namespace();
    let log_dir = std::env::temp_dir().join(format!("sagapay-crash-{ns}"));
    std::fs::create_dir_all(&log_dir).unwrap();
    let mut ports = HashMap::new();
    for s in SERVICES {
        let taken: Vec<u16> = ports.values().copied().collect();
        ports.insert(s, free_port(&taken));
    }
    let mut procs = Processes {
        ports,
        ns: ns.clone(),
        children: HashMap::new(),
        log_dir,
    };
    let http = reqwest::Client::new();
    for s in SERVICES {
        procs.start(s);
    }
    for s in SERVICES {
        procs.wait_ready(&http, s).await;
    }

    let gateway = format!("http://127.0.0.1:{}", procs.ports["gateway"]);
    let mut ids = Vec::new();
    for i in 0..60 {
        // One in six needs two retries at the provider: some are mid-back-off at the kill.
        let method = if i % 6 == 0 {
            "pm_card_fail_twice"
        } else {
            "pm_card_ok"
        };
        let resp = http
            .post(format!("{gateway}/payments"))
            .header("x-api-key", DEV_API_KEY)
            .json(&json!({
                "customer_id": format!("crash-{i}"), "amount_cents": 1_000 + i,
                "currency": "USD", "idempotency_key": format!("crash-{i}"),
                "payment_method": method
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201);
        let body: serde_json::Value = resp.json().await.unwrap();
        ids.push(body["payment_id"].as_str().unwrap().to_owned());
    }
    // Mid-flight: kill both without warning, then bring them back.
    let orch_url = sagapay_e2e::config("gateway", &ns).postgres_url.clone()
        + "/"
        + &ns.database("orchestrator");
    let orch = PgPoolOptions::new()
        .max_connections(1)
        .connect(&orch_url)
        .await
        .unwrap();
    procs.kill("orchestrator");
    procs.kill("provider-adapter");
    let in_flight: i64 =
        sqlx::query_scalar("SELECT count(*) FROM payments WHERE status <> 'SETTLED'")
            .fetch_one(&orch)
            .await
            .unwrap();
    assert!(
        in_flight > 0,
        "the kill must happen with payments in flight"
    );
    orch.close().await;
    procs.start("orchestrator");
    procs.start("provider-adapter");
    procs.wait_ready(&http, "orchestrator").await;
    procs.wait_ready(&http, "provider-adapter").await;

    for id in &ids {
        eventually(
            Duration::from_secs(120),
            &format!("payment {id} to settle"),
            || async {
                let p: serde_json::Value = http
                    .get(format!("{gateway}/payments/{id}"))
                    .header("x-api-key", DEV_API_KEY)
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                (p["status"] == "SETTLED").then_some(())
            },
        )
        .await;
    }

    let db = |service: &str| {
        let url =
            sagapay_e2e::config("gateway", &ns).postgres_url.clone() + "/" + &ns.database(service);
        async move {
            PgPoolOptions::new()
                .max_connections(1)
                .connect(&url)
                .await
                .unwrap()
        }
    };
    let provider = db("provider-adapter").await;
    let dup_charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT payment_id, operation FROM simulated_provider_operations
                                GROUP BY payment_id, operation HAVING count(*) > 1) d",
    )
    .fetch_one(&provider)
    .await
    .unwrap();
    assert_eq!(dup_charges, 0, "no duplicate provider operation");
    let captures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM simulated_provider_operations WHERE operation = 'CAPTURE'",
    )
    .fetch_one(&provider)
    .await
    .unwrap();
    assert_eq!(captures, 60, "exactly one capture per payment");
    let ledger = db("ledger").await;
    let (postings, payments_posted): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT payment_id) FROM journal_transactions")
            .fetch_one(&ledger)
            .await
            .unwrap();
    assert_eq!(
        (postings, payments_posted),
        (60, 60),
        "exactly one posting per payment"
    );
    let unbalanced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT transaction_id FROM ledger_entries GROUP BY transaction_id
          HAVING sum(CASE direction WHEN 'DEBIT' THEN amount_minor ELSE -amount_minor END) <> 0) u",
    )
    .fetch_one(&ledger)
    .await
    .unwrap();
    assert_eq!(unbalanced, 0);
    let notification = db("notification").await;
    let notified: i64 = eventually(Duration::from_secs(30), "60 notifications", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM notifications")
            .fetch_one(&notification)
            .await
            .unwrap();
        (n >= 60).then_some(n)
    })
    .await;
    assert_eq!(notified, 60);

    provider.close().await;
    ledger.close().await;
    notification.close().await;
    drop(procs);
    cleanup_namespace(&ns).await;
}
