//! The HTTP client webhook deliveries go out with.
//!
//! - TLS by rustls with Mozilla's roots (webpki-roots) on the ring provider: the same trust on
//!   every host whatever its CA bundle, and no OpenSSL in the delivery path. An extra CA
//!   bundle (`SAGAPAY_WEBHOOK_CA_FILE`, PEM) is trusted besides, for receivers behind a
//!   private CA (and for tests). A receiver whose certificate does not verify is a failed
//!   attempt, the reason in its delivery.
//! - No proxy: proxy variables of the environment (`HTTPS_PROXY`, ...) are never read; a
//!   proxy would connect on our behalf to addresses nobody checked.
//! - Names resolve through [`CheckedResolver`]: under the production policy every address a
//!   name resolves to must be public, and the connection goes to those addresses only (a
//!   name that resolves to a public address when checked and to 169.254.169.254 a moment later
//!   gains nothing). The lookup is part of the request, so the delivery's timeout bounds it
//!   too: a slow resolver cannot hold a delivery past its lease.
//! - No redirects: a receiver answers, it does not send the event elsewhere.

use crate::destination::{self, Policy};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Resolves names for deliveries, refusing what the policy refuses.
#[derive(Debug, Clone)]
pub struct CheckedResolver {
    pub policy: Policy,
}

impl Resolve for CheckedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            // The port is the URL's; the resolver's answer only carries addresses.
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(Box::new(destination::DestinationError::Unresolved(
                    name.as_str().to_owned(),
                ))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            if let Some(bad) = addrs.iter().find(|a| !policy.permits(a.ip())) {
                return Err(Box::new(destination::DestinationError::NotPublic(bad.ip()))
                    as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The client of the dispatcher: `timeout` per request (lookup, connection, TLS and answer),
/// the CA bundle at `ca_file` trusted besides the public roots.
pub fn build(
    policy: Policy,
    timeout: Duration,
    ca_file: Option<&Path>,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(true)
        .dns_resolver(Arc::new(CheckedResolver { policy }));
    if let Some(path) = ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("SAGAPAY_WEBHOOK_CA_FILE {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("SAGAPAY_WEBHOOK_CA_FILE {}: {e}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "SAGAPAY_WEBHOOK_CA_FILE {} holds no certificate",
            path.display()
        );
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder.build()?)
}

/// An error as one line with its causes (reqwest's own message names only the URL; why the
/// TLS handshake or the lookup failed is in its sources).
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lookup that never answers is bounded by the delivery's timeout (the lookup used to
    /// run before it, unbounded: a slow lookup could outlive the delivery's lease, and the
    /// delivery was sent twice).
    #[tokio::test]
    async fn a_lookup_that_never_answers_ends_within_the_timeout() {
        #[derive(Debug)]
        struct Hanging;
        impl Resolve for Hanging {
            fn resolve(&self, _: Name) -> Resolving {
                Box::pin(std::future::pending())
            }
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .no_proxy()
            .dns_resolver(Arc::new(Hanging))
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let err = client
            .post("http://receiver.invalid/hook")
            .send()
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn the_production_resolver_refuses_private_addresses() {
        let resolver = CheckedResolver {
            policy: Policy::PUBLIC_HTTPS,
        };
        let refused = resolver
            .resolve("localhost".parse().unwrap())
            .await
            .err()
            .expect("loopback refused");
        assert!(
            refused.to_string().contains("not a public address"),
            "{refused}"
        );
        let allowed = CheckedResolver {
            policy: Policy::Any,
        }
        .resolve("localhost".parse().unwrap())
        .await
        .expect("development resolves anything");
        assert!(allowed.count() >= 1);
    }
}
