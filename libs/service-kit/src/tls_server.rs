//! HTTPS for a service's API (`SAGAPAY_TLS_CERT_FILE`, `SAGAPAY_TLS_KEY_FILE`): the gateway's
//! calls carry customers' payment details and signed merchant claims, operators' calls the ops
//! key, and `roll_secret` answers with a webhook secret; on a network they must be encrypted.
//! The Ed25519 request signatures stay (they say who calls); TLS adds secrecy.
//!
//! The certificate and key are read from their files at start and again whenever either file
//! changes (checked every few seconds), so a renewed certificate is served without a restart;
//! a file that does not parse keeps the previous certificate, and says so in the log.
//!
//! Handshakes run in tasks of their own and hand finished connections to axum's server loop
//! ([`TlsListener`]), so a client that stalls its handshake holds up no one else; a handshake
//! that takes longer than [`HANDSHAKE_TIMEOUT`] is dropped. Written here rather than taken from
//! `axum-server`: that crate brings a second server loop and its own rustls provider setup,
//! while this is ~150 lines over the tokio-rustls and axum `Listener` the workspace already has.

use anyhow::Context;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the certificate's files are checked for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Where a service's certificate (PEM chain) and private key (PEM) are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Both files' last change, to notice a renewal.
    fn modified(&self) -> Stamp {
        let at = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((at(&self.cert)?, at(&self.key)?))
    }

    fn load(&self) -> anyhow::Result<Arc<CertifiedKey>> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&self.cert)
            .with_context(|| format!("reading {}", self.cert.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing {}", self.cert.display()))?;
        anyhow::ensure!(
            !chain.is_empty(),
            "{} holds no certificate",
            self.cert.display()
        );
        let key = PrivateKeyDer::from_pem_file(&self.key)
            .with_context(|| format!("reading the key {}", self.key.display()))?;
        let signing = rustls::crypto::ring::sign::any_supported_type(&key)
            .with_context(|| format!("the key {} is not one TLS can use", self.key.display()))?;
        let key = CertifiedKey::new(chain, signing);
        // A renewal caught between writing the certificate and writing its key is refused
        // here, not served: the files are read again at the next check.
        key.keys_match()
            .with_context(|| format!("the key {} is not the certificate's", self.key.display()))?;
        Ok(Arc::new(key))
    }
}

/// When the certificate's and the key's files last changed.
type Stamp = Option<(SystemTime, SystemTime)>;

/// The certificate served, replaced when its files change.
#[derive(Debug)]
struct Reloading {
    files: TlsFiles,
    current: RwLock<(Arc<CertifiedKey>, Stamp)>,
}

impl Reloading {
    fn new(files: TlsFiles) -> anyhow::Result<Self> {
        let modified = files.modified();
        let key = files.load()?;
        Ok(Self {
            files,
            current: RwLock::new((key, modified)),
        })
    }

    /// Loads the files again if they changed since the last load.
    fn refresh(&self) {
        let modified = self.files.modified();
        if modified.is_none() || self.current.read().expect("lock").1 == modified {
            return;
        }
        match self.files.load() {
            Ok(key) => {
                *self.current.write().expect("lock") = (key, modified);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => tracing::error!(error = %format!("{e:#}"),
                "the changed TLS certificate does not load: the previous one is still served"),
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("lock").0.clone())
    }
}

/// A listener whose connections have finished their TLS handshake.
pub struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Serves `files`' certificate on `tcp` until `shutdown`: accepts, handshakes (each in a
    /// task of its own) and checks the files for a change.
    pub fn new(
        tcp: TcpListener,
        files: TlsFiles,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let local = tcp.local_addr()?;
        let resolver = Arc::new(Reloading::new(files)?);
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let (tx, ready) = tokio::sync::mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, acceptor, tx, shutdown.clone()));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RELOAD_CHECK) => resolver.refresh(),
                }
            }
        });
        Ok(Self { ready, local })
    }
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    tx: tokio::sync::mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = tcp.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, tx) = (acceptor.clone(), tx.clone());
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            // A client that does not finish (or refuses our certificate) is dropped.
            if let Ok(Ok(tls)) =
                tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
            {
                let _ = tx.send((tls, peer)).await;
            }
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
