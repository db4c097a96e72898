//! Shared state in Redis: client-key and upstream RPM/TPM buckets, cooldowns and the
//! adaptive concurrency limit, updated atomically by Lua scripts on the Redis server
//! (its clock, so replicas with skewed clocks agree). A request's hot path is one
//! script call (`admit`: the key's buckets and the first model's cooldown, buckets and
//! limit); settling and success bookkeeping run after the answer, off that path.
//!
//! While Redis is unreachable every call returns `None` at once (no waiting on a dead
//! server); the caller decides on local state (`on_error: open`) or refuses
//! (`closed`). A background probe (`Gateway::supervise`) notices when it is back.

use crate::config::{OnError, StateConfig};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// Seconds a bucket key lives after its last use: a minute refills any bucket, so an
/// expired key reads as a full bucket.
const BUCKET_TTL_MS: u64 = 120_000;
/// How long an adaptive limit lowered by overload is remembered without news.
const LIMIT_TTL_MS: u64 = 600_000;

/// The Lua helpers every script shares: the server's clock and token buckets that
/// refill `cap` per minute (the same rule as `policy::TokenBucket`).
const PRELUDE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function load(key, cap)
  if cap <= 0 then return nil end
  local v = redis.call('HMGET', key, 't', 'ts')
  local tok, ts = tonumber(v[1]), tonumber(v[2])
  if not tok then return cap end
  return math.min(cap, tok + math.max(0, now - ts) * cap / 60000)
end
local function store(key, tok)
  redis.call('HSET', key, 't', tostring(tok), 'ts', now)
  redis.call('PEXPIRE', key, BUCKET_TTL)
end
local function fits(tok, cap, want)
  return tok >= want or (tok >= cap and want > cap)
end
local function wait_ms(tok, cap, want)
  return math.ceil((math.min(want, cap) - tok) * 60000 / cap)
end
local function reset_ms(tok, cap)
  if not tok then return -1 end
  return math.ceil(math.max(0, cap - tok) * 60000 / cap)
end
local function left(tok)
  if not tok then return -1 end
  return math.floor(math.max(0, tok))
end
-- One request from the RPM bucket and n tokens from the TPM bucket: both or neither.
local function take_pair(krpm, ktpm, crpm, ctpm, n)
  local r, k = load(krpm, crpm), load(ktpm, ctpm)
  local wait = 0
  if r and not fits(r, crpm, 1) then wait = math.max(wait, wait_ms(r, crpm, 1)) end
  if k and not fits(k, ctpm, n) then wait = math.max(wait, wait_ms(k, ctpm, n)) end
  if wait > 0 then return false, wait, r, k end
  if r then r = r - 1; store(krpm, r) end
  if k then k = k - n; store(ktpm, k) end
  return true, 0, r, k
end
local function limit_of(key, max)
  local a = tonumber(redis.call('GET', key))
  if not a then return max end
  return math.min(a, max)
end
"#;

/// KEYS: key rpm, key tpm, model rpm, model tpm, model cooldown, model limit.
/// ARGV: tokens, key rpm cap, key tpm cap, model rpm cap, model tpm cap, check the
/// model (0/1), the model's concurrency maximum. Caps of 0: no such bucket.
/// Returns: key ok, key wait ms, key rpm left, key rpm reset ms, key tpm left, key tpm
/// reset ms, model verdict (0 open, 1 cooling, 2 spent, 3 not asked), model wait ms,
/// adaptive limit × 1000.
const ADMIT: &str = r#"
local n = tonumber(ARGV[1])
local ok, wait, r, k = take_pair(KEYS[1], KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3]), n)
local out = {ok and 1 or 0, wait, left(r), reset_ms(r, tonumber(ARGV[2])), left(k), reset_ms(k, tonumber(ARGV[3])), 3, 0, 0}
if not ok or ARGV[6] ~= '1' then return out end
local cool = redis.call('PTTL', KEYS[5])
if cool > 0 then
  out[7] = 1; out[8] = cool
  return out
end
local mok, mwait = take_pair(KEYS[3], KEYS[4], tonumber(ARGV[4]), tonumber(ARGV[5]), n)
if not mok then
  out[7] = 2; out[8] = mwait
  return out
end
out[7] = 0
out[9] = math.floor(limit_of(KEYS[6], tonumber(ARGV[7])) * 1000)
return out
"#;

/// KEYS: key tpm, model tpm. ARGV: key tpm cap, tokens back to the key, model tpm cap,
/// tokens back to the model (negative: the answer used more than reserved).
const SETTLE: &str = r#"
local function back(key, cap, n)
  if cap <= 0 or n == 0 then return end
  local tok = load(key, cap)
  store(key, math.min(cap, tok + n))
