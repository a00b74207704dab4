//! The port to payment service providers, and the simulated provider behind it.
//!
//! A real PSP adapter implements [`PaymentProvider`] the same way: every call carries an
//! idempotency key derived from the payment and the operation, so that a call repeated after a
//! crash or a timeout (ours or the network's) acts at most once at the provider.

use sagapay_domain::events::ProviderOperation;
use sagapay_domain::{AmountMinor, Currency};
use sqlx::PgPool;
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct ProviderRequest {
    pub payment_id: Uuid,
    pub operation: ProviderOperation,
    /// `<operation>:<payment_id>`: the same for every attempt of one operation.
    pub idempotency_key: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    /// The payment method token (authorizations).
    pub payment_method: String,
    /// What the operation acts on: the authorization (capture, void) or the capture (refund).
    pub reference: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderOutcome {
    Succeeded { reference: String },
    Declined { code: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No answer in time: the operation may or may not have happened at the provider.
    #[error("provider timed out")]
    Timeout,
    #[error("provider unavailable: {0}")]
    Unavailable(String),
}

pub trait PaymentProvider: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Performs one attempt of `req`. The caller bounds it with its own timeout.
    fn call(
        &self,
        req: &ProviderRequest,
    ) -> impl Future<Output = Result<ProviderOutcome, ProviderError>> + Send;
}

/// A provider simulated in-process, with durable books (tables `simulated_provider_*`) so
/// that idempotency holds across restarts, like a real PSP's. Its behaviour is chosen by the
/// payment method token, in the spirit of a PSP's test cards:
///
/// | `payment_method` | authorize |
/// |---|---|
/// | `pm_card_ok` (default) | authorized |
/// | `pm_card_declined` | declined, `card_declined` |
/// | `pm_card_insufficient_funds` | declined, `insufficient_funds` |
/// | `pm_card_timeout` | authorized at the provider, but the answer never arrives (every attempt times out) |
/// | `pm_card_fail_twice` | the first two attempts time out, the third is authorized |
/// | `pm_card_slow` | authorized after `slow_delay` (below the adapter's timeout) |
/// | any other token | declined, `invalid_payment_method` |
///
/// Capture, void and refund always succeed (once per idempotency key).
pub struct SimulatedProvider {
    books: PgPool,
    slow_delay: Duration,
}

impl SimulatedProvider {
    pub fn new(books: PgPool, slow_delay: Duration) -> Self {
        Self { books, slow_delay }
    }

    /// Records the operation under its idempotency key; a repeated key returns the first
    /// reference, as a PSP would.
    async fn book(&self, req: &ProviderRequest) -> Result<String, ProviderError> {
        let prefix = match req.operation {
            ProviderOperation::Authorize => "auth",
            ProviderOperation::Capture => "cap",
            ProviderOperation::Void => "void",
            ProviderOperation::Refund => "re",
        };
        let reference = format!("{prefix}_{}", Uuid::now_v7().simple());
        // Books the operation unless the key was booked before, and answers the booked
        // reference either way, in one statement. (A booking by a concurrent call that commits
        // during the statement is not in its snapshot: then the reference is read again.)
        let booked: Option<String> = sqlx::query_scalar(
            "WITH booked AS (
                 INSERT INTO simulated_provider_operations
                        (idempotency_key, operation, payment_id, amount_minor, currency, reference)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING reference)
             SELECT reference FROM booked
             UNION ALL
             SELECT reference FROM simulated_provider_operations WHERE idempotency_key = $1",
        )
        .bind(&req.idempotency_key)
        .bind(req.operation.as_str())
        .bind(req.payment_id)
        .bind(req.amount_minor.get())
        .bind(req.currency.as_str())
        .bind(&reference)
        .fetch_optional(&self.books)
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        if let Some(reference) = booked {
            return Ok(reference);
        }
        sqlx::query_scalar(
            "SELECT reference FROM simulated_provider_operations WHERE idempotency_key = $1",
        )
        .bind(&req.idempotency_key)
        .fetch_one(&self.books)
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))
    }

    /// Counts this call of the idempotency key; 1 for the first call.
    async fn count_call(&self, key: &str) -> Result<i32, ProviderError> {
        sqlx::query_scalar(
            "INSERT INTO simulated_provider_calls (idempotency_key, calls) VALUES ($1, 1)
             ON CONFLICT (idempotency_key) DO UPDATE SET calls = simulated_provider_calls.calls + 1
             RETURNING calls",
        )
        .bind(key)
        .fetch_one(&self.books)
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))
    }
}

/// A provider that never answers: the caller's timeout ends the wait.
async fn hang() -> Result<ProviderOutcome, ProviderError> {
    std::future::pending::<()>().await;
    unreachable!("pending never completes")
}

impl PaymentProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn call(&self, req: &ProviderRequest) -> Result<ProviderOutcome, ProviderError> {
        if req.operation != ProviderOperation::Authorize {
            let reference = self.book(req).await?;
            return Ok(ProviderOutcome::Succeeded { reference });
        }
        let decline = |code: &str| {
            Ok(ProviderOutcome::Declined {
                code: code.to_owned(),
            })
        };
        match req.payment_method.as_str() {
            "pm_card_ok" => {}
            "pm_card_declined" => return decline("card_declined"),
            "pm_card_insufficient_funds" => return decline("insufficient_funds"),
            "pm_card_timeout" => {
                // The provider did authorize; only its answer is lost. That is why an
                // unknown outcome must be voided, not just forgotten.
                self.book(req).await?;
                return hang().await;
            }
            "pm_card_fail_twice" => {
                if self.count_call(&req.idempotency_key).await? <= 2 {
                    return hang().await;
                }
            }
            "pm_card_slow" => tokio::time::sleep(self.slow_delay).await,
            _ => return decline("invalid_payment_method"),
        }
        let reference = self.book(req).await?;
        Ok(ProviderOutcome::Succeeded { reference })
    }
}
