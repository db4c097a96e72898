//! `novastack serve`: the OpenAI-compatible HTTP API over the continuous-batching engine.
//!
//! The listener opens before the models load, so `/health` answers at once and `/ready`
//! and the API answer 503 until every model is up. SIGTERM (or Ctrl-C) stops accepting
//! connections, lets in-flight requests finish for up to `--shutdown-timeout` seconds,
//! then exits.

mod api;
mod error;
pub mod metrics;
mod stop;

pub use api::app;
pub(crate) use api::{body_bytes, find_key, request_id};
pub use error::ApiError;

use crate::batch::EngineArgs;
use crate::default_model;
use anyhow::{bail, Context, Result};
use clap::Args;
use novastack_engine::EngineHandle;
use novastack_kernels::CpuBackend;
use novastack_models::{CausalLm, LoadedModel, Tokenizer};
use std::collections::HashMap;
use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Hugging Face model folder, a .gguf file, or `default` (SmolLM2-135M-Instruct).
    /// Repeat to serve several models from one process.
    #[arg(long)]
    pub model: Vec<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The ids clients use, comma-separated aliases, one flag per `--model` in order
    /// (default: the folder or file name; `default` for the embedded model). Responses
    /// carry the first alias.
    #[arg(long)]
    pub served_model_name: Vec<String>,
    /// Require `Authorization: Bearer KEY` on /v1/* and the tokenize routes.
    #[arg(long, env = "NOVASTACK_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// A file of accepted API keys, one per line (`#` comments and blank lines skipped).
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Requests allowed to wait for the engine; beyond it, 429 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting: usize,
    /// Largest request body in bytes; larger bodies get 413.
    #[arg(long, default_value_t = 16 << 20)]
    pub max_body_bytes: usize,
    /// Seconds to let in-flight requests finish after SIGTERM before exiting.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Run as a gateway with this YAML config (models, routes, retry, keys) instead of
    /// serving `--model` directly. SIGHUP reloads it.
    #[arg(long, conflicts_with_all = ["model", "served_model_name", "api_key", "api_key_file"])]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

impl Default for ServeArgs {
    fn default() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: ServeArgs,
        }
        Wrap::parse_from(["novastack"]).args
    }
}

/// One served model: its names, tokenizer and engine thread.
pub struct ModelEntry {
    /// The first is the id responses carry; the rest are aliases.
    pub names: Vec<String>,
    pub tokenizer: Arc<Tokenizer>,
    pub max_context: usize,
    pub engine: EngineHandle,
    /// Request latency from the HTTP layer's view, by outcome.
    pub metrics: metrics::ModelMetrics,
}

impl ModelEntry {
    /// Starts the engine thread for a loaded model.
    pub fn start<B: novastack_kernels::Backend + 'static>(
        lm: LoadedModel<B>,
        names: Vec<String>,
        engine: &EngineArgs,
    ) -> Result<Arc<ModelEntry>>
    where
        B::Buf: 'static,
    {
        Self::start_with(lm, names, engine, None)
    }

    /// Like [`ModelEntry::start`] with the KV cache size in blocks (GPU sizing).
    pub fn start_with<B: novastack_kernels::Backend + 'static>(
        lm: LoadedModel<B>,
        names: Vec<String>,
        engine: &EngineArgs,
        kv_blocks: Option<usize>,
    ) -> Result<Arc<ModelEntry>>
    where
        B::Buf: 'static,
    {
        if names.is_empty() {
            bail!("a served model needs at least one name");
        }
        let max_context = lm.model.max_positions();
        let eos = lm.tokenizer.eos_token_ids().to_vec();
        let engine = engine.build_for(lm.model, eos, kv_blocks)?;
        let engine = EngineHandle::spawn(engine);
        Ok(Arc::new(ModelEntry {
            names,
            tokenizer: Arc::new(lm.tokenizer),
            max_context,
            engine,
            metrics: Default::default(),
        }))
    }

    pub fn id(&self) -> &str {
        &self.names[0]
    }
}

/// The served models, by every name.
pub struct Registry {
    pub models: Vec<Arc<ModelEntry>>,
    by_name: HashMap<String, usize>,
}