end
back(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
back(KEYS[2], tonumber(ARGV[3]), tonumber(ARGV[4]))
return 1
"#;

/// KEYS: model failures (sorted set), its sequence, cooldown, limit. ARGV: window ms,
/// failures that cool down, cooldown ms, overload (0/1), concurrency maximum, count
/// toward the cooldown (0/1). Returns: cooled (0/1), adaptive limit × 1000.
const FAILURE: &str = r#"
local cooled = 0
local window = tonumber(ARGV[1])
if ARGV[6] == '1' then
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local id = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], window + 1000)
redis.call('ZADD', KEYS[1], now, id)
redis.call('PEXPIRE', KEYS[1], window + 1000)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) and redis.call('PTTL', KEYS[3]) <= 0 then
  redis.call('SET', KEYS[3], '1', 'PX', math.max(1, tonumber(ARGV[3])))
  redis.call('DEL', KEYS[1])
  cooled = 1
end
end
local max = tonumber(ARGV[5])
local a = limit_of(KEYS[4], max)
if ARGV[4] == '1' then
  a = math.max(1, a / 2)
  redis.call('SET', KEYS[4], tostring(a), 'PX', LIMIT_TTL)
end
return {cooled, math.floor(a * 1000)}
"#;

/// KEYS: model failures, limit. ARGV: concurrency maximum. A success clears the
/// failure window and raises the limit by 1/limit. Returns the limit × 1000.
const SUCCESS: &str = r#"
redis.call('DEL', KEYS[1])
local max = tonumber(ARGV[1])
local a = tonumber(redis.call('GET', KEYS[2]))
if not a then return math.floor(max * 1000) end
a = math.min(max, a + 1 / math.max(1, a))
if a >= max then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], tostring(a), 'PX', LIMIT_TTL) end
return math.floor(a * 1000)
"#;

fn script(body: &str) -> Script {
    let prelude = PRELUDE
        .replace("BUCKET_TTL", &BUCKET_TTL_MS.to_string())
        .replace("LIMIT_TTL", &LIMIT_TTL_MS.to_string());
    let body = body.replace("LIMIT_TTL", &LIMIT_TTL_MS.to_string());
    Script::new(&format!("{prelude}\n{body}"))
}

struct Scripts {
    admit: Script,
    settle: Script,
    failure: Script,
    success: Script,
}

fn scripts() -> &'static Scripts {
    static S: OnceLock<Scripts> = OnceLock::new();
    S.get_or_init(|| Scripts {
        admit: script(ADMIT),
        settle: script(SETTLE),
        failure: script(FAILURE),
        success: script(SUCCESS),
    })
}

/// A bucket in Redis: its key and capacity per minute (0: no bucket).
#[derive(Debug, Clone)]
pub(crate) struct Buckets {
    pub rpm_key: String,
    pub tpm_key: String,
    pub rpm: f64,
    pub tpm: f64,
}

/// What `admit` found for the client key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct KeyVerdict {
    pub ok: bool,
    pub wait: Duration,
    /// (requests left, seconds to full) when the key has an RPM.
    pub rpm: Option<(f64, f64)>,
    pub tpm: Option<(f64, f64)>,
}

/// What `admit` found for the model.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ModelVerdict {
    /// Reserved; the shared adaptive concurrency limit.
    Open(f64),
    Cooling(Duration),
    Spent(Duration),
    /// Not asked (no model, or the key was refused).
    NotAsked,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub(crate) struct StateMetrics {
    pub errors: AtomicU64,
    pub local_decisions: AtomicU64,
    pub refused: AtomicU64,
}

pub(crate) struct RedisState {
    pub cfg: StateConfig,
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    up: AtomicBool,
    /// Set once anything was logged (so a Redis down from the start is logged once).
    logged: AtomicBool,
    /// A probe is running.
    probing: AtomicBool,
    pub metrics: StateMetrics,
    url: String,
    /// Host and port only, for logs (the URL may hold a password).
    shown: String,
}

