//! Reliable messaging for SagaPay services: the transactional outbox and its relay, the inbox
//! consumer that makes at-least-once delivery safe, dead letters, and the Kafka clients.
//!
//! The contract, in one paragraph: a service changes its data and writes the events it wants to
//! send into `outbox` in **one** database transaction. The relay publishes committed rows to
//! Kafka and marks them sent; a crash anywhere only delays events, never loses them, and may
//! publish one twice. Consumers record `(event_id, consumer)` in `inbox` in the **same**
//! transaction as their effect, so a second delivery of an event changes nothing. Offsets are
//! stored only after that transaction commits.

pub mod acl;
pub mod consumer;
pub mod deadletter;
pub mod failure;
pub mod group_commit;
pub mod handler;
pub mod headers;
pub mod kafka;
mod lag;
pub mod metrics;
pub mod migrations;
pub mod outbox;
pub mod partitions;
pub mod postgres_url;
pub mod relay_producer;
pub mod wakeup;

pub use consumer::{ConsumerSettings, InboxConsumer};
pub use deadletter::{Classification, DeadLetter};
pub use group_commit::GroupCommit;
pub use handler::{Handler, HandlerError, MessageContext};
pub use headers::MessageHeaders;
pub use kafka::KafkaSettings;
pub use metrics::MessagingMetrics;
pub use outbox::{Outbox, OutboxBatch, OutboxRelay, OutboxRow, RelaySettings, OUTBOX_COLUMNS};
pub use partitions::{ConsumerHealth, NotConsuming, StallReport};
pub use relay_producer::RelayProducer;
