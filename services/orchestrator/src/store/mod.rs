//! The orchestrator's tables: payments (with compare-and-set transitions) and their timeline.
//!
//! Every write that moves a payment also sets when its next step is overdue
//! (`deadline_at`, see [`crate::saga::deadlines`]): a transition, the start of a compensation, a
//! re-sent step. Merchant refunds have their own table and module ([`refunds`]).

pub mod refunds;
pub mod staged;

use chrono::{DateTime, Utc};
use sagapay_domain::events::{CaptureMethod, ProviderOperation};
use sagapay_domain::{
    AmountMinor, Currency, CustomerId, PaymentMethod, PaymentStatus, TextError, TransitionError,
};
use sagapay_messaging::{OutboxRow, OUTBOX_COLUMNS};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// A compensation the saga started for a payment: which command is outstanding until the
/// payment is REVERSED.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compensation {
    /// Void the authorization (before capture).
    Void,
    /// Refund the capture in full (after capture).
    Refund,
}

impl Compensation {
    pub fn as_str(self) -> &'static str {
        match self {
            Compensation::Void => "VOID",
            Compensation::Refund => "REFUND",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "VOID" => Some(Compensation::Void),
            "REFUND" => Some(Compensation::Refund),
            _ => None,
        }
    }
}

sagapay_domain::sql_text!(Compensation, Compensation::parse);

/// What was asked of a manually captured payment after its authorization, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MerchantAction {
    /// The merchant captured it (all or part).
    Capture,
    /// The merchant canceled it: the authorization is voided.
    Cancel,
    /// Nobody captured it in time: the authorization is voided.
    Expire,
}

impl MerchantAction {
    pub fn as_str(self) -> &'static str {
        match self {
            MerchantAction::Capture => "CAPTURE",
            MerchantAction::Cancel => "CANCEL",
            MerchantAction::Expire => "EXPIRE",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Capture, Self::Cancel, Self::Expire]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

sagapay_domain::sql_text!(MerchantAction, MerchantAction::parse);

#[derive(Debug, Clone)]
pub struct PaymentRow {
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub customer_id: CustomerId,
    pub amount_minor: AmountMinor,
    pub currency: Currency,
    pub status: PaymentStatus,
    pub state_version: i32,
    pub request_fingerprint: String,
    pub payment_method: PaymentMethod,
    pub authorization_id: Option<String>,
    pub capture_id: Option<String>,
    pub correlation_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the current step is overdue; `None` for a terminal payment.
    pub deadline_at: Option<DateTime<Utc>>,
    /// Re-sends of the current step so far.
    pub nudges: i32,
    /// Set when the payment needs an operator, with why.
    pub attention_since: Option<DateTime<Utc>>,
    pub attention_reason: Option<String>,
    /// Why it waits for an operator, as a kind (`FlagKind::as_str`).
    pub attention_kind: Option<String>,
    pub compensation: Option<Compensation>,
    pub capture_method: CaptureMethod,
    pub merchant_action: Option<MerchantAction>,
    pub merchant_action_key: Option<String>,
    /// What a manual capture takes, when it is less than the amount.
    pub capture_amount_minor: Option<AmountMinor>,
    /// What the provider reported when it moved another amount than was asked for.
    pub provider_mismatch: Option<ProviderMismatch>,
}

/// `payments.attention_kind` of a payment whose void the provider refused: the one kind the
/// saga decides on (an operator may then fail the payment).
pub const ATTENTION_VOID_DECLINED: &str = "VOID_DECLINED";

/// An authorization or capture the provider reported for another amount than was asked:
/// never applied, recorded for the operator who ends the payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderMismatch {
    pub operation: ProviderOperation,
    pub reference: String,
    pub amount: AmountMinor,
}

impl ProviderMismatch {
    /// What a capture of another amount took at the provider, if this is one.
    pub fn captured(&self) -> Option<AmountMinor> {
        (self.operation == ProviderOperation::Capture).then_some(self.amount)
    }
}

