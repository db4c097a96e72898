//! The gateway's state: the configuration in force (a `ConfigEpoch`, swapped whole on
//! reload), per-model runtime state and client-key limits (kept across reloads), and
//! the local models started so far.

use crate::api::Api;
use crate::config::{self, ConfigFile, ModelConfig};
use crate::limits::ClientLimits;
use crate::model_state::ModelState;
use crate::providers;
use crate::redis_state::RedisState;
use crate::replica_pool::{origin_of, ReplicaPool};
use crate::sync::lock;
use crate::upstream::{Endpoint, Transport};
use anyhow::{Context, Result};
use axum::http::HeaderMap;
use axum::Router;
use novastack_openai::http::{find_key, HttpMetrics};
use novastack_openai::ApiError;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// One loaded configuration. Requests hold an `Arc` to the epoch they began with, so a
/// reload never changes a request in flight.
pub struct ConfigEpoch {
    pub cfg: ConfigFile,
    /// Client key values, in `cfg.api_keys` order.
    pub(crate) client_keys: Vec<String>,
    /// Model name → where its requests go.
    pub(crate) endpoints: HashMap<String, Endpoint>,
    /// Header names some rule looks at (only these are copied per request).
    pub(crate) rule_headers: Vec<String>,
    /// Models served by a pool of replicas (`replicas:`), by name.
    pub(crate) pools: HashMap<String, Arc<ReplicaPool>>,
    /// Shared state in Redis (`state:`).
    pub(crate) shared: Option<Arc<RedisState>>,
}

