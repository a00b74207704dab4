//! Every query of the dashboards in `dashboards/` is evaluated by a real Prometheus (Debian's
//! package, installed by `scripts/stack.sh`) scraping a running stack, after traffic that
//! exercises every metric they read: settled, retried and reviewed payments, a dead letter, a
//! duplicate delivery, a stale event, an idempotent retry and a refused request. A query that
//! returns nothing (or only NaN) fails the test: a renamed metric or label cannot go unnoticed.
//! The same Prometheus loads the alert rules of `infra/prometheus/alerts.yml`: every rule must
//! be healthy, every expression must evaluate, and the dead letter must fire its alert.

use sagapay_domain::events::RiskApproved;
use sagapay_domain::Envelope;
use sagapay_e2e::{eventually, outbox_envelopes, TestStack, SERVICES};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(60);

/// A Prometheus of this test's own, scraping the stack every second. Killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Prometheus {
    /// Listens on port 0 and is asked where: its log says `msg="Listening on"
    /// address=127.0.0.1:<port>` once bound (a port picked free by the test could be taken
    /// before Prometheus binds it).
    async fn start(targets: &[String]) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("sagapay-prometheus-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let targets: Vec<String> = targets
            .iter()
            .map(|t| format!("'{}'", t.trim_start_matches("http://")))
            .collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - '{}'\n\
             scrape_configs:\n  - job_name: sagapay\n    static_configs:\n      - targets: [{}]\n",
            alert_rules_file().display(),
            targets.join(", ")
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus (installed by scripts/stack.sh)");
        let log = dir.join("prometheus.log");
        // Killed when dropped, also if it never says where it listens.
        let mut prometheus = Prometheus {
            child,
            url: String::new(),
            dir,
        };
        let address = eventually(WAIT, "Prometheus to say where it listens", || async {
            let text = std::fs::read_to_string(&log).ok()?;
            let line = text.lines().find(|l| l.contains("msg=\"Listening on\""))?;
            let address = line.split("address=").nth(1)?.split_whitespace().next()?;
            address.parse::<std::net::SocketAddr>().ok()
        })
        .await;
        prometheus.url = format!("http://{address}");
        prometheus
    }

    /// The query's samples, if Prometheus answered.
    async fn query(&self, http: &reqwest::Client, expr: &str) -> Option<Vec<Value>> {
        let resp = http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .ok()?;
        let body: Value = resp.json().await.ok()?;
        assert_ne!(body["status"], "error", "{expr}: {body}");
        body["data"]["result"].as_array().cloned()
    }
}

/// `infra/prometheus/alerts.yml`.
fn alert_rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/prometheus/alerts.yml")
}

impl Prometheus {
    /// `GET /api/v1/<path>`'s `data`.
    async fn api(&self, http: &reqwest::Client, path: &str) -> Option<Value> {
        let body: Value = http
            .get(format!("{}/api/v1/{path}", self.url))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }
}

/// A sample with a finite value (instant vectors: `value` = [time, "v"]).
fn has_finite_value(samples: &[Value]) -> bool {
    samples.iter().any(|s| {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(f64::is_finite)
    })
}

