//! Prometheus text exposition for `/metrics`: HTTP request counts by route and status,
//! and per model (label `model`) the engine's queue, KV, prefix-cache, token counters and
//! latency histograms.

use super::AppState;
use novastack_metrics::{escape, write_head, write_histogram, write_sample, Histogram};
use novastack_openai::http::render_http;
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Finished generations by finish reason (stop, length, abort, error), as the
/// collector sees them; `/metrics` adds the engine's cancelled sequences to `abort`.
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

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        write_head(&mut self.0, name, help, kind);
    }

    fn sample(&mut self, name: &str, labels: &str, v: f64) {
        write_sample(&mut self.0, name, labels, v);
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
    let scalars: [(&str, &str, &str, Getter); 13] = [
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
        (
            "kv_cache_bytes_per_token",
            "KV cache bytes per token over all layers, in the cache's storage type.",
            "gauge",
            |s| s.kv_bytes_per_token as f64,
        ),
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
            "Full prompt blocks looked up in the prefix cache (every one that could have come from it).",
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
    type AGetter = fn(&super::admission::Admission) -> usize;
    let admission: [(&str, &str, AGetter); 2] = [
        (
            "requests_admitted_waiting",
            "Sequences admitted and not yet started (what --max-waiting bounds).",
            |a| a.waiting(),
        ),
        (
            "requests_admitted_waiting_max",
            "The most sequences ever admitted and waiting at once.",
            |a| a.high_water(),
        ),
    ];
    for (name, help, get) in admission {
        o.head(name, help, "gauge");
        for (l, m, _) in &models {
            o.sample(name, l, get(&m.admission) as f64);
        }
    }
    o.head(
        "request_finished_total",
        "Finished generations (one per choice) by finish reason.",
        "counter",
    );
    for (l, m, s) in &models {
        // The collector counts what it sees finish; the engine counts the sequences it
        // cancelled because their client went away, which no collector sees.
        let mut finished = m
            .metrics
            .finished
            .lock()
            .map(|f| f.clone())
            .unwrap_or_default();
        *finished.entry("abort").or_default() += s.num_cancelled;
        for (reason, n) in &finished {
            o.sample(
                "request_finished_total",
                &format!("{l},finished_reason=\"{reason}\""),
                *n as f64,
            );
        }
    }
    type HGetter = fn(&novastack_engine::EngineStats) -> &Histogram;
    let hists: [(&str, &str, HGetter); 6] = [
        (
            "time_to_first_token_seconds",
            "Time from arrival at the engine to the end of the step that produced the first token.",
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
        (
            "step_duration_seconds",
            "Engine step time, from scheduling to tokens handed out.",
            |s| &s.step_seconds,
        ),
        (
            "step_prefill_tokens",
            "Prompt tokens computed per engine step (prefill chunks).",
            |s| &s.step_prefill_tokens,
        ),
        (
            "step_decode_tokens",
            "Decode tokens (one per running sequence) computed per engine step.",
            |s| &s.step_decode_tokens,
        ),
    ];
    for (name, help, get) in hists {
        o.head(name, help, "histogram");
        for (l, _, s) in &models {
            o.histogram(name, l, get(s));
        }
    }
    o.head(
        "model_parameters",
        "Model parameters: all of them (kind=total), and those one token runs through (kind=active_per_token: a mixture-of-experts model's non-expert weights and top-k experts per layer).",
        "gauge",
    );
    for (l, _, s) in &models {
        for (kind, v) in [
            ("total", s.model_parameters),
            ("active_per_token", s.model_active_parameters),
        ] {
            o.sample(
                "model_parameters",
                &format!("{l},kind=\"{kind}\""),
                v as f64,
            );
        }
    }
    o.head(
        "step_cost_seconds",
        "The scheduler's learned step cost model: seconds per step, per prefill token, per decode token and per attention (query x key) pair.",
        "gauge",
    );
    for (l, _, s) in &models {
        for (term, v) in ["step", "prefill_token", "decode_token", "attention_pair"]
            .iter()
            .zip(s.step_cost)
        {
            o.sample("step_cost_seconds", &format!("{l},term=\"{term}\""), v);
        }
    }
    o.0
}
