//! `gpu-check`'s mixture-of-experts decode run: a Qwen3-30B-A3B-shaped model with random
//! weights, each batch decoded three ways on the same backend:
//! - **graphs**: the router's choices grouped on the device (`moe_align`), the expert
//!   GEMMs over that grouping (`moe_gemm`), every step replayed from a captured graph;
//! - **eager, device grouping**: the same kernels, launched one by one;
//! - **eager, host grouping**: the choices copied back once per layer and grouped on the
//!   host, one vendor GEMM per expert (what every MoE step did before device grouping).
//!
//! On a GPU each way is timed against the bound of the bytes its steps read (the
//! non-expert weights and the experts the batch chose, counted on the device, plus the
//! KV cache). Everywhere the three ways' greedy ids are compared with the graphs'; on
//! the simulated device, whose GEMMs are batch-invariant, graphs and eager device
//! grouping must agree bit for bit (a check), and a tiny shape stands in for the real
//! one (it checks, it does not time).

use anyhow::Result;
use novastack_bench::decode::{llama_shape, make_qwen3_moe, synthetic_step, BLOCK};
use novastack_kernels::conformance::Check;
use novastack_kernels::gpu::{Device, GpuBackend, DEVICE_GROUPING_ROWS};
use novastack_kernels::Backend;
use novastack_models::random::RandomSource;
use novastack_models::{CausalLm, Llama, ModelConfig, QkNorm};
use std::time::Instant;

/// The model's shape.
pub struct MoeShape {
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub experts: usize,
    pub top_k: usize,
    pub expert_ffn: usize,
    pub layers: usize,
    pub vocab: usize,
}

impl MoeShape {
    /// Qwen3-30B-A3B, `layers` of its 48.
    pub fn qwen3_30b_a3b(layers: usize) -> MoeShape {
        MoeShape {
            hidden: 2048,
            heads: 32,
            kv_heads: 4,
            head_dim: 128,
            experts: 128,
            top_k: 8,
            expert_ffn: 768,
            layers,
            vocab: 151936,
        }
    }

    /// A shape the simulated device runs in seconds.
    pub fn tiny() -> MoeShape {
        MoeShape {
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            head_dim: 16,
            experts: 16,
            top_k: 4,
            expert_ffn: 32,
            layers: 2,
            vocab: 256,
        }
    }

    fn config(&self, max_positions: usize) -> ModelConfig {
        let mut c = llama_shape(
            self.hidden,
            self.hidden,
            self.layers,
            self.heads,
            self.kv_heads,
            self.vocab,
            max_positions,
            false,
        );
        make_qwen3_moe(&mut c, self.experts, self.top_k, self.expert_ffn);
        c.head_dim = self.head_dim;
        c.rotary_dim = self.head_dim;
        c.qk_norm = QkNorm::PerHead;
        c
    }
}

/// One way of running the decode steps.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Graphs,
    EagerDevice,
    EagerHost,
}

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Graphs => "graphs",
            Way::EagerDevice => "eager, device grouping",
            Way::EagerHost => "eager, host grouping",
        }
    }

    fn set<D: Device>(self, b: &GpuBackend<D>) {
        b.set_graphs(self == Way::Graphs);
        b.set_moe_device_grouping_rows(if self == Way::EagerHost {
            0
        } else {
            DEVICE_GROUPING_ROWS
        });
    }
}

/// What one way's run gave.
struct Run {
    secs_per_step: f64,
    /// Parameters read per step (weights), averaged.
    params_per_step: f64,
    experts_per_layer: f64,
    ids: Vec<Vec<u32>>,
}

/// Decodes `steps` steps of `batch` sequences after a `prompt_len` prefill, one way.
fn run_way<D: Device>(
    model: &Llama<GpuBackend<D>>,
    shape: &MoeShape,
    way: Way,
    batch: usize,
    prompt_len: usize,
    steps: usize,
) -> Result<Run> {
    way.set(model.backend());
    let per_seq = (prompt_len + steps + 2).div_ceil(BLOCK);
    let mut cache = model.new_kv_cache(batch * per_seq, BLOCK)?;
    let tables: Vec<Vec<u32>> = (0..batch)
        .map(|s| (0..per_seq).map(|i| (s * per_seq + i) as u32).collect())
        .collect();
    let vocab = shape.vocab;
    let per_chunk = (8192 / prompt_len.max(1)).max(1);
    for chunk in (0..batch).step_by(per_chunk) {
        let end = (chunk + per_chunk).min(batch);
        let zeros = vec![0; end - chunk];
        model.forward_greedy(
            &synthetic_step(&zeros, prompt_len, &tables[chunk..end], vocab),
            &mut cache,
        )?;
    }
    let mut lens = vec![prompt_len; batch];
    // Warm-up: the eager step and the capture of its graph, where graphs are on.
    let mut ids =
        vec![model.forward_greedy(&synthetic_step(&lens, 1, &tables, vocab), &mut cache)?];
    lens.iter_mut().for_each(|l| *l += 1);
    let read_before = model.parameters_read()?;
    let experts_before = Backend::moe_experts_read(model.backend())?;
    let t = Instant::now();
    for _ in 0..steps {
        ids.push(model.forward_greedy(&synthetic_step(&lens, 1, &tables, vocab), &mut cache)?);
        lens.iter_mut().for_each(|l| *l += 1);
    }
    let secs = t.elapsed().as_secs_f64();
    let steps = steps.max(1) as f64;
    let experts = Backend::moe_experts_read(model.backend())? - experts_before;
    Ok(Run {
        secs_per_step: secs / steps,
        params_per_step: (model.parameters_read()? - read_before) as f64 / steps,
        experts_per_layer: experts as f64 / steps / shape.layers.max(1) as f64,
        ids,
    })
}

