//! The sweeper: finds payments (and merchant refunds) past their deadline and sends their
//! outstanding command again; after `max_nudges` re-sends without progress, or for a payment
//! that waits for a person, it flags them as needing an operator.
//!
//! Safe with any number of orchestrator instances: each pass claims its rows with
//! `FOR UPDATE SKIP LOCKED` in one transaction, so two sweepers never nudge the same payment
//! and a saga step in progress (which holds the payment's lock) is never interrupted. A
//! nudge is a new command (a new event id); every command is idempotent where it lands
//! (risk answers a repeated request with its decision, the provider adapter with the
//! operation's outcome, the ledger with the existing posting), and the saga ignores an
//! answer it has already applied.

use crate::saga::decide::decide;
use crate::saga::decision::{Decision, Effect, Input, RefundEffect};
use crate::saga::shell::{Origin, Shell};
use anyhow::Context;
use sagapay_messaging::MessageHeaders;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Rows handled in one pass (the rest wait for the next one).
const BATCH: i64 = 100;

pub struct Sweeper {
    pub pool: PgPool,
    pub shell: Shell,
}

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub nudged: usize,
    pub flagged: usize,
}

impl Sweeper {
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(self.shell.deadlines.sweep_interval) => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %format!("{e:#}"), "deadline sweep failed");
            }
            if let Err(e) = self.refresh_gauges().await {
                tracing::debug!(error = %format!("{e:#}"), "refreshing deadline gauges failed");
            }
        }
    }

    /// One pass over payments, then refunds, past their deadline: each decided as the saga's
    /// deadline input and written by the shell.
    pub async fn sweep(&self) -> anyhow::Result<Swept> {
        let mut swept = Swept::default();
        let mut after = Vec::new();
        let mut tx = self.pool.begin().await?;
        let overdue: Vec<Uuid> = sqlx::query_scalar(
            "SELECT payment_id FROM payments
              WHERE deadline_at <= now() AND attention_since IS NULL
              ORDER BY deadline_at LIMIT $1
              FOR UPDATE SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await
        .context("claiming overdue payments")?;
        for payment_id in overdue {
            self.overdue(&mut tx, payment_id, Input::Deadline, &mut swept, &mut after)
                .await?;
        }
        let refunds: Vec<(Uuid, Uuid)> = sqlx::query_as(
            "SELECT r.refund_id, r.payment_id
               FROM refunds r JOIN payments p USING (payment_id)
              WHERE r.deadline_at <= now() AND r.attention_since IS NULL
              ORDER BY r.deadline_at LIMIT $1
              FOR UPDATE OF r, p SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await
        .context("claiming overdue refunds")?;
        for (refund_id, payment_id) in refunds {
            let input = Input::RefundDeadline(refund_id);
            self.overdue(&mut tx, payment_id, input, &mut swept, &mut after)
                .await?;
        }
        tx.commit().await?;
        after.into_iter().for_each(|f| f());
        Ok(swept)
    }

    /// Decides the deadline of one payment (or of one of its refunds) and writes it.
    async fn overdue(
        &self,
        conn: &mut PgConnection,
        payment_id: Uuid,
        input: Input,
        swept: &mut Swept,
        after: &mut crate::saga::shell::AfterCommit,
    ) -> anyhow::Result<()> {
        let Some((row, state)) = self.shell.load(conn, payment_id).await? else {
            return Ok(());
        };
        let decision = decide(&state, &input, chrono::Utc::now(), &self.shell.deadlines)
            .map_err(|r| anyhow::anyhow!("deadline of payment {payment_id}: {r}"))?;
        if nudges(&decision) {
            swept.nudged += 1;
            tracing::warn!(%payment_id, ?decision.effects, "payment or refund nudged");
        } else {
            swept.flagged += 1;
        }
        let origin = Origin {
            cause: None,
            correlation_id: &state.terms.correlation_id,
            headers: MessageHeaders::default(),
            refund_request: None,
        };
        after.extend(
            self.shell
                .commit(conn, &row, &state, &decision, &origin)
                .await?,
        );
        Ok(())
    }

    /// `payments_needing_attention` and `payments_past_deadline` (refunds included).
    async fn refresh_gauges(&self) -> anyhow::Result<()> {
        let (attention, overdue): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM payments WHERE attention_since IS NOT NULL)
                  + (SELECT count(*) FROM refunds WHERE attention_since IS NOT NULL),
                    (SELECT count(*) FROM payments
                      WHERE deadline_at <= now() AND attention_since IS NULL)
                  + (SELECT count(*) FROM refunds
                      WHERE deadline_at <= now() AND attention_since IS NULL)",
        )
        .fetch_one(&self.pool)
        .await?;
        self.shell.metrics.payments_needing_attention.set(attention);
        self.shell.metrics.payments_past_deadline.set(overdue);
        Ok(())
    }
}

/// Whether a deadline's decision sent something (else it flagged, or found nothing to do).
fn nudges(d: &Decision) -> bool {
    d.effects.iter().any(|e| {
        matches!(
            e,
            Effect::Resend { .. }
                | Effect::Act { .. }
                | Effect::Refund(RefundEffect::Resend { .. })
        )
    })
}