impl Registry {
    pub fn new(models: Vec<Arc<ModelEntry>>) -> Result<Registry> {
        if models.is_empty() {
            bail!("no model to serve");
        }
        let mut by_name = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            for n in &m.names {
                if n.is_empty() {
                    bail!("--served-model-name: empty name");
                }
                if by_name.insert(n.clone(), i).is_some() {
                    bail!("--served-model-name: {n:?} names two models");
                }
            }
        }
        Ok(Registry { models, by_name })
    }

    /// The model a request names; none (or `default`, unless a model has that name)
    /// means the first.
    pub fn get(&self, name: Option<&str>) -> Option<&Arc<ModelEntry>> {
        match name {
            None | Some("") => self.models.first(),
            Some(n) => match self.by_name.get(n) {
                Some(&i) => self.models.get(i),
                None if n == "default" => self.models.first(),
                None => None,
            },
        }
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.id()).collect()
    }
}

/// Server-wide settings and state the handlers share.
pub struct AppState {
    registry: OnceLock<Registry>,
    /// Accepted bearer keys; empty means no authentication.
    pub api_keys: Vec<String>,
    pub max_waiting: usize,
    pub max_body_bytes: usize,
    /// Set once SIGTERM arrived: /ready answers 503 and new generations are refused.
    pub draining: AtomicBool,
    pub http: metrics::HttpMetrics,
}

impl AppState {
    /// A state with no model yet: the API answers 503 until [`AppState::set_models`].
    pub fn new(api_keys: Vec<String>, max_waiting: usize, max_body_bytes: usize) -> Arc<Self> {
        Arc::new(AppState {
            registry: OnceLock::new(),
            api_keys,
            max_waiting,
            max_body_bytes,
            draining: AtomicBool::new(false),
            http: Default::default(),
        })
    }

    pub fn set_models(&self, models: Vec<Arc<ModelEntry>>) -> Result<()> {
        let reg = Registry::new(models)?;
        if self.registry.set(reg).is_err() {
            bail!("models are already set");
        }
        Ok(())
    }

    /// `None` while loading.
    pub fn registry(&self) -> Option<&Registry> {
        self.registry.get()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// A ready state serving one loaded model under `name` (tests and embedding).
pub fn app_state(
    lm: LoadedModel<CpuBackend>,
    name: String,
    engine: &EngineArgs,
    api_key: Option<String>,
    max_waiting: usize,
) -> Result<Arc<AppState>> {
    let state = AppState::new(api_key.into_iter().collect(), max_waiting, 16 << 20);
    state.set_models(vec![ModelEntry::start(lm, vec![name], engine)?])?;
    Ok(state)
}

/// Reads `--api-key-file`: one key per line; `#` starts a comment line.
pub fn read_keys_file(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--api-key-file: cannot read {}", path.display()))?;
    let keys: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    if keys.is_empty() {
        bail!("--api-key-file {} holds no key", path.display());
    }
    if let Some(k) = keys.iter().find(|k| k.chars().any(char::is_whitespace)) {
        bail!(
            "--api-key-file {}: a key contains whitespace (line starting {:?})",
            path.display(),
            k.chars().take(4).collect::<String>()
        );
    }
    Ok(keys)
}

/// The names for each `--model`, from `--served-model-name` or the path.
pub fn model_names(models: &[PathBuf], served: &[String]) -> Result<Vec<Vec<String>>> {
    if served.len() > models.len().max(1) {
        bail!(
            "{} --served-model-name flags for {} --model flags: give one per model, in order (aliases comma-separated)",
            served.len(),
            models.len().max(1)
        );
    }
    let paths: Vec<Option<&PathBuf>> = if models.is_empty() {
        vec![None]
    } else {
        models.iter().map(Some).collect()
    };
    Ok(paths
        .iter()
        .enumerate()
        .map(|(i, p)| match served.get(i) {
            Some(s) => s
                .split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
            None => vec![match p {
                None => "default".to_string(),
                Some(p) if p.as_os_str() == "default" => "default".to_string(),
                Some(p) => p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "model".into()),
            }],
        })
        .collect())
}

fn load_all(args: &ServeArgs, names: Vec<Vec<String>>) -> Result<Vec<Arc<ModelEntry>>> {
    let paths: Vec<Option<&Path>> = if args.model.is_empty() {
        vec![None]
    } else {
        args.model.iter().map(|p| Some(p.as_path())).collect()
    };
    paths
        .into_iter()
        .zip(names)
        .map(|(p, names)| {
            let path = default_model::resolve(p)?;
            eprintln!(
                "loading {} as {:?} on {}",
                path.display(),
                names,
                args.engine.device
            );
            load_on_device(&path, names, &args.engine)
        })
        .collect()
}

/// Loads a model on `--device` and starts its engine.
pub fn load_on_device(
    path: &Path,
    names: Vec<String>,
    engine: &EngineArgs,
) -> Result<Arc<ModelEntry>> {
    struct Start<'a> {
        names: Vec<String>,
        engine: &'a EngineArgs,
    }
    impl crate::device::ModelJob for Start<'_> {
        type Output = Arc<ModelEntry>;
        fn run<B: novastack_kernels::Backend + 'static>(
            self,
            lm: LoadedModel<B>,
            kv_blocks: Option<usize>,
        ) -> Result<Arc<ModelEntry>>
        where
            B::Buf: 'static,
        {
            ModelEntry::start_with(lm, self.names, self.engine, kv_blocks)
        }
    }
    crate::device::with_model(path, engine, Start { names, engine })
}

