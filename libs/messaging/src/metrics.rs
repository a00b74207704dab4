//! Prometheus metrics of the messaging layer, registered into the service's registry.

use crate::deadletter::Classification;
use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct MessagingMetrics {
    pub outbox_published_total: IntCounter,
    pub outbox_publish_errors_total: IntCounter,
    pub outbox_pending_total: IntGauge,
    /// Outbox rows set aside because the broker refused them (too large); they are never
    /// retried by the relay.
    pub outbox_parked_total: IntCounter,
    pub outbox_parked_rows: IntGauge,
    pub outbox_oldest_pending_age_seconds: IntGauge,
    pub outbox_relay_batch_size: Histogram,
    pub consumer_batch_size: Histogram,
    pub events_consumed_total: IntCounterVec,
    pub duplicate_events_skipped_total: IntCounterVec,
    pub handler_retries_total: IntCounterVec,
    pub dlq_published_total: IntCounterVec,
    pub event_queue_delay_seconds: HistogramVec,
    /// Messages of the partition not processed yet, reported every few seconds.
    pub consumer_lag_messages: IntGaugeVec,
    /// How long the partition's oldest failing message has been retried in place (0: none).
    pub consumer_stalled_seconds: GaugeVec,
    /// 1 while a LISTEN connection wakes the channel's worker, 0 while it only polls.
    pub listener_connected: IntGaugeVec,
    /// Kafka consumers replaced by a new one after a fatal error (a fenced static member).
    pub consumer_replacements_total: IntCounterVec,
    /// The outbox relay's producer replaced after a fatal error or a stall.
    pub outbox_producer_replacements_total: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl MessagingMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            outbox_published_total: IntCounter::with_opts(Opts::new(
                "outbox_published_total",
                "Outbox rows published to Kafka and marked sent",
            ))?,
            outbox_publish_errors_total: IntCounter::with_opts(Opts::new(
                "outbox_publish_errors_total",
                "Outbox rows whose publication failed (they are retried)",
            ))?,
            outbox_pending_total: IntGauge::with_opts(Opts::new(
                "outbox_pending_total",
                "Outbox rows not yet published",
            ))?,
            outbox_parked_total: IntCounter::with_opts(Opts::new(
                "outbox_parked_total",
                "Outbox rows set aside because the broker refused them as too large",
            ))?,
            outbox_parked_rows: IntGauge::with_opts(Opts::new(
                "outbox_parked_rows",
                "Outbox rows set aside and not published (see outbox.parked_at)",
            ))?,
            outbox_oldest_pending_age_seconds: IntGauge::with_opts(Opts::new(
                "outbox_oldest_pending_age_seconds",
                "Age of the oldest unpublished outbox row",
            ))?,
            outbox_relay_batch_size: Histogram::with_opts(
                HistogramOpts::new("outbox_relay_batch_size", "Rows per relay batch")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0]),
            )?,
            consumer_batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "consumer_batch_size",
                    "Messages committed together in one inbox transaction (batches of two or more)",
                )
                .buckets(vec![2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )?,
            events_consumed_total: IntCounterVec::new(
                Opts::new(
                    "events_consumed_total",
                    "Events consumed (handled and committed, or acknowledged as changing nothing), by event type",
                ),
                &["event_type"],
            )?,
            duplicate_events_skipped_total: IntCounterVec::new(
                Opts::new(
                    "duplicate_events_skipped_total",
                    "Redelivered events skipped because the inbox already had them",
                ),
                &["event_type"],
            )?,
            handler_retries_total: IntCounterVec::new(
                Opts::new(
                    "handler_retries_total",
                    "Transient handler failures retried in place",
                ),
                &["event_type"],
            )?,
            dlq_published_total: IntCounterVec::new(
                Opts::new(
                    "dlq_published_total",
                    "Messages sent to the dead-letter topic",
                ),
                &["classification"],
            )?,
            event_queue_delay_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "event_queue_delay_seconds",
                    "Time from an event's occurred_at to the start of its handling",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["event_type"],
            )?,
            consumer_lag_messages: IntGaugeVec::new(
                Opts::new(
                    "consumer_lag_messages",
                    "Messages of the partition not yet processed by this service's consumer \
                     (high watermark minus the next offset to process), every few seconds",
                ),
                &["topic", "partition"],
            )?,
            consumer_stalled_seconds: GaugeVec::new(
                Opts::new(
                    "consumer_stalled_seconds",
                    "How long the partition's oldest failing message has been retried in place \
                     (0 when none is)",
                ),
                &["topic", "partition"],
            )?,
            listener_connected: IntGaugeVec::new(
                Opts::new(
                    "listener_connected",
                    "1 while the worker of a NOTIFY channel has its LISTEN connection, 0 while \
                     it falls back to polling",
                ),
                &["channel"],
            )?,
            consumer_replacements_total: IntCounterVec::new(
                Opts::new(
                    "consumer_replacements_total",
                    "Kafka consumers replaced by a new one after a fatal error of their client \
                     (a static member fenced after a broker restart, ...)",
                ),
                &["group"],
            )?,
            outbox_producer_replacements_total: IntCounter::with_opts(Opts::new(
                "outbox_producer_replacements_total",
                "The outbox relay's Kafka producer replaced by a new one after a fatal error \
                 or after delivering nothing for a minute while the broker answered",
            ))?,
        };
        registry.register(Box::new(m.outbox_published_total.clone()))?;
        registry.register(Box::new(m.outbox_publish_errors_total.clone()))?;
        registry.register(Box::new(m.outbox_pending_total.clone()))?;
        registry.register(Box::new(m.outbox_parked_total.clone()))?;
        registry.register(Box::new(m.outbox_parked_rows.clone()))?;
        registry.register(Box::new(m.outbox_oldest_pending_age_seconds.clone()))?;
        registry.register(Box::new(m.outbox_relay_batch_size.clone()))?;
        registry.register(Box::new(m.consumer_batch_size.clone()))?;
        registry.register(Box::new(m.events_consumed_total.clone()))?;
        registry.register(Box::new(m.duplicate_events_skipped_total.clone()))?;
        registry.register(Box::new(m.handler_retries_total.clone()))?;
        registry.register(Box::new(m.dlq_published_total.clone()))?;
        registry.register(Box::new(m.event_queue_delay_seconds.clone()))?;
        registry.register(Box::new(m.consumer_lag_messages.clone()))?;
        registry.register(Box::new(m.consumer_stalled_seconds.clone()))?;
        registry.register(Box::new(m.listener_connected.clone()))?;
        registry.register(Box::new(m.consumer_replacements_total.clone()))?;
        registry.register(Box::new(m.outbox_producer_replacements_total.clone()))?;
        for classification in Classification::ALL {
            m.dlq_published_total
                .with_label_values(&[classification.as_str()])
                .inc_by(0);
        }
        Ok(m)
    }

    /// Exports the per-event-type counters of a consumer of `event_types` at zero, so a
    /// dashboard shows 0 (and an alert on an increase can fire) before the first event.
    pub fn expect_events<'a>(&self, event_types: impl IntoIterator<Item = &'a str>) {
        for event_type in event_types {
            for counter in [
                &self.events_consumed_total,
                &self.duplicate_events_skipped_total,
                &self.handler_retries_total,
            ] {
                counter.with_label_values(&[event_type]).inc_by(0);
            }
        }
    }
}
