//! The port to payment service providers, and the simulated provider behind it.
//!
//! A real PSP adapter implements [`PaymentProvider`] the same way: every call carries an
//! idempotency key derived from the payment and the operation, so that a call repeated after a
//! crash (ours or the network's) acts at most once at the provider.

use sagapay_domain::{AmountMinor, Currency};
use sqlx::PgPool;
use std::future::Future;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct ProviderRequest {
    pub payment_id: Uuid,
    pub idempotency_key: String,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    /// For capture: the authorization to capture.
    pub authorization_id: Option<String>,
    /// The payment method token to charge.
    pub payment_method: String,
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

    fn authorize(
        &self,
        req: &ProviderRequest,
    ) -> impl Future<Output = Result<ProviderOutcome, ProviderError>> + Send;

    fn capture(
        &self,
        req: &ProviderRequest,
    ) -> impl Future<Output = Result<ProviderOutcome, ProviderError>> + Send;
}

/// A provider simulated in-process, with durable books so that idempotency holds across
/// restarts, like a real PSP's. Its behaviour is chosen by the payment method token, in the
/// spirit of a PSP's test cards:
///
/// | `payment_method` | authorize | capture |
/// |---|---|---|
/// | `pm_card_ok` (default) | authorized | captured |
/// | `pm_card_declined` | declined, `card_declined` | – |
/// | `pm_card_insufficient_funds` | declined, `insufficient_funds` | – |
/// | any other token | declined, `invalid_payment_method` | – |
pub struct SimulatedProvider {
    books: PgPool,
}

impl SimulatedProvider {
    pub fn new(books: PgPool) -> Self {
        Self { books }
    }

    /// Records the operation under its idempotency key; a repeated key returns the first
    /// reference, as a PSP would.
    async fn book(
        &self,
        operation: &str,
        prefix: &str,
        req: &ProviderRequest,
    ) -> Result<String, ProviderError> {
        let reference = format!("{prefix}_{}", Uuid::now_v7().simple());
        let stored: String = sqlx::query_scalar(
            "WITH ins AS (
                 INSERT INTO simulated_provider_operations
                        (idempotency_key, operation, payment_id, amount_minor, currency, reference)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING reference)
             SELECT reference FROM ins
             UNION ALL
             SELECT reference FROM simulated_provider_operations WHERE idempotency_key = $1
             LIMIT 1",
        )
        .bind(&req.idempotency_key)
        .bind(operation)
        .bind(req.payment_id)
        .bind(req.amount_minor.get())
        .bind(req.currency.as_str())
        .bind(&reference)
        .fetch_one(&self.books)
        .await
        .map_err(|e| ProviderError::Unavailable(e.to_string()))?;
        Ok(stored)
    }
}

impl PaymentProvider for SimulatedProvider {
    fn name(&self) -> &'static str {
        "simulated"
    }

    async fn authorize(&self, req: &ProviderRequest) -> Result<ProviderOutcome, ProviderError> {
        let decline = |code: &str| {
            Ok(ProviderOutcome::Declined {
                code: code.to_owned(),
            })
        };
        match req.payment_method.as_str() {
            "pm_card_ok" => {}
            "pm_card_declined" => return decline("card_declined"),
            "pm_card_insufficient_funds" => return decline("insufficient_funds"),
            _ => return decline("invalid_payment_method"),
        }
        let reference = self.book("AUTHORIZE", "auth", req).await?;
        Ok(ProviderOutcome::Succeeded { reference })
    }

    async fn capture(&self, req: &ProviderRequest) -> Result<ProviderOutcome, ProviderError> {
        let reference = self.book("CAPTURE", "cap", req).await?;
        Ok(ProviderOutcome::Succeeded { reference })
    }
}
