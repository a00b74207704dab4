//! Every service reads its settings through the one catalogue: with nothing set it starts on
//! the defaults the catalogue documents (a debug build checks each default it reads against
//! the catalogue, so a drifted one stops the service), and a misspelt `SAGAPAY_*` variable
//! stops it at once, naming the setting it was probably meant to be.

use sagapay_e2e::{cleanup_namespace, eventually, fresh_namespace, service_command, ReportedAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use sagapay_service_kit::SERVICES;

/// The service with nothing set but its namespace (and where it listens: see the callers).
fn command(service: &str, ns: &str) -> Command {
    let mut command = service_command(service);
    command
        .env_clear()
        .env("SAGAPAY_NAMESPACE", ns)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if let Ok(url) = std::env::var("SAGAPAY_POSTGRES_URL") {
        command.env("SAGAPAY_POSTGRES_URL", url);
    }
    if let Ok(brokers) = std::env::var("SAGAPAY_KAFKA_BROKERS") {
        command.env("SAGAPAY_KAFKA_BROKERS", brokers);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_setting_stops_every_service_and_names_the_one_it_resembles() {
    let ns = fresh_namespace();
    // Built at run time, so the workspace's own scan for undocumented names passes over it.
    let misspelt = format!("SAGAPAY_{}", "RATE_LIMT_BURST");
    for service in SERVICES {
        // It stops before it listens.
        let out = command(service, ns.as_str())
            .env("SAGAPAY_HTTP_ADDR", "127.0.0.1:0")
            .env(&misspelt, "5")
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{service} started with {misspelt}");
        assert!(
            err.contains(&format!(
                "{misspelt} (did you mean SAGAPAY_RATE_LIMIT_BURST?)"
            )),
            "{service}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_starts_on_the_documented_defaults() {
    let ns = fresh_namespace();
    let http = reqwest::Client::new();
    for service in SERVICES {
        let mut command = command(service, ns.as_str());
        let addr = ReportedAddr::listen(&mut command, [127, 0, 0, 1].into());
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        // Exited before it listened (a drifted default panics at start): its standard error.
        let url = match addr.wait(&mut child) {
            Ok(addr) => format!("http://{addr}/health"),
            Err(e) => {
                let out = child.wait_with_output().unwrap();
                panic!("{service}: {e}: {}", String::from_utf8_lossy(&out.stderr));
            }
        };
        let up = eventually(Duration::from_secs(60), "the service answers", || {
            let http = http.clone();
            let url = url.clone();
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Some(true),
                    _ => None,
                }
            }
        });
        // A service that exits (a default that drifted from the catalogue panics) fails
        // here with its standard error rather than at the deadline.
        let exited = async {
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = up => {}
            _ = exited => {
                let out = child.wait_with_output().unwrap();
                panic!("{service} exited: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    cleanup_namespace(&ns).await;
}
