//! What stands between an anonymous flood and the key table: API keys found are cached in
//! memory for at most a second (so a revocation takes effect within a second), and a key that
//! is not cached is looked up in the database only within a budget per client address (a
//! `RateLimit<IpAddr>`), checked before the lookup. A flood of random keys from one address gets 429 without touching
//! PostgreSQL, while merchants whose keys are cached never spend that budget.
//!
//! A flood spread over many addresses, each within its budget, meets a second bound: at most
//! `SAGAPAY_KEY_LOOKUPS_CONCURRENT` (default 4) lookups run at once on the whole instance, and
//! a request finding none free is refused at once (429) rather than queued for a connection,
//! so the flood holds at most that many of the pool's connections and payments keep the rest.
//!
//! Client address: the TCP peer. Behind a load balancer that is the balancer's address; the
//! budget then applies per balancer, which is why it is generous by default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a found key is trusted without asking the database again.
pub const MAX_TTL: Duration = Duration::from_secs(1);
/// Most keys kept (beyond it, expired entries are dropped, then the whole cache if needed).
const MAX_ENTRIES: usize = 100_000;

/// Keeps what a key's digest was found to be (for the gateway, the authenticated merchant:
/// `KeyCache<auth::Merchant>`).
pub struct KeyCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (V, Instant)>>,
    lookups: tokio::sync::Semaphore,
}

impl<V: Copy> KeyCache<V> {
    /// `ttl` is capped at [`MAX_TTL`]; zero turns the cache off. At most `concurrent_lookups`
    /// database lookups at once.
    pub fn new(ttl: Duration, concurrent_lookups: usize) -> Self {
        Self {
            ttl: ttl.min(MAX_TTL),
            entries: Mutex::new(HashMap::new()),
            lookups: tokio::sync::Semaphore::new(
                concurrent_lookups.clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            ),
        }
    }

    /// The right to look a key up in the database now, held until dropped; `None` when as many
    /// lookups as allowed are running (the caller refuses rather than waits).
    pub fn lookup_permit(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.lookups.try_acquire().ok()
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<V> {
        let entries = self.entries.lock().expect("key cache lock");
        entries
            .get(digest)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(m, _)| *m)
    }

    pub fn put(&self, digest: [u8; 32], found: V) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("key cache lock");
        if entries.len() >= MAX_ENTRIES {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(digest, (found, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Merchant;
    use uuid::Uuid;

    #[test]
    fn a_cached_key_expires_within_its_ttl() {
        let cache = KeyCache::<Merchant>::new(Duration::from_millis(30), 1);
        let m = Merchant {
            merchant_id: Uuid::now_v7(),
            key_id: Uuid::now_v7(),
        };
        cache.put([1; 32], m);
        assert_eq!(cache.get(&[1; 32]).map(|m| m.key_id), Some(m.key_id));
        assert!(cache.get(&[2; 32]).is_none());
        let deadline = Instant::now() + Duration::from_secs(2);
        while cache.get(&[1; 32]).is_some() {
            assert!(Instant::now() < deadline, "the entry never expired");
            std::thread::yield_now();
        }
        assert!(KeyCache::<Merchant>::new(Duration::from_secs(60), 1).ttl <= MAX_TTL);
    }

    #[test]
    fn lookups_beyond_the_cap_are_refused_not_queued() {
        let cache = KeyCache::<Merchant>::new(MAX_TTL, 2);
        let first = cache.lookup_permit().expect("first");
        let _second = cache.lookup_permit().expect("second");
        assert!(cache.lookup_permit().is_none(), "a third at once");
        drop(first);
        assert!(cache.lookup_permit().is_some(), "freed by the first");
    }
}
