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

#[derive(Debug, Clone, PartialEq, Eq)]
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
/// | `pm_card_capture_declined` | authorized; the capture is declined, `authorization_expired` (the hold lapsed at the issuer before the capture) |
/// | `pm_card_void_declined` | authorized; a void is declined, `reversal_not_supported` (the issuer takes no reversal: the hold stays until it lapses); a void after a capture is performed as its refund, which succeeds |
/// | `pm_card_refund_fails` | authorized and captured; every refund is declined, `charge_disputed` (the cardholder disputed the charge: the money goes back through the dispute): a merchant's refunds and a compensation's (a void after the capture) alike |
/// | any other token | declined, `invalid_payment_method` |
///
/// Capture, void and refund otherwise succeed (once per idempotency key), unless a PSP would
/// refuse them ([`refusal`]). Every operation is booked, declines included, so a status query
/// and a repeated idempotency key answer what the first call did. Status queries answer from
/// the books, except for `pm_card_timeout`, whose provider never answers at all. [`Outage`]
/// takes the whole provider down for a while (connection refused), in development only.
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

    /// Records the operation under its idempotency key (moving `amount_minor`), unless a PSP
    /// would refuse it (see [`refusal`]): then it is recorded as declined with the reason's
    /// code. A repeated key returns what the first call did, as a PSP would. The payment's
    /// operations are booked one after another: each is decided on the books it read and
    /// inserted as their next entry (`book_seq`), and one whose place was taken meanwhile is
    /// decided again, so two refunds at once cannot both fit in what is left captured.
    async fn book(
        &self,
        req: &ProviderRequest,
        amount_minor: AmountMinor,
    ) -> Result<ProviderOutcome, ProviderError> {
        let failed = |e: sqlx::Error| ProviderError::Failed(e.to_string());
        for _ in 0..BOOKING_ATTEMPTS {
            let read: Vec<BookRow> = sqlx::query_as(
                "SELECT idempotency_key, operation, outcome, amount_minor, currency, reference,
                        decline_code, book_seq
                   FROM simulated_provider_operations
                  WHERE payment_id = $1 OR idempotency_key = $2",
            )
            .bind(req.payment_id)
            .bind(&req.idempotency_key)
            .fetch_all(&self.books)
            .await
            .map_err(failed)?;
            if let Some(done) = read
                .iter()
                .find(|r| r.idempotency_key == req.idempotency_key)
            {
                return done.booked().outcome();
            }
            let next_seq = read
                .iter()
                .filter_map(|r| r.book_seq)
                .max()
                .map_or(0, |s| s + 1);
            let books: Vec<BookEntry> = read.iter().filter_map(BookRow::entry).collect();
            match self
                .insert_booking(req, amount_minor, &books, next_seq)
                .await
            {
                Ok(Some(booked)) => return booked.outcome(),
                // The key was booked meanwhile (a concurrent call of it), or the payment's
                // next entry was: read again.
                Ok(None) => continue,
                Err(e) if is_unique_violation(&e) => continue,
                Err(e) => return Err(failed(e)),
            }
        }
        Err(ProviderError::Failed(format!(
            "{} booking attempts for payment {} lost to concurrent operations",
            BOOKING_ATTEMPTS, req.payment_id
        )))
    }

    /// Inserts the operation, decided on `books`, as the payment's entry `seq`; `None` when
    /// its idempotency key is booked already.
    async fn insert_booking(
        &self,
        req: &ProviderRequest,
        amount_minor: AmountMinor,
        books: &[BookEntry],
        seq: i32,
    ) -> sqlx::Result<Option<Booked>> {
        let prefix = match req.operation {
            ProviderOperation::Authorize => "auth",
            ProviderOperation::Capture => "cap",
            ProviderOperation::Void => "void",
            ProviderOperation::Refund => "re",
        };
        let refused = refusal(
            req.operation,
            &req.payment_method,
            amount_minor.get(),
            req.currency.as_str(),
            books,
        );
        let (reference, outcome) = match refused {
            Some(_) => (format!("decl_{}", Uuid::now_v7().simple()), "DECLINED"),
            None => (format!("{prefix}_{}", Uuid::now_v7().simple()), "SUCCEEDED"),
        };
        sqlx::query_as(
            "INSERT INTO simulated_provider_operations
                    (idempotency_key, operation, payment_id, amount_minor, currency, reference,
                     payment_method, outcome, decline_code, book_seq)
             VALUES ($1, $2, $3, $4, $5, $6, NULLIF($7, ''), $8, $9, $10)
             ON CONFLICT (idempotency_key) DO NOTHING
             RETURNING reference, amount_minor, currency, outcome, decline_code",
        )
        .bind(&req.idempotency_key)
        .bind(req.operation.as_str())
        .bind(req.payment_id)
        .bind(amount_minor.get())
        .bind(req.currency.as_str())
        .bind(&reference)
        .bind(&req.payment_method)
        .bind(outcome)
        .bind(refused)
        .bind(seq)
        .fetch_optional(&self.books)
        .await
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
        let mut conn = self
            .books
            .acquire()
            .await
            .map_err(|e| ProviderError::Failed(e.to_string()))?;
        booked_in(&mut conn, idempotency_key).await
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

/// What the simulated books hold under `idempotency_key`.
async fn booked_in(
    conn: &mut sqlx::PgConnection,
    idempotency_key: &str,
) -> Result<Option<Booked>, ProviderError> {
    sqlx::query_as(
        "SELECT reference, amount_minor, currency, outcome, decline_code
           FROM simulated_provider_operations WHERE idempotency_key = $1",
    )
    .bind(idempotency_key)
    .fetch_optional(conn)
    .await
    .map_err(|e| ProviderError::Failed(e.to_string()))
}

/// How many times [`SimulatedProvider::book`] decides again after a concurrent operation of
/// the same payment took the place it was deciding for.
const BOOKING_ATTEMPTS: usize = 16;

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("23505"))
}

