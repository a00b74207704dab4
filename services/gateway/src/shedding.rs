//! Load shedding at the edge. The orchestrator decides admission (its `admission` module:
//! 503 `overloaded` while the pipeline, or the merchant's own share of it, holds its limit of
//! payments in flight). A refusal that travels gateway → orchestrator costs a signed call, a
//! nonce written, a connection and a lookup: under twice the sustainable rate, refusals made
//! that way took the CPU the pipeline needed and settlement fell to half. So once the
//! orchestrator has said `overloaded`, this gateway refuses new payments itself for a short
//! window ([`Shedding::WINDOW`], the orchestrator's sampling interval), then lets the next one
//! through to ask again: at most one forwarded refusal per window per instance.
//!
//! Whose payments: the refusal's header `sagapay-overload-scope` says which limit was hit.
//! `merchant`: that merchant is at its own share, so only its new payments are shed (one
//! merchant at its limit must not make the gateway refuse everyone else, whom the
//! orchestrator would accept). `pipeline`, or no header (an orchestrator from before the
//! header, a proxy's answer): everyone's.
//!
//! Only new payments are shed, and only after the idempotency fast path has been asked: a
//! retry of a payment already answered is replayed from Redis as always. A request whose key
//! Redis could not settle goes to the orchestrator, which answers replays from its own table;
//! so does a retry whose key the orchestrator may already hold (an earlier attempt went there
//! and its outcome was unknown: see `IdempotencyCache::remember_forwarded`): shedding it would
//! refuse a payment that exists, and the orchestrator answers replays even while overloaded.

use prometheus::{IntCounter, Registry};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Which limit an `overloaded` refusal hit, as the orchestrator's header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The pipeline's, shared by every merchant: everyone's new payments are shed.
    Pipeline,
    /// The merchant's own share: only its new payments are shed.
    Merchant,
}

impl Scope {
    /// The orchestrator's header on a 503 `overloaded`.
    pub const HEADER: &'static str = "sagapay-overload-scope";

    /// The scope a header value names; anything but `merchant` (absent, `pipeline`, a value
    /// this gateway does not know) sheds everyone, as before the header existed.
    pub fn from_header(value: Option<&str>) -> Scope {
        match value.map(str::trim) {
            Some(v) if v.eq_ignore_ascii_case("merchant") => Scope::Merchant,
            _ => Scope::Pipeline,
        }
    }

    /// As the header says it (the merchant hears which limit it hit, as the gateway did).
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Pipeline => "pipeline",
            Scope::Merchant => "merchant",
        }
    }

    /// `resp` (a 503 `overloaded`) with the header that names this scope.
    pub fn mark(self, mut resp: axum::response::Response) -> axum::response::Response {
        resp.headers_mut().insert(
            Self::HEADER,
            axum::http::HeaderValue::from_static(self.as_str()),
        );
        resp
    }
}

pub struct Shedding {
    windows: Mutex<Windows>,
    shed: IntCounter,
    shed_merchant: IntCounter,
    bypassed: IntCounter,
}

impl Shedding {
    pub const WINDOW: Duration = Duration::from_millis(100);

    pub fn register(registry: &Registry) -> anyhow::Result<Self> {
        let shed = IntCounter::new(
            "payments_shed_total",
            "New payments refused at the gateway (503 overloaded) while the orchestrator said overloaded",
        )?;
        let shed_merchant = IntCounter::new(
            "payments_shed_merchant_total",
            "Of payments_shed_total, those refused because their merchant was at its own limit",
        )?;
        let bypassed = IntCounter::new(
            "payments_shed_bypassed_total",
            "New-payment requests forwarded during a shedding window because an earlier attempt \
             with their idempotency key reached the orchestrator with an unknown outcome",
        )?;
        for counter in [&shed, &shed_merchant, &bypassed] {
            registry.register(Box::new(counter.clone()))?;
        }
        Ok(Self {
            windows: Mutex::new(Windows::default()),
            shed,
            shed_merchant,
            bypassed,
        })
    }

    /// The window that refuses `merchant`'s new payments now, if one does. Not counted: the
    /// caller may still let a retry through (see [`Shedding::shed`], [`Shedding::bypassed`]).
    pub fn window(&self, merchant: Uuid) -> Option<Scope> {
        self.lock().shedding(merchant, Instant::now())
    }

    /// A new payment was refused here by a window of `scope`.
    pub fn shed(&self, scope: Scope) {
        self.shed.inc();
        if scope == Scope::Merchant {
            self.shed_merchant.inc();
        }
    }

