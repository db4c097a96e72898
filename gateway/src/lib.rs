//! The gateway: one OpenAI-compatible endpoint in front of many models, local (our
//! engine, in-process) and remote (OpenAI-compatible or Anthropic upstreams).
//!
//! `novastack serve --config FILE.yaml`. For each chat request: authenticate the client
//! key and apply its RPM/TPM limits and allowed models; route (rules → a chain of
//! models); then one attempt loop retries retryable failures with backoff, falls back
//! along the chain, skips models cooling down, and waits for a slot under each
//! upstream's adaptive concurrency limit. Nothing reaches the client before the first
//! upstream event, so everything before it can be retried; after it, a failure ends the
//! stream with an explicit error chunk. SIGHUP reloads the config; requests in flight
//! keep the generation they started with.

pub mod config;
mod metrics;
pub mod policy;
pub mod rules;
pub mod upstream;

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use config::{ConfigFile, ModelConfig, Provider};
use novastack_openai::http::{body_bytes, count_response, find_key, render_http};
use novastack_openai::{http, ApiError};
use policy::{Aimd, Cooldown, FailureKind, TokenBucket};
use rules::{PlanError, RequestInfo, Route};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use upstream::{ChatCall, Target, UpError, UpEvent, UpStream};

/// Tokens assumed for `max_tokens` when a request gives none (cost and TPM estimates).
const DEFAULT_MAX_TOKENS: usize = 1024;

/// One loaded configuration. Requests hold an `Arc` to the generation they began with.
pub struct Generation {
    pub cfg: ConfigFile,
    routes: Vec<Route>,
    /// Client key values, in `cfg.api_keys` order.
    client_keys: Vec<String>,
    /// Model name → upstream key value (from the environment).
    upstream_keys: HashMap<String, String>,
    /// Local model name → the in-process serve router.
    locals: HashMap<String, Router>,
    /// Remote model name → its endpoint.
    urls: HashMap<String, reqwest::Url>,
    /// Header names some rule looks at (only these are copied per request).
    rule_headers: Vec<String>,
}

/// Per-model runtime state; it survives config reloads.
pub struct Upstream {
    aimd: Mutex<Aimd>,
    slot_freed: tokio::sync::Notify,
    cooldown: Mutex<Cooldown>,
    rpm: Mutex<Option<TokenBucket>>,
    tpm: Mutex<Option<TokenBucket>>,
    pub metrics: metrics::UpstreamMetrics,
}

const UNLIMITED_CONCURRENCY: usize = 1024;

impl Upstream {
    fn new(m: &ModelConfig, now: Instant) -> Self {
        let up = Upstream {
            aimd: Mutex::new(Aimd::new(UNLIMITED_CONCURRENCY)),
            slot_freed: tokio::sync::Notify::new(),
            cooldown: Mutex::new(Cooldown::default()),
            rpm: Mutex::new(None),
            tpm: Mutex::new(None),
            metrics: Default::default(),
        };
        up.configure(m, now);
        up
    }

    /// Takes the model's limits (at start and on reload), keeping requests in flight.
    fn configure(&self, m: &ModelConfig, now: Instant) {
        let mut a = lock(&self.aimd);
        let in_flight = a.in_flight;
        *a = Aimd::new(m.limits.max_concurrency.unwrap_or(UNLIMITED_CONCURRENCY));
        a.in_flight = in_flight;
        *lock(&self.rpm) = m.limits.rpm.map(|c| TokenBucket::per_minute(c, now));
        *lock(&self.tpm) = m.limits.tpm.map(|c| TokenBucket::per_minute(c, now));
    }

    /// Waits up to `wait` for a slot under the adaptive limit.
    async fn acquire(self: &Arc<Self>, wait: Duration) -> Option<Permit> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.slot_freed.notified();
            if lock(&self.aimd).try_acquire() {
                return Some(Permit(self.clone()));
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                return None;
            }
        }
    }

    /// Upstream RPM/TPM: takes a request and `tokens`, or says how long to wait.
    fn take_rate(&self, tokens: f64, now: Instant) -> Result<(), Duration> {
        if let Some(b) = lock(&self.rpm).as_mut() {
            b.take(1.0, now)?;
        }
        if let Some(b) = lock(&self.tpm).as_mut() {
            if let Err(w) = b.take(tokens, now) {
                if let Some(r) = lock(&self.rpm).as_mut() {
                    r.give_back(1.0, now);
                }
                return Err(w);
            }
        }
        Ok(())
    }

    fn settle_tokens(&self, reserved: f64, actual: f64, now: Instant) {
        if let Some(b) = lock(&self.tpm).as_mut() {
            b.give_back(reserved - actual, now);
        }
    }

    /// Records a failed attempt; true when it started a cooldown.
    fn failed(&self, kind: &FailureKind, cd: &config::CooldownConfig, now: Instant) -> bool {
        self.metrics.error(&kind.class());
        if kind.is_overload() {
            lock(&self.aimd).on_overload();
        }
        let cooled = lock(&self.cooldown).failure(cd, now);
        if cooled {
            metrics::UpstreamMetrics::inc(&self.metrics.cooldowns);
        }
        cooled
    }

    fn succeeded(&self) {
        lock(&self.aimd).on_success();
        lock(&self.cooldown).success();
    }

    pub fn adaptive_limit(&self) -> usize {
        lock(&self.aimd).limit()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A slot under an upstream's concurrency limit; freed on drop.
struct Permit(Arc<Upstream>);

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.0.aimd).release();
        self.0.slot_freed.notify_one();
    }
}