/// One row of the books as [`SimulatedProvider::book`] reads them.
#[derive(Debug, sqlx::FromRow)]
struct BookRow {
    idempotency_key: String,
    operation: String,
    outcome: String,
    amount_minor: i64,
    currency: String,
    reference: String,
    decline_code: Option<String>,
    book_seq: Option<i32>,
}

impl BookRow {
    /// The operation as the refusal rules see it: done, unless it was declined.
    fn entry(&self) -> Option<BookEntry> {
        (self.outcome != "DECLINED").then_some(())?;
        Some(BookEntry {
            operation: ProviderOperation::parse(&self.operation)?,
            amount_minor: self.amount_minor,
            currency: self.currency.trim_end().to_owned(),
        })
    }

    fn booked(&self) -> Booked {
        Booked {
            reference: self.reference.clone(),
            amount_minor: self.amount_minor,
            currency: self.currency.clone(),
            outcome: self.outcome.clone(),
            decline_code: self.decline_code.clone(),
        }
    }
}

/// An operation the books record as done for a payment.
#[derive(Debug, Clone)]
struct BookEntry {
    operation: ProviderOperation,
    amount_minor: i64,
    currency: String,
}

/// Why a PSP would refuse `operation` of `amount_minor` in `currency` with the card `card` for
/// a payment whose operations done so far are `books`, as a decline code; `None` when it would
/// do it:
/// - a capture needs an authorization, not voided, not captured before (one capture per
///   payment), in its currency and at most its amount;
/// - a void needs an authorization that was not captured (a captured payment is refunded);
/// - a refund needs a capture, in its currency, and at most what the capture took less
///   what was refunded already;
/// - then the test cards that refuse one kind of operation ([`card_refusal`]).
fn refusal(
    operation: ProviderOperation,
    card: &str,
    amount_minor: i64,
    currency: &str,
    books: &[BookEntry],
) -> Option<&'static str> {
    let done = |op: ProviderOperation| books.iter().filter(move |b| b.operation == op);
    let total = |op: ProviderOperation| done(op).map(|b| b.amount_minor).sum::<i64>();
    let authorization = done(ProviderOperation::Authorize).next();
    let capture = done(ProviderOperation::Capture).next();
    let books_refuse = match operation {
        ProviderOperation::Authorize => None,
        ProviderOperation::Capture => match authorization {
            None => Some("authorization_not_found"),
            Some(_) if done(ProviderOperation::Void).next().is_some() => {
                Some("authorization_voided")
            }
            Some(_) if capture.is_some() => Some("already_captured"),
            Some(a) if a.currency != currency => Some("currency_mismatch"),
            Some(a) if amount_minor > a.amount_minor => Some("amount_exceeds_authorization"),
            Some(_) => None,
        },
        ProviderOperation::Void => capture.map(|_| "already_captured"),
        ProviderOperation::Refund => match capture {
            None => Some("charge_not_captured"),
            Some(c) if c.currency != currency => Some("currency_mismatch"),
            Some(c) if amount_minor > c.amount_minor - total(ProviderOperation::Refund) => {
                Some("amount_exceeds_captured")
            }
            Some(_) => None,
        },
    };
    books_refuse.or_else(|| card_refusal(card, operation))
}

