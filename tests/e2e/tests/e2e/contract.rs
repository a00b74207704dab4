//! The API documents are the contract, judged from outside: Schemathesis (pinned, installed
//! by `scripts/test.sh` into `.local/st-venv`) runs every check and every phase (examples,
//! coverage, fuzzing, and the stateful phase, which follows each document's links: from a
//! created payment to its capture, cancel and refunds, from a created webhook endpoint to its
//! deliveries, roll and deletion, from the stuck list and the review queue to what an
//! operator does with them) against real services, with deterministic generation and a
//! bounded number of examples. The gateway's public document and the ops documents of the
//! orchestrator and the risk service are judged alike. Any request a document calls valid that
//! is refused, any invalid one accepted, any status or body a document does not describe, and
//! any 5xx fails this test with Schemathesis's report.

use sagapay_e2e::{TestStack, DEV_API_KEY, DEV_OPS_KEY};
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

/// One API to judge: where it is, its document's path, the header that carries its key.
struct Api {
    base: String,
    document: &'static str,
    key: (&'static str, &'static str),
    /// Whether its stateful phase must run (the document has links whose sources answer).
    stateful: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemathesis_finds_nothing_any_document_does_not_say() {
    let stack = TestStack::spawn().await;
    let apis = [
        Api {
            base: stack.gateway_url(),
            document: "/openapi.json",
            key: ("x-api-key", DEV_API_KEY),
            stateful: true,
        },
        Api {
            base: stack.service_url("orchestrator"),
            document: "/ops/openapi.json",
            key: ("x-ops-key", DEV_OPS_KEY),
            stateful: false,
        },
        Api {
            base: stack.service_url("risk"),
            document: "/ops/openapi.json",
            key: ("x-ops-key", DEV_OPS_KEY),
            stateful: false,
        },
    ];
    for api in apis {
        judge(&stack, api).await;
    }
    stack.teardown().await;
}

/// Runs Schemathesis against `api` and asserts it found nothing and tested everything.
async fn judge(stack: &TestStack, api: Api) {
    let url = format!("{}{}", api.base, api.document);
    let doc: serde_json::Value = stack
        .http
        .get(&url)
        .header(api.key.0, api.key.1)
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
    let dir = std::env::temp_dir().join(format!("sagapay-st-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("openapi.json");
    std::fs::write(&file, serde_json::to_vec(&doc).unwrap()).unwrap();
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/schemathesis.toml");
    let (st, base, header) = (
        schemathesis(),
        api.base.clone(),
        format!("{}: {}", api.key.0, api.key.1),
    );
    let out = tokio::task::spawn_blocking(move || {
        Command::new(st)
            .args(["--config-file", config])
            .arg("run")
            .arg(&file)
            .args(["--url", &base, "--checks", "all"])
            .args(["--phases", "examples,coverage,fuzzing,stateful"])
            .args(["--max-examples", "25", "--generation-deterministic"])
            .args([
                "--workers",
                "1",
                "--request-timeout",
                "10",
                "--warnings",
                "off",
            ])
            .args(["-H", &header])
            .arg("--report-dir")
            .arg(dir.join("report"))
            .current_dir(&dir)
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
        "Schemathesis found {url} and the service disagreeing:\n{stdout}\n{stderr}"
    );
    // It ran what it says: every operation (a run that tested nothing also exits 0), and the
    // stateful phase where the document's links can be followed.
    let tested = format!("Tested: {operations}");
    assert!(
        stdout.contains(&tested),
        "{url}: not every operation was tested:\n{stdout}"
    );
    if api.stateful {
        assert!(
            stdout.contains("✅ Stateful"),
            "{url}: the stateful phase did not pass:\n{stdout}"
        );
    }
}
