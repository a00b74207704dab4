//! The saga: a pure core that decides ([`decide`], over the payment's [`state`] and an
//! [`decision::Input`]) and an I/O shell that loads and commits ([`shell`]). Every input goes
//! through both: the events the orchestrator consumes (declared once in [`consumed`]), the
//! merchants' and operators' requests of the API, and the deadlines the sweeper finds. Each
//! decision is written in one transaction with the event's inbox row and the commands it
//! sends, so a step's effect, its inbox row and its follow-up commit together or not at all.

pub mod apply;
pub mod commands;
pub mod consumed;
pub mod deadlines;
pub mod decide;
pub mod decision;
pub mod shell;
pub mod state;
pub(crate) mod sweeper;

use crate::store::staged::StagedMoves;
use crate::store::PaymentRow;
use consumed::Event;
use decision::{Input, RefusalKind};
use sagapay_domain::Envelope;
use sagapay_messaging::{Handler, HandlerError, MessageContext};
use shell::{CommitError, Origin, Shell};
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// The consumer's handler: decode, load, decide, commit.
pub struct Saga {
    pub shell: Shell,
}

/// The payments of a consumer's batch, read and locked in one statement before its first
/// event is handled, and the batch's transitions, staged to be written in one statement when
/// the batch is finished. An event takes its payment's row out, so a second event of the same
/// payment in the batch reads the row again, with the first one's changes (written first).
#[derive(Default)]
pub struct BatchPayments {
    rows: HashMap<Uuid, PaymentRow>,
    moves: StagedMoves,
}

impl Handler for Saga {
    type Prepared = BatchPayments;

    async fn prepare(
        &self,
        conn: &mut PgConnection,
        envelopes: &[&Envelope],
    ) -> Result<BatchPayments, HandlerError> {
        let mut ids: Vec<Uuid> = envelopes.iter().map(|e| e.payment_id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() < 2 {
            // One payment: its handler's own read costs the same and keeps a single path.
            return Ok(BatchPayments::default());
        }
        let rows = crate::store::load_many_for_update(conn, &ids).await?;
        Ok(BatchPayments {
            rows: rows.into_iter().map(|r| (r.payment_id, r)).collect(),
            moves: StagedMoves::default(),
        })
    }

    async fn handle(
        &self,
        conn: &mut PgConnection,
        env: &Envelope,
        ctx: &MessageContext,
        batch: &mut BatchPayments,
    ) -> Result<(), HandlerError> {
        let permanent = |why: String| HandlerError::permanent(anyhow::anyhow!(why));
        let event = Event::decode(env).ok_or_else(|| {
            permanent(format!(
                "the orchestrator does not handle {}",
                env.event_type
            ))
        })??;
        let loaded = match batch.rows.remove(&env.payment_id) {
            Some(row) => Some(self.shell.state_of(conn, row).await?),
            None => {
                // Read as the batch's earlier events left it.
                self.shell.write_staged(conn, &mut batch.moves).await?;
                self.shell.load(conn, env.payment_id).await?
            }
        };
        let (row, state) =
            loaded.ok_or_else(|| permanent(format!("unknown payment {}", env.payment_id)))?;
        let now = chrono::Utc::now();
        let decision = decide::decide(&state, &Input::Event(event), now, &self.shell.deadlines)
            .map_err(|r| permanent(r.to_string()))?;
        let origin = Origin {
            cause: Some(env),
            correlation_id: &env.correlation_id,
            headers: ctx.headers.propagated(),
            refund_request: None,
        };
        let after = self
            .shell
            .commit_staged(
                conn,
                &row,
                &state,
                &decision,
                &origin,
                Some(&mut batch.moves),
            )
            .await?;
        for effect in after {
            ctx.after_commit(effect);
        }
        Ok(())
    }

    async fn finish(
        &self,
        conn: &mut PgConnection,
        batch: &mut BatchPayments,
    ) -> Result<(), HandlerError> {
        Ok(self.shell.write_staged(conn, &mut batch.moves).await?)
    }
}

impl From<CommitError> for HandlerError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Conflict(_) => HandlerError::transient(anyhow::anyhow!(e)),
            CommitError::Broken(why) => HandlerError::permanent(anyhow::anyhow!(why)),
            CommitError::Db(e) => e.into(),
        }
    }
}

impl From<decision::Refusal> for sagapay_service_kit::api_error::ApiError {
    fn from(r: decision::Refusal) -> Self {
        use axum::http::StatusCode;
        use sagapay_service_kit::api_error::{ApiError, ErrorType};
        match r.kind {
            RefusalKind::Conflict => ApiError::new(
                StatusCode::CONFLICT,
                ErrorType::ConflictError,
                r.code,
                r.message,
            ),
            // Every amount refused is the request's `amount_cents`.
            RefusalKind::Unprocessable => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ErrorType::InvalidRequestError,
                r.code,
                r.message,
            )
            .with_param("amount_cents"),
            RefusalKind::Broken => ApiError::internal(r.message),
        }
    }
}

impl From<CommitError> for sagapay_service_kit::api_error::ApiError {
    fn from(e: CommitError) -> Self {
        match e {
            CommitError::Db(e) => e.into(),
            other => sagapay_service_kit::api_error::ApiError::internal(other.to_string()),
        }
    }
}
