//! The manual review queue, through risk's ops routes (ops key required): the payments the
//! rules sent to a person, and their approval or denial, recorded with who decided.

use crate::payments::{client, send};
use serde_json::{json, Value};
use uuid::Uuid;

/// Where risk is and the ops key.
#[derive(Debug, Clone)]
pub struct Reviews {
    pub risk_url: String,
    pub ops_key: String,
}

/// A decision on a review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Approve,
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Deny => "deny",
        }
    }
}

impl Reviews {
    /// The oldest pending reviews (at most `limit`, 1 to 100): `{"reviews": [...]}`.
    pub async fn pending(&self, limit: u32) -> anyhow::Result<Value> {
        let req = client()?
            .get(format!("{}/ops/reviews", self.risk_url))
            .query(&[("limit", limit)]);
        send(req, &self.ops_key, "risk", &self.risk_url).await
    }

    /// Approves (the saga resumes) or denies (the payment fails) a pending review.
    pub async fn decide(
        &self,
        payment_id: Uuid,
        decision: Decision,
        reviewed_by: &str,
    ) -> anyhow::Result<Value> {
        let req = client()?
            .post(format!(
                "{}/ops/reviews/{payment_id}/{}",
                self.risk_url,
                decision.as_str()
            ))
            .json(&json!({ "reviewed_by": reviewed_by }));
        send(req, &self.ops_key, "risk", &self.risk_url).await
    }
}
