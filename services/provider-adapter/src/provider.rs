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

/// What the provider did, as it reports it. A success says which amount and currency were
/// moved: the saga checks them against the request and never applies a difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderOutcome {
    Succeeded {
        reference: String,
        amount_minor: AmountMinor,
        currency: Currency,
    },
    Declined {
        code: String,
    },
}

/// The answer to a status query by idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    /// The provider has the operation: this is what it did.
    Found(ProviderOutcome),
    /// The provider never received an operation with this key.
    NotFound,
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No answer in time: the operation may or may not have happened at the provider.
    #[error("provider timed out")]
    Timeout,
    /// The request never reached the provider (connection refused): it did not happen.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered with an error: whether it acted is not known.
    #[error("provider failed: {0}")]
    Failed(String),
}

impl ProviderError {
    /// Whether the operation may have happened at the provider despite the error.
    pub fn maybe_performed(&self) -> bool {
        !matches!(self, ProviderError::Unavailable(_))
    }
}

pub trait PaymentProvider: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Performs one attempt of `req`. The caller bounds it with its own timeout.
    fn call(
        &self,
        req: &ProviderRequest,
    ) -> impl Future<Output = Result<ProviderOutcome, ProviderError>> + Send;

    /// What the provider did with `req.idempotency_key`, if anything (a PSP's "retrieve by
    /// idempotency key"). The caller bounds it with its own timeout.
    fn status(
        &self,
        req: &ProviderRequest,
    ) -> impl Future<Output = Result<ProviderStatus, ProviderError>> + Send;
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
/// | `pm_card_capture_timeout` | authorized; the capture happens but its answers are lost (status queries answer) |
/// | `pm_card_refund_timeout` | authorized and captured; a refund happens but the answers to its first three calls are lost |
/// | `pm_card_amount_mismatch` | authorized; the capture moves one minor unit less than asked |
/// | any other token | declined, `invalid_payment_method` |
///
/// Capture, void and refund otherwise succeed (once per idempotency key). Status queries
/// answer from the books, except for `pm_card_timeout`, whose provider never answers at
/// all. [`Outage`] takes the whole provider down for a while (connection refused), in
/// development only.
pub struct SimulatedProvider {
    books: PgPool,
    slow_delay: Duration,
    outage: Outage,
}

/// Until when the simulated provider refuses connections (for every operation, or only
/// some). Shared with the development route that starts an outage.
#[derive(Debug, Clone, Default)]
pub struct Outage(std::sync::Arc<std::sync::Mutex<Option<OutageWindow>>>);

#[derive(Debug, Clone)]
struct OutageWindow {
    until: std::time::Instant,
    /// `None`: every operation.
    operations: Option<Vec<ProviderOperation>>,
}

impl Outage {
    /// The provider refuses connections for `duration` from now (0 ends an outage), for
    /// `operations` only when given.
    pub fn start(&self, duration: Duration, operations: Option<Vec<ProviderOperation>>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(OutageWindow {
            until: std::time::Instant::now() + duration,
            operations,
        });
    }

    fn refusing(&self, operation: ProviderOperation) -> Result<(), ProviderError> {
        let window = self.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
        match window {
            Some(w)
                if std::time::Instant::now() < w.until
                    && w.operations
                        .as_ref()
                        .is_none_or(|ops| ops.contains(&operation)) =>
            {
                Err(ProviderError::Unavailable(
                    "connection refused (simulated outage)".into(),
                ))
            }
            _ => Ok(()),
        }
    }
}

impl SimulatedProvider {
    pub fn new(books: PgPool, slow_delay: Duration, outage: Outage) -> Self {
        Self {
            books,
            slow_delay,
            outage,
        }
    }

