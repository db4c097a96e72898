//! The gateway's YAML configuration: parsed strictly (unknown keys are errors), then
//! validated; every error names the file and the field (serde_yaml adds line and column
//! for syntax and type errors). Route conditions (`when:`) are part of this language and
//! are compiled while the file is read (`when.rs`); routing (`rules.rs`) only evaluates.

mod replicas;
mod when;

pub use replicas::{Balance, HealthCheckConfig, OnError, StateConfig};
pub use when::{Check, Cond, Subject, When};

use crate::api::Api;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub models: Vec<ModelConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub cooldown: CooldownConfig,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// Shared state in Redis; absent: each gateway process keeps its own.
    #[serde(default)]
    pub state: Option<StateConfig>,
}

/// Who serves a model. Each variant has its implementation in `providers/` (picked in
/// `providers::for_model`).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Openai,
    Anthropic,
    Local,
}

impl Provider {
    /// The model runs in this process (`path:`), not behind a `base_url`.
    pub fn in_process(self) -> bool {
        match self {
            Provider::Openai | Provider::Anthropic => false,
            Provider::Local => true,
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    pub provider: Provider,
    pub base_url: Option<String>,
    pub upstream_model: Option<String>,
    #[serde(default)]
    pub auth: Option<AuthSpec>,
    pub context_window: Option<usize>,
    pub price: Option<Price>,
    #[serde(default)]
    pub scores: BTreeMap<String, f64>,
    #[serde(default)]
    pub limits: Limits,
    /// Seconds without data from the upstream before an attempt fails: until the
    /// answer starts and between its events (SSE comments and `ping` events do not
    /// count); also the longest wait for a non-streaming body. Default 120.
    pub timeout_s: Option<f64>,
    /// The longest SSE line (and SSE event) accepted from the upstream, in bytes.
    /// Default 1 MiB.
    pub max_sse_line_bytes: Option<usize>,
    /// The largest non-streaming answer body accepted from the upstream, in bytes.
    /// Default 16 MiB.
    pub max_response_bytes: Option<usize>,
    /// `local`: a model folder, .gguf file or `default`.
    pub path: Option<String>,
    /// `anthropic`: the `anthropic-version` header (default 2023-06-01).
    pub anthropic_version: Option<String>,
    /// The APIs this model serves (`chat`, `completions`, `embeddings`); default: all
    /// its provider speaks (`Api::spoken_by`). Requests for an API go only to models
    /// that serve it.
    pub apis: Option<Vec<Api>>,
    /// `provider: openai` only, instead of `base_url`: a pool of OpenAI-compatible
    /// upstreams serving the same model (typically `novastack serve` replicas).
    pub replicas: Option<Vec<String>>,
    /// How the pool picks a replica (default `prefix`).
    pub balance: Option<Balance>,
    /// The pool's health checks (defaults: GET /health every 5 s).
    pub health_check: Option<HealthCheckConfig>,
}

impl ModelConfig {
    /// Whether requests for `api` may go to this model.
    pub fn serves(&self, api: Api) -> bool {
        match &self.apis {
            Some(list) => list.contains(&api),
            None => Api::spoken_by(self.provider).contains(&api),
        }
    }
}

/// `auth: none` or `auth: {header, prefix, key_env}`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum AuthSpec {
    Keyword(String),
    Header(AuthConfig),
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub header: String,
    #[serde(default)]
    pub prefix: String,
    pub key_env: String,
}

#[derive(Deserialize, Debug, Clone, Copy, Default)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

#[derive(Deserialize, Debug, Clone, Copy, Default)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub rpm: Option<f64>,
    pub tpm: Option<f64>,
    pub max_concurrency: Option<usize>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Every condition must hold for the route to apply; empty: always.
    #[serde(default)]
    pub when: When,
    #[serde(rename = "use")]
    pub use_: String,
    #[serde(default)]
    pub fallback: Vec<String>,
    #[serde(default)]
    pub require: BTreeMap<String, f64>,
}