impl ConfigEpoch {
    pub(crate) fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.cfg.models.iter().find(|m| m.name == name)
    }

    /// The client's key (its index in `cfg.api_keys`), `None` when the gateway has no
    /// keys; 401 when the request carries none of them.
    pub(crate) fn authenticate(&self, headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
        if self.client_keys.is_empty() {
            return Ok(None);
        }
        find_key(&self.client_keys, headers)
            .map(Some)
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The URL of each API model `m` serves at `base` (a base URL or a replica's), parsed;
/// errors name `at`.
fn api_urls(m: &ModelConfig, base: &str, at: &str) -> Result<Vec<(Api, reqwest::Url)>> {
    let provider = providers::for_model(m.provider);
    let mut per_api = Vec::new();
    for api in [Api::Chat, Api::Completions, Api::Embeddings] {
        let Some(url) = provider.endpoint(base, api).filter(|_| m.serves(api)) else {
            continue;
        };
        let u = reqwest::Url::parse(&url).map_err(|e| anyhow::anyhow!("{at}: {url:?}: {e}"))?;
        per_api.push((api, u));
    }
    Ok(per_api)
}

/// The key a model sends upstream, from the environment (`auth: {key_env}`).
fn upstream_key(m: &ModelConfig, env: &Env) -> Option<String> {
    match &m.auth {
        Some(config::AuthSpec::Header(a)) => Some(env(&a.key_env).unwrap_or_default()),
        _ => None,
    }
}

pub struct Gateway {
    current: RwLock<Arc<ConfigEpoch>>,
    models: Mutex<HashMap<String, Arc<ModelState>>>,
    pub(crate) clients: ClientLimits,
    /// Loaded local engines by path, reused across reloads.
    local_cache: Mutex<HashMap<String, Router>>,
    /// Starts local models (handed in by the binary).
    local_loader: Arc<LocalLoader>,
    /// Largest request body (`--max-body-bytes`).
    pub(crate) max_body_bytes: usize,
    pub(crate) http: Arc<HttpMetrics>,
    pub draining: AtomicBool,
}

/// Looks up environment variables (the process environment, or a map in tests).
pub type Env = dyn Fn(&str) -> Option<String> + Send + Sync;

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
    /// Connection cap and header-read, idle and request-body deadlines.
    pub connections: novastack_openai::http::ConnectionLimits,
}

impl Default for GatewayArgs {
    fn default() -> Self {
        GatewayArgs {
            host: "127.0.0.1".into(),
            port: 8080,
            max_body_bytes: 16 << 20,
            shutdown_timeout: 30,
            connections: Default::default(),
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
        let empty = ConfigEpoch {
            cfg: ConfigFile {
                models: Vec::new(),
                routes: Vec::new(),
                retry: Default::default(),
                cooldown: Default::default(),
                api_keys: Vec::new(),
                state: None,
            },
            client_keys: Vec::new(),
            endpoints: HashMap::new(),
            rule_headers: Vec::new(),
            pools: HashMap::new(),
            shared: None,
        };
        let gw = Arc::new(Gateway {
            current: RwLock::new(Arc::new(empty)),
            models: Mutex::new(HashMap::new()),
            clients: ClientLimits::default(),
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
        let client_keys = cfg
            .api_keys
            .iter()
            .map(|k| env(&k.key_env).unwrap_or_default())
            .collect();
        // Remote endpoints first: a bad URL fails the reload before any model loads.
        let mut urls = HashMap::new();
        for (i, m) in cfg.models.iter().enumerate() {
            if let Some(base) = m.base_url.as_deref() {
                let at = format!("models[{i}] ({}).base_url", m.name);
                urls.insert(m.name.clone(), api_urls(m, base, &at)?);
            }
        }
        let mut pools = HashMap::new();
        for (i, m) in cfg.models.iter().enumerate() {
            let Some(replicas) = &m.replicas else {
                continue;
            };
            let mut members = Vec::new();
            for (j, base) in replicas.iter().enumerate() {
                let at = format!("models[{i}] ({}).replicas[{j}]", m.name);
                let per_api = api_urls(m, base, &at)?;
                let origin = per_api
                    .first()
                    .map(|(_, u)| origin_of(u))
                    .unwrap_or_default();
                let ep = Endpoint::new(
                    providers::for_model(m.provider),
                    Transport::Http(per_api),
                    upstream_key(m, env),
                );
                members.push((base.clone(), origin, ep));
            }
            let pool = ReplicaPool::new(
                &m.name,
                m.balance.unwrap_or_default(),
                m.health_check.clone().unwrap_or_default(),
                members,
            );
            pools.insert(m.name.clone(), Arc::new(pool));
        }
        let shared = match &cfg.state {
            None => None,
            Some(st) => {
                let url = st.url(env)?;
                let old = self.epoch().shared.clone();
                match old.filter(|o| o.same_config(st, &url)) {
                    Some(o) => Some(o),
                    None => Some(Arc::new(RedisState::new(st.clone(), &url)?)),
                }
            }
        };
        let mut endpoints = HashMap::new();
        for m in cfg.models.iter().filter(|m| m.replicas.is_none()) {
            let transport = match urls.remove(&m.name) {
                Some(u) => Transport::Http(u),
                None => Transport::InProcess(self.local_router(m)?),
            };
            let key = upstream_key(m, env);
            let endpoint = Endpoint::new(providers::for_model(m.provider), transport, key);
            endpoints.insert(m.name.clone(), endpoint);
        }
        let rule_headers: Vec<String> = cfg
            .routes
            .iter()
            .flat_map(|r| r.when.header_names())
            .map(str::to_string)
            .collect();
        let now = Instant::now();
        {
            let mut models = lock(&self.models);
            for m in &cfg.models {
                match models.get(&m.name) {
                    // Keep counters, cooldowns and in-flight counts; take the new limits.
                    Some(s) => s.configure(m, now),
                    None => {
                        models.insert(m.name.clone(), Arc::new(ModelState::new(m, now)));
                    }
                }
            }
        }
        self.clients.configure(&cfg.api_keys, now);
        let epoch = ConfigEpoch {
            cfg,
            client_keys,
            endpoints,
            rule_headers,
            pools,
            shared,
        };
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(epoch);
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

    /// The configuration in force.
    pub fn epoch(&self) -> Arc<ConfigEpoch> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A model's runtime state (limits, cooldown, metrics), if it was ever configured.
    pub fn model_state(&self, name: &str) -> Option<Arc<ModelState>> {
        lock(&self.models).get(name).cloned()
    }
}
