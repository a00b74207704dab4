//! Payments that stopped moving, through the orchestrator's ops routes (ops key required):
//! `stuck` lists them, `retry` sends their outstanding step again, `fail` ends them as the
//! saga would (void before capture, refund after), `accept` keeps a capture of another
//! amount; and merchants' shares of admission control.

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
        send(
            req,
            &self.ops_key,
            "the orchestrator",
            &self.orchestrator_url,
        )
        .await
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
        self.end(payment_id, "fail", reason, requested_by).await
    }

    /// Keeps a capture the provider made of another amount than was asked (posted for it).
    pub async fn accept(
        &self,
        payment_id: Uuid,
        reason: &str,
        requested_by: &str,
    ) -> anyhow::Result<Value> {
        self.end(payment_id, "accept", reason, requested_by).await
    }

    async fn end(
        &self,
        payment_id: Uuid,
        verb: &str,
        reason: &str,
        requested_by: &str,
    ) -> anyhow::Result<Value> {
        let client = client()?;
        self.send(
            client
                .post(format!(
                    "{}/ops/payments/{payment_id}/{verb}",
                    self.orchestrator_url
                ))
                .json(&json!({ "reason": reason, "requested_by": requested_by })),
        )
        .await
    }

    /// Admission control now (`GET /ops/admission`): the limits, the payments in flight, and
    /// per merchant its payments in flight and refused.
    pub async fn admission(&self) -> anyhow::Result<Value> {
        let client = client()?;
        self.send(client.get(format!("{}/ops/admission", self.orchestrator_url)))
            .await
    }

    /// A merchant's own share of admission control: `Some(n)` sets it (0: no limit of its
    /// own), `None` gives it the default share again.
    pub async fn set_merchant_limit(
        &self,
        merchant_id: Uuid,
        max_in_flight: Option<u32>,
        requested_by: &str,
    ) -> anyhow::Result<Value> {
        let client = client()?;
        self.send(
            client
                .put(format!(
                    "{}/ops/merchants/{merchant_id}/limits",
                    self.orchestrator_url
                ))
                .json(&json!({ "max_in_flight": max_in_flight, "requested_by": requested_by })),
        )
        .await
    }
}

/// Sends an operator's call with the ops key; a refusal becomes an error with the route's
/// own message (what the operator is shown).
pub(crate) async fn send(
    req: reqwest::RequestBuilder,
    ops_key: &str,
    service: &str,
    url: &str,
) -> anyhow::Result<Value> {
    let resp = req
        .header("x-ops-key", ops_key)
        .send()
        .await
        .with_context(|| format!("calling {service} at {url}"))?;
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

/// The client of operators' calls: straight to the orchestrator, trusting the services' CA
/// (`SAGAPAY_SERVICE_CA_FILE`) when given, and never waiting forever.
pub(crate) fn client() -> anyhow::Result<reqwest::Client> {
    let ca = sagapay_service_kit::service_client::ca_file_from_env();
    Ok(sagapay_service_kit::service_client::builder(ca.as_deref())?
        .timeout(std::time::Duration::from_secs(30))
        .build()?)
}
