//! What the handlers share: the served models by every name ([`Registry`]), each with its
//! tokenizer and engine thread ([`ModelEntry`]), and the server-wide settings and state
//! ([`AppState`]: keys, limits, draining, HTTP counts).

use crate::engine_args::EngineArgs;
use anyhow::{bail, Result};
use novastack_engine::EngineHandle;
use novastack_kernels::CpuBackend;
use novastack_models::{LoadedModel, Tokenizer};
use novastack_openai::ApiError;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// One served model: its names, tokenizer and engine thread.
pub struct ModelEntry {
    /// The first is the id responses carry; the rest are aliases.
    pub names: Vec<String>,
    pub tokenizer: Arc<Tokenizer>,
    pub max_context: usize,
    pub engine: EngineHandle,
    /// Request latency from the HTTP layer's view, by outcome.
    pub metrics: super::metrics::ModelMetrics,
    /// Sequences admitted and waiting for the engine (`--max-waiting`).
    pub admission: super::admission::Admission,
    /// Output constraints (`response_format`, `guided_*`) compiled for this model.
    pub grammars: super::structured::GrammarCompiler,
    /// How the chat template says the model writes tool calls.
    pub tool_parser: Option<super::tool_calls::ToolParser>,
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
        let grammars = super::structured::GrammarCompiler::new(lm.model.vocab_size(), eos.clone());
        let tool_parser = lm
            .tokenizer
            .chat_template_source()
            .and_then(super::tool_calls::ToolParser::from_template);
        let engine = engine.build_for(lm.model, eos, kv_blocks)?;
        let engine = EngineHandle::spawn(engine);
        Ok(Arc::new(ModelEntry {
            names,
            tokenizer: Arc::new(lm.tokenizer),
            max_context,
            engine,
            metrics: Default::default(),
            admission: Default::default(),
            grammars,
            tool_parser,
        }))
    }

    pub fn id(&self) -> &str {
        &self.names[0]
    }

    /// The longest prompt text accepted, in bytes: `--max-prompt-bytes`, or
    /// [`PROMPT_BYTES_PER_TOKEN`] per token of the context window.
    pub fn max_prompt_bytes(&self, limits: &RequestLimits) -> usize {
        limits
            .max_prompt_bytes
            .unwrap_or(self.max_context.saturating_mul(PROMPT_BYTES_PER_TOKEN))
    }
}

/// Bytes of prompt text per token of context allowed by default: far more than any
/// tokenizer averages, so only prompts that cannot fit are refused before tokenizing.
pub const PROMPT_BYTES_PER_TOKEN: usize = 16;

/// Per-request limits and policies beyond the queue and body limits.
#[derive(Clone, Debug, Default)]
pub struct RequestLimits {
    /// `--max-prompt-bytes` (default: [`PROMPT_BYTES_PER_TOKEN`] × the context window).
    pub max_prompt_bytes: Option<usize>,
    /// `--allow-special-tokens-in-content`: special-token text in user and tool
    /// messages becomes control tokens (off: it is plain text).
    pub allow_special_tokens_in_content: bool,
    /// `--tool-call-parser`: how models write tool calls (default: from each model's
    /// chat template).
    pub tool_call_parser: Option<super::tool_calls::ToolParser>,
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
    pub http: Arc<novastack_openai::http::HttpMetrics>,
    pub limits: RequestLimits,
    /// Where parsing, templates and tokenization run, off the async workers.
    pub cpu: super::cpu_pool::CpuPool,
}

impl AppState {
    /// A state with no model yet: the API answers 503 until [`AppState::set_models`].
    pub fn new(api_keys: Vec<String>, max_waiting: usize, max_body_bytes: usize) -> Arc<Self> {
        Self::with_limits(
            api_keys,
            max_waiting,
            max_body_bytes,
            RequestLimits::default(),
        )
    }

    /// Like [`AppState::new`] with per-request limits.
    pub fn with_limits(
        api_keys: Vec<String>,
        max_waiting: usize,
        max_body_bytes: usize,
        limits: RequestLimits,
    ) -> Arc<Self> {
        Arc::new(AppState {
            registry: OnceLock::new(),
            api_keys,
            max_waiting,
            max_body_bytes,
            draining: AtomicBool::new(false),
            http: Default::default(),
            limits,
            cpu: super::cpu_pool::CpuPool::per_core(),
        })
    }

    /// The largest prompt any served model accepts, in bytes (0 while loading).
    pub fn largest_prompt_bytes(&self) -> usize {
        self.registry().map_or(0, |r| {
            r.models
                .iter()
                .map(|m| m.max_prompt_bytes(&self.limits))
                .max()
                .unwrap_or(0)
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

    /// The model a request names, or 404 (no such name) / 503 (still loading).
    pub fn model(&self, name: Option<&str>) -> Result<Arc<ModelEntry>, ApiError> {
        let Some(reg) = self.registry() else {
            return Err(ApiError::unavailable(
                "the model is still loading; retry shortly",
            ));
        };
        reg.get(name).cloned().ok_or_else(|| {
            ApiError::not_found(
                format!(
                    "the model `{}` does not exist; this server has {:?}",
                    name.unwrap_or_default(),
                    reg.names()
                ),
                Some("model"),
            )
        })
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