    /// A retry was forwarded through a window: the orchestrator may hold its key.
    pub fn bypassed(&self) {
        self.bypassed.inc();
    }

    /// The orchestrator answered `overloaded` for `merchant`'s new payment: shed `scope`'s
    /// new payments for the next window.
    pub fn overloaded(&self, scope: Scope, merchant: Uuid) {
        self.lock()
            .open(scope, merchant, Instant::now(), Self::WINDOW);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The open windows, pure (time is given): the pipeline's, and merchants' own. A merchant's
/// entry is dropped once its window has passed, when another merchant's opens, so the map
/// holds only merchants refused within the last window.
#[derive(Debug, Default)]
struct Windows {
    pipeline: Option<Instant>,
    merchants: HashMap<Uuid, Instant>,
}

impl Windows {
    /// The window that sheds `merchant`'s new payments at `now`: the pipeline's first.
    fn shedding(&self, merchant: Uuid, now: Instant) -> Option<Scope> {
        if self.pipeline.is_some_and(|until| now < until) {
            return Some(Scope::Pipeline);
        }
        self.merchants
            .get(&merchant)
            .is_some_and(|until| now < *until)
            .then_some(Scope::Merchant)
    }

    /// An `overloaded` answer of `scope` for `merchant` at `now`: a window until `now + window`.
    fn open(&mut self, scope: Scope, merchant: Uuid, now: Instant, window: Duration) {
        let until = now + window;
        match scope {
            Scope::Pipeline => self.pipeline = Some(until),
            Scope::Merchant => {
                self.merchants.retain(|_, open_until| now < *open_until);
                self.merchants.insert(merchant, until);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Shedding::WINDOW;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_scope_is_the_headers_and_everyone_when_unsaid() {
        assert_eq!(Scope::from_header(Some("merchant")), Scope::Merchant);
        assert_eq!(Scope::from_header(Some(" Merchant ")), Scope::Merchant);
        assert_eq!(Scope::from_header(Some("pipeline")), Scope::Pipeline);
        assert_eq!(Scope::from_header(None), Scope::Pipeline);
        assert_eq!(Scope::from_header(Some("region")), Scope::Pipeline);
    }

    #[test]
    fn a_pipeline_window_sheds_everyone_only_inside_it() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t = Instant::now();
        let mut w = Windows::default();
        assert_eq!(w.shedding(a, t), None);
        w.open(Scope::Pipeline, a, t, W);
        assert_eq!(w.shedding(a, t + ms(1)), Some(Scope::Pipeline));
        assert_eq!(w.shedding(b, t + ms(99)), Some(Scope::Pipeline));
        assert_eq!(w.shedding(b, t + W), None);
    }

    #[test]
    fn a_merchant_window_sheds_that_merchant_alone() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let t = Instant::now();
        let mut w = Windows::default();
        w.open(Scope::Merchant, a, t, W);
        assert_eq!(w.shedding(a, t + ms(1)), Some(Scope::Merchant));
        assert_eq!(w.shedding(b, t + ms(1)), None);
        assert_eq!(w.shedding(a, t + W), None);
        // The pipeline's window covers a merchant's own too.
        w.open(Scope::Pipeline, b, t + ms(50), W);
        assert_eq!(w.shedding(a, t + ms(60)), Some(Scope::Pipeline));
        assert_eq!(w.shedding(b, t + ms(120)), Some(Scope::Pipeline));
    }

    #[test]
    fn merchants_whose_window_passed_are_forgotten() {
        let t = Instant::now();
        let mut w = Windows::default();
        for i in 0..10 {
            w.open(Scope::Merchant, Uuid::from_u128(i), t, W);
        }
        assert_eq!(w.merchants.len(), 10);
        w.open(Scope::Merchant, Uuid::from_u128(99), t + W, W);
        assert_eq!(w.merchants.len(), 1, "{w:?}");
    }

    #[test]
    fn refusals_are_counted_by_scope_and_bypasses_apart() {
        let s = Shedding::register(&Registry::new()).unwrap();
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        assert_eq!(s.window(a), None);
        s.overloaded(Scope::Merchant, a);
        assert_eq!(s.window(a), Some(Scope::Merchant));
        assert_eq!(s.window(b), None);
        s.shed(Scope::Merchant);
        s.overloaded(Scope::Pipeline, a);
        assert_eq!(s.window(b), Some(Scope::Pipeline));
        s.shed(Scope::Pipeline);
        s.bypassed();
        assert_eq!(
            (s.shed.get(), s.shed_merchant.get(), s.bypassed.get()),
            (2, 1, 1)
        );
    }
}
