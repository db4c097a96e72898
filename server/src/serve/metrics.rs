//! Prometheus text exposition for `/metrics`: HTTP request counts by route and status,
//! and per model (label `model`) the engine's queue, KV, prefix-cache, token counters and
//! latency histograms.

use super::AppState;
use novastack_engine::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Responses by route and status code.
#[derive(Default)]
pub struct HttpMetrics {
    counts: Mutex<std::collections::HashMap<String, BTreeMap<u16, u64>>>,
}

impl HttpMetrics {
    pub fn record(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.counts.lock() {
            // No allocation once the route has been seen.
            match m.get_mut(route) {
                Some(by_status) => *by_status.entry(status).or_default() += 1,
                None => {
                    m.insert(route.to_string(), BTreeMap::from([(status, 1)]));
                }
            }
        }
    }

    /// Counts by (route, status), sorted.
    pub fn snapshot(&self) -> BTreeMap<(String, u16), u64> {
        let Ok(m) = self.counts.lock() else {
            return BTreeMap::new();
        };
        m.iter()
            .flat_map(|(r, by)| by.iter().map(move |(s, n)| ((r.clone(), *s), *n)))
            .collect()
    }
}

/// Middleware body shared by `serve` and the gateway: counts each response by its route
/// template (not the raw path, so ids do not explode the label set) and status.
pub async fn count_response(
    http: &HttpMetrics,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    http.record(&route, resp.status().as_u16());
    resp
}

/// `novastack_http_requests_total{route,status}`, HELP and TYPE included.
pub fn render_http(out: &mut String, http: &HttpMetrics) {
    let _ = writeln!(
        out,
        "# HELP novastack_http_requests_total HTTP responses by route and status code.\n# TYPE novastack_http_requests_total counter"
    );
    for ((route, status), n) in http.snapshot() {
        let _ = writeln!(
            out,
            "novastack_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
            escape(&route)
        );
    }
}

/// One histogram's bucket, sum and count lines (no HELP/TYPE) with `labels`.
pub fn write_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cum = 0;
    for (i, c) in h.counts.iter().enumerate() {
        cum += c;
        let le = h
            .bounds
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "novastack_{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(out, "novastack_{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "novastack_{name}_count{{{labels}}} {}", h.count);
}

/// Finished generations by finish reason (stop, length, abort, error).
#[derive(Default)]
pub struct ModelMetrics {
    finished: Mutex<BTreeMap<&'static str, u64>>,
}

impl ModelMetrics {
    pub fn finished(&self, reason: &'static str) {
        if let Ok(mut m) = self.finished.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }
}

pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(
            self.0,
            "# HELP novastack_{name} {help}\n# TYPE novastack_{name} {kind}"
        );
    }

    fn sample(&mut self, name: &str, labels: &str, v: f64) {
        let _ = writeln!(self.0, "novastack_{name}{{{labels}}} {v}");
    }

    fn histogram(&mut self, name: &str, labels: &str, h: &Histogram) {
        write_histogram(&mut self.0, name, labels, h);
    }
}

/// The whole `/metrics` page.
pub fn render(state: &AppState) -> String {
    let mut o = Out(String::new());
    render_http(&mut o.0, &state.http);
    let Some(reg) = state.registry() else {
        return o.0;
    };
    let models: Vec<_> = reg
        .models
        .iter()
        .map(|m| (format!("model=\"{}\"", escape(m.id())), m, m.engine.stats()))
        .collect();
    type Getter = fn(&novastack_engine::EngineStats) -> f64;
    let scalars: [(&str, &str, &str, Getter); 12] = [
        (
            "requests_waiting",
            "Requests waiting to be scheduled.",
            "gauge",
            |s| s.num_waiting as f64,
        ),
        ("requests_running", "Requests running.", "gauge", |s| {
            s.num_running as f64
        }),
        (
            "requests_preempted",
            "Requests preempted, waiting to recompute.",
            "gauge",
            |s| s.num_preempted as f64,
        ),
        ("kv_blocks_total", "KV cache blocks.", "gauge", |s| {
            s.kv_blocks_total as f64
        }),
        ("kv_blocks_used", "KV cache blocks in use.", "gauge", |s| {
            (s.kv_blocks_total - s.kv_blocks_free) as f64
        }),
        (
            "kv_usage_ratio",
            "Fraction of KV cache blocks in use.",
            "gauge",
            |s| {
                if s.kv_blocks_total == 0 {
                    0.0
                } else {
                    (s.kv_blocks_total - s.kv_blocks_free) as f64 / s.kv_blocks_total as f64
                }
            },
        ),
        (
            "prefix_cache_queries_total",
            "Full blocks looked up in the prefix cache.",
            "counter",
            |s| s.prefix_queried_blocks as f64,
        ),
        (
            "prefix_cache_hits_total",
            "Full blocks found in the prefix cache.",
            "counter",
            |s| s.prefix_hit_blocks as f64,
        ),
        ("preemptions_total", "Requests preempted.", "counter", |s| {
            s.num_preemptions as f64
        }),
        (
            "prompt_tokens_total",
            "Prompt tokens computed.",
            "counter",
            |s| s.num_prompt_tokens_computed as f64,
        ),
        (
            "generation_tokens_total",
            "Tokens generated.",
            "counter",
            |s| s.num_generated_tokens as f64,
        ),
        ("engine_steps_total", "Engine steps.", "counter", |s| {
            s.num_steps as f64
        }),
    ];
    for (name, help, kind, get) in scalars {
        o.head(name, help, kind);
        for (l, _, s) in &models {
            o.sample(name, l, get(s));
        }
    }
    o.head(
        "request_finished_total",
        "Finished generations (one per choice) by finish reason.",
        "counter",
    );
    for (l, m, _) in &models {
        if let Ok(f) = m.metrics.finished.lock() {
            for (reason, n) in f.iter() {
                o.sample(
                    "request_finished_total",
                    &format!("{l},finished_reason=\"{reason}\""),
                    *n as f64,
                );
            }
        }
    }
    type HGetter = fn(&novastack_engine::EngineStats) -> &Histogram;
    let hists: [(&str, &str, HGetter); 3] = [
        (
            "time_to_first_token_seconds",
            "Time from arrival to the first token.",
            |s| &s.ttft,
        ),
        (
            "inter_token_latency_seconds",
            "Time between consecutive tokens of a sequence.",
            |s| &s.itl,
        ),
        (
            "e2e_request_latency_seconds",
            "Time from arrival to the last token of a finished sequence.",
            |s| &s.e2e,
        ),
    ];
    for (name, help, get) in hists {
        o.head(name, help, "histogram");
        for (l, _, s) in &models {
            o.histogram(name, l, get(s));
        }
    }
    o.0
}