#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub enum RetryOn {
    Status(u16),
    Class(String),
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub jitter: bool,
    pub retry_on: Vec<RetryOn>,
    /// The longest upstream `Retry-After` honoured before moving on to a fallback.
    pub max_retry_after_s: f64,
    /// The longest time, over every attempt and fallback, until an answer starts.
    /// Default: twice the largest `timeout_s` of the chain's models.
    pub deadline_s: Option<f64>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 5000,
            jitter: true,
            retry_on: [429, 500, 502, 503, 504]
                .into_iter()
                .map(RetryOn::Status)
                .chain(["timeout", "connect_error"].map(|s| RetryOn::Class(s.into())))
                .collect(),
            max_retry_after_s: 10.0,
            deadline_s: None,
        }
    }
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields, default)]
pub struct CooldownConfig {
    pub failures: usize,
    pub window_s: f64,
    pub cooldown_s: f64,
}

impl Default for CooldownConfig {
    fn default() -> Self {
        CooldownConfig {
            failures: 3,
            window_s: 60.0,
            cooldown_s: 30.0,
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub name: String,
    pub key_env: String,
    pub rpm: Option<f64>,
    pub tpm: Option<f64>,
    /// Allowed model names (`auto` included); absent means all.
    pub models: Option<Vec<String>>,
}

/// Reads, parses and validates `path`; `env` looks up environment variables (the
/// process environment in production, a map in tests).
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read gateway config {}", path.display()))?;
    parse(&text, env).with_context(|| format!("gateway config {}", path.display()))
}

pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<ConfigFile> {
    let cfg: ConfigFile = serde_yaml::from_str(text)?;
    validate(&cfg, env)?;
    Ok(cfg)
}

pub const CHEAPEST: &str = "cheapest_capable";

fn validate(cfg: &ConfigFile, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
    if cfg.models.is_empty() {
        bail!("models: at least one model is needed");
    }
    let mut names = std::collections::HashSet::new();
    for (i, m) in cfg.models.iter().enumerate() {
        let at = format!("models[{i}] ({})", m.name);
        if m.name.is_empty() || m.name == "auto" {
            bail!("models[{i}].name: {:?} is not a usable name", m.name);
        }
        if !names.insert(m.name.as_str()) {
            bail!("{at}.name: duplicate model name");
        }
        if m.provider.in_process() {
            if m.path.is_none() {
                bail!(
                    "{at}.path: required for provider local (a model folder, .gguf or `default`)"
                );
            }
            if m.base_url.is_some() {
                bail!("{at}.base_url: not used by provider local");
            }
            if m.replicas.is_some() {
                bail!("{at}.replicas: only for provider openai (OpenAI-compatible upstreams)");
            }
        } else if let Some(replicas) = &m.replicas {
            if m.provider != Provider::Openai {
                bail!("{at}.replicas: only for provider openai (OpenAI-compatible upstreams)");
            }
            if m.base_url.is_some() {
                bail!("{at}.base_url: give base_url or replicas, not both");
            }
            replicas::validate_replicas(&at, replicas)?;
            if m.path.is_some() {
                bail!("{at}.path: only for provider local");
            }
        } else {
            let Some(url) = &m.base_url else {
                bail!("{at}.base_url: required for provider {:?}", m.provider);
            };
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("{at}.base_url: {url:?} must start with http:// or https://");
            }
            if m.path.is_some() {
                bail!("{at}.path: only for provider local");
            }
        }
        match &m.auth {
            Some(AuthSpec::Keyword(k)) if k != "none" => {
                bail!("{at}.auth: {k:?}: use `none` or {{header, prefix, key_env}}")
            }
            Some(AuthSpec::Header(a)) => {
                if a.header.is_empty() {
                    bail!("{at}.auth.header: empty");
                }
                if env(&a.key_env).is_none_or(|v| v.is_empty()) {
                    bail!(
                        "{at}.auth.key_env: environment variable {} is not set",
                        a.key_env
                    );
                }
            }
            _ => {}
        }
        if m.replicas.is_none() && (m.balance.is_some() || m.health_check.is_some()) {
            bail!("{at}: balance and health_check are for a model with replicas");
        }
        if let Some(h) = &m.health_check {
            h.validate(&at)?;
        }
        if let Some(apis) = &m.apis {
            let spoken = Api::spoken_by(m.provider);
            if let Some(a) = apis.iter().find(|a| !spoken.contains(a)) {
                bail!(
                    "{at}.apis: provider {:?} does not speak {a:?} (it speaks {spoken:?})",
                    m.provider
                );
            }
            if apis.is_empty() {
                bail!("{at}.apis: empty (leave it out for every API the provider speaks)");
            }
        }
        if let Some(t) = m.timeout_s {
            if !(t > 0.0 && t.is_finite()) {
                bail!("{at}.timeout_s: must be positive");
            }
        }
        if m.max_sse_line_bytes == Some(0) || m.max_response_bytes == Some(0) {
            bail!("{at}: max_sse_line_bytes and max_response_bytes must be positive");
        }
        if let Some(p) = m.price {
            if p.input_per_mtok < 0.0 || p.output_per_mtok < 0.0 {
                bail!("{at}.price: prices must not be negative");
            }
        }
        let l = m.limits;
        if l.rpm.is_some_and(|v| v <= 0.0)
            || l.tpm.is_some_and(|v| v <= 0.0)
            || l.max_concurrency == Some(0)
        {
            bail!("{at}.limits: rpm, tpm and max_concurrency must be positive");
        }
    }
    for (i, r) in cfg.routes.iter().enumerate() {
        let at = format!("routes[{i}]");
        if r.use_ != CHEAPEST && !names.contains(r.use_.as_str()) {
            bail!(
                "{at}.use: unknown model {:?} (models: {:?}, or {CHEAPEST})",
                r.use_,
                cfg.models.iter().map(|m| &m.name).collect::<Vec<_>>()
            );
        }
        for (j, f) in r.fallback.iter().enumerate() {
            if !names.contains(f.as_str()) {
                bail!("{at}.fallback[{j}]: unknown model {f:?}");
            }
        }
    }
    let r = &cfg.retry;
    if r.max_attempts == 0 {
        bail!("retry.max_attempts: must be at least 1");
    }
    if r.deadline_s.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        bail!("retry.deadline_s: must be positive");
    }
    if r.initial_backoff_ms > r.max_backoff_ms {
        bail!("retry.initial_backoff_ms: larger than max_backoff_ms");
    }
    for (i, x) in r.retry_on.iter().enumerate() {
        if let RetryOn::Class(c) = x {
            if !["timeout", "connect_error"].contains(&c.as_str()) {
                bail!("retry.retry_on[{i}]: {c:?}: use status codes, `timeout` or `connect_error`");
            }
        }
    }
    if let Some(st) = &cfg.state {
        st.validate(env)?;
    }
    if cfg.cooldown.failures == 0 {
        bail!("cooldown.failures: must be at least 1");
    }
    let mut key_names = std::collections::HashSet::new();
    for (i, k) in cfg.api_keys.iter().enumerate() {
        let at = format!("api_keys[{i}] ({})", k.name);
        if !key_names.insert(k.name.as_str()) {
            bail!("{at}.name: duplicate key name");
        }
        if env(&k.key_env).is_none_or(|v| v.is_empty()) {
            bail!(
                "{at}.key_env: environment variable {} is not set",
                k.key_env
            );
        }
        if k.rpm.is_some_and(|v| v <= 0.0) || k.tpm.is_some_and(|v| v <= 0.0) {
            bail!("{at}: rpm and tpm must be positive");
        }
        for (j, m) in k.models.iter().flatten().enumerate() {
            if m != "auto" && !names.contains(m.as_str()) {
                bail!("{at}.models[{j}]: unknown model {m:?}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        (k == "K").then(|| "secret".to_string())
    }

    const GOOD: &str = r#"
models:
  - name: big
    provider: openai
    base_url: http://127.0.0.1:9001/v1
    auth: {header: Authorization, prefix: "Bearer ", key_env: K}
    price: {input_per_mtok: 1, output_per_mtok: 2}
    scores: {reasoning: 90}
  - name: claude
    provider: anthropic
    base_url: http://127.0.0.1:9002
    auth: {header: x-api-key, key_env: K}
routes:
  - when: {task: reasoning, budget: {lt: 0.01}}
    use: big
    fallback: [claude]
  - when: {model: auto}
    use: cheapest_capable
    require: {reasoning: 85}
retry: {max_attempts: 2, retry_on: [429, timeout]}
api_keys:
  - {name: team-a, key_env: K, rpm: 60, models: [auto, big]}
"#;

    #[test]
    fn parses_the_documented_shape() {
        let c = parse(GOOD, &env).unwrap();
        assert_eq!(c.models.len(), 2);
        assert_eq!(c.routes[1].use_, CHEAPEST);
        assert_eq!(c.retry.max_attempts, 2);
        assert_eq!(c.retry.initial_backoff_ms, 200);
        assert_eq!(c.cooldown.failures, 3);
        assert_eq!(c.retry.deadline_s, None);
        let c = parse(
            &GOOD
                .replace(
                    "scores: {reasoning: 90}",
                    "max_sse_line_bytes: 4096\n    max_response_bytes: 65536",
                )
                .replace("max_attempts: 2,", "max_attempts: 2, deadline_s: 30,"),
            &env,
        )
        .unwrap();
        assert_eq!(c.models[0].max_sse_line_bytes, Some(4096));
        assert_eq!(c.models[0].max_response_bytes, Some(65536));
        assert_eq!(c.retry.deadline_s, Some(30.0));
        let env2 = |k: &str| match k {
            "R" => Some("redis://r:6379".to_string()),
            _ => env(k),
        };
        let c = parse(
            &format!(
                "{}state: {{redis_url_env: R, on_error: closed}}\n",
                GOOD.replace(
                    "    base_url: http://127.0.0.1:9001/v1\n",
                    "    replicas: [http://a:1/v1, http://b:1/v1]\n    balance: least_loaded\n",
                )
            ),
            &env2,
        )
        .unwrap();
        let st = c.state.unwrap();
        assert_eq!(st.url(&env2).unwrap(), "redis://r:6379");
        assert_eq!(
            (st.on_error, st.timeout_ms, st.key_prefix.as_str()),
            (OnError::Closed, 200, "novastack")
        );
        assert_eq!(c.models[0].balance, Some(Balance::LeastLoaded));
        assert_eq!(c.models[0].replicas.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (
                GOOD.replace("provider: openai", "provider: opnai"),
                "models[0]",
            ),
            (
                GOOD.replacen("key_env: K}", "key_env: NOPE}", 1),
                "models[0] (big).auth.key_env: environment variable NOPE",
            ),
            (GOOD.replace("use: big", "use: bigger"), "routes[0].use"),
            (
                GOOD.replace("fallback: [claude]", "fallback: [x]"),
                "routes[0].fallback[0]",
            ),
            (
                GOOD.replace("task: reasoning", "tsk: reasoning"),
                "routes[0].when.tsk",
            ),
            (
                GOOD.replace("{lt: 0.01}", "{lt: cheap}"),
                "routes[0].when.budget",
            ),
            (
                GOOD.replace("max_attempts: 2", "max_attempts: 0"),
                "retry.max_attempts",
            ),
            (
                GOOD.replace("    base_url: http://127.0.0.1:9002\n", ""),
                "models[1] (claude).base_url",
            ),
            (GOOD.replace("scores:", "scorez:"), "unknown field `scorez`"),
            (
                GOOD.replace("models: [auto, big]", "models: [auto, huge]"),
                "api_keys[0] (team-a).models[1]",
            ),
            (
                GOOD.replace("retry_on: [429, timeout]", "retry_on: [429, sometimes]"),
                "retry.retry_on[1]",
            ),
            (
                GOOD.replace("max_attempts: 2,", "max_attempts: 2, deadline_s: 0,"),
                "retry.deadline_s",
            ),
            (
                GOOD.replace("scores: {reasoning: 90}", "max_sse_line_bytes: 0"),
                "models[0] (big): max_sse_line_bytes",
            ),
            (
                GOOD.replace(
                    "    base_url: http://127.0.0.1:9002\n",
                    "    base_url: http://127.0.0.1:9002\n    apis: [chat, embeddings]\n",
                ),
                "models[1] (claude).apis: provider Anthropic does not speak Embeddings",
            ),
            (
                GOOD.replace("scores: {reasoning: 90}", "apis: [chat, images]"),
                "models[0]",
            ),
            (
                GOOD.replace("scores: {reasoning: 90}", "replicas: [http://a:1/v1]"),
                "models[0] (big).base_url: give base_url or replicas, not both",
            ),
            (
                GOOD.replace(
                    "    base_url: http://127.0.0.1:9001/v1\n",
                    "    replicas: [http://a:1/v1, ftp://b/v1]\n",
                ),
                "models[0] (big).replicas[1]",
            ),
            (
                GOOD.replace(
                    "    base_url: http://127.0.0.1:9001/v1\n",
                    "    replicas: [http://a:1/v1, http://a:1/v1]\n",
                ),
                "listed twice",
            ),
            (
                GOOD.replace(
                    "    base_url: http://127.0.0.1:9001/v1\n",
                    "    replicas: [http://a:1/v1]\n    balance: fastest\n",
                ),
                "balance",
            ),
            (
                GOOD.replace(
                    "    base_url: http://127.0.0.1:9001/v1\n",
                    "    replicas: [http://a:1/v1]\n    health_check: {interval_s: 0}\n",
                ),
                "models[0] (big).health_check.interval_s",
            ),
            (
                GOOD.replace("scores: {reasoning: 90}", "balance: prefix"),
                "models[0] (big): balance and health_check are for a model with replicas",
            ),
            (
                GOOD.replace(
                    "    base_url: http://127.0.0.1:9002\n",
                    "    replicas: [http://127.0.0.1:9002]\n",
                ),
                "models[1] (claude).replicas: only for provider openai",
            ),
            (
                format!("{GOOD}state: {{redis_url: http://r:6379}}\n"),
                "state.redis_url: must start with redis://",
            ),
            (
                format!("{GOOD}state: {{redis_url_env: NOPE}}\n"),
                "state.redis_url_env: environment variable NOPE is not set",
            ),
            (format!("{GOOD}state: {{}}\n"), "state.redis_url: required"),
            (
                format!("{GOOD}state: {{redis_url: \"redis://r\", on_error: maybe}}\n"),
                "on_error",
            ),
        ];
        for (text, needle) in cases {
            let e = format!("{:#}", parse(&text, &env).unwrap_err());
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
        // Syntax and type errors carry a line number.
        let e = parse(&GOOD.replace("rpm: 60", "rpm: lots"), &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("line"), "{e}");
    }
}

#[cfg(test)]
mod example_tests {
    /// The example in `examples/gateway.yaml` stays valid.
    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../examples/gateway.yaml");
        let env = |k: &str| {
            ["QWEN_KEY", "ANTHROPIC_KEY", "TEAM_A_KEY"]
                .contains(&k)
                .then(|| "x".to_string())
        };
        let cfg = super::parse(text, &env).unwrap();
        assert_eq!(cfg.models.len(), 4);
        assert_eq!(cfg.routes.len(), 3);
    }

    /// The gateway config shipped in the Kubernetes ConfigMap is one this gateway takes.
    #[test]
    fn the_kubernetes_configmap_holds_a_valid_config() {
        let cm: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../../deploy/k8s/gateway-configmap.yaml"))
                .unwrap();
        let text = cm["data"]["gateway.yaml"].as_str().unwrap();
        let env = |k: &str| {
            ["ENGINE_API_KEY", "TEAM_A_KEY", "TEAM_B_KEY"]
                .contains(&k)
                .then(|| "x".to_string())
        };
        let cfg = super::parse(text, &env).unwrap();
        assert!(cfg.state.is_some());
        let m = &cfg.models[0];
        assert_eq!(m.replicas.as_ref().map(Vec::len), Some(2));
        assert_eq!(m.balance, Some(super::Balance::Prefix));
    }
}
