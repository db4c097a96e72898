//! `novastack bench offline`: many requests through the engine at once; throughput and
//! the batching shape's wasted work, with context-length buckets on and off.

use anyhow::{bail, Context, Result};
use clap::Args;
use novastack_engine::{run_batch, RequestParams, SamplingParams};
use novastack_kernels::Backend;
use novastack_models::{CausalLm, LoadedModel};
use novastack_server::device::{with_model, ModelJob};
use novastack_server::EngineArgs;
use rand::{Rng, SeedableRng};
use serde_json::json;

#[derive(Args, Debug)]
pub struct OfflineArgs {
    /// Model folder, .gguf file or `default`.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// `random`, or `trace:PATH` (Azure LLM inference CSV or ShareGPT/arXiv length CSV).
    #[arg(long, default_value = "random")]
    pub dataset: String,
    #[arg(long, default_value_t = 64)]
    pub num_prompts: usize,
    #[arg(long, default_value_t = 256)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 64)]
    pub random_output_len: usize,
    /// Multiply trace lengths by this (then fit to the context window).
    #[arg(long, default_value_t = 1.0)]
    pub length_scale: f64,
    /// Runs for each of these sequence limits.
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub concurrency: Vec<usize>,
    /// Also run with bucketing off, for comparison.
    #[arg(long)]
    pub compare_buckets: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub result_json: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// The run's requests: (input, output) lengths fitted to the model's context, and a
/// random prompt of each input length (ids from 100 up, below the vocabulary size).
fn workload(a: &OfflineArgs, max_len: usize, vocab: u32) -> Result<Workload> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let lens: Vec<(usize, usize)> = match a.dataset.strip_prefix("trace:") {
        Some(p) => {
            let all = crate::trace::read_trace(p)?;
            if all.is_empty() {
                bail!("{p}: no rows");
            }
            (0..a.num_prompts).map(|i| all[i % all.len()]).collect()
        }
        None if a.dataset == "random" => (0..a.num_prompts)
            .map(|_| {
                let i =
                    rng.random_range(a.random_input_len / 2..=a.random_input_len.max(1) * 3 / 2);
                let o =
                    rng.random_range(a.random_output_len / 2..=a.random_output_len.max(1) * 3 / 2);
                (i, o)
            })
            .collect(),
        None => bail!("--dataset must be `random` or `trace:PATH`"),
    };
    // Scale, then fit each request into the context window keeping its in/out ratio.
    let lens: Vec<(usize, usize)> = lens
        .into_iter()
        .map(|(i, o)| {
            let (mut i, mut o) = (
                (i as f64 * a.length_scale) as usize,
                (o as f64 * a.length_scale) as usize,
            );
            if i + o > max_len {
                let f = max_len as f64 / (i + o) as f64;
                i = (i as f64 * f) as usize;
                o = (o as f64 * f) as usize;
            }
            (i.max(1), o.max(1).min(max_len - i.max(1)))
        })
        .collect();
    let prompts: Vec<Vec<u32>> = lens
        .iter()
        .map(|&(i, _)| {
            (0..i)
                .map(|_| rng.random_range(100..vocab.max(101)))
                .collect()
        })
        .collect();
    Ok(Workload {
        lens,
        prompts,
        max_len,
    })
}

struct Workload {
    lens: Vec<(usize, usize)>,
    prompts: Vec<Vec<u32>>,
    max_len: usize,
}

/// One engine run of the workload on whatever device the model was loaded on. The
/// workload is made on the first run, from the loaded model's context and vocabulary.
struct Run<'a> {
    a: &'a OfflineArgs,
    ea: &'a EngineArgs,
    work: &'a mut Option<Workload>,
}

/// What a run measured.
struct Measured {
    secs: f64,
    out_tokens: usize,
    stats: novastack_engine::EngineStats,
}

impl ModelJob for Run<'_> {
    type Output = Measured;
    fn run<B: Backend + 'static>(
        self,
        lm: LoadedModel<B>,
        kv_blocks: Option<usize>,
    ) -> Result<Measured> {
        if self.work.is_none() {
            let (max_len, vocab) = (lm.model.max_positions(), lm.model.vocab_size() as u32);
            *self.work = Some(workload(self.a, max_len, vocab)?);
        }
        let work = self.work.as_ref().expect("made above");
        let mut engine = self.ea.build_for(lm.model, vec![], kv_blocks)?;
        let jobs = work
            .prompts
            .iter()
            .zip(&work.lens)
            .map(|(p, &(_, o))| {
                (
                    p.clone(),
                    RequestParams {
                        max_tokens: o,
                        sampling: SamplingParams::greedy(),
                        ignore_eos: true,
                        ..Default::default()
                    },
                )
            })
            .collect();
        let t = std::time::Instant::now();
        let results = run_batch(&mut engine, jobs, None);
        let secs = t.elapsed().as_secs_f64();
        let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
        if let Some(e) = errors.first() {
            bail!("{} requests failed, first: {e}", errors.len());
        }
        let out_tokens = results
            .iter()
            .flatten()
            .flatten()
            .map(|s| s.token_ids.len())
            .sum();
        Ok(Measured {
            secs,
            out_tokens,
            stats: engine.stats.clone(),
        })
    }
}

/// A histogram as JSON: its bucket bounds, per-bucket counts, sum and count.
fn hist_json(h: &novastack_engine::Histogram) -> serde_json::Value {
    json!({"bounds": h.bounds, "counts": h.counts, "sum": h.sum, "count": h.count})
}

