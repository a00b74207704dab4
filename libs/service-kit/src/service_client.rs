//! The client of calls to SagaPay's own services (the gateway's, `sagapayctl`'s). With
//! `SAGAPAY_SERVICE_CA_FILE` (PEM; a bundle while a CA is rolled), that CA is the only one
//! trusted for https: the services' certificates are the deployment's own, and no public CA
//! may vouch for an impostor. Never through a proxy of the environment (`HTTPS_PROXY`, ...):
//! it has no business between services, and would see the ops key.

use anyhow::Context;
use std::path::{Path, PathBuf};

/// `SAGAPAY_SERVICE_CA_FILE`, when set.
pub fn ca_file_from_env() -> Option<PathBuf> {
    Some(crate::config::env_or("SAGAPAY_SERVICE_CA_FILE", ""))
        .filter(|f| !f.is_empty())
        .map(Into::into)
}

/// A client builder that trusts `ca_file` alone for https (the built-in roots otherwise).
pub fn builder(ca_file: Option<&Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    let builder = reqwest::Client::builder().no_proxy();
    let Some(file) = ca_file else {
        return Ok(builder);
    };
    let what = || format!("SAGAPAY_SERVICE_CA_FILE {}", file.display());
    let pem = std::fs::read(file).with_context(what)?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(what)?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", what());
    Ok(certs.into_iter().fold(
        builder.tls_built_in_root_certs(false),
        reqwest::ClientBuilder::add_root_certificate,
    ))
}
