//! Payments that stopped moving, through the orchestrator's ops routes (ops key required):
//! `stuck` lists them, `retry` sends their outstanding step again, `fail` ends them as the
//! saga would (void before capture, refund after).

use anyhow::Context;
use serde_json::{json, Value};
use uuid::Uuid;

/// Where the orchestrator is and the ops key.
#[derive(Debug, Clone)]
pub struct Ops {
    pub orchestrator_url: String,
    pub ops_key: String,
}

impl Ops {
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let resp = req
            .header("x-ops-key", &self.ops_key)
            .send()
            .await
            .with_context(|| format!("calling the orchestrator at {}", self.orchestrator_url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| body.to_string());
            anyhow::bail!("{status}: {message}");
        }
        Ok(body)
    }

    /// Payments and refunds past their deadline or needing attention.
    pub async fn stuck(&self, limit: u32) -> anyhow::Result<Value> {
        let client = client()?;
        self.send(
            client
                .get(format!("{}/ops/payments/stuck", self.orchestrator_url))
                .query(&[("limit", limit)]),
        )
        .await
    }

    pub async fn retry(&self, payment_id: Uuid, requested_by: &str) -> anyhow::Result<Value> {
        let client = client()?;
        self.send(
            client
                .post(format!(
                    "{}/ops/payments/{payment_id}/retry",
                    self.orchestrator_url
                ))
                .json(&json!({ "requested_by": requested_by })),
        )
        .await
    }

    pub async fn fail(
        &self,
        payment_id: Uuid,
        reason: &str,
        requested_by: &str,
    ) -> anyhow::Result<Value> {
        let client = client()?;
        self.send(
            client
                .post(format!(
                    "{}/ops/payments/{payment_id}/fail",
                    self.orchestrator_url
                ))
                .json(&json!({ "reason": reason, "requested_by": requested_by })),
        )
        .await
    }
}

/// The client of operators' calls: straight to the orchestrator (a proxy of the environment
/// would see the ops key), and never waiting forever.
fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}
