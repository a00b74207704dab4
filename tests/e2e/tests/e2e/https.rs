//! A service's HTTPS listener (`sagapay_service_kit::tls_server`): it serves the certificate
//! of its files, serves a renewed one once the files change, without a restart, and keeps the
//! one it has when the new files do not load.

use axum::serve::ListenerExt;
use sagapay_e2e::eventually;
use sagapay_e2e::tls::TestCa;
use sagapay_service_kit::tls_server::{TlsFiles, TlsListener};
use std::time::Duration;

/// A client that trusts `ca` alone and makes a full handshake per request: no pooled
/// connection and no resumed session (a resumed TLS session is not shown the certificate).
fn trusting(ca: &TestCa) -> reqwest::Client {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca.pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.resumption = rustls::client::Resumption::disabled();
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

async fn answers(client: &reqwest::Client, url: &str) -> bool {
    client
        .get(url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = std::env::temp_dir().join(format!("sagapay-https-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = TlsFiles {
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    };
    let install = |cert: &sagapay_e2e::tls::ServerCert| {
        std::fs::write(&files.cert, &cert.cert_pem).unwrap();
        std::fs::write(&files.key, &cert.key_pem).unwrap();
    };
    let (old_ca, new_ca) = (TestCa::new("this year's CA"), TestCa::new("next year's CA"));
    let old_cert = old_ca.server(&["127.0.0.1"]);
    install(&old_cert);
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = TlsListener::new(tcp, files.clone(), shutdown.clone()).unwrap();
    let url = format!(
        "https://{}/",
        axum::serve::Listener::local_addr(&listener).unwrap()
    );
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    tokio::spawn(async move { axum::serve(listener.tap_io(|_| {}), app).await });
    let (old_client, new_client) = (trusting(&old_ca), trusting(&new_ca));
    assert!(answers(&old_client, &url).await);
    assert!(
        !answers(&new_client, &url).await,
        "a CA that signed nothing here"
    );
    // Files that do not load are not served: the old certificate stays through a check of
    // the files (one every 5 s) and more. Here a renewal caught half written: the new
    // certificate beside the old key (served, no handshake would succeed).
    let new_cert = new_ca.server(&["127.0.0.1"]);
    std::fs::write(&files.cert, &new_cert.cert_pem).unwrap();
    std::fs::write(&files.key, &old_cert.key_pem).unwrap();
    let through = std::time::Instant::now() + Duration::from_secs(6);
    while std::time::Instant::now() < through {
        assert!(
            answers(&old_client, &url).await,
            "broken files replaced the certificate"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    install(&new_cert);
    eventually(
        Duration::from_secs(20),
        "the renewed certificate",
        || async { answers(&new_client, &url).await.then_some(()) },
    )
    .await;
    assert!(
        !answers(&old_client, &url).await,
        "the old one is no longer served"
    );
    shutdown.cancel();
    let _ = std::fs::remove_dir_all(&dir);
}
