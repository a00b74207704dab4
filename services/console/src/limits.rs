//! How often logins may be tried: per operator name (a guessed password) and per client
//! address (a guessed list of names), in memory per instance (governor's keyed GCRA).

use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

/// Login attempts allowed: 5 at once per name, then one every 12 s; 20 at once per client
/// address, then one every 3 s.
pub struct LoginLimits {
    per_name: DefaultKeyedRateLimiter<String>,
    per_address: DefaultKeyedRateLimiter<IpAddr>,
}

impl LoginLimits {
    pub fn new() -> Self {
        let quota = |period_s: u64, burst: u32| {
            Quota::with_period(Duration::from_secs(period_s))
                .expect("a period")
                .allow_burst(NonZeroU32::new(burst).expect("a burst"))
        };
        Self {
            per_name: DefaultKeyedRateLimiter::keyed(quota(12, 5)),
            per_address: DefaultKeyedRateLimiter::keyed(quota(3, 20)),
        }
    }

    /// Whether a login of `name` from `address` may be tried now. A name that cannot be an
    /// operator's counts against its address only: junk names never become keys here.
    pub fn allow(&self, name: &str, address: IpAddr) -> bool {
        self.per_address.check_key(&address).is_ok()
            && (!crate::operators::valid_name(name)
                || self.per_name.check_key(&name.to_ascii_lowercase()).is_ok())
    }
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self::new()
    }
}