    /// Records the operation under its idempotency key (moving `amount_minor`); a repeated
    /// key returns what the first call did, as a PSP would.
    async fn book(
        &self,
        req: &ProviderRequest,
        amount_minor: AmountMinor,
    ) -> Result<ProviderOutcome, ProviderError> {
        let prefix = match req.operation {
            ProviderOperation::Authorize => "auth",
            ProviderOperation::Capture => "cap",
            ProviderOperation::Void => "void",
            ProviderOperation::Refund => "re",
        };
        let reference = format!("{prefix}_{}", Uuid::now_v7().simple());
        // Books the operation unless the key was booked before, and answers the booked
        // outcome either way, in one statement. (A booking by a concurrent call that commits
        // during the statement is not in its snapshot: then it is read again.)
        let booked: Option<Booked> = sqlx::query_as(
            "WITH booked AS (
                 INSERT INTO simulated_provider_operations
                        (idempotency_key, operation, payment_id, amount_minor, currency, reference,
                         payment_method)
                 VALUES ($1, $2, $3, $4, $5, $6, NULLIF($7, ''))
                 ON CONFLICT (idempotency_key) DO NOTHING
                 RETURNING reference, amount_minor, currency, outcome, decline_code)
             SELECT * FROM booked
             UNION ALL
             SELECT reference, amount_minor, currency, outcome, decline_code
               FROM simulated_provider_operations WHERE idempotency_key = $1",
        )
        .bind(&req.idempotency_key)
        .bind(req.operation.as_str())
        .bind(req.payment_id)
        .bind(amount_minor.get())
        .bind(req.currency.as_str())
        .bind(&reference)
        .bind(&req.payment_method)
        .fetch_optional(&self.books)
        .await
        .map_err(|e| ProviderError::Failed(e.to_string()))?;
        match booked {
            Some(b) => b.outcome(),
            None => self
                .booked(&req.idempotency_key)
                .await?
                .ok_or_else(|| ProviderError::Failed("booking vanished".into()))?
                .outcome(),
        }
    }

    /// Records a declined authorization, so that a status query answers it.
    async fn book_decline(
        &self,
        req: &ProviderRequest,
        code: &str,
    ) -> Result<ProviderOutcome, ProviderError> {
        sqlx::query(
            "INSERT INTO simulated_provider_operations
                    (idempotency_key, operation, payment_id, amount_minor, currency, reference,
                     payment_method, outcome, decline_code)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'DECLINED', $8)
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&req.idempotency_key)
        .bind(req.operation.as_str())
        .bind(req.payment_id)
        .bind(req.amount_minor.get())
        .bind(req.currency.as_str())
        .bind(format!("decl_{}", Uuid::now_v7().simple()))
        .bind(&req.payment_method)
        .bind(code)
        .execute(&self.books)
        .await
        .map_err(|e| ProviderError::Failed(e.to_string()))?;
        Ok(ProviderOutcome::Declined {
            code: code.to_owned(),
        })
    }

    async fn booked(&self, idempotency_key: &str) -> Result<Option<Booked>, ProviderError> {
        sqlx::query_as(
            "SELECT reference, amount_minor, currency, outcome, decline_code
               FROM simulated_provider_operations WHERE idempotency_key = $1",
        )
        .bind(idempotency_key)
        .fetch_optional(&self.books)
        .await
        .map_err(|e| ProviderError::Failed(e.to_string()))
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
        .map_err(|e| ProviderError::Failed(e.to_string()))
    }
}

/// One row of the simulated books.
#[derive(Debug, sqlx::FromRow)]
struct Booked {
    reference: String,
    amount_minor: i64,
    currency: String,
    outcome: String,
    decline_code: Option<String>,
}

impl Booked {
    fn outcome(self) -> Result<ProviderOutcome, ProviderError> {
        let bad = |e: String| ProviderError::Failed(format!("unreadable booking: {e}"));
        Ok(match self.outcome.as_str() {
            "DECLINED" => ProviderOutcome::Declined {
                code: self.decline_code.unwrap_or_default(),
            },
            _ => ProviderOutcome::Succeeded {
                reference: self.reference,
                amount_minor: AmountMinor::new(self.amount_minor)
                    .map_err(|e| bad(e.to_string()))?,
                currency: Currency::parse(&self.currency).map_err(|e| bad(e.to_string()))?,
            },
        })
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
        self.outage.refusing(req.operation)?;
        let card = req.payment_method.as_str();
        match req.operation {
            ProviderOperation::Authorize => {}
            ProviderOperation::Capture => {
                return match card {
                    "pm_card_capture_timeout" => {
                        // The capture happens; only its answer is lost.
                        self.book(req, req.amount_minor).await?;
                        hang().await
                    }
                    "pm_card_amount_mismatch" => {
                        let less = AmountMinor::new(req.amount_minor.get() - 1)
                            .unwrap_or(req.amount_minor);
                        self.book(req, less).await
                    }
                    _ => self.book(req, req.amount_minor).await,
                };
            }
            ProviderOperation::Refund if card == "pm_card_refund_timeout" => {
                // The refund happens at once; the answers to its first three calls are lost.
                let outcome = self.book(req, req.amount_minor).await?;
                if self.count_call(&req.idempotency_key).await? <= 3 {
                    return hang().await;
                }
                return Ok(outcome);
            }
            ProviderOperation::Void | ProviderOperation::Refund => {
                return self.book(req, req.amount_minor).await;
            }
        }
        match card {
            "pm_card_ok"
            | "pm_card_capture_timeout"
            | "pm_card_refund_timeout"
            | "pm_card_amount_mismatch" => {}
            "pm_card_declined" => return self.book_decline(req, "card_declined").await,
            "pm_card_insufficient_funds" => {
                return self.book_decline(req, "insufficient_funds").await
            }
            "pm_card_timeout" => {
                // The provider did authorize; only its answer is lost. That is why an
                // unknown outcome is asked about, then voided, never just forgotten.
                self.book(req, req.amount_minor).await?;
                return hang().await;
            }
            "pm_card_fail_twice" => {
                if self.count_call(&req.idempotency_key).await? <= 2 {
                    return hang().await;
                }
            }
            "pm_card_slow" => tokio::time::sleep(self.slow_delay).await,
            _ => return self.book_decline(req, "invalid_payment_method").await,
        }
        self.book(req, req.amount_minor).await
    }

    async fn status(&self, req: &ProviderRequest) -> Result<ProviderStatus, ProviderError> {
        self.outage.refusing(req.operation)?;
        if req.operation == ProviderOperation::Authorize && req.payment_method == "pm_card_timeout"
        {
            // This card's authorizations are never answered, not even when asked about.
            return hang().await.map(ProviderStatus::Found);
        }
        Ok(match self.booked(&req.idempotency_key).await? {
            Some(b) => ProviderStatus::Found(b.outcome()?),
            None => ProviderStatus::NotFound,
        })
    }
}
