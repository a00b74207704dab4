//! Running a service: its background tasks (relay, consumer) and its HTTP server share one
//! cancellation token; stopping the service cancels it and waits for every task.
//!
//! No task ends quietly: a task that returns (with an error or without, before shutdown) is
//! marked ended in [`TaskHealth`], so `/ready` answers 503 from that moment, and
//! [`ServiceHandle::run_until_stopped`] stops the whole process with the task's name and
//! error in the log, for its supervisor to restart. Tasks that can recover from a failure do
//! so inside (the outbox relay retries its pass, a consumer replaces its Kafka client).

use anyhow::Context;
use axum::Router;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The background tasks of a service and whether each still runs (what `/ready` checks).
/// Cloning shares the view.
#[derive(Debug, Clone, Default)]
pub struct TaskHealth {
    tasks: Arc<Mutex<Vec<Task>>>,
}

/// A task's name, and whether it still runs.
type Task = (&'static str, Arc<AtomicBool>);

impl TaskHealth {
    fn register(&self, task: &'static str) -> Arc<AtomicBool> {
        let running = Arc::new(AtomicBool::new(true));
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((task, running.clone()));
        running
    }

    /// The tasks that ended, by name.
    pub fn ended(&self) -> Vec<&'static str> {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, running)| !running.load(Ordering::Relaxed))
            .map(|(task, _)| *task)
            .collect()
    }
}

/// Marks its task ended when dropped: when the task returns, fails or panics.
struct RunningFlag(Arc<AtomicBool>);

impl Drop for RunningFlag {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

pub struct ServiceBuilder {
    service: &'static str,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    health: TaskHealth,
}

impl ServiceBuilder {
    /// A builder whose tasks report to `health` (the one `/ready` reads).
    pub fn new(service: &'static str, health: TaskHealth) -> Self {
        Self {
            service,
            shutdown: CancellationToken::new(),
            tasks: JoinSet::new(),
            health,
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Spawns a task that must return when the token it is given is cancelled.
    pub fn spawn<F, Fut>(&mut self, task: &'static str, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let span = tracing::info_span!("task", service_name = self.service, task);
        let fut = f(self.shutdown.clone());
        let running = RunningFlag(self.health.register(task));
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(
            async move {
                let _running = running;
                let result = fut.await;
                if !shutdown.is_cancelled() {
                    match &result {
                        Ok(()) => tracing::error!(task, "task ended before shutdown"),
                        Err(e) => tracing::error!(task, error = %format!("{e:#}"), "task failed"),
                    }
                }
                result.with_context(|| format!("task {task} failed"))
            }
            .instrument(span),
        );
    }

    /// Binds `addr`, serves `router` (over HTTPS with `tls`'s certificate, when given) until
    /// shutdown, and returns the running service.
    pub async fn serve(
        mut self,
        addr: SocketAddr,
        tls: Option<crate::tls_server::TlsFiles>,
        router: Router,
    ) -> anyhow::Result<ServiceHandle> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let local = listener.local_addr()?;
        report_bound_address(local)?;
        let token = self.shutdown.clone();
        let span = tracing::info_span!("http", service_name = self.service);
        // The peer's address is in each request's extensions (`ConnectInfo`), for limits per
        // client address.
        let app = router.into_make_service_with_connect_info::<SocketAddr>();
        let stop = async move { token.cancelled().await };
        let scheme = if tls.is_some() { "https" } else { "http" };
        match tls {
            None => self.tasks.spawn(
                async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                        .context("HTTP server failed")
                }
                .instrument(span),
            ),
            Some(files) => {
                use axum::serve::ListenerExt;
                // `tap_io` makes the peer's address the connection's info, as for plain TCP.
                let tls =
                    crate::tls_server::TlsListener::new(listener, files, self.shutdown.clone())?
                        .tap_io(|_| {});
                self.tasks.spawn(
                    async move {
                        axum::serve(tls, app)
                            .with_graceful_shutdown(stop)
                            .await
                            .context("HTTPS server failed")
                    }
                    .instrument(span),
                )
            }
        };
        tracing::info!(service_name = self.service, addr = %local, scheme, "service started");
        Ok(ServiceHandle {
            service: self.service,
            addr: local,
            shutdown: self.shutdown,
            tasks: self.tasks,
        })
    }
}

/// Writes the address the HTTP API is bound to into the file `SAGAPAY_HTTP_ADDR_FILE` names,
/// when it names one: a supervisor that gave port 0 (`SAGAPAY_HTTP_ADDR=127.0.0.1:0`, as the
/// tests' harness does) learns the port the kernel chose, instead of picking a free port
/// itself and racing other programs for it until the service binds it. Written whole (a
/// temporary file renamed over it), so a reader never sees half an address.
fn report_bound_address(local: SocketAddr) -> anyhow::Result<()> {
    let Some(path) = std::env::var("SAGAPAY_HTTP_ADDR_FILE")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        return Ok(());
    };
    let partial = format!("{path}.partial");
    std::fs::write(&partial, local.to_string())
        .and_then(|()| std::fs::rename(&partial, &path))
        .with_context(|| format!("writing the bound address to {path} (SAGAPAY_HTTP_ADDR_FILE)"))
}

/// A started service. Dropping it does not stop it; call [`ServiceHandle::stop`].
pub struct ServiceHandle {
    pub service: &'static str,
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl ServiceHandle {
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cancels every task and waits (at most 15 s) for them to finish.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let drained = tokio::time::timeout(Duration::from_secs(15), async {
            let mut first_error = None;
            while let Some(res) = self.tasks.join_next().await {
                if let Err(e) = res.map_err(anyhow::Error::from).and_then(|r| r) {
                    first_error.get_or_insert(e);
                }
            }
            first_error
        })
        .await;
        match drained {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(e),
            Err(_) => {
                self.tasks.abort_all();
                anyhow::bail!("{} did not stop within 15 s", self.service)
            }
        }
    }

    /// Runs until SIGINT/SIGTERM or until a task fails, then stops everything.
    pub async fn run_until_stopped(mut self) -> anyhow::Result<()> {
        let outcome = tokio::select! {
            _ = shutdown_signal() => {
                tracing::info!(service_name = self.service, "shutdown signal received");
                Ok(())
            }
            Some(res) = self.tasks.join_next() => {
                match res.map_err(anyhow::Error::from).and_then(|r| r) {
                    Ok(()) => Err(anyhow::anyhow!("a task of {} ended unexpectedly", self.service)),
                    Err(e) => Err(e),
                }
            }
        };
        let stopped = self.stop().await;
        // Spans still buffered for export (a blocking call: off the async threads).
        let _ = tokio::task::spawn_blocking(sagapay_telemetry::shutdown).await;
        outcome.and(stopped)
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
