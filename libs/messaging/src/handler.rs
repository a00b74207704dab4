//! What a service implements to consume events: a [`Handler`] that runs inside the inbox
//! transaction, the [`MessageContext`] it is given, and the [`HandlerError`] that tells the
//! consumer (`crate::consumer`) whether a failure is worth retrying. Kept apart from the
//! consumer so that the failure classification (`crate::failure`) and the consumer both
//! depend on this contract and not on each other.

use crate::headers::MessageHeaders;
use rdkafka::message::{Message, OwnedMessage};
use sagapay_domain::Envelope;
use sqlx::PgConnection;
use std::future::Future;

/// Where a message came from, and its headers.
#[derive(Debug)]
pub struct MessageContext {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub headers: MessageHeaders,
    pub(crate) after_commit: AfterCommit,
}

impl MessageContext {
    pub(crate) fn new(msg: &OwnedMessage) -> Self {
        Self {
            topic: msg.topic().to_owned(),
            partition: msg.partition(),
            offset: msg.offset(),
            headers: MessageHeaders::from_kafka(msg.headers()),
            after_commit: AfterCommit::default(),
        }
    }

    /// Runs `effect` once the transaction the handler ran in has committed, and never if it
    /// rolls back (a batch split after a later message failed, a retried attempt). For
    /// effects outside the database that must happen once per applied event: metrics, mostly.
    pub fn after_commit(&self, effect: impl FnOnce() + Send + 'static) {
        self.after_commit.push(Box::new(effect));
    }
}

type Effect = Box<dyn FnOnce() + Send>;

/// Effects waiting for their transaction's commit.
#[derive(Default)]
pub(crate) struct AfterCommit(std::sync::Mutex<Vec<Effect>>);

impl std::fmt::Debug for AfterCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterCommit")
            .field("waiting", &self.lock().len())
            .finish()
    }
}

impl AfterCommit {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Effect>> {
        // A panicking effect cannot leave the list half-changed: recover it.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn push(&self, effect: Effect) {
        self.lock().push(effect);
    }

    /// The transaction committed: run what waited for it.
    pub(crate) fn run(&self) {
        let effects = std::mem::take(&mut *self.lock());
        for effect in effects {
            effect();
        }
    }

    /// The transaction rolled back: forget what waited for it.
    pub(crate) fn discard(&self) {
        self.lock().clear();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying: the same message may succeed later (database down, lost race).
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Never worth retrying: the message itself is wrong.
    #[error("permanent: {0:#}")]
    Permanent(anyhow::Error),
}

impl HandlerError {
    pub fn permanent(e: impl Into<anyhow::Error>) -> Self {
        HandlerError::Permanent(e.into())
    }
    pub fn transient(e: impl Into<anyhow::Error>) -> Self {
        HandlerError::Transient(e.into())
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Transient(e.into())
    }
}

impl From<sagapay_domain::events::DecodeError> for HandlerError {
    fn from(e: sagapay_domain::events::DecodeError) -> Self {
        HandlerError::Permanent(e.into())
    }
}

/// A service's reaction to events. It runs inside the transaction that also records the
/// event in the inbox; it must do all its writes through `conn` (including outbox rows).
///
/// A batch (see `crate::consumer`) is handled in one transaction: first [`Handler::prepare`]
/// once, with every event of the batch the inbox took as new, then [`Handler::handle`] for
/// each in order, with what `prepare` loaded. That is where a handler reads, in one statement
/// for the whole batch, what it would otherwise read once per event (the saga's payments).
pub trait Handler: Send + Sync + 'static {
    /// What [`Handler::prepare`] loads for a batch; `()` for a handler that loads per event.
    type Prepared: Default + Send;

    /// Loads what the events of a batch need, in the batch's transaction, before any is
    /// handled. A message handled on its own (a retry, a batch of one) gets
    /// `Prepared::default()` instead, so `handle` must load for itself what it does not find
    /// there; and it must take (not copy) what it uses, so that a second event of the same
    /// entity in the batch reads the first one's changes.
    fn prepare<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        envelopes: &'a [&'a Envelope],
    ) -> impl Future<Output = Result<Self::Prepared, HandlerError>> + Send + 'a {
        let _ = (conn, envelopes);
        async { Ok(Self::Prepared::default()) }
    }

    /// Runs once after the last event of a batch was handled, in the batch's transaction,
    /// before it commits: for writes a handler gathered over the batch to make in one
    /// statement. A message handled on its own gets it too, after its `handle`. A failure
    /// rolls the batch back, as a failing `handle` does.
    fn finish<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        prepared: &'a mut Self::Prepared,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a {
        let _ = (conn, prepared);
        async { Ok(()) }
    }

    fn handle<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        envelope: &'a Envelope,
        ctx: &'a MessageContext,
        prepared: &'a mut Self::Prepared,
    ) -> impl Future<Output = Result<(), HandlerError>> + Send + 'a;

    /// Whether `envelope` would change anything in this service. One that would not is
    /// acknowledged without a transaction or an inbox row (handling nothing twice is still
    /// nothing). Say false only for events the handler is sure to ignore; when in doubt (an
    /// undecodable payload, say), true, so the handler sees it and refuses it properly.
    fn affects(&self, envelope: &Envelope) -> bool {
        let _ = envelope;
        true
    }
}
