//! Load shedding at the edge. The orchestrator decides admission (its `admission` module:
//! 503 `overloaded` while the pipeline holds its limit of payments in flight). A refusal
//! that travels gateway → orchestrator costs a signed call, a nonce written, a connection
//! and a lookup: under twice the sustainable rate, refusals made that way took the CPU the
//! pipeline needed and settlement fell to half. So once the orchestrator has said
//! `overloaded`, this gateway refuses new payments itself for a short window
//! ([`Shedding::WINDOW`], the orchestrator's sampling interval), then lets the next one through
//! to ask again: at most one forwarded refusal per window per instance.
//!
//! Only new payments are shed, and only after the idempotency fast path has been asked: a
//! retry of a payment already answered is replayed from Redis as always. A request whose key
//! Redis could not settle goes to the orchestrator, which answers replays from its own table.

use prometheus::{IntCounter, Registry};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Shedding {
    until: Mutex<Option<Instant>>,
    shed: IntCounter,
}

impl Shedding {
    pub const WINDOW: Duration = Duration::from_millis(100);

    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let shed = IntCounter::new(
            "payments_shed_total",
            "New payments refused at the gateway (503 overloaded) while the orchestrator said overloaded",
        )?;
        registry.register(Box::new(shed.clone()))?;
        Ok(Self {
            until: Mutex::new(None),
            shed,
        })
    }

    /// Whether a new payment is to be refused here, now (and counted as shed if so).
    pub fn sheds(&self) -> bool {
        let shedding = sheds_at(*self.lock(), Instant::now());
        if shedding {
            self.shed.inc();
        }
        shedding
    }

    /// The orchestrator answered `overloaded`: shed for the next window.
    pub fn overloaded(&self) {
        *self.lock() = Some(Instant::now() + Self::WINDOW);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Pure: shedding while the window opened by the last `overloaded` answer lasts.
fn sheds_at(until: Option<Instant>, now: Instant) -> bool {
    until.is_some_and(|u| now < u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sheds_only_inside_the_window() {
        let t = Instant::now();
        assert!(!sheds_at(None, t));
        assert!(sheds_at(Some(t + Duration::from_millis(1)), t));
        assert!(!sheds_at(Some(t), t));
        assert!(!sheds_at(Some(t), t + Duration::from_millis(1)));
    }

    #[test]
    fn an_overloaded_answer_opens_a_window() {
        let s = Shedding::register(&Registry::new()).unwrap();
        assert!(!s.sheds());
        s.overloaded();
        assert!(s.sheds());
        assert_eq!(s.shed.get(), 1);
    }
}