impl PaymentRow {
    /// What is (or will be) captured: what the provider took when it captured another
    /// amount than was asked, else the manual capture's amount, else the whole amount.
    pub fn captured_minor(&self) -> AmountMinor {
        self.provider_mismatch
            .as_ref()
            .and_then(ProviderMismatch::captured)
            .or(self.capture_amount_minor)
            .unwrap_or(self.amount_minor)
    }

    /// What the payment holds captured when it is in `status`: the captured amount in the
    /// states that keep a capture (captured, settled, refunded in part or whole), none before
    /// a capture or after it was reversed. The one rule of `amount_captured_cents`, for
    /// `GET /payments/{id}` and for the events that announce the payment.
    pub fn captured_in(&self, status: PaymentStatus) -> Option<AmountMinor> {
        matches!(
            status,
            PaymentStatus::Captured
                | PaymentStatus::Settled
                | PaymentStatus::PartiallyRefunded
                | PaymentStatus::Refunded
        )
        .then(|| self.captured_minor())
    }
}

pub(crate) const PAYMENT_COLUMNS: &str =
    "payment_id, merchant_id, customer_id, amount_minor, currency, status, \
     state_version, request_fingerprint, payment_method, authorization_id, capture_id, \
     correlation_id, created_at, updated_at, deadline_at, nudges, attention_since, \
     attention_reason, compensation, capture_method, merchant_action, merchant_action_key, \
     capture_amount_minor, provider_mismatch, provider_mismatch_reference, \
     provider_mismatch_minor, attention_kind";

/// A text column read as the domain type that parses it.
fn parsed<T>(
    r: &sqlx::postgres::PgRow,
    column: &str,
    parse: fn(String) -> Result<T, TextError>,
) -> sqlx::Result<T> {
    parse(r.try_get(column)?).map_err(|e| sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: e.into(),
    })
}

pub(crate) fn payment_from_row(r: &sqlx::postgres::PgRow) -> sqlx::Result<PaymentRow> {
    Ok(PaymentRow {
        payment_id: r.try_get("payment_id")?,
        merchant_id: r.try_get("merchant_id")?,
        customer_id: parsed(r, "customer_id", CustomerId::parse)?,
        amount_minor: r.try_get("amount_minor")?,
        currency: r.try_get("currency")?,
        status: r.try_get("status")?,
        state_version: r.try_get("state_version")?,
        request_fingerprint: r.try_get("request_fingerprint")?,
        payment_method: parsed(r, "payment_method", PaymentMethod::parse)?,
        authorization_id: r.try_get("authorization_id")?,
        capture_id: r.try_get("capture_id")?,
        correlation_id: r.try_get("correlation_id")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        deadline_at: r.try_get("deadline_at")?,
        nudges: r.try_get("nudges")?,
        attention_since: r.try_get("attention_since")?,
        attention_reason: r.try_get("attention_reason")?,
        attention_kind: r.try_get("attention_kind")?,
        compensation: r.try_get("compensation")?,
        capture_method: r.try_get("capture_method")?,
        merchant_action: r.try_get("merchant_action")?,
        merchant_action_key: r.try_get("merchant_action_key")?,
        capture_amount_minor: r.try_get("capture_amount_minor")?,
        provider_mismatch: mismatch_from_row(r)?,
    })
}

fn mismatch_from_row(r: &sqlx::postgres::PgRow) -> sqlx::Result<Option<ProviderMismatch>> {
    let operation: Option<ProviderOperation> = r.try_get("provider_mismatch")?;
    let reference: Option<String> = r.try_get("provider_mismatch_reference")?;
    let amount: Option<AmountMinor> = r.try_get("provider_mismatch_minor")?;
    Ok(match (operation, reference, amount) {
        (Some(operation), Some(reference), Some(amount)) => Some(ProviderMismatch {
            operation,
            reference,
            amount,
        }),
        _ => None,
    })
}

