//! Rate limits: a token bucket (GCRA, `governor`) per key, refilled at `per_second` with room
//! for `burst` at once. Keyed by API key (over the limit a request gets 429 `rate_limited`
//! with `Retry-After`; every authenticated response carries `x-ratelimit-limit` and
//! `x-ratelimit-remaining`) and by client address for key lookups (`keycache`).
//!
//! The buckets live in each gateway process. With N gateway instances behind a load balancer
//! a key can get up to N times the configured rate; set the rate per instance accordingly (or
//! move the buckets to Redis when exact global limits matter more than a network hop).

use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::{DefaultKeyedRateLimiter, Quota};
use sagapay_service_kit::api_error::{ApiError, ErrorType};
use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};
use uuid::Uuid;

pub struct RateLimit<K: Hash + Eq + Clone = Uuid> {
    limiter: DefaultKeyedRateLimiter<K, StateInformationMiddleware>,
    clock: DefaultClock,
    burst: u32,
}

impl<K: Hash + Eq + Clone> RateLimit<K> {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let per_second = NonZeroU32::new(per_second.max(1)).expect("at least 1");
        let burst_nz = NonZeroU32::new(burst.max(1)).expect("at least 1");
        let quota = Quota::per_second(per_second).allow_burst(burst_nz);
        Self {
            limiter: DefaultKeyedRateLimiter::keyed(quota)
                .with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            burst: burst_nz.get(),
        }
    }

    /// Takes one token of `key`'s bucket: the tokens left, or the seconds until one is
    /// available (rounded up).
    pub fn check(&self, key: K) -> Result<u32, u64> {
        match self.limiter.check_key(&key) {
            Ok(snapshot) => Ok(snapshot.remaining_burst_capacity()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err((wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1))
            }
        }
    }

    /// The 429 answer of an API key over its limit.
    pub fn refusal(&self, retry_after_s: u64) -> Response {
        let mut resp = too_many_requests(
            "rate_limited",
            &format!("too many requests for this API key; retry in {retry_after_s} s"),
            retry_after_s,
        );
        let h = resp.headers_mut();
        h.insert("x-ratelimit-limit", HeaderValue::from(self.burst));
        h.insert("x-ratelimit-remaining", HeaderValue::from(0u32));
        resp
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// Forgets buckets that are full again (bounded memory under many keys).
    pub fn shrink(&self) {
        self.limiter.retain_recent();
    }
}

/// 429 with `code` and `Retry-After`.
pub fn too_many_requests(code: &str, message: &str, retry_after_s: u64) -> Response {
    let mut resp = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorType::RateLimitError,
        code,
        message,
    )
    .into_response();
    resp.headers_mut()
        .insert("retry-after", HeaderValue::from(retry_after_s));
    resp
}

/// Where the authentication extractor leaves `(limit, remaining)` for the response headers.
#[derive(Clone, Default)]
pub struct QuotaSlot(pub Arc<OnceLock<(u32, u32)>>);

pub async fn quota_headers(mut req: Request, next: Next) -> Response {
    let slot = QuotaSlot::default();
    req.extensions_mut().insert(slot.clone());
    let mut resp = next.run(req).await;
    if let Some((limit, remaining)) = slot.0.get() {
        resp.headers_mut()
            .insert("x-ratelimit-limit", HeaderValue::from(*limit));
        resp.headers_mut()
            .insert("x-ratelimit-remaining", HeaderValue::from(*remaining));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_refuses_with_a_retry_time() {
        let rl = RateLimit::new(1, 3);
        let key = Uuid::now_v7();
        let remaining: Vec<u32> = (0..3).map(|_| rl.check(key).unwrap()).collect();
        assert_eq!(remaining, vec![2, 1, 0]);
        let retry_after_s = rl.check(key).unwrap_err();
        assert_eq!(retry_after_s, 1);
        let refused = rl.refusal(retry_after_s);
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers()["retry-after"], "1");
        // Another key has its own bucket.
        assert_eq!(rl.check(Uuid::now_v7()).unwrap(), 2);
    }

    #[test]
    fn buckets_can_be_per_client_address() {
        let rl: RateLimit<std::net::IpAddr> = RateLimit::new(1, 3);
        let (a, b) = ("127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap());
        for _ in 0..3 {
            assert!(rl.check(a).is_ok());
        }
        assert!(rl.check(a).unwrap_err() >= 1);
        assert!(rl.check(b).is_ok());
    }
}