fn dashboard_queries() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dashboards");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("dashboards/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected the operations and executive dashboards"
    );
    let mut out = Vec::new();
    for file in files {
        let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        for panel in doc["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                out.push((
                    format!(
                        "{} / {}",
                        file.file_name().unwrap().to_string_lossy(),
                        panel["title"].as_str().unwrap()
                    ),
                    target["expr"].as_str().expect("expr").to_owned(),
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let stack = TestStack::spawn().await;
    let prometheus = Prometheus::start(&SERVICES.map(|s| stack.service_url(s))).await;

    let http = reqwest::Client::new();
    eventually(WAIT, "Prometheus to scrape all six services", || async {
        let up = prometheus.query(&http, "sum(up)").await?;
        (up.first()?["value"][1] == "6").then_some(())
    })
    .await;

    // Traffic that moves every metric the dashboards read, in two waves: series are born in
    // the first, and the second moves them while Prometheus watches (a rate needs two
    // different samples).
    let mut settled = Vec::new();
    for wave in 0..2 {
        for (i, method) in ["pm_card_ok", "pm_card_ok", "pm_card_fail_twice"]
            .iter()
            .enumerate()
        {
            let body = json!({"customer_id": format!("cust-dash-{wave}-{i}"), "amount_cents": 1500,
                              "currency": "EUR", "idempotency_key": format!("dash-{wave}-{i}"),
                              "payment_method": method});
            let (status, created) = stack.create_payment(body.clone()).await;
            assert_eq!(status, 201);
            // An idempotent retry (replayed from Redis).
            assert_eq!(stack.create_payment(body).await.0, 201);
            settled.push(created["payment_id"].as_str().unwrap().to_owned());
        }
        for pid in &settled {
            stack.wait_for_status(pid, "SETTLED", WAIT).await;
        }
        if wave == 0 {
            eventually(WAIT, "Prometheus to see the first wave", || async {
                let seen = prometheus
                    .query(&http, "sum(payment_e2e_seconds_count{status=\"SETTLED\"})")
                    .await?;
                (seen.first()?["value"][1] == "3").then_some(())
            })
            .await;
        }
    }
    // A refused request.
    let (status, _) = stack
        .create_payment(
            json!({"customer_id": "c", "amount_cents": -1, "currency": "EUR",
                               "idempotency_key": "dash-bad"}),
        )
        .await;
    assert_eq!(status, 400);
    let payment_id = Uuid::parse_str(&settled[0]).unwrap();
    // A message no consumer can read: dead-lettered.
    stack
        .publish_raw("payments.requested", "dash-poison", b"{not an envelope")
        .await;
    // A duplicate delivery: the payment's own payments.requested again, same event id.
    let orchestrator = stack.db("orchestrator").await;
    let (_, requested) = outbox_envelopes(&orchestrator, payment_id)
        .await
        .into_iter()
        .find(|(t, _)| *t == stack.ns.topic("payments.requested"))
        .expect("payments.requested in the outbox");
    stack
        .publish_raw("payments.requested", &settled[0], &requested.to_json())
        .await;
    // A stale event: a late approval with a new event id for a settled payment.
    let late = Envelope::new(
        payment_id,
        None,
        "late",
        &RiskApproved {
            reason: "late".into(),
        },
    );
    stack
        .publish_raw("risk.approved", &settled[0], &late.to_json())
        .await;
    eventually(WAIT, "dead letter, duplicate and stale event to be counted", || async {
        let dlq = stack
            .metric("risk", "dlq_published_total{classification=\"NON_RETRYABLE\",service=\"risk\"}")
            .await;
        let dup = stack
            .metric("risk", "duplicate_events_skipped_total{event_type=\"payments.requested\",service=\"risk\"}")
            .await;
        let stale = stack
            .metric("orchestrator", "saga_events_ignored_total{event_type=\"risk.approved\",reason=\"stale\",service=\"orchestrator\"}")
            .await;
        (dlq >= 1.0 && dup >= 1.0 && stale >= 1.0).then_some(())
    })
    .await;

    // Every dashboard query returns data.
    let queries = dashboard_queries();
    let deadline = std::time::Instant::now() + WAIT;
    let mut empty: Vec<&(String, String)> = queries.iter().collect();
    loop {
        let mut still = Vec::new();
        for q in empty {
            let answered = prometheus
                .query(&http, &q.1)
                .await
                .is_some_and(|samples| has_finite_value(&samples));
            if !answered {
                still.push(q);
            }
        }
        empty = still;
        if empty.is_empty() || std::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let empty: Vec<String> = empty.iter().map(|(p, e)| format!("{p}: {e}")).collect();
    assert!(
        empty.is_empty(),
        "{} of {} dashboard queries returned nothing:\n{}",
        empty.len(),
        queries.len(),
        empty.join("\n")
    );

    // The alert rules: valid, loaded, healthy, every expression evaluating, and the dead
    // letter above firing its alert.
    let checked = Command::new("promtool")
        .args(["check", "rules"])
        .arg(alert_rules_file())
        .output()
        .expect("promtool (installed with prometheus by scripts/stack.sh)");
    assert!(
        checked.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let rules: Vec<Value> = eventually(WAIT, "every alert rule evaluated and healthy", || async {
        let data = prometheus.api(&http, "rules?type=alert").await?;
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (!rules.is_empty() && rules.iter().all(|r| r["health"] == "ok")).then_some(rules)
    })
    .await;
    // Every rule of the file, no fewer (a rule Prometheus could not load is missing here).
    let in_file = std::fs::read_to_string(
        sagapay_e2e::servers::repo_root().join("infra/prometheus/alerts.yml"),
    )
    .unwrap()
    .lines()
    .filter(|l| l.trim_start().starts_with("- alert:"))
    .count();
    assert_eq!(rules.len(), in_file, "rules loaded of the file's");
    for rule in &rules {
        let expr = rule["query"].as_str().expect("query");
        // An error answer fails inside `query`; an empty result is fine (nothing to alert).
        assert!(
            prometheus.query(&http, expr).await.is_some(),
            "{}: {expr}",
            rule["name"]
        );
    }
    eventually(WAIT, "MessagesDeadLettered to fire for risk", || async {
        let data = prometheus.api(&http, "alerts").await?;
        data["alerts"]
            .as_array()?
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "MessagesDeadLettered"
                    && a["labels"]["service"] == "risk"
                    && a["state"] == "firing"
            })
            .then_some(())
    })
    .await;
    drop(prometheus);
    stack.teardown().await;
}