/// `deadline` as seconds for SQL (`make_interval(secs => $n)`); `None` stays NULL.
fn seconds(deadline: Option<std::time::Duration>) -> Option<f64> {
    deadline.map(|d| d.as_secs_f64())
}

/// Locks and returns the payment (for a saga step inside a transaction).
pub async fn load_for_update(
    conn: &mut PgConnection,
    payment_id: Uuid,
) -> sqlx::Result<Option<PaymentRow>> {
    let sql = format!("SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1 FOR UPDATE");
    sqlx::query(&sql)
        .bind(payment_id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(payment_from_row)
        .transpose()
}

/// Locks and returns the payments among `payment_ids` that exist, in one statement: a batch
/// of the consumer reads every payment it will change at once. The rows are locked in
/// payment id order, so two transactions locking overlapping sets cannot deadlock.
pub async fn load_many_for_update(
    conn: &mut PgConnection,
    payment_ids: &[Uuid],
) -> sqlx::Result<Vec<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = ANY($1)
          ORDER BY payment_id FOR UPDATE"
    );
    sqlx::query(&sql)
        .bind(payment_ids)
        .fetch_all(conn)
        .await?
        .iter()
        .map(payment_from_row)
        .collect()
}

pub async fn load_by_idempotency_key(
    conn: &mut PgConnection,
    merchant_id: Uuid,
    idempotency_key: &str,
) -> sqlx::Result<Option<PaymentRow>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE merchant_id = $1 AND idempotency_key = $2"
    );
    sqlx::query(&sql)
        .bind(merchant_id)
        .bind(idempotency_key)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(payment_from_row)
        .transpose()
}

pub struct NewPayment<'a> {
    pub payment_id: Uuid,
    pub merchant_id: Uuid,
    pub customer_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub idempotency_key: &'a str,
    pub request_fingerprint: &'a str,
    pub correlation_id: &'a str,
    pub payment_method: &'a str,
    pub capture_method: CaptureMethod,
    /// How long it may wait in CREATED.
    pub deadline: std::time::Duration,
}

/// Inserts a CREATED payment, its timeline row and its first event's outbox row, in one
/// statement (atomic without a transaction of its own), unless the merchant already used the
/// idempotency key. Returns false when the key was taken (by this request's earlier try, or
/// another request); then nothing was written.
pub async fn insert_payment(
    conn: &mut PgConnection,
    p: &NewPayment<'_>,
    requested: &OutboxRow<'_>,
) -> sqlx::Result<bool> {
    let sql = format!(
        "WITH created AS (
             INSERT INTO payments (payment_id, merchant_id, customer_id, amount_minor, currency,
                                   status, idempotency_key, request_fingerprint, correlation_id,
                                   payment_method, deadline_at, capture_method)
             VALUES ($1, $2, $3, $4, $5, 'CREATED', $6, $7, $8, $9,
                     now() + make_interval(secs => $16), $17)
             ON CONFLICT (merchant_id, idempotency_key) DO NOTHING
             RETURNING payment_id),
         timeline AS (
             INSERT INTO payment_timeline (payment_id, from_state, to_state, reason)
             SELECT payment_id, NULL, 'CREATED', 'payment created' FROM created),
         queued AS (
             INSERT INTO outbox ({OUTBOX_COLUMNS})
             SELECT $10, $11, $12, $13, $14, $15 FROM created)
         SELECT count(*) FROM created"
    );
    let query = sqlx::query(&sql)
        .bind(p.payment_id)
        .bind(p.merchant_id)
        .bind(p.customer_id)
        .bind(p.amount_minor)
        .bind(p.currency)
        .bind(p.idempotency_key)
        .bind(p.request_fingerprint)
        .bind(p.correlation_id)
        .bind(p.payment_method);
    let inserted: i64 = requested
        .bind(query)
        .bind(p.deadline.as_secs_f64())
        .bind(p.capture_method.as_str())
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    debug_assert!(inserted == 0 || inserted == 1);
    Ok(inserted == 1)
}

