//! `novastack serve`: the OpenAI-compatible HTTP API over the continuous-batching engine.
//!
//! The listener opens before the models load, so `/health` answers at once and `/ready`
//! and the API answer 503 until every model is up. Connections are served by the
//! shared accept loop (`novastack_openai::http::listener`: `TCP_NODELAY`, the connection
//! cap, header-read, idle and request-body deadlines). SIGTERM (or Ctrl-C) answers new
//! requests 503, lets in-flight requests finish for up to `--shutdown-timeout` seconds,
//! then exits: with an error (exit code 1) if it had to abandon requests, whose streams
//! end with an error chunk and `[DONE]`. SIGTERM while the models load exits at once.

mod admission;
mod collector;
mod cpu_pool;
mod error;
mod logprobs;
pub mod metrics;
mod openapi;
mod respond;
mod router;
mod routes;
mod state;
mod stop;
mod structured;
mod tool_call_stream;
pub mod tool_calls;
mod validate;
mod validation_error;

pub use novastack_openai::http::shutdown_signal;
pub use novastack_openai::ApiError;
pub use openapi::openapi_document;
pub use router::app;
pub use state::{app_state, AppState, ModelEntry, Registry, RequestLimits};

use crate::default_model;
use crate::engine_args::EngineArgs;
use anyhow::{bail, Context, Result};
use clap::Args;
use novastack_models::LoadedModel;
use novastack_openai::http::{ConnectionLimits, DrainOutcome};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
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
    /// Longest prompt text in bytes, refused with 400 before tokenizing (default: 16
    /// bytes per token of the model's context window).
    #[arg(long)]
    pub max_prompt_bytes: Option<usize>,
    /// Let special-token text in user and tool messages (e.g. `<|im_start|>`) become
    /// control tokens; by default it is tokenized as plain text.
    #[arg(long)]
    pub allow_special_tokens_in_content: bool,
    /// How the models write tool calls, for `tool_choice: "auto"`: hermes (Qwen,
    /// Hermes: `<tool_call>` JSON), llama3_json or mistral. Default: from each model's
    /// chat template.
    #[arg(long)]
    pub tool_call_parser: Option<tool_calls::ToolParser>,
    /// Seconds to let in-flight requests finish after SIGTERM before exiting (then the
    /// rest are abandoned, streams end with an error chunk, and the exit code is 1).
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// Seconds a connection has to send a request's headers, counted from when it starts
    /// waiting for the request (accept, or the previous response); then it is closed.
    #[arg(long, default_value_t = ConnectionLimits::DEFAULT_HEADER_READ_TIMEOUT_S)]
    pub header_read_timeout: u64,
    /// Seconds a connection with no request in flight may stay silent before it is
    /// closed.
    #[arg(long, default_value_t = ConnectionLimits::DEFAULT_IDLE_TIMEOUT_S)]
    pub idle_timeout: u64,
    /// Seconds to receive a whole request body after its headers; slower bodies get 408.
    #[arg(long, default_value_t = ConnectionLimits::DEFAULT_REQUEST_BODY_TIMEOUT_S)]
    pub request_body_timeout: u64,
    /// Open connections at most; beyond it a new connection is answered 503 and closed.
    #[arg(long, default_value_t = ConnectionLimits::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
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

impl ServeArgs {
    /// `--header-read-timeout`, `--idle-timeout`, `--request-body-timeout` and
    /// `--max-connections`.
    pub fn connection_limits(&self) -> Result<ConnectionLimits> {
        ConnectionLimits::from_flags(
            self.header_read_timeout,
            self.idle_timeout,
            self.request_body_timeout,
            self.max_connections,
        )
        .map_err(anyhow::Error::msg)
    }

    /// The per-request limits these flags set.
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_prompt_bytes: self.max_prompt_bytes,
            allow_special_tokens_in_content: self.allow_special_tokens_in_content,
            tool_call_parser: self.tool_call_parser,
        }
    }
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
            tracing::info!(
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

/// An in-process server for one model at `path` (or `default`) named `served`, on
/// `engine.device`: what the gateway's `provider: local` models run on.
pub fn local_router(
    path: &str,
    served: &str,
    engine: &EngineArgs,
    max_waiting: usize,
    max_body_bytes: usize,
) -> Result<axum::Router> {
    let resolved = default_model::resolve(Some(Path::new(path)))?;
    tracing::info!(path = %resolved.display(), served, device = %engine.device, "loading a local model");
    let entry = load_on_device(&resolved, vec![served.to_string()], engine)
        .with_context(|| format!("cannot load {}", resolved.display()))?;
    let state = AppState::new(Vec::new(), max_waiting, max_body_bytes);
    state.set_models(vec![entry])?;
    Ok(app(state))
}

/// `novastack serve` without `--config` (the binary sends `--config` to the gateway).
pub fn run(args: ServeArgs) -> Result<()> {
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
    let limits = args.connection_limits()?;
    let state = AppState::with_limits(
        keys,
        args.max_waiting,
        args.max_body_bytes,
        args.request_limits(),
    );
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(
            "listening on http://{local} (loading models; /ready answers 503 until done)"
        );
        let st = state.clone();
        let timeout = Duration::from_secs(args.shutdown_timeout);
        let loader = tokio::task::spawn_blocking(move || load_all(&args, names));
        let serve = serve_with_shutdown(listener, state, timeout, limits, shutdown_signal());
        tokio::pin!(serve);
        tokio::select! {
            r = &mut serve => {
                tracing::info!("shut down before the models finished loading");
                return r;
            }
            loaded = loader => {
                let models = loaded.context("model loading panicked")??;
                let ids: Vec<String> = models.iter().map(|m| m.id().to_string()).collect();
                st.set_models(models)?;
                tracing::info!("serving {ids:?} at http://{local}/v1");
            }
        }
        serve.await
    });
    // A load still running on the blocking pool (SIGTERM while loading) is not waited
    // for: dropping the runtime would block until it finished.
    rt.shutdown_background();
    result
}

/// Serves `state` on `listener` until SIGTERM or Ctrl-C, then drains.
pub async fn serve_on(listener: tokio::net::TcpListener, state: Arc<AppState>) -> Result<()> {
    serve_with_shutdown(
        listener,
        state,
        Duration::from_secs(30),
        ConnectionLimits::default(),
        shutdown_signal(),
    )
    .await
}

/// Serves until `signal` resolves; then answers new requests 503, lets in-flight
/// requests finish for up to `timeout`, stops the engines and returns: an error if
/// requests had to be abandoned.
pub async fn serve_with_shutdown(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    timeout: Duration,
    limits: ConnectionLimits,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let st = state.clone();
    let shutdown = async move {
        signal.await;
        st.draining.store(true, Ordering::SeqCst);
        tracing::info!("shutting down: draining in-flight requests (up to {timeout:?})");
    };
    let outcome = novastack_openai::http::serve(
        listener,
        app(state.clone()),
        limits,
        state.http.clone(),
        shutdown,
        timeout,
    )
    .await;
    let running: usize = state.registry().map_or(0, |r| {
        r.models
            .iter()
            .map(|m| {
                let s = m.engine.stats();
                s.num_running + s.num_waiting
            })
            .sum()
    });
    if let Some(reg) = state.registry() {
        for m in &reg.models {
            m.engine.shutdown();
        }
    }
    match outcome {
        DrainOutcome::Finished => Ok(()),
        DrainOutcome::Abandoned { requests } => bail!(
            "--shutdown-timeout ({timeout:?}) passed with {requests} requests in flight; abandoned them ({running} unfinished sequences)"
        ),
    }
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