/// A client key's RPM/TPM buckets.
struct KeyLimits {
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
}

pub struct Gateway {
    current: RwLock<Arc<Generation>>,
    upstreams: Mutex<HashMap<String, Arc<Upstream>>>,
    keys: Mutex<HashMap<String, KeyLimits>>,
    /// Loaded local engines by path, reused across reloads.
    local_cache: Mutex<HashMap<String, Router>>,
    /// Starts local models (handed in by the binary).
    local_loader: Arc<LocalLoader>,
    /// Largest request body (`--max-body-bytes`).
    max_body_bytes: usize,
    http: http::HttpMetrics,
    pub draining: AtomicBool,
}

type Env = dyn Fn(&str) -> Option<String> + Send + Sync;

/// Starts a `provider: local` model: `(path, served model name)` → an OpenAI-compatible
/// service for it (in `novastack`, an in-process `serve` router over its own engine).
/// The binary hands this in, so the gateway never depends on the server crate.
pub type LocalLoader = dyn Fn(&str, &str) -> Result<Router> + Send + Sync;

/// A loader for gateways without local models: every `provider: local` is an error.
pub fn no_local_models() -> Arc<LocalLoader> {
    Arc::new(|path: &str, _: &str| {
        anyhow::bail!("local models are not available in this build (path {path:?})")
    })
}

/// Settings the gateway takes from the command line.
#[derive(Debug, Clone)]
pub struct GatewayArgs {
    pub host: String,
    pub port: u16,
    /// Largest request body in bytes; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Seconds to let in-flight requests finish after SIGTERM.
    pub shutdown_timeout: u64,
}

impl Default for GatewayArgs {
    fn default() -> Self {
        GatewayArgs {
            host: "127.0.0.1".into(),
            port: 8080,
            max_body_bytes: 16 << 20,
            shutdown_timeout: 30,
        }
    }
}

impl Gateway {
    /// Builds a gateway from config text; local models are started here (blocking)
    /// with `local_loader`.
    pub fn from_config(
        text: &str,
        args: &GatewayArgs,
        local_loader: Arc<LocalLoader>,
        env: &Env,
    ) -> Result<Arc<Gateway>> {
        let gw = Arc::new(Gateway {
            current: RwLock::new(Arc::new(Generation {
                cfg: ConfigFile {
                    models: Vec::new(),
                    routes: Vec::new(),
                    retry: Default::default(),
                    cooldown: Default::default(),
                    api_keys: Vec::new(),
                },
                routes: Vec::new(),
                client_keys: Vec::new(),
                upstream_keys: HashMap::new(),
                locals: HashMap::new(),
                urls: HashMap::new(),
                rule_headers: Vec::new(),
            })),
            upstreams: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            local_cache: Mutex::new(HashMap::new()),
            local_loader,
            max_body_bytes: args.max_body_bytes,
            http: Default::default(),
            draining: AtomicBool::new(false),
        });
        gw.reload(text, env)?;
        Ok(gw)
    }

