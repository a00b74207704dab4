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
//! One key, one lookup: requests that miss the cache for a key whose lookup is already running
//! wait for that lookup's answer (single flight) instead of starting their own, and spend
//! neither their address's budget nor a lookup slot. Without it, every request of a busy
//! merchant reaching a cold gateway (after a restart, or each time its entry expires) was a
//! lookup of its own, and those past the slots got 429 for a valid key.
//!
//! Client address: the TCP peer. Behind a load balancer that is the balancer's address; the
//! budget then applies per balancer, which is why it is generous by default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The longest a found key is trusted without asking the database again.
pub const MAX_TTL: Duration = Duration::from_secs(1);
/// Most keys kept (beyond it, expired entries are dropped, then the whole cache if needed).
const MAX_ENTRIES: usize = 100_000;

/// What a lookup found: the value, `None` for no such key, or `Err` when the lookup failed
/// (the database did not answer).
pub type Found<V> = Result<Option<V>, ()>;

/// The answer of a running lookup, for those who wait for it (`None` until it is known).
type Answer<V> = watch::Receiver<Option<Found<V>>>;

/// Keeps what a key's digest was found to be (for the gateway, the authenticated merchant:
/// `KeyCache<auth::Merchant>`).
pub struct KeyCache<V> {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], (V, Instant)>>,
    lookups: tokio::sync::Semaphore,
    /// The lookups running now, by digest.
    in_flight: Mutex<HashMap<[u8; 32], Answer<V>>>,
}

/// Who looks a key up: the first request to miss the cache leads, the others follow.
pub enum Flight<'a, V> {
    Lead(Leader<'a, V>),
    Follow(Answer<V>),
}

/// The one lookup of a digest running now. Dropped without [`Leader::finish`] (its request
/// was refused or cancelled), its followers are told it is gone and look again.
pub struct Leader<'a, V> {
    cache: &'a KeyCache<V>,
    digest: [u8; 32],
    answer: watch::Sender<Option<Found<V>>>,
}

impl<V: Copy> Leader<'_, V> {
    /// Tells the followers what was found, and caches it when it is a key.
    pub fn finish(self, found: Found<V>) {
        if let Ok(Some(v)) = found {
            self.cache.put(self.digest, v);
        }
        let _ = self.answer.send(Some(found));
    }
}

impl<V> Drop for Leader<'_, V> {
    fn drop(&mut self) {
        self.cache
            .in_flight
            .lock()
            .expect("key cache lock")
            .remove(&self.digest);
    }
}

/// Waits for the leader's answer; `None` when the leader went without one.
pub async fn follow<V: Copy>(mut answer: Answer<V>) -> Option<Found<V>> {
    answer
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|found| *found)
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
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Joins the running lookup of `digest`, or becomes it.
    pub fn flight(&self, digest: [u8; 32]) -> Flight<'_, V> {
        let mut in_flight = self.in_flight.lock().expect("key cache lock");
        if let Some(answer) = in_flight.get(&digest) {
            return Flight::Follow(answer.clone());
        }
        let (answer, receiver) = watch::channel(None);
        in_flight.insert(digest, receiver);
        Flight::Lead(Leader {
            cache: self,
            digest,
            answer,
        })
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

    #[tokio::test]
    async fn concurrent_misses_of_one_key_share_one_lookup() {
        let cache = KeyCache::<Merchant>::new(MAX_TTL, 1);
        let m = Merchant {
            merchant_id: Uuid::now_v7(),
            key_id: Uuid::now_v7(),
        };
        let Flight::Lead(leader) = cache.flight([7; 32]) else {
            panic!("the first miss leads");
        };
        let followers: Vec<_> = (0..50)
            .map(|_| match cache.flight([7; 32]) {
                Flight::Follow(answer) => tokio::spawn(follow(answer)),
                Flight::Lead(_) => panic!("a second lookup of the same key"),
            })
            .collect();
        assert!(
            matches!(cache.flight([8; 32]), Flight::Lead(_)),
            "another key leads its own lookup"
        );
        leader.finish(Ok(Some(m)));
        for f in followers {
            let found = f.await.unwrap().expect("an answer");
            assert_eq!(found.unwrap().map(|m| m.key_id), Some(m.key_id));
        }
        assert_eq!(cache.get(&[7; 32]).map(|m| m.key_id), Some(m.key_id));
        assert!(
            matches!(cache.flight([7; 32]), Flight::Lead(_)),
            "a finished lookup is no longer joined"
        );
    }

    #[tokio::test]
    async fn followers_of_a_leader_that_went_without_an_answer_look_again() {
        let cache = KeyCache::<Merchant>::new(MAX_TTL, 1);
        let leader = cache.flight([9; 32]);
        let Flight::Follow(answer) = cache.flight([9; 32]) else {
            panic!("follows");
        };
        drop(leader);
        assert!(follow(answer).await.is_none());
        assert!(matches!(cache.flight([9; 32]), Flight::Lead(_)));
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
