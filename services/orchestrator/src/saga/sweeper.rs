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

use crate::saga::commands::{self, Outstanding, RefundInFlight};
use crate::saga::deadlines::Deadlines;
use crate::store::{self, PaymentRow, PAYMENT_COLUMNS};
use crate::SagaMetrics;
use anyhow::Context;
use sagapay_messaging::{MessageHeaders, Outbox};
use sqlx::{PgConnection, PgPool, Row};
use tokio_util::sync::CancellationToken;

/// Rows handled in one pass (the rest wait for the next one).
const BATCH: i64 = 100;

pub struct Sweeper {
    pub pool: PgPool,
    pub outbox: Outbox,
    pub deadlines: Deadlines,
    pub metrics: SagaMetrics,
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
                _ = tokio::time::sleep(self.deadlines.sweep_interval) => {}
            }
            if let Err(e) = self.sweep().await {
                tracing::warn!(error = %format!("{e:#}"), "deadline sweep failed");
            }
            if let Err(e) = self.refresh_gauges().await {
                tracing::debug!(error = %format!("{e:#}"), "refreshing deadline gauges failed");
            }
        }
    }

    /// One pass over payments, then refunds, past their deadline.
    pub async fn sweep(&self) -> anyhow::Result<Swept> {
        let mut swept = Swept::default();
        let mut tx = self.pool.begin().await?;
        let overdue = sqlx::query(&format!(
            "SELECT {PAYMENT_COLUMNS} FROM payments
              WHERE deadline_at <= now() AND attention_since IS NULL
              ORDER BY deadline_at LIMIT $1
              FOR UPDATE SKIP LOCKED"
        ))
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await
        .context("claiming overdue payments")?;
        let mut counted = Vec::new();
        for row in &overdue {
            let payment = store::payment_from_row(row)?;
            let nudged = self.overdue_payment(&mut tx, &payment).await?;
            counted.push((payment.status, nudged));
        }
        let refunds = sqlx::query(
            "SELECT r.refund_id, r.payment_id, r.merchant_id, r.status, r.amount_minor, r.currency,
                    r.reason, r.nudges, p.capture_id, p.correlation_id
               FROM refunds r JOIN payments p USING (payment_id)
              WHERE r.deadline_at <= now() AND r.attention_since IS NULL
              ORDER BY r.deadline_at LIMIT $1
              FOR UPDATE OF r SKIP LOCKED",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await
        .context("claiming overdue refunds")?;
        for row in &refunds {
            let refund = RefundInFlight {
                refund_id: row.try_get("refund_id")?,
                payment_id: row.try_get("payment_id")?,
                merchant_id: row.try_get("merchant_id")?,
                status: row.try_get("status")?,
                amount_minor: row.try_get("amount_minor")?,
                currency: row.try_get("currency")?,
                reason: row.try_get("reason")?,
                capture_id: row.try_get("capture_id")?,
                correlation_id: row.try_get("correlation_id")?,
                nudges: row.try_get("nudges")?,
            };
            if self.overdue_refund(&mut tx, &refund).await? {
                swept.nudged += 1;
            } else {
                swept.flagged += 1;
            }
        }
        tx.commit().await?;
        for (status, nudged) in counted {
            if nudged {
                swept.nudged += 1;
                self.metrics
                    .deadline_nudges_total
                    .with_label_values(&[status.as_str()])
                    .inc();
            } else {
                swept.flagged += 1;
            }
        }
        Ok(swept)
    }

    /// Sends the payment's step again, or flags it; true when it was sent again.
    async fn overdue_payment(
        &self,
        conn: &mut PgConnection,
        payment: &PaymentRow,
    ) -> anyhow::Result<bool> {
        let waited = payment
            .deadline_at
            .map(|d| (chrono::Utc::now() - d).num_seconds().max(0))
            .unwrap_or(0);
        let deadline = self
            .deadlines
            .after(
                payment.status,
                payment.compensation,
                payment.awaits_merchant(),
            )
            .unwrap_or(self.deadlines.compensating);
        match commands::outstanding(payment)? {
            Outstanding::Command(command) if payment.nudges < self.deadlines.max_nudges => {
                let reason = format!(
                    "deadline passed in {} ({waited} s ago): {} sent again ({} of {})",
                    payment.status,
                    command.event_type,
                    payment.nudges + 1,
                    self.deadlines.max_nudges
                );
                tracing::warn!(payment_id = %payment.payment_id, %reason, "payment nudged");
                let row = self.outbox.row(&command, &MessageHeaders::default());
                store::resend(
                    conn,
                    payment.payment_id,
                    payment.status,
                    &reason,
                    deadline,
                    &row,
                    false,
                )
                .await?;
                Ok(true)
            }
            Outstanding::Command(command) => {
                let reason = format!(
                    "no answer to {} in {} after {} re-sends",
                    command.event_type, payment.status, payment.nudges
                );
                self.flag(conn, payment, &reason).await?;
                Ok(false)
            }
            Outstanding::Expired => {
                let reason = format!(
                    "not captured within {} s of its authorization: voiding it",
                    self.deadlines.manual_capture.as_secs()
                );
                tracing::info!(payment_id = %payment.payment_id, %reason, "authorization expired");
                let command = commands::fresh(payment, &commands::void(payment, &reason));
                let row = self.outbox.row(&command, &MessageHeaders::default());
                store::record_merchant_action(
                    conn,
                    payment,
                    store::MerchantAction::Expire,
                    None,
                    None,
                    &reason,
                    self.deadlines.compensating,
                    &row,
                )
                .await?;
                Ok(true)
            }
            Outstanding::Person => {
                let reason = format!(
                    "waiting for a person in {} for more than {} s",
                    payment.status,
                    deadline.as_secs()
                );
                self.flag(conn, payment, &reason).await?;
                Ok(false)
            }
            Outstanding::Nothing => {
                // Terminal since its deadline was set (a race the lock excludes, or a deadline
                // left behind): nothing waits.
                sqlx::query("UPDATE payments SET deadline_at = NULL WHERE payment_id = $1")
                    .bind(payment.payment_id)
                    .execute(conn)
                    .await?;
                Ok(false)
            }
        }
    }

    async fn flag(
        &self,
        conn: &mut PgConnection,
        payment: &PaymentRow,
        reason: &str,
    ) -> anyhow::Result<()> {
        tracing::error!(payment_id = %payment.payment_id, %reason, "payment needs attention");
        store::flag_attention(conn, payment.payment_id, payment.status, reason, None).await?;
        self.metrics
            .attention_flagged_total
            .with_label_values(&[payment.status.as_str()])
            .inc();
        Ok(())
    }

    /// Sends the refund's step again, or flags it; true when it was sent again.
    async fn overdue_refund(
        &self,
        conn: &mut PgConnection,
        refund: &RefundInFlight,
    ) -> anyhow::Result<bool> {
        let Some(command) = commands::refund_outstanding(refund)? else {
            sqlx::query("UPDATE refunds SET deadline_at = NULL WHERE refund_id = $1")
                .bind(refund.refund_id)
                .execute(conn)
                .await?;
            return Ok(false);
        };
        if refund.nudges >= self.deadlines.max_nudges {
            let reason = format!(
                "refund {}: no answer to {} in {} after {} re-sends",
                refund.refund_id, command.event_type, refund.status, refund.nudges
            );
            tracing::error!(payment_id = %refund.payment_id, %reason, "refund needs attention");
            sqlx::query(
                "WITH flagged AS (
                     UPDATE refunds SET attention_since = now(), attention_reason = $2
                      WHERE refund_id = $1 RETURNING payment_id)
                 INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, kind)
                 SELECT f.payment_id, p.status, p.status, 'needs attention: ' || $2, 'STEP'
                   FROM flagged f JOIN payments p USING (payment_id)",
            )
            .bind(refund.refund_id)
            .bind(&reason)
            .execute(conn)
            .await?;
            return Ok(false);
        }
        let reason = format!(
            "refund {}: deadline passed in {}: {} sent again ({} of {})",
            refund.refund_id,
            refund.status,
            command.event_type,
            refund.nudges + 1,
            self.deadlines.max_nudges
        );
        tracing::warn!(payment_id = %refund.payment_id, %reason, "refund nudged");
        let row = self.outbox.row(&command, &MessageHeaders::default());
        let sql = format!(
            "WITH nudged AS (
                 UPDATE refunds SET nudges = nudges + 1,
                                    deadline_at = now() + make_interval(secs => $2)
                  WHERE refund_id = $1 RETURNING payment_id),
             timeline AS (
                 INSERT INTO payment_timeline (payment_id, from_state, to_state, reason, kind)
                 SELECT n.payment_id, p.status, p.status, $3, 'STEP'
                   FROM nudged n JOIN payments p USING (payment_id)),
             queued AS (
                 INSERT INTO outbox ({})
                 SELECT $4, $5, $6, $7, $8, $9 FROM nudged)
             SELECT count(*) FROM nudged",
            sagapay_messaging::OUTBOX_COLUMNS
        );
        let query = sqlx::query(&sql)
            .bind(refund.refund_id)
            .bind(self.deadlines.refund.as_secs_f64())
            .bind(&reason);
        row.bind(query).fetch_one(conn).await?;
        Ok(true)
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
        self.metrics.payments_needing_attention.set(attention);
        self.metrics.payments_past_deadline.set(overdue);
        Ok(())
    }
}
