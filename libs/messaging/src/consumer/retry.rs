//! One message on its own: handled in its own transaction, retried in place while its failure
//! is transient and the retry budget lasts, or dead-lettered with why.

use crate::deadletter::{self, Classification, DeadLetter, Origin};
use crate::failure::{self, Retry};
use crate::handler::{Handler, HandlerError, MessageContext};
use crate::headers::TRACEPARENT;
use crate::partitions::Stall;
use rdkafka::message::{Message, OwnedMessage};
use sagapay_domain::Envelope;
use std::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::parse::{consume_span, identify, parse, Parsed};
use super::{Delivery, InboxConsumer, Outcome};

impl<H: Handler> InboxConsumer<H> {
    /// One message on its own: handled, retried in place while its failure is transient and
    /// the retry budget lasts, or dead-lettered.
    pub(super) async fn process(
        &self,
        d: &Delivery,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let msg = &d.msg;
        let mut ctx = MessageContext::new(msg);
        let value = msg.payload().unwrap_or_default();
        let envelope = match parse(value, &ctx.topic, &self.settings.handles) {
            Ok(Parsed::Handled(env)) => env,
            Ok(Parsed::NotFollowed) => return Ok(Outcome::Done),
            Err(error) => {
                let mut letter = self.letter(msg, &ctx, None, &error, Classification::NonRetryable);
                (letter.event_id, letter.event_type) = identify(value);
                return self.dead_letter(letter, shutdown).await;
            }
        };
        if !self.handler.affects(&envelope) {
            self.count_unaffected(std::slice::from_ref(&envelope));
            return Ok(Outcome::Done);
        }
        let span = consume_span(&envelope, &ctx);
        // The handler's events continue the trace from this span.
        let traceparent = sagapay_telemetry::continue_trace(&span, ctx.headers.get(TRACEPARENT));
        ctx.headers.set(TRACEPARENT, traceparent);
        let key = d.key();
        let outcome = async {
            self.observe_queue_delay(&envelope);
            let mut delays =
                failure::retry_delays(self.settings.retry_initial, self.settings.retry_max);
            let mut attempts: u32 = 0;
            let mut first_failure: Option<Instant> = None;
            loop {
                if !self.partitions.is_current(&key, d.generation) {
                    tracing::info!("partition revoked while the message was retried; left to its new owner");
                    return Ok(Outcome::Abandoned);
                }
                attempts += 1;
                let Err(e) = self.handle_once(&envelope, &ctx).await else {
                    return Ok(Outcome::Done);
                };
                let classified = failure::classify(&e);
                let error = format!("{e:#}");
                let failing_since = *first_failure.get_or_insert_with(Instant::now);
                let exhausted = attempts >= self.settings.retry_attempts
                    && failing_since.elapsed() >= self.settings.retry_budget;
                let classification = match classified.retry {
                    Retry::Permanent => Classification::NonRetryable,
                    Retry::Transient if exhausted => Classification::RetryExhausted,
                    Retry::Transient => {
                        let backoff = delays.next().unwrap_or(self.settings.retry_max);
                        self.metrics
                            .handler_retries_total
                            .with_label_values(&[&envelope.event_type])
                            .inc();
                        tracing::warn!(%error, attempt = attempts, backoff_ms = backoff.as_millis() as u64,
                            sqlstate = classified.sqlstate.as_deref().unwrap_or(""),
                            "transient handler failure: retrying in place");
                        self.partitions.stalled(
                            &key,
                            d.generation,
                            ctx.offset,
                            Stall {
                                event_type: Some(envelope.event_type.clone()),
                                first_failure: failing_since,
                                attempts,
                                last_error: error,
                            },
                        );
                        tokio::select! {
                            _ = shutdown.cancelled() => return Ok(Outcome::Stopped),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        continue;
                    }
                };
                let error = match classification {
                    Classification::RetryExhausted => format!(
                        "gave up after {attempts} attempts over {:.1} s: {error}",
                        failing_since.elapsed().as_secs_f64()
                    ),
                    Classification::NonRetryable => error,
                };
                tracing::warn!(%error, classification = classification.as_str(),
                    sqlstate = classified.sqlstate.as_deref().unwrap_or(""), "dead-lettering");
                let mut letter = self.letter(msg, &ctx, Some(&envelope), &error, classification);
                letter.sqlstate = classified.sqlstate;
                letter.attempts = Some(attempts);
                return self.dead_letter(letter, shutdown).await;
            }
        }
        .instrument(span)
        .await;
        if !matches!(outcome, Ok(Outcome::Done)) {
            self.partitions.unstalled(&key, d.generation, ctx.offset);
        }
        outcome
    }

    /// One attempt: inbox row + handler in one transaction.
    pub(super) async fn handle_once(
        &self,
        envelope: &Envelope,
        ctx: &MessageContext,
    ) -> Result<(), HandlerError> {
        let span = tracing::info_span!(
            "db.transaction",
            otel.kind = "client",
            db.system = "postgresql"
        );
        // Whatever an earlier, rolled-back attempt left waiting never happened.
        ctx.after_commit.discard();
        async {
            let mut tx = self.pool.begin().await?;
            if !self.record_in_inbox(&mut tx, envelope, ctx).await? {
                tx.rollback().await?;
                self.count_duplicate(envelope, &tracing::Span::current());
                return Ok(());
            }
            let mut prepared = H::Prepared::default();
            self.handler
                .handle(&mut tx, envelope, ctx, &mut prepared)
                .await?;
            self.handler.finish(&mut tx, &mut prepared).await?;
            tx.commit().await?;
            ctx.after_commit.run();
            self.count_consumed(envelope);
            Ok(())
        }
        .instrument(span)
        .await
    }

    pub(super) fn letter(
        &self,
        msg: &OwnedMessage,
        ctx: &MessageContext,
        envelope: Option<&Envelope>,
        error: &str,
        classification: Classification,
    ) -> DeadLetter {
        let mut letter = DeadLetter::new(
            &Origin {
                topic: &ctx.topic,
                partition: ctx.partition,
                offset: ctx.offset,
                key: msg.key(),
                headers: &ctx.headers.0,
                value: msg.payload().unwrap_or_default(),
            },
            &self.settings.consumer_name,
            error,
            classification,
        );
        letter.event_id = envelope.map(|e| e.event_id.to_string());
        letter.event_type = envelope.map(|e| e.event_type.clone());
        letter
    }

    /// Publishes a dead letter (retrying until the broker has it); the message is then done.
    pub(super) async fn dead_letter(
        &self,
        letter: DeadLetter,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Outcome> {
        let retry = (self.settings.retry_initial, self.settings.retry_max);
        match deadletter::publish(
            &self.producer,
            &self.settings.dead_letter_topic,
            &letter,
            retry,
            shutdown,
        )
        .await
        {
            Ok(()) => {}
            Err(_) if shutdown.is_cancelled() => return Ok(Outcome::Stopped),
            Err(e) => return Err(e),
        }
        self.metrics
            .dlq_published_total
            .with_label_values(&[letter.classification.as_str()])
            .inc();
        tracing::warn!(topic = %letter.original_topic, offset = letter.original_offset,
            error = %letter.error, classification = letter.classification.as_str(),
            "message dead-lettered");
        Ok(Outcome::Done)
    }
}