    /// Validates `text` and swaps it in; on error the running config stays.
    pub fn reload(&self, text: &str, env: &Env) -> Result<()> {
        let cfg = config::parse(text, env)?;
        let routes = rules::compile_routes(&cfg.routes).map_err(anyhow::Error::msg)?;
        let client_keys = cfg
            .api_keys
            .iter()
            .map(|k| env(&k.key_env).unwrap_or_default())
            .collect();
        let mut upstream_keys = HashMap::new();
        for m in &cfg.models {
            if let Some(config::AuthSpec::Header(a)) = &m.auth {
                upstream_keys.insert(m.name.clone(), env(&a.key_env).unwrap_or_default());
            }
        }
        let mut urls = HashMap::new();
        for (i, m) in cfg.models.iter().enumerate() {
            if let Some(u) = upstream::endpoint(m) {
                let u = u.map_err(|e| anyhow::anyhow!("models[{i}] ({}).base_url: {e}", m.name))?;
                urls.insert(m.name.clone(), u);
            }
        }
        let rule_headers: Vec<String> = cfg
            .routes
            .iter()
            .flat_map(|r| r.when.keys())
            .filter_map(|k| k.strip_prefix("header."))
            .map(str::to_ascii_lowercase)
            .collect();
        let mut locals = HashMap::new();
        for m in cfg.models.iter().filter(|m| m.provider == Provider::Local) {
            locals.insert(m.name.clone(), self.local_router(m)?);
        }
        let now = Instant::now();
        {
            let mut ups = lock(&self.upstreams);
            for m in &cfg.models {
                match ups.get(&m.name) {
                    // Keep counters, cooldowns and in-flight counts; take the new limits.
                    Some(up) => up.configure(m, now),
                    None => {
                        ups.insert(m.name.clone(), Arc::new(Upstream::new(m, now)));
                    }
                }
            }
        }
        {
            let mut keys = lock(&self.keys);
            keys.clear();
            for k in &cfg.api_keys {
                keys.insert(
                    k.name.clone(),
                    KeyLimits {
                        rpm: k.rpm.map(|c| TokenBucket::per_minute(c, now)),
                        tpm: k.tpm.map(|c| TokenBucket::per_minute(c, now)),
                    },
                );
            }
        }
        let gen = Generation {
            cfg,
            routes,
            client_keys,
            upstream_keys,
            locals,
            urls,
            rule_headers,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(gen);
        Ok(())
    }

    fn local_router(&self, m: &ModelConfig) -> Result<Router> {
        let path = m.path.clone().unwrap_or_default();
        let served = m.upstream_model.clone().unwrap_or_else(|| m.name.clone());
        let cache_key = format!("{path}\u{0}{served}");
        if let Some(r) = lock(&self.local_cache).get(&cache_key) {
            return Ok(r.clone());
        }
        tracing::info!(model = %m.name, path = %path, "gateway: starting local model");
        let router = (self.local_loader)(&path, &served)
            .with_context(|| format!("models ({}).path", m.name))?;
        lock(&self.local_cache).insert(cache_key, router.clone());
        Ok(router)
    }

    fn generation(&self) -> Arc<Generation> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn upstream(&self, name: &str) -> Option<Arc<Upstream>> {
        lock(&self.upstreams).get(name).cloned()
    }
}

pub fn app(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_page))
        .fallback(|| async {
            ApiError::not_found(
                "no such route; the gateway serves /v1/chat/completions and /v1/models",
                None,
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            count_responses,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(gw.max_body_bytes))
        .layer(axum::middleware::from_fn(http::request_id))
        .with_state(gw)
}

async fn count_responses(
    State(gw): State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    count_response(&gw.http, req, next).await
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Result<&'static str, ApiError> {
    if gw.draining.load(Ordering::SeqCst) {
        Err(ApiError::unavailable("the gateway is shutting down"))
    } else {
        Ok("ready")
    }
}

async fn metrics_page(State(gw): State<Arc<Gateway>>) -> Response {
    let mut out = String::new();
    render_http(&mut out, &gw.http);
    let gen = gw.generation();
    let now = Instant::now();
    let ups: Vec<(String, Arc<Upstream>)> = gen
        .cfg
        .models
        .iter()
        .filter_map(|m| gw.upstream(&m.name).map(|u| (m.name.clone(), u)))
        .collect();
    let rows: Vec<metrics::Row> = ups
        .iter()
        .map(|(name, u)| {
            let a = lock(&u.aimd);
            metrics::Row {
                name,
                m: &u.metrics,
                limit: a.limit(),
                in_flight: a.in_flight,
                cooling: lock(&u.cooldown).remaining(now).is_some(),
            }
        })
        .collect();
    metrics::render(&mut out, &rows);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// The client's key config index, `None` when the gateway has no keys; 401 otherwise.
fn authenticate(gen: &Generation, headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    if gen.client_keys.is_empty() {
        return Ok(None);
    }
    find_key(&gen.client_keys, headers)
        .map(Some)
        .ok_or_else(ApiError::unauthorized)
}

async fn models(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let gen = gw.generation();
    let key = authenticate(&gen, &headers)?;
    let allowed = key.and_then(|i| gen.cfg.api_keys[i].models.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let data: Vec<Value> = std::iter::once("auto".to_string())
        .chain(gen.cfg.models.iter().map(|m| m.name.clone()))
        .filter(|n| allowed.as_ref().is_none_or(|a| a.contains(n)))
        .map(|id| json!({"id": id, "object": "model", "created": now, "owned_by": "novastack-gateway"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

fn estimate_tokens(s: &str) -> usize {
    s.chars().count().div_ceil(4)
}

/// The validated parts of a chat request the gateway needs.
struct Parsed {
    body: Map<String, Value>,
    messages: Vec<Value>,
    model: String,
    max_tokens: Option<usize>,
    stream: bool,
    include_usage: bool,
    metadata: BTreeMap<String, Value>,
}

fn parse_chat(body: &[u8]) -> Result<Parsed, ApiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))?;
    let Value::Object(mut body) = v else {
        return Err(ApiError::bad_request(
            "invalid request body: expected a JSON object",
            None,
        ));
    };
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(ApiError::bad_request(
                "`model` is required (a model name or `auto`)",
                Some("model"),
            ))
        }
    };
    let messages = match body.remove("messages") {
        Some(Value::Array(m)) if !m.is_empty() && m.iter().all(Value::is_object) => m,
        _ => {
            return Err(ApiError::bad_request(
                "`messages` must be a non-empty array of objects",
                Some("messages"),
            ))
        }
    };
    let uint = |k: &str| -> Result<Option<usize>, ApiError> {
        match body.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| Some(n as usize))
                .ok_or_else(|| {
                    ApiError::bad_request(format!("`{k}` must be a positive integer"), Some(k))
                }),
        }
    };
    let max_tokens = uint("max_completion_tokens")?.or(uint("max_tokens")?);
    if uint("n")?.is_some_and(|n| n != 1) {
        return Err(ApiError::bad_request(
            "the gateway supports n = 1 only",
            Some("n"),
        ));
    }
    for k in ["tools", "functions", "response_format"] {
        if body.get(k).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::bad_request(
                format!("`{k}` is not supported by the gateway yet"),
                Some(k),
            ));
        }
    }
    let stream = match body.get("stream") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        _ => {
            return Err(ApiError::bad_request(
                "`stream` must be a boolean",
                Some("stream"),
            ))
        }
    };
    let include_usage = body
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let metadata = match body.remove("metadata") {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(m)) => m.into_iter().collect(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "`metadata` must be an object",
                Some("metadata"),
            ))
        }
    };
    body.remove("stream_options");
    Ok(Parsed {
        body,
        messages,
        model,
        max_tokens,
        stream,
        include_usage,
        metadata,
    })
}

