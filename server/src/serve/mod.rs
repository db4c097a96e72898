//! `novastack serve`: the OpenAI-compatible HTTP API over the continuous-batching engine.

mod api;
mod error;
mod stop;

pub use api::app;
pub use error::ApiError;

use crate::batch::EngineArgs;
use crate::default_model;
use anyhow::{Context, Result};
use clap::Args;
use novastack_engine::EngineHandle;
use novastack_kernels::CpuBackend;
use novastack_models::{load_model, LoadedModel, Tokenizer};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Hugging Face model folder, a .gguf file, or `default` (SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model id clients use (default: the model's folder or file name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1/*.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests allowed to wait for the engine; beyond it, 429 with Retry-After.
    #[arg(long, default_value_t = 1024)]
    pub max_waiting: usize,
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

/// What the handlers share.
pub struct AppState {
    pub model_name: String,
    pub tokenizer: Arc<Tokenizer>,
    pub max_context: usize,
    pub engine: EngineHandle,
    pub api_key: Option<String>,
    pub max_waiting: usize,
}

/// Starts the engine thread for a loaded model.
pub fn app_state(
    lm: LoadedModel<CpuBackend>,
    model_name: String,
    engine: &EngineArgs,
    api_key: Option<String>,
    max_waiting: usize,
) -> Result<Arc<AppState>> {
    let max_context = lm.model.max_positions();
    let eos = lm.tokenizer.eos_token_ids().to_vec();
    let engine = EngineHandle::spawn(engine.build(lm.model, eos)?);
    Ok(Arc::new(AppState {
        model_name,
        tokenizer: Arc::new(lm.tokenizer),
        max_context,
        engine,
        api_key,
        max_waiting,
    }))
}

pub fn run(args: ServeArgs) -> Result<()> {
    let path = default_model::resolve(args.model.as_deref())?;
    eprintln!("loading {}", path.display());
    let lm = load_model(&path, CpuBackend::new())
        .with_context(|| format!("cannot load model from {}", path.display()))?;
    let name = match (&args.served_model_name, &args.model) {
        (Some(n), _) => n.clone(),
        (None, None) => "default".into(),
        (None, Some(p)) if p.as_os_str() == "default" => "default".into(),
        (None, Some(p)) => p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into()),
    };
    let state = app_state(
        lm,
        name.clone(),
        &args.engine,
        args.api_key.clone(),
        args.max_waiting,
    )?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        eprintln!(
            "serving model {name:?} at http://{}/v1",
            listener.local_addr()?
        );
        serve_on(listener, state).await
    })
}

/// Serves `state` on `listener` until Ctrl-C.
pub async fn serve_on(listener: tokio::net::TcpListener, state: Arc<AppState>) -> Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
