//! A consumer batch's transitions, staged and written in one statement (see
//! [`StagedMoves`]); [`super::transition`] writes one alone.

use super::{seconds, PaymentRow, Transition, TransitionFailure};
use sagapay_messaging::{OutboxBatch, OUTBOX_COLUMNS};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

/// Transitions of a consumer's batch, staged to be written together by
/// [`StagedMoves::write`]: the payments (compare-and-set on each), their timeline rows and
/// their outbox rows in one statement, where [`super::transition`] takes one per transition. At
/// most one per payment: the shell writes what is staged before a payment's second
/// transition, before any other write and before it reads a payment again.
#[derive(Debug, Default)]
pub struct StagedMoves {
    ids: Vec<Uuid>,
    from: Vec<&'static str>,
    versions: Vec<i32>,
    to: Vec<&'static str>,
    authorization_ids: Vec<Option<String>>,
    capture_ids: Vec<Option<String>>,
    journal_ids: Vec<Option<Uuid>>,
    deadlines: Vec<Option<f64>>,
    reasons: Vec<String>,
    event_ids: Vec<Option<Uuid>>,
    outbox: OutboxBatch,
}

impl StagedMoves {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether a transition of `payment_id` is staged.
    pub fn holds(&self, payment_id: Uuid) -> bool {
        self.ids.contains(&payment_id)
    }

    /// Stages `t` of `payment` (as read, before `t`), checked against the transition table.
    pub fn stage(
        &mut self,
        payment: &PaymentRow,
        t: &Transition<'_>,
    ) -> Result<(), TransitionFailure> {
        payment.status.transition_to(t.to)?;
        assert!(
            !self.holds(payment.payment_id),
            "one staged transition per payment"
        );
        self.ids.push(payment.payment_id);
        self.from.push(payment.status.as_str());
        self.versions.push(payment.state_version);
        self.to.push(t.to.as_str());
        self.authorization_ids
            .push(t.facts.authorization_id.map(str::to_owned));
        self.capture_ids.push(t.facts.capture_id.map(str::to_owned));
        self.journal_ids.push(t.facts.journal_transaction_id);
        self.deadlines.push(seconds(t.deadline));
        self.reasons.push(t.reason.to_owned());
        self.event_ids.push(t.event_id);
        if let Some(row) = t.then {
            self.outbox.push(row);
        }
        Ok(())
    }

    /// Writes every staged transition in one statement and forgets them. `Conflict` when a
    /// payment's compare-and-set did not match: the timeline and outbox rows were inserted
    /// regardless, so the caller must roll the transaction back (a consumer's batch does).
    pub async fn write(&mut self, conn: &mut PgConnection) -> Result<(), TransitionFailure> {
        if self.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(self);
        let sql = format!(
            "WITH m AS (
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::text[], $5::text[],
                                      $6::text[], $7::uuid[], $8::float8[], $9::text[], $10::uuid[])
                          WITH ORDINALITY
                          AS m(id, from_state, version, to_state, authorization_id, capture_id,
                               journal_id, deadline_s, reason, event_id, n)),
             moved AS (
                 UPDATE payments p
                    SET status = m.to_state,
                        state_version = p.state_version + 1,
                        updated_at = now(),
                        authorization_id = COALESCE(m.authorization_id, p.authorization_id),
                        capture_id = COALESCE(m.capture_id, p.capture_id),
                        journal_transaction_id = COALESCE(m.journal_id, p.journal_transaction_id),
                        deadline_at = now() + make_interval(secs => m.deadline_s),
                        nudges = 0,
                        attention_since = NULL,
                        attention_reason = NULL
                   FROM m
                  WHERE p.payment_id = m.id AND p.status = m.from_state
                    AND p.state_version = m.version
              RETURNING p.payment_id),
             timeline AS (
                 INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, event_id)
                 SELECT id, from_state, to_state, reason, event_id FROM m ORDER BY n),
             queued AS (
                 INSERT INTO outbox ({OUTBOX_COLUMNS}) {})
             SELECT array_agg(payment_id) FROM moved",
            OutboxBatch::rows(11)
        );
        let query = sqlx::query(&sql)
            .bind(&staged.ids)
            .bind(&staged.from)
            .bind(&staged.versions)
            .bind(&staged.to)
            .bind(&staged.authorization_ids)
            .bind(&staged.capture_ids)
            .bind(&staged.journal_ids)
            .bind(&staged.deadlines)
            .bind(&staged.reasons)
            .bind(&staged.event_ids);
        let moved: Option<Vec<Uuid>> = staged
            .outbox
            .bind(query)
            .fetch_one(&mut *conn)
            .await?
            .try_get(0)?;
        let moved = moved.unwrap_or_default();
        match staged.ids.iter().find(|id| !moved.contains(id)) {
            Some(id) => Err(TransitionFailure::Conflict(*id)),
            None => Ok(()),
        }
    }
}
