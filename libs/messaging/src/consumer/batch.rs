//! The inbox transaction of a lane's batch: every message of the batch applied in one
//! transaction, each with its inbox row, or the batch split around the message that failed
//! (see `process_batch`), so each message's outcome is what it would be alone.

use crate::handler::{Handler, HandlerError, MessageContext};
use crate::headers::TRACEPARENT;
use rdkafka::message::Message;
use sagapay_domain::Envelope;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::parse::{consume_span, parse, Parsed};
use super::{Delivery, InboxConsumer, Outcome};

impl<H: Handler> InboxConsumer<H> {
    /// Handles `batch` (messages of one lane, in arrival order) in as few transactions as it
    /// can: all of it at once when every handler succeeds. When a message fails, the batch is
    /// rolled back, the messages before it are committed as a batch again, the failing one is
    /// handled on its own (retried in place, dead-lettered or stopped at shutdown exactly as
    /// without batching), and the rest continue as a batch. Returns each message's outcome
    /// (`Stopped` from the first one interrupted by shutdown on).
    pub(super) async fn process_batch(
        &self,
        batch: &[Delivery],
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Vec<Outcome>> {
        let mut outcomes = Vec::with_capacity(batch.len());
        while outcomes.len() < batch.len() {
            let rest = &batch[outcomes.len()..];
            let committed = if rest.len() < 2 {
                0
            } else {
                match self.try_batch(rest).await {
                    Ok(()) => rest.len(),
                    Err(ok_before) if ok_before >= 2 => self
                        .try_batch(&rest[..ok_before])
                        .await
                        .map_or(0, |()| ok_before),
                    Err(_) => 0,
                }
            };
            if committed > 0 {
                outcomes.extend(std::iter::repeat_n(Outcome::Done, committed));
                continue;
            }
            let outcome = self.process(&rest[0], shutdown).await?;
            outcomes.push(outcome);
            if outcome == Outcome::Stopped {
                outcomes.resize(batch.len(), Outcome::Stopped);
            }
        }
        Ok(outcomes)
    }

    /// All of `batch` in one transaction, or nothing. On failure, returns how many messages
    /// at the start of the batch were applied before the one that failed (all rolled back).
    pub(super) async fn try_batch(&self, batch: &[Delivery]) -> Result<(), usize> {
        let mut items = Vec::with_capacity(batch.len());
        let mut skipped = Vec::new();
        for (i, d) in batch.iter().enumerate() {
            let mut ctx = MessageContext::new(&d.msg);
            // A message that is not an envelope is dead-lettered by the one-by-one path.
            let parsed = parse(
                d.msg.payload().unwrap_or_default(),
                &ctx.topic,
                &self.settings.handles,
            )
            .map_err(|_| i)?;
            let Parsed::Handled(envelope) = parsed else {
                continue; // another party's event on a stream
            };
            if !self.handler.affects(&envelope) {
                skipped.push(envelope);
                continue;
            }
            let span = consume_span(&envelope, &ctx);
            let traceparent =
                sagapay_telemetry::continue_trace(&span, ctx.headers.get(TRACEPARENT));
            ctx.headers.set(TRACEPARENT, traceparent);
            items.push((i, envelope, ctx, span));
        }
        if items.is_empty() {
            self.count_unaffected(&skipped);
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(|_| 0usize)?;
        // Every event of the batch goes into the inbox in one statement; those it did not
        // insert were there already (or twice in the batch): duplicates, skipped.
        let mut recorded = self
            .record_batch_in_inbox(&mut tx, &items)
            .await
            .map_err(|_| 0usize)?;
        // The events the inbox took as new, each once (an event repeated in the batch is a
        // duplicate at its second place).
        let mut seen = std::collections::HashSet::with_capacity(recorded.len());
        let new_events: Vec<&Envelope> = items
            .iter()
            .map(|(_, envelope, _, _)| envelope)
            .filter(|e| recorded.contains(&e.event_id) && seen.insert(e.event_id))
            .collect();
        let mut prepared = match self.handler.prepare(&mut tx, &new_events).await {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::debug!(error = %e, batch_size = batch.len(), "batch preparation failed");
                return Err(0);
            }
        };
        let mut fresh = Vec::with_capacity(items.len());
        for (i, envelope, ctx, span) in &items {
            let db_span = tracing::info_span!(
                parent: span,
                "db.transaction",
                otel.kind = "client",
                db.system = "postgresql",
                batch_size = batch.len()
            );
            let inserted = recorded.remove(&envelope.event_id);
            let applied = async {
                if inserted {
                    self.handler
                        .handle(&mut tx, envelope, ctx, &mut prepared)
                        .await?;
                }
                Ok::<bool, HandlerError>(inserted)
            }
            .instrument(db_span)
            .await;
            match applied {
                Ok(inserted) => fresh.push(inserted),
                Err(e) => {
                    let _entered = span.enter();
                    tracing::debug!(error = %e, batch_size = batch.len(),
                        "batch rolled back at this message");
                    return Err(*i);
                }
            }
        }
        if let Err(e) = self.handler.finish(&mut tx, &mut prepared).await {
            // Which message made it fail is not known: the split handles them one by one.
            tracing::debug!(error = %e, batch_size = batch.len(), "batch's finish failed");
            return Err(0);
        }
        if let Err(e) = tx.commit().await {
            tracing::debug!(error = %e, "batch commit failed");
            return Err(0);
        }
        self.count_unaffected(&skipped);
        for ((_, envelope, ctx, span), inserted) in items.iter().zip(fresh) {
            ctx.after_commit.run();
            self.observe_queue_delay(envelope);
            if inserted {
                self.count_consumed(envelope);
            } else {
                self.count_duplicate(envelope, span);
            }
        }
        self.metrics.consumer_batch_size.observe(batch.len() as f64);
        Ok(())
    }

    /// Events acknowledged without a transaction: the handler said they change nothing.
    pub(super) fn count_unaffected(&self, skipped: &[Envelope]) {
        for envelope in skipped {
            self.observe_queue_delay(envelope);
            self.count_consumed(envelope);
        }
    }

    pub(super) fn count_consumed(&self, envelope: &Envelope) {
        self.metrics
            .events_consumed_total
            .with_label_values(&[&envelope.event_type])
            .inc();
    }

    /// Records the events of a batch in the inbox, in one statement; returns the ids it
    /// inserted (the others were there already, or are repeated in the batch).
    pub(super) async fn record_batch_in_inbox(
        &self,
        conn: &mut PgConnection,
        items: &[(usize, Envelope, MessageContext, tracing::Span)],
    ) -> sqlx::Result<std::collections::HashSet<uuid::Uuid>> {
        let mut ids = Vec::with_capacity(items.len());
        let mut types = Vec::with_capacity(items.len());
        let mut topics = Vec::with_capacity(items.len());
        let mut partitions = Vec::with_capacity(items.len());
        let mut offsets = Vec::with_capacity(items.len());
        for (_, envelope, ctx, _) in items {
            ids.push(envelope.event_id);
            types.push(envelope.event_type.as_str());
            topics.push(ctx.topic.as_str());
            partitions.push(ctx.partition);
            offsets.push(ctx.offset);
        }
        let inserted: Vec<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO inbox (event_id, consumer, event_type, topic, kafka_partition, kafka_offset)
             SELECT e, $2, t, tp, p, o
               FROM UNNEST($1::uuid[], $3::text[], $4::text[], $5::int[], $6::bigint[])
                    AS u(e, t, tp, p, o)
             ON CONFLICT (event_id, consumer) DO NOTHING
             RETURNING event_id",
        )
        .bind(&ids)
        .bind(&self.settings.consumer_name)
        .bind(&types)
        .bind(&topics)
        .bind(&partitions)
        .bind(&offsets)
        .fetch_all(conn)
        .await?;
        Ok(inserted.into_iter().collect())
    }

    /// Records the event in the inbox; false when it was there already (a duplicate).
    pub(super) async fn record_in_inbox(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        ctx: &MessageContext,
    ) -> Result<bool, HandlerError> {
        let inserted = sqlx::query(
            "INSERT INTO inbox (event_id, consumer, event_type, topic, kafka_partition, kafka_offset)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (event_id, consumer) DO NOTHING",
        )
        .bind(envelope.event_id)
        .bind(&self.settings.consumer_name)
        .bind(&envelope.event_type)
        .bind(&ctx.topic)
        .bind(ctx.partition)
        .bind(ctx.offset)
        .execute(conn)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    pub(super) fn count_duplicate(&self, envelope: &Envelope, span: &tracing::Span) {
        self.metrics
            .duplicate_events_skipped_total
            .with_label_values(&[&envelope.event_type])
            .inc();
        let _entered = span.enter();
        tracing::info!("duplicate event skipped");
    }

    pub(super) fn observe_queue_delay(&self, envelope: &Envelope) {
        let delay_s = (chrono::Utc::now() - envelope.occurred_at)
            .to_std()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.metrics
            .event_queue_delay_seconds
            .with_label_values(&[&envelope.event_type])
            .observe(delay_s);
    }
}