fn request_info(
    p: &Parsed,
    headers: &HeaderMap,
    rule_headers: &[String],
) -> Result<RequestInfo, ApiError> {
    let hdr = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let task = hdr("x-novastack-task").or_else(|| {
        p.metadata
            .get("task")
            .and_then(Value::as_str)
            .map(str::to_string)
    });
    let budget = match hdr("x-novastack-budget-usd") {
        Some(b) => Some(
            b.trim()
                .parse::<f64>()
                .ok()
                .filter(|b| b.is_finite() && *b >= 0.0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        format!("x-novastack-budget-usd: {b:?} is not a non-negative number"),
                        None,
                    )
                })?,
        ),
        None => match p.metadata.get("budget_usd") {
            None => None,
            Some(v) => Some(
                v.as_f64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|b| *b >= 0.0)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "metadata.budget_usd must be a non-negative number",
                            Some("metadata"),
                        )
                    })?,
            ),
        },
    };
    let context_length = p
        .messages
        .iter()
        .map(|m| {
            4 + estimate_tokens(&upstream::content_text(
                m.get("content").unwrap_or(&Value::Null),
            ))
        })
        .sum();
    Ok(RequestInfo {
        model: p.model.clone(),
        task,
        budget,
        context_length,
        max_tokens: p.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        headers: rule_headers
            .iter()
            .filter(|k| k.as_str() != "authorization")
            .filter_map(|k| Some((k.clone(), headers.get(k)?.to_str().ok()?.to_string())))
            .collect(),
        metadata: p.metadata.clone(),
    })
}

fn secs_header(d: Duration) -> String {
    d.as_secs_f64().ceil().max(1.0).to_string()
}

/// Client key RPM/TPM: reserves one request and `tokens`; returns the rate-limit headers.
fn take_key_limits(
    gw: &Gateway,
    name: &str,
    tokens: f64,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let now = Instant::now();
    let mut keys = lock(&gw.keys);
    let Some(k) = keys.get_mut(name) else {
        return Ok(Vec::new());
    };
    let mut headers = Vec::new();
    let mut wait: Option<Duration> = None;
    if let Some(b) = k.rpm.as_mut() {
        if let Err(w) = b.take(1.0, now) {
            wait = Some(w);
        }
    }
    if wait.is_none() {
        if let Some(b) = k.tpm.as_mut() {
            if let Err(w) = b.take(tokens, now) {
                wait = Some(w);
                if let Some(r) = k.rpm.as_mut() {
                    r.give_back(1.0, now);
                }
            }
        }
    }
    if let Some(b) = k.rpm.as_mut() {
        headers.push(("x-ratelimit-limit-requests", format!("{}", b.capacity)));
        headers.push((
            "x-ratelimit-remaining-requests",
            format!("{}", b.remaining(now).floor()),
        ));
        headers.push((
            "x-ratelimit-reset-requests",
            format!("{:.3}s", b.reset_s(now)),
        ));
    }
    if let Some(b) = k.tpm.as_mut() {
        headers.push(("x-ratelimit-limit-tokens", format!("{}", b.capacity)));
        headers.push((
            "x-ratelimit-remaining-tokens",
            format!("{}", b.remaining(now).floor()),
        ));
        headers.push((
            "x-ratelimit-reset-tokens",
            format!("{:.3}s", b.reset_s(now)),
        ));
    }
    if let Some(w) = wait {
        let mut e = ApiError::too_many(format!(
            "rate limit of API key {name:?} reached; retry in {:.1}s",
            w.as_secs_f64()
        ));
        e.headers = headers;
        return Err(e.with_header("retry-after", secs_header(w)));
    }
    Ok(headers)
}