/// Facts a transition records on the payment besides its status.
#[derive(Debug, Default)]
pub struct Facts<'a> {
    pub authorization_id: Option<&'a str>,
    pub capture_id: Option<&'a str>,
    pub journal_transaction_id: Option<Uuid>,
}

#[derive(Debug, thiserror::Error)]
pub enum TransitionFailure {
    #[error(transparent)]
    Illegal(#[from] TransitionError),
    /// Another writer changed the payment since it was read.
    #[error("payment {0} changed concurrently")]
    Conflict(Uuid),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

/// One transition of a payment, as [`transition`] writes it.
#[derive(Debug)]
pub struct Transition<'a> {
    pub to: PaymentStatus,
    pub reason: &'a str,
    /// The event that caused it (none for an operator's action).
    pub event_id: Option<Uuid>,
    pub facts: Facts<'a>,
    /// How long the payment may wait in `to`; `None` for a terminal state.
    pub deadline: Option<std::time::Duration>,
    /// The command or event that follows, inserted into the outbox with the transition.
    pub then: Option<&'a OutboxRow<'a>>,
}

/// Moves `payment` to `t.to`: checked against the transition table, written with
/// compare-and-set on `(status, state_version)`, with its timeline row and, when given, the
/// outbox row of the event that follows, all in one statement (one round trip): the timeline
/// and outbox rows are inserted only if the compare-and-set matched. The new state's deadline
/// is set and the count of re-sends and any flag for attention are cleared: the payment moved.
pub async fn transition(
    conn: &mut PgConnection,
    payment: &PaymentRow,
    t: &Transition<'_>,
) -> Result<(), TransitionFailure> {
    payment.status.transition_to(t.to)?;
    let queue = if t.then.is_some() {
        format!(
            ", queued AS (
                 INSERT INTO outbox ({OUTBOX_COLUMNS})
                 SELECT $11, $12, $13, $14, $15, $16 FROM moved)"
        )
    } else {
        String::new()
    };
    let sql = format!(
        "WITH moved AS (
             UPDATE payments
                SET status = $1,
                    state_version = state_version + 1,
                    updated_at = now(),
                    authorization_id = COALESCE($2, authorization_id),
                    capture_id = COALESCE($3, capture_id),
                    journal_transaction_id = COALESCE($4, journal_transaction_id),
                    deadline_at = now() + make_interval(secs => $10),
                    nudges = 0,
                    attention_since = NULL,
                    attention_reason = NULL
              WHERE payment_id = $5 AND status = $6 AND state_version = $7
          RETURNING payment_id),
         timeline AS (
             INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, event_id)
             SELECT payment_id, $6, $1, $8, $9 FROM moved){queue}
         SELECT count(*) FROM moved"
    );
    let query = sqlx::query(&sql)
        .bind(t.to.as_str())
        .bind(t.facts.authorization_id)
        .bind(t.facts.capture_id)
        .bind(t.facts.journal_transaction_id)
        .bind(payment.payment_id)
        .bind(payment.status.as_str())
        .bind(payment.state_version)
        .bind(t.reason)
        .bind(t.event_id)
        .bind(seconds(t.deadline));
    let query = match t.then {
        Some(row) => row.bind(query),
        None => query,
    };
    let moved: i64 = query.fetch_one(&mut *conn).await?.try_get(0)?;
    if moved != 1 {
        return Err(TransitionFailure::Conflict(payment.payment_id));
    }
    Ok(())
}