/// The three ways at each batch size: table rows, and (on the simulated device) the
/// check that graphs and eager device grouping agree.
pub fn moe_decode<D: Device>(
    backend: GpuBackend<D>,
    shape: &MoeShape,
    batches: &[usize],
    prompt_len: usize,
    steps: usize,
    timed: bool,
) -> Result<(Vec<String>, Vec<Check>)> {
    let dtype = backend.dtype;
    let bw = if timed {
        backend.copy_bandwidth(1 << 30)?
    } else {
        0.0
    };
    let config = shape.config(prompt_len + steps + 2);
    let kv_per_token = (2 * shape.layers * shape.kv_heads * shape.head_dim * dtype.bytes(1)) as f64;
    let model = Llama::load(config, &RandomSource::new(0, 0.02), backend)?;
    let p = model.parameters();
    let mut rows = vec![format!(
        "MoE decode, Qwen3-MoE shape (hidden {}, {} experts top-{}, expert ffn {}, {} layers), {dtype}, \
         prompt {prompt_len}: {:.1}M parameters, {:.1}M active per token{}",
        shape.hidden,
        shape.experts,
        shape.top_k,
        shape.expert_ffn,
        shape.layers,
        p.total as f64 / 1e6,
        p.active_per_token as f64 / 1e6,
        if timed {
            format!(", copy bandwidth {:.2} TB/s", bw / 1e12)
        } else {
            String::new()
        }
    )];
    rows.push(format!(
        "{:>6} {:<24} {:>10} {:>10} {:>14} {:>9} {:>12}",
        "batch", "way", "ms/step", "tokens/s", "experts/layer", "of bound", "ids as graphs"
    ));
    let mut checks = Vec::new();
    for &batch in batches {
        let mut graph_ids: Option<Vec<Vec<u32>>> = None;
        for way in [Way::Graphs, Way::EagerDevice, Way::EagerHost] {
            let r = run_way(&model, shape, way, batch, prompt_len, steps)?;
            let same = match &graph_ids {
                None => {
                    graph_ids = Some(r.ids.clone());
                    None
                }
                Some(g) => Some((
                    g.iter()
                        .flatten()
                        .zip(r.ids.iter().flatten())
                        .filter(|(a, b)| a == b)
                        .count(),
                    g.iter().map(Vec::len).sum::<usize>(),
                )),
            };
            if let (Some((same, total)), Way::EagerDevice, false) = (same, way, timed) {
                checks.push(Check {
                    name: format!("MoE decode batch {batch}: graphs = eager ({same}/{total} ids)"),
                    err: (total - same) as f64,
                    tol: 0.0,
                });
            }
            let ctx = prompt_len as f64 + steps as f64 / 2.0;
            let bytes =
                r.params_per_step * dtype.bytes(1) as f64 + batch as f64 * ctx * kv_per_token;
            let (ms, tps, of_bound) = if timed {
                let bound = bytes / bw;
                (
                    format!("{:.2}", r.secs_per_step * 1e3),
                    format!("{:.0}", batch as f64 / r.secs_per_step),
                    format!("{:.0}%", 100.0 * bound / r.secs_per_step),
                )
            } else {
                ("-".into(), "-".into(), "-".into())
            };
            rows.push(format!(
                "{:>6} {:<24} {:>10} {:>10} {:>14.1} {:>9} {:>12}",
                batch,
                way.name(),
                ms,
                tps,
                r.experts_per_layer,
                of_bound,
                same.map_or("-".into(), |(s, t)| format!("{s}/{t}"))
            ));
        }
    }
    model.backend().set_graphs(true);
    model
        .backend()
        .set_moe_device_grouping_rows(DEVICE_GROUPING_ROWS);
    Ok((rows, checks))
}
