//! Being woken by PostgreSQL: `LISTEN` on a channel that a trigger `NOTIFY`s at commit, kept
//! alive across restarts of the server. The outbox relay and the provider worker both poll as a
//! fallback; this is what lets them react within milliseconds instead.
//!
//! Why a type of its own: a listener whose connection broke is easy to lose for good (the
//! provider worker once fell back to polling forever after a PostgreSQL restart). Here a
//! broken listener is reconnected, at most once a second, and the reconnection itself is
//! reported as a wake-up: notifications sent while it was down are lost, so the owner must
//! look for work as if it had been notified.

use crate::metrics::MessagingMetrics;
use prometheus::IntGauge;
use sqlx::postgres::PgListener;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use std::time::Duration;
use tokio::time::Instant;

/// Why [`Wakeup::next`] or [`Wakeup::next_or`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// One or more notifications arrived (a burst is coalesced into one wake-up).
    Notified,
    /// The listener is back after a broken connection; notifications may have been missed.
    Reconnected,
    /// The deadline of [`Wakeup::next_or`] passed: the polling fallback, or work coming due.
    Deadline,
}

pub struct Wakeup {
    pool: PgPool,
    channel: &'static str,
    listener: Option<PgListener>,
    /// A reconnection under way, in a task of its own: the owner's loop drops
    /// [`Wakeup::next`] whenever its timer or other work comes first, and a reconnection
    /// awaited inside it was dropped with it, so under load (a timer of 100 ms, a connection
    /// that took longer) the listener never came back.
    connecting: Option<tokio::task::JoinHandle<Option<PgListener>>>,
    retry_at: Instant,
    /// `listener_connected{channel}`: 1 while listening.
    connected: IntGauge,
}

const RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

impl Wakeup {
    /// Listens on `channel` with a connection of `pool` (connecting now, or on the first
    /// [`Wakeup::next`] if the server does not answer); `metrics` shows whether it listens.
    pub async fn listen(pool: &PgPool, channel: &'static str, metrics: &MessagingMetrics) -> Self {
        // A pool of its own that tests a connection before handing it out: after an outage the
        // service's pool holds dead connections (it does not test them), and a LISTEN on one
        // fails at once; attempts a second apart each drew another dead one, or the same one
        // back, for longer than a test waits.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .test_before_acquire(true)
            .connect_lazy_with((*pool.connect_options()).clone());
        let mut this = Self {
            pool,
            channel,
            listener: None,
            connecting: None,
            retry_at: Instant::now(),
            connected: metrics.listener_connected.with_label_values(&[channel]),
        };
        this.listener = connect(this.pool.clone(), channel).await;
        if this.listener.is_none() {
            this.retry_at = Instant::now() + RECONNECT_INTERVAL;
        }
        this.connected.set(i64::from(this.listener.is_some()));
        this
    }

    /// The reconnection's result once it is done; it goes on in its own task while this
    /// future is dropped.
    async fn reconnect(&mut self) -> Option<PgListener> {
        let pool = self.pool.clone();
        let channel = self.channel;
        let task = self
            .connecting
            .get_or_insert_with(|| tokio::spawn(connect(pool, channel)));
        let listener = task.await.ok().flatten();
        self.connecting = None;
        if listener.is_none() {
            self.retry_at = Instant::now() + RECONNECT_INTERVAL;
        }
        listener
    }

    /// Whether a listener is connected now.
    pub fn is_listening(&self) -> bool {
        self.listener.is_some()
    }

    /// Waits for the next notification, the listener's return, or `deadline` (none: no
    /// timer), whichever comes first: what the loops that claim work (the outbox relay, the
    /// provider worker, the webhook dispatcher) wait on between claims, each of which also
    /// answers every reason the same way, by looking for work. Cancel-safe, like [`next`].
    ///
    /// [`next`]: Wakeup::next
    pub async fn next_or(&mut self, deadline: Option<Instant>) -> Wake {
        match deadline {
            Some(at) => tokio::select! {
                wake = self.next() => wake,
                _ = tokio::time::sleep_until(at) => Wake::Deadline,
            },
            None => self.next().await,
        }
    }

    /// Waits for the next notification, or for the listener to come back after a break.
    /// Cancel-safe: dropping the future loses no notification that was not yet received.
    pub async fn next(&mut self) -> Wake {
        loop {
            match self.listener.as_mut() {
                Some(l) => match l.recv().await {
                    Ok(_) => {
                        while l.next_buffered().is_some() {}
                        return Wake::Notified;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, channel = self.channel,
                            "LISTEN connection lost; polling until it is back");
                        self.listener = None;
                        self.connected.set(0);
                        self.retry_at = Instant::now() + RECONNECT_INTERVAL;
                    }
                },
                None => {
                    if self.connecting.is_none() {
                        tokio::time::sleep_until(self.retry_at).await;
                    }
                    if let Some(l) = self.reconnect().await {
                        self.listener = Some(l);
                        self.connected.set(1);
                        tracing::info!(channel = self.channel, "LISTEN connection back");
                        return Wake::Reconnected;
                    }
                }
            }
        }
    }
}

/// One attempt to listen on `channel` with a connection of `pool`, bounded by 5 s.
async fn connect(pool: PgPool, channel: &'static str) -> Option<PgListener> {
    let attempt = async {
        let mut l = PgListener::connect_with(&pool).await?;
        l.listen(channel).await?;
        Ok::<_, sqlx::Error>(l)
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(Ok(l)) => Some(l),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, channel, "LISTEN failed; polling until it works");
            None
        }
        Err(_) => {
            tracing::warn!(channel, "LISTEN timed out; polling until it works");
            None
        }
    }
}