impl RedisState {
    pub fn new(cfg: StateConfig, url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("state.redis_url: {}", e.to_string().replace(url, "…")))?;
        let info = client.get_connection_info();
        let shown = format!("{}", info.addr());
        Ok(RedisState {
            cfg,
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            logged: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            metrics: StateMetrics::default(),
            url: url.to_string(),
            shown,
        })
    }

    /// Whether a reloaded `state:` section names this same server and settings (then
    /// the connection is kept).
    pub fn same_config(&self, cfg: &StateConfig, url: &str) -> bool {
        self.url == url
            && self.cfg.key_prefix == cfg.key_prefix
            && self.cfg.on_error == cfg.on_error
            && self.cfg.timeout_ms == cfg.timeout_ms
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    pub fn fail_closed(&self) -> bool {
        self.cfg.on_error == OnError::Closed
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    /// A key under the configured prefix, in one Redis Cluster hash slot.
    pub fn key(&self, parts: &[&str]) -> String {
        let mut k = format!("{{{}}}", self.cfg.key_prefix);
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// Connects (or checks the connection) and marks Redis up or down; logs changes. One
    /// probe at a time: a probe started while another runs returns at once.
    pub async fn probe(&self) {
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        self.probe_once().await;
        self.probing.store(false, Ordering::SeqCst);
    }

    async fn probe_once(&self) {
        let existing = crate::sync::lock(&self.conn).clone();
        let conn = match existing {
            Some(c) => Some(c),
            None => {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout() * 5))
                    .set_response_timeout(Some(self.timeout() * 5))
                    .set_number_of_retries(1);
                match tokio::time::timeout(
                    self.timeout() * 10,
                    self.client.get_connection_manager_with_config(cfg),
                )
                .await
                {
                    Ok(Ok(c)) => {
                        *crate::sync::lock(&self.conn) = Some(c.clone());
                        Some(c)
                    }
                    Ok(Err(e)) => {
                        self.down(&e.to_string());
                        None
                    }
                    Err(_) => {
                        self.down("connect timed out");
                        None
                    }
                }
            }
        };
        let Some(mut conn) = conn else { return };
        let ping = tokio::time::timeout(
            self.timeout() * 5,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        match ping {
            Ok(Ok(_)) => {
                if !self.up.swap(true, Ordering::SeqCst) {
                    tracing::info!("gateway state: Redis at {} is reachable; limits, cooldowns and adaptive limits are shared", self.shown);
                }
            }
            Ok(Err(e)) => self.reset(&e.to_string()),
            Err(_) => self.reset("PING timed out"),
        }
    }

    /// A failed probe: the next one starts from a fresh connection.
    fn reset(&self, why: &str) {
        *crate::sync::lock(&self.conn) = None;
        self.down(why);
    }

    fn down(&self, why: &str) {
        self.metrics.errors.fetch_add(1, Ordering::Relaxed);
        let was_up = self.up.swap(false, Ordering::SeqCst);
        if was_up || !self.logged.swap(true, Ordering::SeqCst) {
            let mode = if self.fail_closed() {
                "refusing requests (on_error: closed)"
            } else {
                "deciding on this process's own state (on_error: open)"
            };
            tracing::warn!(
                "gateway state: Redis at {} is unreachable ({why}); {mode} until it is back",
                self.shown
            );
        }
    }

    /// Runs `script`; `None` when Redis is down or the call fails or times out.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        keys: &[&str],
        args: &[String],
    ) -> Option<T> {
        if !self.is_up() {
            return None;
        }
        let mut conn = crate::sync::lock(&self.conn).clone()?;
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        for a in args {
            inv.arg(a.as_str());
        }
        match tokio::time::timeout(self.timeout(), inv.invoke_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            // A lost connection marks Redis down; an error reply (out of memory, a
            // refused command) leaves it up and this one call decides locally.
            Ok(Err(e)) if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() => {
                self.down(&e.to_string());
                None
            }
            Ok(Err(e)) => {
                self.metrics.errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!("gateway state: Redis answered an error: {e}");
                None
            }
            Err(_) => {
                self.down(&format!(
                    "no answer within {:?} (state.timeout_ms)",
                    self.timeout()
                ));
                None
            }
        }
    }

    /// One round trip: takes a request and `tokens` from the key's buckets; if that
    /// succeeds and `model` is given, checks its cooldown and takes from its buckets.
    pub async fn admit(
        &self,
        key: Option<&Buckets>,
        model: Option<(&Buckets, &str, &str, usize)>,
        tokens: f64,
    ) -> Option<(KeyVerdict, ModelVerdict)> {
        let none = Buckets {
            rpm_key: self.key(&["none"]),
            tpm_key: self.key(&["none"]),
            rpm: 0.0,
            tpm: 0.0,
        };
        let k = key.unwrap_or(&none);
        let (mb, cool_key, limit_key, max) = model.unwrap_or((&none, "", "", 0));
        let cool_key = if cool_key.is_empty() {
            self.key(&["none"])
        } else {
            cool_key.to_string()
        };
        let limit_key = if limit_key.is_empty() {
            self.key(&["none"])
        } else {
            limit_key.to_string()
        };
        let args = [
            tokens.to_string(),
            k.rpm.to_string(),
            k.tpm.to_string(),
            mb.rpm.to_string(),
            mb.tpm.to_string(),
            if model.is_some() { "1" } else { "0" }.to_string(),
            max.to_string(),
        ];
        let keys = [
            k.rpm_key.as_str(),
            k.tpm_key.as_str(),
            mb.rpm_key.as_str(),
            mb.tpm_key.as_str(),
            cool_key.as_str(),
            limit_key.as_str(),
        ];
        let v: Vec<i64> = self.run(&scripts().admit, &keys, &args).await?;
        if v.len() != 9 {
            self.down("the admit script answered an unexpected shape");
            return None;
        }
        let pair =
            |left: i64, reset: i64| (left >= 0).then(|| (left as f64, reset as f64 / 1000.0));
        let kv = KeyVerdict {
            ok: v[0] == 1,
            wait: Duration::from_millis(v[1].max(0) as u64),
            rpm: pair(v[2], v[3]),
            tpm: pair(v[4], v[5]),
        };
        let mv = match v[6] {
            0 => ModelVerdict::Open(v[8] as f64 / 1000.0),
            1 => ModelVerdict::Cooling(Duration::from_millis(v[7].max(0) as u64)),
            2 => ModelVerdict::Spent(Duration::from_millis(v[7].max(0) as u64)),
            _ => ModelVerdict::NotAsked,
        };
        Some((kv, mv))
    }

    /// Gives back unused reserved tokens (negative: takes what was used beyond them).
    pub async fn settle(&self, key: Option<(&Buckets, f64)>, model: Option<(&Buckets, f64)>) {
        let none = self.key(&["none"]);
        let (kk, kc, kn) = key.map_or((none.clone(), 0.0, 0.0), |(b, n)| {
            (b.tpm_key.clone(), b.tpm, n)
        });
        let (mk, mc, mn) = model.map_or((none, 0.0, 0.0), |(b, n)| (b.tpm_key.clone(), b.tpm, n));
        let args = [
            kc.to_string(),
            kn.to_string(),
            mc.to_string(),
            mn.to_string(),
        ];
        let _: Option<i64> = self.run(&scripts().settle, &[&kk, &mk], &args).await;
    }

    /// Records a failed attempt of a model: (cooled, adaptive limit).
    pub async fn failure(
        &self,
        model: &str,
        cd: &crate::config::CooldownConfig,
        overload: bool,
        max: usize,
        count: bool,
    ) -> Option<(bool, f64)> {
        let keys = [
            self.key(&["m", model, "failures"]),
            self.key(&["m", model, "failure_seq"]),
            self.key(&["m", model, "cooldown"]),
            self.key(&["m", model, "limit"]),
        ];
        let args = [
            ((cd.window_s.max(0.0)) * 1000.0).round().to_string(),
            cd.failures.to_string(),
            ((cd.cooldown_s.max(0.0)) * 1000.0).round().to_string(),
            if overload { "1" } else { "0" }.to_string(),
            max.to_string(),
            if count { "1" } else { "0" }.to_string(),
        ];
        let k: Vec<&str> = keys.iter().map(String::as_str).collect();
        let v: Vec<i64> = self.run(&scripts().failure, &k, &args).await?;
        (v.len() == 2).then(|| (v[0] == 1, v[1] as f64 / 1000.0))
    }

    /// Records a success of a model; the adaptive limit after it.
    pub async fn success(&self, model: &str, max: usize) -> Option<f64> {
        let keys = [
            self.key(&["m", model, "failures"]),
            self.key(&["m", model, "limit"]),
        ];
        let k: Vec<&str> = keys.iter().map(String::as_str).collect();
        let v: i64 = self.run(&scripts().success, &k, &[max.to_string()]).await?;
        Some(v as f64 / 1000.0)
    }

    /// The buckets of a client key.
    pub fn key_buckets(&self, name: &str, rpm: Option<f64>, tpm: Option<f64>) -> Buckets {
        self.buckets("k", name, rpm, tpm)
    }

    /// The buckets of a model (an upstream).
    pub fn model_buckets(&self, name: &str, rpm: Option<f64>, tpm: Option<f64>) -> Buckets {
        self.buckets("m", name, rpm, tpm)
    }

    fn buckets(&self, scope: &str, name: &str, rpm: Option<f64>, tpm: Option<f64>) -> Buckets {
        Buckets {
            rpm_key: self.key(&[scope, name, "rpm"]),
            tpm_key: self.key(&[scope, name, "tpm"]),
            rpm: rpm.unwrap_or(0.0),
            tpm: tpm.unwrap_or(0.0),
        }
    }
}