fn settle_key_tokens(gw: &Gateway, name: &str, reserved: f64, actual: f64) {
    if let Some(b) = lock(&gw.keys).get_mut(name).and_then(|k| k.tpm.as_mut()) {
        b.give_back(reserved - actual, Instant::now());
    }
}

/// What the attempt loop hands back once an upstream has started answering.
struct Committed {
    name: String,
    up: Arc<Upstream>,
    _permit: Permit,
    stream: UpStream,
    /// Streaming: the first event. Non-streaming: every event.
    events: Vec<UpEvent>,
    attempts: u32,
}

/// The one attempt loop: retries with backoff, fallback along the chain, cooldowns,
/// adaptive concurrency. `collect`: read the whole answer inside the loop (non-streaming
/// clients), so a failure anywhere in it can still be retried.
async fn attempt_chain(
    gw: &Gateway,
    gen: &Generation,
    chain: &[String],
    call: &ChatCall<'_>,
    est_tokens: f64,
    collect: bool,
) -> Result<Committed, ApiError> {
    let retry = &gen.cfg.retry;
    let mut attempts = 0u32;
    let mut last: Option<UpError> = None;
    let mut min_cooling: Option<Duration> = None;
    let mut rate_wait: Option<Duration> = None;
    for (ci, name) in chain.iter().enumerate() {
        let (Some(m), Some(up)) = (
            gen.cfg.models.iter().find(|m| &m.name == name),
            gw.upstream(name),
        ) else {
            continue;
        };
        if let Some(rem) = lock(&up.cooldown).remaining(Instant::now()) {
            min_cooling = Some(min_cooling.map_or(rem, |c| c.min(rem)));
            continue;
        }
        if ci > 0 && attempts > 0 {
            metrics::UpstreamMetrics::inc(&up.metrics.fallbacks);
        }
        let target = Target {
            model: m,
            key: gen.upstream_keys.get(name).map(String::as_str),
            local: gen.locals.get(name),
            url: gen.urls.get(name),
        };
        for try_i in 0..retry.max_attempts {
            if let Err(w) = up.take_rate(est_tokens, Instant::now()) {
                rate_wait = Some(rate_wait.map_or(w, |r| r.min(w)));
                break; // this upstream's own RPM/TPM is spent: next in the chain
            }
            let wait = Duration::from_secs_f64(m.timeout_s.unwrap_or(120.0).min(30.0));
            let Some(permit) = up.acquire(wait).await else {
                up.settle_tokens(est_tokens, 0.0, Instant::now());
                last = Some(UpError::new(
                    FailureKind::Timeout,
                    format!("no free slot for {name} within {wait:?}"),
                ));
                break;
            };
            attempts += 1;
            metrics::UpstreamMetrics::inc(&up.metrics.requests);
            if try_i > 0 {
                metrics::UpstreamMetrics::inc(&up.metrics.retries);
            }
            let result = match upstream::open(&target, call).await {
                Err(e) => Err(e),
                Ok(mut stream) => {
                    let mut events = Vec::new();
                    let mut err = None;
                    loop {
                        match stream.next().await {
                            Some(Ok(ev)) => {
                                let content = !matches!(ev, UpEvent::Usage { .. });
                                events.push(ev);
                                if content && !collect {
                                    break;
                                }
                            }
                            Some(Err(e)) => {
                                err = Some(e);
                                break;
                            }
                            None => break,
                        }
                    }
                    match err {
                        Some(e) => Err(e),
                        None if events.is_empty() => Err(UpError::new(
                            FailureKind::Protocol,
                            "the upstream sent an empty answer",
                        )),
                        None => Ok(Committed {
                            name: name.clone(),
                            up: up.clone(),
                            _permit: permit,
                            stream,
                            events,
                            attempts,
                        }),
                    }
                }
            };
            let e = match result {
                Ok(c) => return Ok(c),
                Err(e) => e,
            };
            up.settle_tokens(est_tokens, 0.0, Instant::now());
            let cooled = up.failed(&e.kind, &gen.cfg.cooldown, Instant::now());
            let retryable = policy::is_retryable(&e.kind, retry);
            let client_fault = matches!(e.kind, FailureKind::Status(s) if (400..500).contains(&s) && ![401, 403, 404, 408, 409, 429].contains(&s));
            if client_fault {
                // The request itself is bad: the next model would refuse it too.
                let mut err = ApiError::bad_request(e.message, None);
                err.status = match e.kind {
                    FailureKind::Status(s) => {
                        StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST)
                    }
                    _ => StatusCode::BAD_REQUEST,
                };
                return Err(err.with_header("x-novastack-attempts", attempts.to_string()));
            }
            let too_long = e
                .retry_after
                .is_some_and(|ra| ra.as_secs_f64() > retry.max_retry_after_s);
            let give_up_here = !retryable || cooled || too_long || try_i + 1 == retry.max_attempts;
            let retry_after = e.retry_after;
            last = Some(e);
            if give_up_here {
                break;
            }
            tokio::time::sleep(policy::backoff(
                retry,
                try_i,
                retry_after,
                rand::random::<f64>(),
            ))
            .await;
        }
    }
    let attempts_h = ("x-novastack-attempts", attempts.to_string());
    if attempts == 0 {
        if let Some(c) = min_cooling.filter(|_| rate_wait.is_none()) {
            let mut e = ApiError::unavailable(format!(
                "every candidate model ({}) is cooling down after repeated failures",
                chain.join(", ")
            ));
            e.headers = vec![("retry-after", secs_header(c)), attempts_h];
            return Err(e);
        }
        if let Some(w) = rate_wait {
            let mut e = ApiError::too_many(format!(
                "the upstream rate limits of {} are spent",
                chain.join(", ")
            ));
            e.headers = vec![("retry-after", secs_header(w)), attempts_h];
            return Err(e);
        }
    }
    let Some(e) = last else {
        return Err(ApiError::unavailable("no model could take the request")
            .with_header(attempts_h.0, attempts_h.1));
    };
    let (status, extra) = match e.kind {
        FailureKind::Status(429) => (
            StatusCode::TOO_MANY_REQUESTS,
            e.retry_after.map(|r| ("retry-after", secs_header(r))),
        ),
        FailureKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, None),
        _ => (StatusCode::BAD_GATEWAY, None),
    };
    let mut err = ApiError::new(
        status,
        format!("all attempts failed ({attempts}); last: {}", e.message),
        None,
    );
    err.headers.push(attempts_h);
    if let Some(h) = extra {
        err.headers.push(h);
    }
    Err(err)
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Tracks usage and text while events go by.
#[derive(Default)]
struct Tally {
    text_chars: usize,
    usage: Option<(usize, usize)>,
    finish: Option<String>,
}

