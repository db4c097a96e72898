//! Where limit and cooldown decisions are made: in Redis when the config has `state:`
//! and Redis answers (shared by every gateway replica), otherwise in this process
//! (`limits.rs`, `model_state.rs`). While Redis is unreachable, `on_error: open`
//! decides locally and `closed` answers 503; both are counted in `/metrics`.

use crate::config::ApiKeyConfig;
use crate::limits::{key_refused, rate_headers};
use crate::model_state::ModelState;
use crate::policy::FailureKind;
use crate::redis_state::{ModelVerdict, RedisState};
use crate::state::{ConfigEpoch, Gateway};
use novastack_openai::ApiError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// May a model take an attempt now?
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Gate {
    /// Yes; its RPM/TPM reservation is made, in Redis (`true`) or in this process.
    Open(bool),
    Cooling(Duration),
    /// Its own RPM/TPM is spent for this long.
    Spent(Duration),
}

type Headers = Vec<(&'static str, String)>;

fn shared_unavailable() -> ApiError {
    ApiError::unavailable(
        "the gateway's shared state (Redis) is unreachable and state.on_error is closed",
    )
}

impl Gateway {
    /// Redis when it is configured and up; `Err` when it is down and fail-closed;
    /// `Ok(None)`: decide locally.
    fn shared(epoch: &ConfigEpoch) -> Result<Option<&Arc<RedisState>>, ApiError> {
        let Some(r) = &epoch.shared else {
            return Ok(None);
        };
        if r.is_up() {
            return Ok(Some(r));
        }
        Self::fallback(r)
    }

    fn fallback(r: &RedisState) -> Result<Option<&Arc<RedisState>>, ApiError> {
        if r.fail_closed() {
            r.metrics.refused.fetch_add(1, Ordering::Relaxed);
            Err(shared_unavailable())
        } else {
            r.metrics.local_decisions.fetch_add(1, Ordering::Relaxed);
            Ok(None)
        }
    }

    /// The client key's limits and the first model's gate, in one Redis round trip when
    /// state is shared. Returns the key's rate-limit headers, the gate (when `first` was
    /// given and the key had room), and whether the key's reservation is in Redis.
    pub(crate) async fn admit(
        &self,
        epoch: &ConfigEpoch,
        key: Option<&ApiKeyConfig>,
        est: f64,
        first: Option<&str>,
    ) -> Result<(Headers, Option<Gate>, bool), ApiError> {
        if let Some(r) = Self::shared(epoch)? {
            let kb = key.map(|k| r.key_buckets(&k.name, k.rpm, k.tpm));
            let model = first.and_then(|n| epoch.model(n)).map(|m| {
                (
                    r.model_buckets(&m.name, m.limits.rpm, m.limits.tpm),
                    r.key(&["m", &m.name, "cooldown"]),
                    r.key(&["m", &m.name, "limit"]),
                    crate::model_state::max_concurrency(m),
                )
            });
            let asked = model
                .as_ref()
                .map(|(b, c, l, max)| (b, c.as_str(), l.as_str(), *max));
            if let Some((kv, mv)) = r.admit(kb.as_ref(), asked, est).await {
                let headers = key.map_or_else(Vec::new, |k| {
                    rate_headers(
                        k.rpm.zip(kv.rpm).map(|(c, (l, s))| (c, l, s)),
                        k.tpm.zip(kv.tpm).map(|(c, (l, s))| (c, l, s)),
                    )
                });
                if !kv.ok {
                    let name = key.map_or("", |k| k.name.as_str());
                    return Err(key_refused(name, kv.wait, headers));
                }
                let gate = first.and_then(|n| self.apply(n, mv));
                return Ok((headers, gate, true));
            }
            Self::fallback(r)?;
        }
        let headers = match key {
            Some(k) => self.clients.reserve(&k.name, est)?,
            None => Vec::new(),
        };
        let gate = first
            .and_then(|n| self.model_state(n))
            .map(|s| local_gate(&s, est));
        Ok((headers, gate, false))
    }

    /// Applies a model verdict from Redis: the shared adaptive limit, and the gate.
    fn apply(&self, name: &str, mv: ModelVerdict) -> Option<Gate> {
        match mv {
            ModelVerdict::Open(limit) => {
                if let Some(s) = self.model_state(name) {
                    s.set_shared_limit(limit);
                }
                Some(Gate::Open(true))
            }
            ModelVerdict::Cooling(d) => Some(Gate::Cooling(d)),
            ModelVerdict::Spent(d) => Some(Gate::Spent(d)),
            ModelVerdict::NotAsked => None,
        }
    }

    /// A model's gate for an attempt after the first (a retry or a fallback).
    pub(crate) async fn gate(
        &self,
        epoch: &ConfigEpoch,
        name: &str,
        state: &ModelState,
        est: f64,
    ) -> Result<Gate, ApiError> {
        if let Some(r) = Self::shared(epoch)? {
            if let Some(m) = epoch.model(name) {
                let b = r.model_buckets(name, m.limits.rpm, m.limits.tpm);
                let (cool, limit) = (
                    r.key(&["m", name, "cooldown"]),
                    r.key(&["m", name, "limit"]),
                );
                let max = crate::model_state::max_concurrency(m);
                if let Some((_, mv)) = r.admit(None, Some((&b, &cool, &limit, max)), est).await {
                    if let Some(g) = self.apply(name, mv) {
                        return Ok(g);
                    }
                }
                Self::fallback(r)?;
            }
        }
        Ok(local_gate(state, est))
    }

    /// Gives back reserved tokens: `est` reserved, `used` used (0 for an attempt that
    /// failed), each where it was reserved (`true`: in Redis, off the request's path).
    pub(crate) fn settle(
        &self,
        epoch: &ConfigEpoch,
        key: Option<(&str, bool)>,
        model: Option<(&str, &ModelState, bool)>,
        est: f64,
        used: f64,
    ) {
        let shared = epoch.shared.as_ref();
        let kb = key.filter(|k| k.1).and_then(|(k, _)| {
            let c = epoch.cfg.api_keys.iter().find(|c| c.name == k)?;
            Some(shared?.key_buckets(&c.name, c.rpm, c.tpm))
        });
        let mb = model.filter(|m| m.2).and_then(|(n, _, _)| {
            let m = epoch.model(n)?;
            Some(shared?.model_buckets(&m.name, m.limits.rpm, m.limits.tpm))
        });
        if let (Some(r), true) = (shared, kb.is_some() || mb.is_some()) {
            let r = r.clone();
            tokio::spawn(async move {
                let back = est - used;
                r.settle(
                    kb.as_ref().map(|b| (b, back)),
                    mb.as_ref().map(|b| (b, back)),
                )
                .await
            });
        }
        if let Some((k, false)) = key {
            self.clients.settle(k, est, used);
        }
        if let Some((_, s, false)) = model {
            s.settle(est, used, Instant::now());
        }
    }

    /// Records a failed attempt on a model; true when the model now cools down.
    /// `count`: the failure counts toward the model's cooldown (a pool's replica
    /// failures eject the replica instead, until none is left).
    pub(crate) async fn model_failed(
        &self,
        epoch: &ConfigEpoch,
        name: &str,
        state: &ModelState,
        kind: &FailureKind,
        count: bool,
    ) -> bool {
        let cd = &epoch.cfg.cooldown;
        let cooled_here = state.failed(kind, cd, Instant::now(), count);
        if let Some(r) = epoch.shared.as_ref().filter(|r| r.is_up()) {
            let max = epoch
                .model(name)
                .map_or(0, crate::model_state::max_concurrency);
            if let Some((cooled, limit)) = r.failure(name, cd, kind.is_overload(), max, count).await
            {
                state.set_shared_limit(limit);
                return cooled;
            }
        }
        cooled_here
    }

    /// Records a failure from a context that cannot wait (a stream that broke).
    pub(crate) fn model_failed_later(self: &Arc<Self>, name: &str, kind: FailureKind, count: bool) {
        let gw = self.clone();
        let name = name.to_string();
        let epoch = self.epoch();
        tokio::spawn(async move {
            if let Some(s) = gw.model_state(&name) {
                gw.model_failed(&epoch, &name, &s, &kind, count).await;
            }
        });
    }

    /// Records an answer that completed: success bookkeeping and settling.
    pub(crate) fn model_succeeded(&self, epoch: &ConfigEpoch, name: &str, state: &Arc<ModelState>) {
        state.succeeded();
        if let Some(r) = epoch.shared.as_ref().filter(|r| r.is_up()) {
            let max = epoch
                .model(name)
                .map_or(0, crate::model_state::max_concurrency);
            let (r, name, state) = (r.clone(), name.to_string(), state.clone());
            tokio::spawn(async move {
                if let Some(limit) = r.success(&name, max).await {
                    state.set_shared_limit(limit);
                }
            });
        }
    }
}

/// This process's own gate: the model's cooldown, then its RPM/TPM.
fn local_gate(state: &ModelState, est: f64) -> Gate {
    let now = Instant::now();
    if let Some(rem) = state.cooling(now) {
        return Gate::Cooling(rem);
    }
    match state.reserve(est, now) {
        Ok(()) => Gate::Open(false),
        Err(w) => Gate::Spent(w),
    }
}