/// Starts a compensation of `payment` (its state stays until the compensation's answer): the
/// payment records which one and when it is overdue, the timeline says why, and the command
/// goes to the outbox, in one statement. The caller holds the payment's row lock.
pub async fn start_compensation(
    conn: &mut PgConnection,
    payment: &PaymentRow,
    kind: Compensation,
    reason: &str,
    event_id: Option<Uuid>,
    deadline: std::time::Duration,
    command: &OutboxRow<'_>,
) -> sqlx::Result<()> {
    let sql = format!(
        "WITH marked AS (
             UPDATE payments
                SET compensation = $2, deadline_at = now() + make_interval(secs => $3),
                    nudges = 0, attention_since = NULL, attention_reason = NULL,
                    updated_at = now()
              WHERE payment_id = $1 AND state_version = $4
          RETURNING payment_id, status),
         timeline AS (
             INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, event_id, kind)
             SELECT payment_id, status, status, $5, $6, 'STEP' FROM marked),
         queued AS (
             INSERT INTO outbox ({OUTBOX_COLUMNS})
             SELECT $7, $8, $9, $10, $11, $12 FROM marked)
         SELECT count(*) FROM marked"
    );
    let query = sqlx::query(&sql)
        .bind(payment.payment_id)
        .bind(kind.as_str())
        .bind(deadline.as_secs_f64())
        .bind(payment.state_version)
        .bind(reason)
        .bind(event_id);
    let marked: i64 = command
        .bind(query)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    locked_row_marked(marked, payment.payment_id)
}

/// A statement on a payment whose row the caller locked must have found it unchanged.
fn locked_row_marked(marked: i64, payment_id: Uuid) -> sqlx::Result<()> {
    if marked == 1 {
        Ok(())
    } else {
        Err(sqlx::Error::Protocol(format!(
            "payment {payment_id} changed while its row was locked"
        )))
    }
}

/// What a merchant (or the expiry) asked of a manual payment, recorded once: the action and
/// its idempotency key, the amount to capture, the void as a compensation for a cancel, the
/// new deadline, the timeline's step and the command, in one statement. The caller holds
/// the payment's row lock and has checked the payment allows it.
#[allow(clippy::too_many_arguments)]
pub async fn record_merchant_action(
    conn: &mut PgConnection,
    payment: &PaymentRow,
    action: MerchantAction,
    key: Option<&str>,
    capture_amount_minor: Option<AmountMinor>,
    reason: &str,
    deadline: std::time::Duration,
    command: &OutboxRow<'_>,
) -> sqlx::Result<()> {
    let compensation = match action {
        MerchantAction::Capture => None,
        MerchantAction::Cancel | MerchantAction::Expire => Some(Compensation::Void.as_str()),
    };
    let sql = format!(
        "WITH marked AS (
             UPDATE payments
                SET merchant_action = $2, merchant_action_key = $3, capture_amount_minor = $4,
                    compensation = $5, deadline_at = now() + make_interval(secs => $6),
                    nudges = 0, attention_since = NULL, attention_reason = NULL,
                    updated_at = now()
              WHERE payment_id = $1 AND state_version = $7 AND merchant_action IS NULL
          RETURNING payment_id, status),
         timeline AS (
             INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, event_id, kind)
             SELECT payment_id, status, status, $8, NULL, 'STEP' FROM marked),
         queued AS (
             INSERT INTO outbox ({OUTBOX_COLUMNS})
             SELECT $9, $10, $11, $12, $13, $14 FROM marked)
         SELECT count(*) FROM marked"
    );
    let query = sqlx::query(&sql)
        .bind(payment.payment_id)
        .bind(action.as_str())
        .bind(key)
        .bind(capture_amount_minor)
        .bind(compensation)
        .bind(deadline.as_secs_f64())
        .bind(payment.state_version)
        .bind(reason);
    let marked: i64 = command
        .bind(query)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    locked_row_marked(marked, payment.payment_id)
}

