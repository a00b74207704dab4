//! The API document is the contract, judged from outside: Schemathesis (pinned, installed by
//! `scripts/test.sh` into `.local/st-venv`) runs every check and every phase (examples,
//! coverage, fuzzing, and the stateful phase, which follows the document's links from a
//! created payment to its capture, cancel and refunds, and from a created webhook endpoint to
//! its deliveries, roll and deletion) against a real gateway and the services behind it, with
//! a fixed seed and a bounded number of examples. Any request the document calls valid that
//! the gateway refuses, any invalid one it accepts, any status or body the document does not
//! describe, and any 5xx, fails this test with Schemathesis's report.

use sagapay_e2e::{TestStack, DEV_API_KEY};
use std::path::PathBuf;
use std::process::Command;

/// The pinned Schemathesis: `SCHEMATHESIS_BIN`, or the one `scripts/test.sh` installs.
fn schemathesis() -> PathBuf {
    if let Ok(path) = std::env::var("SCHEMATHESIS_BIN") {
        return PathBuf::from(path);
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let st = root.join(".local/st-venv/bin/st");
    assert!(
        st.exists(),
        "Schemathesis is not installed at {} (scripts/test.sh installs it; or set \
         SCHEMATHESIS_BIN)",
        st.display()
    );
    st
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_nothing_the_gateway_document_does_not_say() {
    let stack = TestStack::spawn().await;
    let st = schemathesis();
    let url = format!("{}/openapi.json", stack.gateway_url());
    let doc: serde_json::Value = stack
        .http
        .get(&url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .map(|item| item.as_object().unwrap().len())
        .sum();
    let report = tempdir();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml").to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args(["--config-file", &config])
            .args(["run", &url, "--checks", "all"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", "25", "--seed", "20261206"])
            .args(["--generation-deterministic", "--workers", "1"])
            .args(["--request-timeout", "10", "--warnings", "off"])
            .args(["-H", &format!("x-api-key: {DEV_API_KEY}")])
            .args(["--report-dir", &report])
            .env("NO_COLOR", "1")
            .output()
            .expect("Schemathesis runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "Schemathesis found the gateway and its document disagreeing:\n{stdout}\n{stderr}"
    );
    // It ran what it says: every operation and the stateful phase (a run that tested nothing
    // also exits 0). The document's own route is where Schemathesis read it, not a case.
    let tested = format!("Tested: {}", operations - 1);
    assert!(
        stdout.contains(&tested),
        "not every operation was tested:\n{stdout}"
    );
    assert!(
        stdout.contains("✅ Stateful"),
        "the stateful phase did not pass:\n{stdout}"
    );
}

fn tempdir() -> String {
    let dir = std::env::temp_dir().join(format!("sagapay-st-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.display().to_string()
}
