//! `state:` (shared state in Redis) and `replicas:` (a model served by a pool of
//! OpenAI-compatible upstreams), the two parts of the config that take the gateway past
//! one process and one upstream URL.

use anyhow::{bail, Result};
use serde::Deserialize;

/// `state: {redis_url | redis_url_env, key_prefix, on_error, timeout_ms}`: client-key and
/// upstream RPM/TPM, cooldowns and the adaptive concurrency signal live in Redis, shared
/// by every gateway replica that names the same server and prefix.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `redis://[user:password@]host:port[/db]` (TLS, `rediss://`, is not built in).
    pub redis_url: Option<String>,
    /// An environment variable holding the URL (for a password kept in a Secret).
    pub redis_url_env: Option<String>,
    /// Prefix of every Redis key (default `novastack`); replicas sharing state share it.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// What to do while Redis is unreachable: `open` decides on this process's own
    /// state, `closed` answers 503.
    #[serde(default)]
    pub on_error: OnError,
    /// The longest wait for one Redis round trip before it counts as unreachable.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_prefix() -> String {
    "novastack".into()
}

fn default_timeout_ms() -> u64 {
    200
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    #[default]
    Open,
    Closed,
}

impl StateConfig {
    /// The Redis URL, from the file or the environment.
    pub fn url(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String> {
        match (&self.redis_url, &self.redis_url_env) {
            (Some(u), None) => Ok(u.clone()),
            (None, Some(var)) => match env(var) {
                Some(u) if !u.is_empty() => Ok(u),
                _ => bail!("state.redis_url_env: environment variable {var} is not set"),
            },
            (Some(_), Some(_)) => bail!("state: give redis_url or redis_url_env, not both"),
            (None, None) => bail!("state.redis_url: required (or redis_url_env)"),
        }
    }

    pub(super) fn validate(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<()> {
        let url = self.url(env)?;
        if !url.starts_with("redis://") {
            let field = if self.redis_url.is_some() {
                "redis_url"
            } else {
                "redis_url_env"
            };
            if url.starts_with("rediss://") {
                bail!("state.{field}: rediss:// (TLS) is not supported by this build; use redis:// (inside the cluster network)");
            }
            bail!("state.{field}: must start with redis://");
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            bail!("state.key_prefix: must be non-empty and without braces");
        }
        if self.timeout_ms == 0 {
            bail!("state.timeout_ms: must be positive");
        }
        Ok(())
    }
}

/// How a pool picks a replica for a request.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// By the prompt's leading blocks: where a prefix went before, else consistent
    /// hashing of its first block; a replica over its bounded load is passed over.
    #[default]
    Prefix,
    /// The fewest requests in flight (plus the queue a novastack replica reports).
    LeastLoaded,
    RoundRobin,
}

/// `health_check: {path, interval_s, timeout_s, failures}`.
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Asked with GET at each replica's origin (scheme, host and port of its URL).
    pub path: String,
    pub interval_s: f64,
    pub timeout_s: f64,
    /// Consecutive failed checks (or failed requests) that eject a replica.
    pub failures: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/health".into(),
            interval_s: 5.0,
            timeout_s: 2.0,
            failures: 2,
        }
    }
}

impl HealthCheckConfig {
    pub(super) fn validate(&self, at: &str) -> Result<()> {
        if !self.path.starts_with('/') {
            bail!("{at}.health_check.path: must start with /");
        }
        for (name, v) in [
            ("interval_s", self.interval_s),
            ("timeout_s", self.timeout_s),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                bail!("{at}.health_check.{name}: must be positive");
            }
        }
        if self.failures == 0 {
            bail!("{at}.health_check.failures: must be at least 1");
        }
        Ok(())
    }
}

/// Checks a model's `replicas` list (OpenAI-compatible upstreams, no `base_url`).
pub(super) fn validate_replicas(at: &str, replicas: &[String]) -> Result<()> {
    if replicas.is_empty() {
        bail!("{at}.replicas: empty");
    }
    for (j, u) in replicas.iter().enumerate() {
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            bail!("{at}.replicas[{j}]: {u:?} must start with http:// or https://");
        }
        if replicas[..j].contains(u) {
            bail!("{at}.replicas[{j}]: {u:?} is listed twice");
        }
    }
    Ok(())
}
