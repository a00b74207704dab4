//! Where a webhook may be sent. Development allows any `http(s)` URL (the local stack's
//! receivers are on loopback). Production allows only `https` URLs whose host resolves to
//! public addresses, checked when the endpoint is registered and again at every delivery,
//! and the delivery then connects to the addresses it checked (a name that resolves to a
//! public address at the check and to 169.254.169.254 a moment later gains nothing).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    #[error("url is not an absolute http(s) URL")]
    NotAUrl,
    #[error("url must use https")]
    NotHttps,
    #[error("url must not carry a user name or password")]
    Credentials,
    #[error("url's host {0} could not be resolved")]
    Unresolved(String),
    #[error("url's host resolves to {0}, which is not a public address")]
    NotPublic(IpAddr),
}

/// What a URL must be, by environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Policy {
    /// Any http(s) URL (development).
    Any,
    /// https to public addresses only (production), and to the networks the operator named
    /// besides (`SAGAPAY_WEBHOOK_ALLOWED_NETWORKS`: receivers on a private network it trusts).
    PublicHttps { also: Vec<ipnet::IpNet> },
}

impl Policy {
    /// The production policy: public addresses only.
    pub const PUBLIC_HTTPS: Policy = Policy::PublicHttps { also: Vec::new() };

    /// Whether only https is allowed.
    pub fn https_only(&self) -> bool {
        matches!(self, Policy::PublicHttps { .. })
    }

    /// Whether a delivery may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        match self {
            Policy::Any => true,
            Policy::PublicHttps { also } => is_public(ip) || also.iter().any(|n| n.contains(&ip)),
        }
    }
}

/// The URL's shape: absolute http(s), no credentials, https under [`Policy::PublicHttps`].
pub fn check_syntax(raw: &str, policy: &Policy) -> Result<url::Url, DestinationError> {
    let url = url::Url::parse(raw).map_err(|_| DestinationError::NotAUrl)?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(DestinationError::NotAUrl);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(DestinationError::Credentials);
    }
    if policy.https_only() && url.scheme() != "https" {
        return Err(DestinationError::NotHttps);
    }
    Ok(url)
}

/// The addresses to connect to for `url`: resolved now, every one permitted by `policy`.
pub async fn resolve(url: &url::Url, policy: &Policy) -> Result<Vec<SocketAddr>, DestinationError> {
    let host = url.host_str().ok_or(DestinationError::NotAUrl)?;
    let port = url
        .port_or_known_default()
        .ok_or(DestinationError::NotAUrl)?;
    // IPv6 literals come bracketed from the URL.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|_| DestinationError::Unresolved(host.to_owned()))?
        .collect();
    if addrs.is_empty() {
        return Err(DestinationError::Unresolved(host.to_owned()));
    }
    if let Some(bad) = addrs.iter().find(|a| !policy.permits(a.ip())) {
        return Err(DestinationError::NotPublic(bad.ip()));
    }
    Ok(addrs)
}

/// The address a URL's host names literally (`https://203.0.113.7/`, `https://[::1]/`), if
/// it is one: such a host is never resolved, so it is checked as it is.
pub fn literal_ip(url: &url::Url) -> Option<IpAddr> {
    match url.host()? {
        url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
        url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
        url::Host::Domain(_) => None,
    }
}

/// Reachable on the public internet: not loopback, private, link-local (cloud metadata
/// lives there), shared, documentation, benchmarking, multicast or reserved space.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

