//! Per-model runtime state, kept across config reloads: the adaptive concurrency limit
//! and the requests in flight under it, the cooldown after repeated failures, the
//! upstream's RPM/TPM, and the model's metrics.

use crate::config::{CooldownConfig, ModelConfig};
use crate::limits::RateLimits;
use crate::metrics::UpstreamMetrics;
use crate::policy::{Aimd, Cooldown, FailureKind};
use crate::sync::lock;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The concurrency limit of a model without `limits.max_concurrency`.
const UNLIMITED_CONCURRENCY: usize = 1024;

/// A model's concurrency maximum (`limits.max_concurrency`), where its adaptive limit
/// starts and returns to.
pub(crate) fn max_concurrency(m: &ModelConfig) -> usize {
    m.limits.max_concurrency.unwrap_or(UNLIMITED_CONCURRENCY)
}

pub struct ModelState {
    aimd: Mutex<Aimd>,
    slot_freed: tokio::sync::Notify,
    cooldown: Mutex<Cooldown>,
    rate: Mutex<RateLimits>,
    pub metrics: UpstreamMetrics,
}

impl ModelState {
    pub(crate) fn new(m: &ModelConfig, now: Instant) -> Self {
        let s = ModelState {
            aimd: Mutex::new(Aimd::new(UNLIMITED_CONCURRENCY)),
            slot_freed: tokio::sync::Notify::new(),
            cooldown: Mutex::new(Cooldown::default()),
            rate: Mutex::new(RateLimits::default()),
            metrics: Default::default(),
        };
        s.configure(m, now);
        s
    }

    /// Takes the model's limits (at start and on reload), keeping requests in flight.
    pub(crate) fn configure(&self, m: &ModelConfig, now: Instant) {
        let mut a = lock(&self.aimd);
        let in_flight = a.in_flight;
        *a = Aimd::new(max_concurrency(m));
        a.in_flight = in_flight;
        *lock(&self.rate) = RateLimits::new(m.limits.rpm, m.limits.tpm, now);
    }

    /// Waits up to `wait` for a slot under the adaptive limit.
    pub(crate) async fn acquire(self: &Arc<Self>, wait: Duration) -> Option<Permit> {
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

    /// The upstream's RPM/TPM: reserves a request and `tokens`, or says how long to wait.
    pub(crate) fn reserve(&self, tokens: f64, now: Instant) -> Result<(), Duration> {
        lock(&self.rate).reserve(tokens, now)
    }

    pub(crate) fn settle(&self, reserved: f64, actual: f64, now: Instant) {
        lock(&self.rate).settle(reserved, actual, now)
    }

    /// Time left cooling down, if the model is.
    pub(crate) fn cooling(&self, now: Instant) -> Option<Duration> {
        lock(&self.cooldown).remaining(now)
    }

    /// Records a failed attempt; true when it started a cooldown. `count`: the failure
    /// counts toward the cooldown.
    pub(crate) fn failed(
        &self,
        kind: &FailureKind,
        cd: &CooldownConfig,
        now: Instant,
        count: bool,
    ) -> bool {
        self.metrics.error(&kind.class());
        if kind.is_overload() {
            lock(&self.aimd).on_overload();
        }
        let cooled = count && lock(&self.cooldown).failure(cd, now);
        if cooled {
            UpstreamMetrics::inc(&self.metrics.cooldowns);
        }
        cooled
    }

    pub(crate) fn succeeded(&self) {
        lock(&self.aimd).on_success();
        lock(&self.cooldown).success();
    }

    /// Takes the adaptive limit every gateway replica shares (from Redis).
    pub(crate) fn set_shared_limit(&self, limit: f64) {
        lock(&self.aimd).set_limit(limit);
        self.slot_freed.notify_waiters();
    }

    pub fn adaptive_limit(&self) -> usize {
        lock(&self.aimd).limit()
    }

    pub fn in_flight(&self) -> usize {
        lock(&self.aimd).in_flight
    }
}

/// A slot under a model's concurrency limit; freed on drop.
pub(crate) struct Permit(Arc<ModelState>);

impl Drop for Permit {
    fn drop(&mut self) {
        lock(&self.0.aimd).release();
        self.0.slot_freed.notify_one();
    }
}
