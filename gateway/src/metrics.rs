//! Per-upstream gateway metrics in Prometheus text format.

use novastack_metrics::{escape, write_head, write_histogram, write_sample, Histogram};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct UpstreamMetrics {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub fallbacks: AtomicU64,
    pub cooldowns: AtomicU64,
    pub successes: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
    /// Micro-dollars, so an atomic integer can hold it.
    pub cost_micro_usd: AtomicU64,
    pub errors: Mutex<BTreeMap<String, u64>>,
    pub latency: Mutex<Histogram>,
}

impl UpstreamMetrics {
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self, class: &str) {
        if let Ok(mut e) = self.errors.lock() {
            *e.entry(class.to_string()).or_default() += 1;
        }
    }

    pub fn success(&self, seconds: f64, prompt: usize, completion: usize, cost_usd: f64) {
        Self::inc(&self.successes);
        self.prompt_tokens
            .fetch_add(prompt as u64, Ordering::Relaxed);
        self.completion_tokens
            .fetch_add(completion as u64, Ordering::Relaxed);
        self.cost_micro_usd
            .fetch_add((cost_usd * 1e6).round() as u64, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            h.observe(seconds);
        }
    }
}

/// A model's row in the exposition: name, metrics, adaptive limit, in flight, cooling.
pub struct Row<'a> {
    pub name: &'a str,
    pub m: &'a UpstreamMetrics,
    pub limit: usize,
    pub in_flight: usize,
    pub cooling: bool,
}

pub fn render(out: &mut String, rows: &[Row]) {
    let lbl = |r: &Row| format!("model=\"{}\"", escape(r.name));
    type Get = fn(&Row) -> f64;
    let series: [(&str, &str, &str, Get); 11] = [
        (
            "gateway_upstream_requests_total",
            "Attempts sent to the upstream.",
            "counter",
            |r| r.m.requests.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_upstream_successes_total",
            "Requests the upstream completed.",
            "counter",
            |r| r.m.successes.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_upstream_retries_total",
            "Retries of the same upstream.",
            "counter",
            |r| r.m.retries.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_upstream_fallbacks_total",
            "Requests that fell back to this upstream.",
            "counter",
            |r| r.m.fallbacks.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_upstream_cooldowns_total",
            "Times this upstream was cooled down.",
            "counter",
            |r| r.m.cooldowns.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_upstream_cooling_down",
            "1 while the upstream is cooling down.",
            "gauge",
            |r| r.cooling as u8 as f64,
        ),
        (
            "gateway_upstream_adaptive_limit",
            "Current AIMD concurrency limit.",
            "gauge",
            |r| r.limit as f64,
        ),
        (
            "gateway_upstream_in_flight",
            "Requests in flight to the upstream.",
            "gauge",
            |r| r.in_flight as f64,
        ),
        (
            "gateway_upstream_cost_usd_total",
            "Cost of completed requests in USD.",
            "counter",
            |r| r.m.cost_micro_usd.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "gateway_upstream_prompt_tokens_total",
            "Prompt tokens of completed requests.",
            "counter",
            |r| r.m.prompt_tokens.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_upstream_completion_tokens_total",
            "Completion tokens of completed requests.",
            "counter",
            |r| r.m.completion_tokens.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, help, kind, get) in series {
        write_head(out, name, help, kind);
        for r in rows {
            write_sample(out, name, &lbl(r), get(r));
        }
    }
    write_head(
        out,
        "gateway_upstream_errors_total",
        "Failed attempts by class.",
        "counter",
    );
    for r in rows {
        if let Ok(e) = r.m.errors.lock() {
            for (class, n) in e.iter() {
                let labels = format!("{},class=\"{class}\"", lbl(r));
                write_sample(out, "gateway_upstream_errors_total", &labels, *n as f64);
            }
        }
    }
    let name = "gateway_upstream_latency_seconds";
    write_head(
        out,
        name,
        "Time from the first attempt to the end of completed requests.",
        "histogram",
    );
    for r in rows {
        let Ok(h) = r.m.latency.lock() else { continue };
        write_histogram(out, name, &lbl(r), &h);
    }
}

/// Shared state (Redis): reachable or not, and what happened while it was not.
pub(crate) fn render_state(out: &mut String, r: &crate::redis_state::RedisState) {
    let m = &r.metrics;
    let series: [(&str, &str, &str, f64); 4] = [
        (
            "gateway_state_redis_up",
            "1 while the shared state (Redis) answers.",
            "gauge",
            r.is_up() as u8 as f64,
        ),
        (
            "gateway_state_errors_total",
            "Redis calls that failed or timed out.",
            "counter",
            m.errors.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_state_local_decisions_total",
            "Limit decisions made on this process's own state while Redis was unreachable (on_error: open).",
            "counter",
            m.local_decisions.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_state_refused_total",
            "Requests refused because Redis was unreachable (on_error: closed).",
            "counter",
            m.refused.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, help, kind, v) in series {
        write_head(out, name, help, kind);
        write_sample(out, name, "", v);
    }
}

/// Replica pools: per replica, requests, failures, in flight, health, ejections.
pub(crate) fn render_pools(out: &mut String, pools: &[&crate::replica_pool::ReplicaPool]) {
    use crate::replica_pool::Replica;
    type Get = fn(&Replica) -> f64;
    let series: [(&str, &str, &str, Get); 6] = [
        (
            "gateway_replica_requests_total",
            "Attempts a replica answered.",
            "counter",
            |r| r.served.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_replica_failures_total",
            "Attempts on a replica that failed.",
            "counter",
            |r| r.failed.load(Ordering::Relaxed) as f64,
        ),
        (
            "gateway_replica_in_flight",
            "Requests in flight on a replica through this gateway.",
            "gauge",
            |r| r.in_flight() as f64,
        ),
        (
            "gateway_replica_queued",
            "Requests waiting in the replica's own queue (from its /metrics; least_loaded pools).",
            "gauge",
            |r| r.queued() as f64,
        ),
        (
            "gateway_replica_healthy",
            "1 while a replica is in its pool, 0 while ejected.",
            "gauge",
            |r| r.healthy() as u8 as f64,
        ),
        (
            "gateway_replica_ejections_total",
            "Times a replica was ejected (failed checks or requests).",
            "counter",
            |r| r.ejections.load(Ordering::Relaxed) as f64,
        ),
    ];
    for (name, help, kind, get) in series {
        write_head(out, name, help, kind);
        for p in pools {
            for r in &p.replicas {
                let labels = format!(
                    "model=\"{}\",replica=\"{}\"",
                    escape(&p.model),
                    escape(&r.url)
                );
                write_sample(out, name, &labels, get(r));
            }
        }
    }
}
