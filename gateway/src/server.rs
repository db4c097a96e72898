//! Running the gateway: the serve loop with graceful drain, SIGHUP reloads, and
//! `novastack serve --config FILE.yaml`.

use crate::routes::app;
use crate::state::{Gateway, GatewayArgs, LocalLoader};
use anyhow::{Context, Result};
use novastack_openai::http::{self, ConnectionLimits, DrainOutcome};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// Serves the gateway on `listener` with the default connection limits (see
/// [`serve_with_limits`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    config_path: Option<PathBuf>,
    drain: Duration,
) -> Result<()> {
    serve_with_limits(
        listener,
        gw,
        config_path,
        drain,
        ConnectionLimits::default(),
    )
    .await
}

/// Serves the gateway on `listener` under `limits`; SIGHUP reloads `config_path` (when
/// given); SIGTERM or Ctrl-C answers new requests 503 and drains for up to `drain`,
/// then abandons what is left (streams end with an error chunk and `[DONE]`) and
/// returns an error.
pub async fn serve_with_limits(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    config_path: Option<PathBuf>,
    drain: Duration,
    limits: ConnectionLimits,
) -> Result<()> {
    #[cfg(unix)]
    if let Some(path) = config_path {
        tokio::spawn(reload_on_sighup(gw.clone(), path));
    }
    #[cfg(not(unix))]
    let _ = config_path;
    gw.connect_shared_state().await;
    let supervisor = tokio::spawn(gw.clone().supervise());
    let g2 = gw.clone();
    let shutdown = async move {
        http::shutdown_signal().await;
        g2.draining.store(true, Ordering::SeqCst);
        tracing::info!("gateway: shutting down, draining for up to {drain:?}");
    };
    let metrics = gw.http.clone();
    let outcome = http::serve(listener, app(gw), limits, metrics, shutdown, drain).await;
    supervisor.abort();
    match outcome {
        DrainOutcome::Finished => Ok(()),
        DrainOutcome::Abandoned { requests } => anyhow::bail!(
            "gateway: --shutdown-timeout ({drain:?}) passed with {requests} requests in flight; abandoned them"
        ),
    }
}

#[cfg(unix)]
async fn reload_on_sighup(gw: Arc<Gateway>, path: PathBuf) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        let gw = gw.clone();
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || reload_file(&gw, &p)).await;
        match r {
            Ok(Ok(())) => tracing::info!("gateway: reloaded {}", path.display()),
            Ok(Err(e)) => {
                tracing::warn!("gateway: reload failed, keeping the running config: {e:#}")
            }
            Err(e) => tracing::warn!("gateway: reload failed: {e}"),
        }
    }
}

fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn reload_file(gw: &Gateway, path: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    gw.reload(&text, &process_env)
        .with_context(|| format!("gateway config {}", path.display()))
}

/// `novastack serve --config FILE.yaml`.
pub fn run(path: &Path, args: &GatewayArgs, local_loader: Arc<LocalLoader>) -> Result<()> {
    let (host, port) = (&args.host, args.port);
    let drain = Duration::from_secs(args.shutdown_timeout);
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read gateway config {}", path.display()))?;
    let gw = Gateway::from_config(&text, args, local_loader, &process_env)
        .with_context(|| format!("gateway config {}", path.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let addr = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let models: Vec<String> = gw
            .epoch()
            .cfg
            .models
            .iter()
            .map(|m| m.name.clone())
            .collect();
        tracing::info!(
            "gateway at http://{}/v1 for {models:?} (SIGHUP reloads {})",
            listener.local_addr()?,
            path.display()
        );
        serve_with_limits(
            listener,
            gw,
            Some(path.to_path_buf()),
            drain,
            args.connections,
        )
        .await
    })
}
