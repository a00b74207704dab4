//! What stands between an anonymous flood and the key table: API keys found are cached in
//! memory for at most a second (so a revocation takes effect within a second), and a key that
//! is not cached is looked up in the database only within a budget per client address (a
//! `RateLimit<IpAddr>`), checked before the lookup. A flood of random keys from one address gets 429 without touching
//! PostgreSQL, while merchants whose keys are cached never spend that budget.
//!
//! Client address: the TCP peer. Behind a load balancer that is the balancer's address; the
//! budget then applies per balancer, which is why it is generous by default.

use crate::auth::Merchant;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a found key is trusted without asking the database again.
pub const MAX_TTL: Duration = Duration::from_secs(1);
/// Most keys kept (beyond it, expired entries are dropped, then the whole cache if needed).
const MAX_ENTRIES: usize = 100_000;

pub struct KeyCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (Merchant, Instant)>>,
}

impl KeyCache {
    /// `ttl` is capped at [`MAX_TTL`]; zero turns the cache off.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl: ttl.min(MAX_TTL),
            entries: Mutex::new(HashMap::new()),
        }
    }

    pub fn get(&self, digest: &[u8; 32]) -> Option<Merchant> {
        let entries = self.entries.lock().expect("key cache lock");
        entries
            .get(digest)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(m, _)| *m)
    }

    pub fn put(&self, digest: [u8; 32], merchant: Merchant) {
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
        entries.insert(digest, (merchant, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    #[test]
    fn a_cached_key_expires_within_its_ttl() {
        let cache = KeyCache::new(Duration::from_millis(30));
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
        assert!(KeyCache::new(Duration::from_secs(60)).ttl <= MAX_TTL);
    }
}