/// The step of a payment was sent again (`command`, into the outbox): after its deadline
/// (counted in `nudges`) or at an operator's request (`reset`: the count starts again). The
/// payment is timed again and the timeline says why, in one statement.
pub async fn resend(
    conn: &mut PgConnection,
    payment_id: Uuid,
    status: PaymentStatus,
    reason: &str,
    deadline: std::time::Duration,
    command: &OutboxRow<'_>,
    reset: bool,
) -> sqlx::Result<()> {
    let sql = format!(
        "WITH nudged AS (
             UPDATE payments
                SET nudges = CASE WHEN $11 THEN 0 ELSE nudges + 1 END,
                    deadline_at = now() + make_interval(secs => $2),
                    attention_since = NULL, attention_reason = NULL
              WHERE payment_id = $1
          RETURNING payment_id),
         timeline AS (
             INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, kind)
             SELECT payment_id, $3, $3, $4, 'STEP' FROM nudged),
         queued AS (
             INSERT INTO outbox ({OUTBOX_COLUMNS})
             SELECT $5, $6, $7, $8, $9, $10 FROM nudged)
         SELECT count(*) FROM nudged"
    );
    let query = sqlx::query(&sql)
        .bind(payment_id)
        .bind(deadline.as_secs_f64())
        .bind(status.as_str())
        .bind(reason);
    command
        .bind(query)
        .bind(reset)
        .fetch_one(&mut *conn)
        .await?;
    Ok(())
}

/// Flags `payment_id` as needing an operator, with why (`kind`, and the words in `reason`;
/// a timeline step says it too).
pub async fn flag_attention(
    conn: &mut PgConnection,
    payment_id: Uuid,
    status: PaymentStatus,
    (kind, reason): (&str, &str),
    event_id: Option<Uuid>,
) -> sqlx::Result<()> {
    sqlx::query(
        "WITH flagged AS (
             UPDATE payments SET attention_since = COALESCE(attention_since, now()),
                                 attention_reason = $3, attention_kind = $5
              WHERE payment_id = $1
          RETURNING payment_id)
         INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, event_id, kind)
         SELECT payment_id, $2, $2, 'needs attention: ' || $3, $4, 'STEP' FROM flagged",
    )
    .bind(payment_id)
    .bind(status.as_str())
    .bind(reason)
    .bind(event_id)
    .bind(kind)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records what the provider reported when it moved another amount than was asked for (the
/// flag that follows says so in the timeline).
pub async fn record_mismatch(
    conn: &mut PgConnection,
    payment_id: Uuid,
    mismatch: &ProviderMismatch,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE payments SET provider_mismatch = $2, provider_mismatch_reference = $3,
                             provider_mismatch_minor = $4
          WHERE payment_id = $1",
    )
    .bind(payment_id)
    .bind(mismatch.operation)
    .bind(&mismatch.reference)
    .bind(mismatch.amount)
    .execute(conn)
    .await?;
    Ok(())
}