impl Tally {
    fn see(&mut self, ev: &UpEvent) {
        match ev {
            UpEvent::Text { text, .. } => self.text_chars += text.chars().count(),
            UpEvent::Finish { reason, .. } => self.finish = Some(reason.clone()),
            UpEvent::Usage { prompt, completion } => {
                // Some servers send zeros in early chunks; keep the largest seen.
                let (p, c) = self.usage.unwrap_or((0, 0));
                self.usage = Some((p.max(*prompt), c.max(*completion)));
            }
        }
    }

    /// Upstream usage, or an estimate (prompt from the request, completion from text).
    fn usage(&self, prompt_est: usize) -> (usize, usize) {
        match self.usage {
            Some((p, c)) if p + c > 0 => (if p == 0 { prompt_est } else { p }, c),
            _ => (prompt_est, self.text_chars.div_ceil(4)),
        }
    }
}

fn cost(m: Option<&ModelConfig>, prompt: usize, completion: usize) -> f64 {
    m.map_or(0.0, |m| rules::estimate_cost(m, prompt, completion))
}

async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let gen = gw.generation();
    let key = authenticate(&gen, &headers)?;
    let body = body_bytes(body)?;
    if gw.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the gateway is shutting down"));
    }
    let p = parse_chat(&body)?;
    let info = request_info(&p, &headers, &gen.rule_headers)?;
    let key_name = key.map(|i| gen.cfg.api_keys[i].name.clone());
    if let Some(i) = key {
        if let Some(allowed) = &gen.cfg.api_keys[i].models {
            if !allowed.contains(&p.model) {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    format!(
                        "API key {:?} may not use model {:?} (allowed: {allowed:?})",
                        gen.cfg.api_keys[i].name, p.model
                    ),
                    Some("model"),
                ));
            }
        }
    }
    let plan = rules::plan(&gen.cfg, &gen.routes, &info).map_err(|e| match e {
        PlanError::UnknownModel(m) => ApiError::not_found(
            format!(
                "the model `{m}` does not exist; the gateway has {:?} and `auto`",
                gen.cfg.models.iter().map(|m| &m.name).collect::<Vec<_>>()
            ),
            Some("model"),
        ),
        PlanError::NothingFits(why) => ApiError::bad_request(why, Some("model")),
    })?;
    let est = (info.context_length + info.max_tokens) as f64;
    let mut rl_headers = match &key_name {
        Some(k) => take_key_limits(&gw, k, est)?,
        None => Vec::new(),
    };
    let call = ChatCall {
        body: &p.body,
        messages: &p.messages,
        max_tokens: p.max_tokens,
        stream: p.stream,
    };
    let started = Instant::now();
    let committed = match attempt_chain(&gw, &gen, &plan.chain, &call, est, !p.stream).await {
        Ok(c) => c,
        Err(mut e) => {
            if let Some(k) = &key_name {
                settle_key_tokens(&gw, k, est, 0.0);
            }
            e.headers.append(&mut rl_headers);
            return Err(e);
        }
    };
    let id = format!("chatcmpl-{:032x}", rand::random::<u128>());
    let created = now_s();
    let model_cfg = gen
        .cfg
        .models
        .iter()
        .find(|m| m.name == committed.name)
        .cloned();
    let mut hdrs: Vec<(&'static str, String)> = vec![
        ("x-novastack-model", committed.name.clone()),
        ("x-novastack-attempts", committed.attempts.to_string()),
    ];
    hdrs.append(&mut rl_headers);
    if !p.stream {
        let mut tally = Tally::default();
        let mut text = String::new();
        for ev in &committed.events {
            tally.see(ev);
            if let UpEvent::Text { text: t, .. } = ev {
                text.push_str(t);
            }
        }
        let (pt, ct) = tally.usage(info.context_length);
        let c = cost(model_cfg.as_ref(), pt, ct);
        committed.up.succeeded();
        committed
            .up
            .metrics
            .success(started.elapsed().as_secs_f64(), pt, ct, c);
        committed
            .up
            .settle_tokens(est, (pt + ct) as f64, Instant::now());
        if let Some(k) = &key_name {
            settle_key_tokens(&gw, k, est, (pt + ct) as f64);
        }
        hdrs.push(("x-novastack-cost-usd", format!("{c:.8}")));
        let body = json!({"id": id, "object": "chat.completion", "created": created, "model": p.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null,
                         "finish_reason": tally.finish.clone().unwrap_or_else(|| "stop".into())}],
            "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}});
        let mut resp = Json(body).into_response();
        set_headers(&mut resp, &hdrs);
        return Ok(resp);
    }
    // Streaming: a task relays upstream events as OpenAI chunks.
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let requested = p.model.clone();
    let include_usage = p.include_usage;
    let prompt_est = info.context_length;
    let gw2 = gw.clone();
    tokio::spawn(async move {
        let Committed {
            name,
            up,
            _permit,
            mut stream,
            events,
            ..
        } = committed;
        let chunk = |delta: Value, finish: Option<&str>| {
            Event::default().data(json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": requested,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]}).to_string())
        };
        let mut tally = Tally::default();
        if tx
            .send(chunk(json!({"role": "assistant", "content": ""}), None))
            .await
            .is_err()
        {
            return;
        }
        let mut pending: std::collections::VecDeque<UpEvent> = events.into();
        let mut failure = None;
        loop {
            let ev = match pending.pop_front() {
                Some(ev) => ev,
                None => match stream.next().await {
                    Some(Ok(ev)) => ev,
                    Some(Err(e)) => {
                        failure = Some(e);
                        break;
                    }
                    None => break,
                },
            };
            tally.see(&ev);
            let out = match &ev {
                UpEvent::Text { text, .. } => chunk(json!({"content": text}), None),
                UpEvent::Finish { reason, .. } => chunk(json!({}), Some(reason)),
                UpEvent::Usage { .. } => continue,
            };
            if tx.send(out).await.is_err() {
                return; // client left: dropping the stream closes the upstream request
            }
        }
        let (pt, ct) = tally.usage(prompt_est);
        if let Some(e) = failure {
            up.failed(&e.kind, &gw2.generation().cfg.cooldown, Instant::now());
            let err = json!({"error": {"message": format!("upstream {name} failed mid-stream: {}", e.message),
                                       "type": "upstream_error", "param": null, "code": "upstream_stream_error"}});
            let _ = tx.send(Event::default().data(err.to_string())).await;
            let _ = tx.send(Event::default().data("[DONE]")).await;
            return;
        }
        if tally.finish.is_none() {
            let _ = tx.send(chunk(json!({}), Some("stop"))).await;
        }
        let c = cost(model_cfg.as_ref(), pt, ct);
        up.succeeded();
        up.metrics
            .success(started.elapsed().as_secs_f64(), pt, ct, c);
        up.settle_tokens(est, (pt + ct) as f64, Instant::now());
        if let Some(k) = &key_name {
            settle_key_tokens(&gw2, k, est, (pt + ct) as f64);
        }
        if include_usage {
            let u = json!({"id": id, "object": "chat.completion.chunk", "created": created, "model": requested, "choices": [],
                "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}, "x_novastack_cost_usd": c});
            let _ = tx.send(Event::default().data(u.to_string())).await;
        }
        let _ = tx.send(Event::default().data("[DONE]")).await;
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut resp = Sse::new(stream).into_response();
    set_headers(&mut resp, &hdrs);
    Ok(resp)
}

fn set_headers(resp: &mut Response, hdrs: &[(&'static str, String)]) {
    for (k, v) in hdrs {
        if let Ok(v) = axum::http::HeaderValue::from_str(v) {
            resp.headers_mut().insert(*k, v);
        }
    }
}

/// Serves the gateway on `listener`; SIGHUP reloads `config_path` (when given); SIGTERM
/// or Ctrl-C drains for up to `drain`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    gw: Arc<Gateway>,
    config_path: Option<PathBuf>,
    drain: Duration,
) -> Result<()> {
    #[cfg(unix)]
    if let Some(path) = config_path {
        let gw = gw.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                return;
            };
            while hup.recv().await.is_some() {
                let gw = gw.clone();
                let p = path.clone();
                let r = tokio::task::spawn_blocking(move || reload_file(&gw, &p)).await;
                match r {
                    Ok(Ok(())) => tracing::info!("gateway: reloaded {}", path_display(&path)),
                    Ok(Err(e)) => {
                        tracing::warn!("gateway: reload failed, keeping the running config: {e:#}")
                    }
                    Err(e) => tracing::warn!("gateway: reload failed: {e}"),
                }
            }
        });
    }
    #[cfg(not(unix))]
    let _ = config_path;
    let started = Arc::new(tokio::sync::Notify::new());
    let (g2, n2) = (gw.clone(), started.clone());
    let shutdown = async move {
        http::shutdown_signal().await;
        g2.draining.store(true, Ordering::SeqCst);
        tracing::info!("gateway: shutting down, draining for up to {drain:?}");
        n2.notify_one();
    };
    use std::future::IntoFuture;
    let server = axum::serve(listener, app(gw)).with_graceful_shutdown(shutdown);
    tokio::select! {
        r = server.into_future() => r.map_err(anyhow::Error::from),
        _ = async { started.notified().await; tokio::time::sleep(drain).await } => {
            tracing::warn!("gateway: drain timeout; exiting with requests in flight");
            Ok(())
        }
    }
}

fn path_display(p: &Path) -> String {
    p.display().to_string()
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
        let gen = gw.generation();
        tracing::info!(
            "gateway at http://{}/v1 for {:?} (SIGHUP reloads {})",
            listener.local_addr()?,
            gen.cfg.models.iter().map(|m| &m.name).collect::<Vec<_>>(),
            path.display()
        );
        drop(gen);
        serve(listener, gw, Some(path.to_path_buf()), drain).await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_chat_validates_and_strips_routing_metadata() {
        let p = parse_chat(br#"{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "metadata": {"task": "qa", "budget_usd": 0.01}, "stream": true, "stream_options": {"include_usage": true}}"#).unwrap();
        assert!(p.stream && p.include_usage);
        assert_eq!(p.max_tokens, Some(5));
        assert!(!p.body.contains_key("metadata") && !p.body.contains_key("stream_options"));
        let info = request_info(&p, &HeaderMap::new(), &[]).unwrap();
        assert_eq!(info.task.as_deref(), Some("qa"));
        assert_eq!(info.budget, Some(0.01));
        let mut h = HeaderMap::new();
        h.insert("x-novastack-task", "reasoning".parse().unwrap());
        h.insert("x-novastack-budget-usd", "0.5".parse().unwrap());
        h.insert("authorization", "Bearer secret".parse().unwrap());
        let info =
            request_info(&p, &h, &["authorization".to_string(), "x-team".to_string()]).unwrap();
        assert_eq!(
            (info.task.as_deref(), info.budget),
            (Some("reasoning"), Some(0.5))
        );
        assert!(!info.headers.contains_key("authorization"));
        for bad in [
            r#"{"messages": [{"role": "user", "content": "x"}]}"#,
            r#"{"model": "m", "messages": []}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}"#,
            r#"{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": []}"#,
            "[1]",
        ] {
            assert_eq!(
                parse_chat(bad.as_bytes()).err().map(|e| e.status.as_u16()),
                Some(400),
                "{bad}"
            );
        }
    }

    #[test]
    fn tally_prefers_upstream_usage_and_estimates_otherwise() {
        let mut t = Tally::default();
        t.see(&UpEvent::Text {
            index: 0,
            text: "abcdefgh".into(),
        });
        assert_eq!(t.usage(10), (10, 2));
        t.see(&UpEvent::Usage {
            prompt: 0,
            completion: 0,
        });
        assert_eq!(t.usage(10), (10, 2));
        t.see(&UpEvent::Usage {
            prompt: 7,
            completion: 3,
        });
        assert_eq!(t.usage(10), (7, 3));
    }
}