/// The decline of the test cards that authorize normally and then refuse one kind of
/// operation. A void after a capture is asked of the provider as a refund: only
/// `pm_card_refund_fails` refuses it.
fn card_refusal(card: &str, operation: ProviderOperation) -> Option<&'static str> {
    match (card, operation) {
        ("pm_card_capture_declined", ProviderOperation::Capture) => Some("authorization_expired"),
        ("pm_card_void_declined", ProviderOperation::Void) => Some("reversal_not_supported"),
        ("pm_card_refund_fails", ProviderOperation::Refund) => Some("charge_disputed"),
        _ => None,
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
            | "pm_card_amount_mismatch"
            | "pm_card_capture_declined"
            | "pm_card_void_declined"
            | "pm_card_refund_fails" => {}
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

#[cfg(test)]
mod refusal_tests {
    use super::{refusal, BookEntry};
    use sagapay_domain::events::ProviderOperation::{self, Authorize, Capture, Refund, Void};

    fn books(done: &[(ProviderOperation, i64)]) -> Vec<BookEntry> {
        done.iter()
            .map(|(operation, amount_minor)| BookEntry {
                operation: *operation,
                amount_minor: *amount_minor,
                currency: "USD".into(),
            })
            .collect()
    }

    #[test]
    fn the_simulated_provider_refuses_what_a_psp_refuses() {
        let authorized = books(&[(Authorize, 10_000)]);
        let captured = books(&[(Authorize, 10_000), (Capture, 4_000)]);
        let refunded = books(&[(Authorize, 10_000), (Capture, 4_000), (Refund, 3_000)]);
        let voided = books(&[(Authorize, 10_000), (Void, 10_000)]);
        // (what, operation, card, amount, currency, books, refusal)
        type Case<'a> = (
            &'a str,
            ProviderOperation,
            &'a str,
            i64,
            &'a str,
            &'a [BookEntry],
            Option<&'a str>,
        );
        let ok = "pm_card_ok";
        let (capture_declined, void_declined, refund_fails) = (
            "pm_card_capture_declined",
            "pm_card_void_declined",
            "pm_card_refund_fails",
        );
        #[rustfmt::skip]
        let cases: [Case; 27] = [
            ("capture in full", Capture, ok, 10_000, "USD", &authorized, None),
            ("capture in part", Capture, ok, 4_000, "USD", &authorized, None),
            ("capture above the authorization", Capture, ok, 10_001, "USD", &authorized, Some("amount_exceeds_authorization")),
            ("capture in another currency", Capture, ok, 100, "EUR", &authorized, Some("currency_mismatch")),
            ("capture without an authorization", Capture, ok, 100, "USD", &[], Some("authorization_not_found")),
            ("a second capture", Capture, ok, 100, "USD", &captured, Some("already_captured")),
            ("capture of a voided authorization", Capture, ok, 100, "USD", &voided, Some("authorization_voided")),
            ("void before a capture", Void, ok, 10_000, "USD", &authorized, None),
            ("void after a capture", Void, ok, 10_000, "USD", &captured, Some("already_captured")),
            ("refund of what was captured", Refund, ok, 4_000, "USD", &captured, None),
            ("refund of what was authorized, above the capture", Refund, ok, 10_000, "USD", &captured, Some("amount_exceeds_captured")),
            ("refund of what is left", Refund, ok, 1_000, "USD", &refunded, None),
            ("refund above what is left", Refund, ok, 1_001, "USD", &refunded, Some("amount_exceeds_captured")),
            ("refund without a capture", Refund, ok, 100, "USD", &authorized, Some("charge_not_captured")),
            // The cards that authorize, then refuse one kind of operation.
            ("a card whose capture is declined authorizes", Authorize, capture_declined, 10_000, "USD", &[], None),
            ("its capture is declined", Capture, capture_declined, 10_000, "USD", &authorized, Some("authorization_expired")),
            ("its void succeeds", Void, capture_declined, 10_000, "USD", &authorized, None),
            ("a card whose void is declined authorizes", Authorize, void_declined, 10_000, "USD", &[], None),
            ("and captures", Capture, void_declined, 10_000, "USD", &authorized, None),
            ("its void is declined", Void, void_declined, 10_000, "USD", &authorized, Some("reversal_not_supported")),
            ("its void after a capture is a refund, which succeeds", Refund, void_declined, 4_000, "USD", &captured, None),
            ("a card that refuses refunds authorizes", Authorize, refund_fails, 10_000, "USD", &[], None),
            ("and captures", Capture, refund_fails, 10_000, "USD", &authorized, None),
            ("and voids", Void, refund_fails, 10_000, "USD", &authorized, None),
            ("its merchant refund is declined", Refund, refund_fails, 1_000, "USD", &captured, Some("charge_disputed")),
            ("so is its void after a capture (a refund)", Refund, refund_fails, 4_000, "USD", &captured, Some("charge_disputed")),
            ("what the books refuse is refused for that first", Refund, refund_fails, 100, "USD", &authorized, Some("charge_not_captured")),
        ];
        for (what, op, card, amount, currency, books, expected) in cases {
            assert_eq!(
                refusal(op, card, amount, currency, books),
                expected,
                "{what}"
            );
        }
    }
}