/// The payment ended since its deadline was set: nothing waits.
pub async fn clear_deadline(conn: &mut PgConnection, payment_id: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE payments SET deadline_at = NULL WHERE payment_id = $1")
        .bind(payment_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records a saga step that does not change the payment's status (kind `STEP`).
pub async fn record_step(
    conn: &mut PgConnection,
    payment: &PaymentRow,
    reason: &str,
    event_id: Option<Uuid>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, event_id, kind)
         VALUES ($1, $2, $2, $3, $4, 'STEP')",
    )
    .bind(payment.payment_id)
    .bind(payment.status.as_str())
    .bind(reason)
    .bind(event_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub use sagapay_api_models::{Payment as PaymentView, PaymentSummary, TimelineEntry, TimelineKind};

/// Which of a merchant's payments to list.
#[derive(Debug, Default)]
pub struct Listing {
    pub status: Option<PaymentStatus>,
    pub created_gte: Option<DateTime<Utc>>,
    pub created_lt: Option<DateTime<Utc>>,
    /// The last payment of the previous page (one of this merchant's).
    pub starting_after: Option<Uuid>,
    pub limit: i64,
}

/// A page of the merchant's payments, newest first (creation time, then id), and whether
/// more follow. `None` when `starting_after` is not one of the merchant's payments.
pub async fn list(
    conn: &mut PgConnection,
    merchant_id: Uuid,
    listing: &Listing,
) -> sqlx::Result<Option<(Vec<PaymentSummary>, bool)>> {
    let cursor: Option<DateTime<Utc>> = match listing.starting_after {
        None => None,
        Some(id) => {
            let found: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT created_at FROM payments WHERE payment_id = $1 AND merchant_id = $2",
            )
            .bind(id)
            .bind(merchant_id)
            .fetch_optional(&mut *conn)
            .await?;
            match found {
                None => return Ok(None),
                some => some,
            }
        }
    };
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments
          WHERE merchant_id = $1
            AND ($2::text IS NULL OR status = $2)
            AND ($3::timestamptz IS NULL OR created_at >= $3)
            AND ($4::timestamptz IS NULL OR created_at < $4)
            AND ($5::timestamptz IS NULL OR (created_at, payment_id) < ($5, $6))
          ORDER BY created_at DESC, payment_id DESC
          LIMIT $7"
    );
    let rows = sqlx::query(&sql)
        .bind(merchant_id)
        .bind(listing.status.map(|s| s.as_str()))
        .bind(listing.created_gte)
        .bind(listing.created_lt)
        .bind(cursor)
        .bind(listing.starting_after)
        .bind(listing.limit + 1)
        .fetch_all(&mut *conn)
        .await?;
    let has_more = rows.len() as i64 > listing.limit;
    let page = rows
        .iter()
        .take(listing.limit as usize)
        .map(|row| {
            let p = payment_from_row(row)?;
            Ok(PaymentSummary {
                payment_id: p.payment_id,
                status: p.status,
                amount_cents: p.amount_minor,
                currency: p.currency,
                customer_id: p.customer_id,
                created_at: p.created_at,
                updated_at: p.updated_at,
            })
        })
        .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(Some((page, has_more)))
}

/// The payment with its timeline, if it exists and belongs to `merchant_id`.
pub async fn view(
    conn: &mut PgConnection,
    payment_id: Uuid,
    merchant_id: Uuid,
) -> sqlx::Result<Option<PaymentView>> {
    let sql = format!(
        "SELECT {PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1 AND merchant_id = $2"
    );
    let Some(row) = sqlx::query(&sql)
        .bind(payment_id)
        .bind(merchant_id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let p = payment_from_row(&row)?;
    let timeline = sqlx::query(
        "SELECT kind, from_state, to_state, reason, event_id, occurred_at
           FROM payment_timeline WHERE payment_id = $1 ORDER BY id",
    )
    .bind(payment_id)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|r| {
        let kind: String = r.try_get("kind")?;
        Ok(TimelineEntry {
            kind: TimelineKind::parse(&kind).ok_or_else(|| sqlx::Error::ColumnDecode {
                index: "kind".into(),
                source: format!("{kind:?} is not a timeline kind").into(),
            })?,
            from_state: r.try_get("from_state")?,
            to_state: r.try_get("to_state")?,
            reason: r.try_get("reason")?,
            event_id: r.try_get("event_id")?,
            occurred_at: r.try_get("occurred_at")?,
        })
    })
    .collect::<sqlx::Result<Vec<_>>>()?;
    Ok(Some(PaymentView {
        payment_id: p.payment_id,
        status: p.status,
        amount_cents: p.amount_minor,
        amount_captured_cents: p.captured_in(p.status),
        capture_method: p.capture_method.into(),
        currency: p.currency,
        customer_id: p.customer_id,
        created_at: p.created_at,
        updated_at: p.updated_at,
        timeline,
        refunds: Vec::new(),
    }))
}
