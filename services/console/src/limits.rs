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

/// The client a login comes from. Behind the declared TLS proxy, the address the proxy
/// appended to `X-Forwarded-For` (the last one: what came before it, the client could have
/// written); otherwise the connection's. An IPv6 address stands for its /64 (one host
/// usually has a whole /64 to choose from).
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, behind_proxy: bool) -> IpAddr {
    let address = forwarded_for
        .filter(|_| behind_proxy)
        .and_then(|v| v.rsplit(',').next())
        .and_then(|last| last.trim().parse::<IpAddr>().ok())
        .unwrap_or(peer);
    match address {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_the_proxy_the_address_it_appended_counts() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let xff = Some("6.6.6.6, 203.0.113.7");
        assert_eq!(
            client_address(proxy, xff, true),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_address(proxy, xff, false),
            proxy,
            "no proxy declared: not trusted"
        );
        assert_eq!(client_address(proxy, Some("garbage"), true), proxy);
        assert_eq!(client_address(proxy, None, true), proxy);
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(
            client_address(a, None, false),
            client_address(b, None, false)
        );
    }
}