pub fn run(args: ServeArgs) -> Result<()> {
    if let Some(cfg) = &args.config {
        return crate::gateway::run(cfg, &args);
    }
    let names = model_names(&args.model, &args.served_model_name)?;
    {
        let mut seen = std::collections::HashSet::new();
        for n in names.iter().flatten() {
            if !seen.insert(n) {
                bail!("--served-model-name: {n:?} names two models");
            }
        }
    }
    let mut keys: Vec<String> = args.api_key.iter().cloned().collect();
    if let Some(f) = &args.api_key_file {
        keys.extend(read_keys_file(f)?);
    }
    args.engine.buckets()?;
    let state = AppState::new(keys, args.max_waiting, args.max_body_bytes);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("listening on http://{local} (loading models; /ready answers 503 until done)");
        let st = state.clone();
        let timeout = Duration::from_secs(args.shutdown_timeout);
        let loader = tokio::task::spawn_blocking(move || load_all(&args, names));
        let serve = serve_with_shutdown(listener, state, timeout, shutdown_signal());
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => return r,
            loaded = loader => {
                let models = loaded.context("model loading panicked")??;
                let ids: Vec<String> = models.iter().map(|m| m.id().to_string()).collect();
                st.set_models(models)?;
                eprintln!("serving {ids:?} at http://{local}/v1");
            }
        }
        serve.await
    })
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Serves `state` on `listener` until SIGTERM or Ctrl-C, then drains.
pub async fn serve_on(listener: tokio::net::TcpListener, state: Arc<AppState>) -> Result<()> {
    serve_with_shutdown(listener, state, Duration::from_secs(30), shutdown_signal()).await
}

/// Serves until `signal` resolves; then stops accepting, lets in-flight requests finish
/// for up to `timeout`, stops the engines and returns.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    timeout: Duration,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let started = Arc::new(tokio::sync::Notify::new());
    let (st, notify) = (state.clone(), started.clone());
    let shutdown = async move {
        signal.await;
        st.draining.store(true, Ordering::SeqCst);
        eprintln!("shutting down: draining in-flight requests (up to {timeout:?})");
        notify.notify_one();
    };
    let server = axum::serve(listener, app(state.clone())).with_graceful_shutdown(shutdown);
    let result = tokio::select! {
        r = server.into_future() => r.map_err(anyhow::Error::from),
        _ = async { started.notified().await; tokio::time::sleep(timeout).await } => {
            let running: usize = state.registry().map_or(0, |r| r.models.iter().map(|m| {
                let s = m.engine.stats();
                s.num_running + s.num_waiting
            }).sum());
            eprintln!("shutdown timeout: abandoning {running} unfinished sequences");
            Ok(())
        }
    };
    if let Some(reg) = state.registry() {
        for m in &reg.models {
            m.engine.shutdown();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_per_model_with_aliases() {
        let models = vec![PathBuf::from("/m/Qwen3-0.6B"), PathBuf::from("x/tiny.gguf")];
        let n = model_names(&models, &["qwen,qwen3".into()]).unwrap();
        assert_eq!(n, vec![vec!["qwen", "qwen3"], vec!["tiny"]]);
        assert_eq!(model_names(&[], &[]).unwrap(), vec![vec!["default"]]);
        assert!(model_names(&models[..1], &["a".into(), "b".into()]).is_err());
    }

    #[test]
    fn keys_file_skips_comments_and_rejects_empty() {
        let dir = std::env::temp_dir().join(format!("ns-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("keys");
        std::fs::write(&f, "# team keys\nk1\n\n  k2  \n").unwrap();
        assert_eq!(read_keys_file(&f).unwrap(), vec!["k1", "k2"]);
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(read_keys_file(&f)
            .unwrap_err()
            .to_string()
            .contains("no key"));
        assert!(read_keys_file(&dir.join("missing"))
            .unwrap_err()
            .to_string()
            .contains("missing"));
    }
}