pub fn run(a: OfflineArgs) -> Result<()> {
    let path = novastack_server::default_model::resolve(a.model.as_deref())?;
    let mut work: Option<Workload> = None;
    let mut runs = Vec::new();
    let bucket_modes: Vec<bool> = if a.compare_buckets {
        vec![true, false]
    } else {
        vec![a.engine.buckets()?.num_buckets() > 1]
    };
    for &conc in &a.concurrency {
        for &bucketed in &bucket_modes {
            let mut ea = a.engine.clone();
            ea.max_num_seqs = conc;
            if !bucketed {
                ea.buckets = "off".into();
            } else if ea.buckets == "auto" {
                // "On" means the GPU default boundaries (auto is off on the CPU).
                ea.buckets = novastack_engine::Buckets::default_boundaries()
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(",");
            }
            let job = Run {
                a: &a,
                ea: &ea,
                work: &mut work,
            };
            let Measured {
                secs,
                out_tokens,
                stats: st,
            } = with_model(&path, &ea, job)?;
            let lens = &work.as_ref().expect("made by the run").lens;
            let in_tokens: usize = lens.iter().map(|l| l.0).sum();
            let frac = |w: u64, u: u64| {
                if w + u == 0 {
                    0.0
                } else {
                    w as f64 / (w + u) as f64
                }
            };
            let r = json!({
                "max_num_seqs": conc,
                "buckets": if bucketed { ea.buckets.clone() } else { "off".into() },
                "num_requests": lens.len(),
                "elapsed_s": secs,
                "requests_per_s": lens.len() as f64 / secs,
                "output_tokens_per_s": out_tokens as f64 / secs,
                "total_tokens_per_s": (in_tokens + out_tokens) as f64 / secs,
                "input_tokens": in_tokens,
                "output_tokens": out_tokens,
                "steps": st.num_steps,
                "mean_batch_size": st.num_scheduled_seqs as f64 / st.num_steps.max(1) as f64,
                "wasted_kv_slot_fraction": frac(st.wasted_kv_slots, st.used_kv_slots),
                "wasted_query_slot_fraction": frac(st.wasted_query_slots, st.used_query_slots),
                "preemptions": st.num_preemptions,
                "prefix_hit_rate": st.prefix_hit_rate(),
                "scheduling_policy": ea.scheduling_policy.to_string(),
                "step_seconds": hist_json(&st.step_seconds),
                "step_prefill_tokens": hist_json(&st.step_prefill_tokens),
                "step_decode_tokens": hist_json(&st.step_decode_tokens),
                "step_cost": {"per_step_s": st.step_cost[0], "per_prefill_token_s": st.step_cost[1],
                              "per_decode_token_s": st.step_cost[2], "per_attention_pair_s": st.step_cost[3],
                              "mean_relative_error": st.step_cost_error},
            });
            // The header once the first run worked (a device error comes alone).
            if runs.is_empty() {
                println!(
                    "{:>5} {:>8} {:>8} {:>10} {:>10} {:>10} {:>8} {:>9} {:>10}",
                    "seqs",
                    "buckets",
                    "req/s",
                    "out tok/s",
                    "tot tok/s",
                    "mean batch",
                    "steps",
                    "kv waste",
                    "q waste"
                );
            }
            println!(
                "{:>5} {:>8} {:>8.2} {:>10.1} {:>10.1} {:>10.2} {:>8} {:>8.1}% {:>9.1}%",
                conc,
                if bucketed { "on" } else { "off" },
                r["requests_per_s"].as_f64().unwrap_or(0.0),
                r["output_tokens_per_s"].as_f64().unwrap_or(0.0),
                r["total_tokens_per_s"].as_f64().unwrap_or(0.0),
                r["mean_batch_size"].as_f64().unwrap_or(0.0),
                st.num_steps,
                100.0 * r["wasted_kv_slot_fraction"].as_f64().unwrap_or(0.0),
                100.0 * r["wasted_query_slot_fraction"].as_f64().unwrap_or(0.0),
            );
            println!(
                "      steps: {:.1} ms mean, prefill {:.1} / decode {:.1} tokens mean; learned step cost {:.2} ms + {:.3} ms/prefill token + {:.3} ms/decode + {:.2e} s/attention pair (mean error {})",
                1e3 * st.step_seconds.sum / st.step_seconds.count.max(1) as f64,
                st.step_prefill_tokens.sum / st.step_prefill_tokens.count.max(1) as f64,
                st.step_decode_tokens.sum / st.step_decode_tokens.count.max(1) as f64,
                1e3 * st.step_cost[0],
                1e3 * st.step_cost[1],
                1e3 * st.step_cost[2],
                st.step_cost[3],
                st.step_cost_error
                    .map_or("n/a".to_string(), |e| format!("{:.1}%", 100.0 * e)),
            );
            println!(
                "      (for bench sim: --step-cost {},{},{},{})",
                st.step_cost[0], st.step_cost[1], st.step_cost[2], st.step_cost[3]
            );
            runs.push(r);
        }
    }
    if let Some(p) = &a.result_json {
        let doc = json!({
            "model": path.display().to_string(),
            "dataset": a.dataset,
            "num_prompts": a.num_prompts,
            "length_scale": a.length_scale,
            "max_model_len": work.as_ref().map(|w| w.max_len),
            "device": a.engine.device,
            "engine": {"max_num_batched_tokens": a.engine.token_budget(), "kv_cache_mb": a.engine.kv_cache_mb,
                       "block_size": a.engine.block_size, "buckets": a.engine.buckets, "max_wait_steps": a.engine.max_wait_steps},
            "runs": runs,
        });
        std::fs::write(p, serde_json::to_string_pretty(&doc)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    Ok(())
}