/// Only global unicast (2000::/3) is public: everything outside it is not (loopback,
/// unspecified, IPv4-compatible `::/96`, NAT64 `64:ff9b::/96`, unique local, site-local
/// `fec0::/10`, link-local, multicast), and inside it neither are the ranges that lead
/// somewhere else or nowhere: 6to4 `2002::/16` and Teredo `2001::/32` (each embeds an IPv4
/// address, which may be private), benchmarking `2001:2::/48`, ORCHID `2001:10::/28` and
/// `2001:20::/28`, documentation `2001:db8::/32` and `3fff::/20`. An allow-list: a new special
/// range outside 2000::/3 is refused without a change here.
fn is_public_v6(ip: Ipv6Addr) -> bool {
    let [first, second, third, ..] = ip.segments();
    let global_unicast = (first & 0xe000) == 0x2000;
    global_unicast
        && !(first == 0x2002 // 6to4
            || (first == 0x2001 && second == 0x0000) // Teredo
            || (first == 0x2001 && second == 0x0002 && third == 0) // benchmarking
            || (first == 0x2001 && (second & 0xffe0) == 0x0020) // ORCHIDv2 (and 2001:30::/28)
            || (first == 0x2001 && (second & 0xfff0) == 0x0010) // ORCHID
            || (first == 0x2001 && second == 0x0db8) // documentation
            || (first & 0xfff0) == 0x3ff0) // documentation (3fff::/20)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for (ip, public) in [
            ("93.184.216.34", true),
            ("8.8.8.8", true),
            ("127.0.0.1", false),
            ("10.1.2.3", false),
            ("172.16.0.1", false),
            ("192.168.1.1", false),
            ("169.254.169.254", false),
            ("100.64.0.1", false),
            ("0.0.0.0", false),
            ("255.255.255.255", false),
            ("224.0.0.1", false),
            ("198.18.0.1", false),
            ("2606:4700::1111", true),
            ("::1", false),
            ("::", false),
            ("fd00:ec2::254", false),
            ("fe80::1", false),
            ("::ffff:127.0.0.1", false),
            ("::ffff:8.8.8.8", true),
            ("2001:db8::1", false),
        ] {
            assert_eq!(is_public(ip.parse().unwrap()), public, "{ip}");
        }
    }

    /// IPv6 forms that lead to private IPv4 space, or nowhere public, were taken as public.
    #[test]
    fn ipv4_compatible_6to4_and_site_local_destinations_are_refused() {
        for ip in [
            "::a9fe:a9fe",                          // IPv4-compatible: 169.254.169.254
            "::7f00:1",                             // IPv4-compatible: 127.0.0.1
            "2002:a9fe:a9fe::1",                    // 6to4 of 169.254.169.254
            "2002:a00:1::1",                        // 6to4 of 10.0.0.1
            "fec0::1",                              // site-local
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
            "2001:2::1",                            // benchmarking
            "2001:20::1",                           // ORCHIDv2
            "3fff::1",                              // documentation
            "64:ff9b::a9fe:a9fe",                   // NAT64
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is not public");
        }
        assert!(is_public("2a00:1450:4001:81b::200e".parse().unwrap()));
    }

    #[test]
    fn urls_are_checked_by_policy() {
        use DestinationError::*;
        for (url, policy, expected) in [
            ("https://hooks.example.com/x", Policy::PUBLIC_HTTPS, Ok(())),
            (
                "http://hooks.example.com/x",
                Policy::PUBLIC_HTTPS,
                Err(NotHttps),
            ),
            ("http://127.0.0.1:9000/x", Policy::Any, Ok(())),
            ("ftp://example.com/x", Policy::Any, Err(NotAUrl)),
            ("/relative", Policy::Any, Err(NotAUrl)),
            (
                "https://user:pw@example.com/",
                Policy::Any,
                Err(Credentials),
            ),
        ] {
            assert_eq!(check_syntax(url, &policy).map(|_| ()), expected, "{url}");
        }
    }

    #[tokio::test]
    async fn loopback_is_refused_in_production_at_resolution() {
        for url in [
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://[::1]/x",
        ] {
            let parsed = check_syntax(url, &Policy::PUBLIC_HTTPS).unwrap();
            assert!(
                matches!(
                    resolve(&parsed, &Policy::PUBLIC_HTTPS).await,
                    Err(DestinationError::NotPublic(_))
                ),
                "{url}"
            );
        }
        let local = check_syntax("http://127.0.0.1:9/x", &Policy::Any).unwrap();
        assert_eq!(resolve(&local, &Policy::Any).await.unwrap().len(), 1);
        // A network the operator allowed is permitted, https still required.
        let allowed = Policy::PublicHttps {
            also: vec!["127.0.0.0/8".parse().unwrap()],
        };
        assert_eq!(resolve(&local, &allowed).await.unwrap().len(), 1);
        assert!(!allowed.permits("10.0.0.1".parse().unwrap()));
        assert!(check_syntax("http://127.0.0.1/x", &allowed).is_err());
    }
}
