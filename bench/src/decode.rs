//! `novastack bench decode`: decode throughput of the CPU backend on a real model
//! (`--model FILE.gguf` or a Hugging Face folder, weights kept as stored unless
//! `--cpu-weights f32`) or on a model of a given shape (random f32 weights), dense or
//! mixture-of-experts, beside the memory-bandwidth bound measured in the same run. The
//! bound counts the bytes a step actually reads, as the weights are stored: every matrix
//! of a dense model; for a MoE model the non-expert weights plus the experts the batch's
//! tokens chose in that step (each once), plus the KV cache.

use anyhow::{bail, Result};
use clap::Args;
use novastack_kernels::{CpuBackend, MoeScoring};
use novastack_models::random::RandomSource;
use novastack_models::{
    Architecture, BoxedModel, CausalLm, Dtype, ForwardInput, Llama, ModelConfig, MoeConfig,
    MoeNaming, QkNorm, RopeScaling,
};
use rayon::prelude::*;
use std::path::PathBuf;
use std::time::Instant;

/// Defaults are SmolLM2-135M's shape.
#[derive(Args, Debug)]
pub struct DecodeArgs {
    /// A real model (a `.gguf` file or a Hugging Face folder) instead of a random one of
    /// the shape below (the shape flags are then ignored).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// `native`: weights kept in the file's precision; `f32`: widened at load.
    #[arg(long, default_value = "native", value_parser = ["native", "f32"])]
    pub cpu_weights: String,
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batch: Vec<usize>,
    /// Timed decode steps per batch size.
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Tokens already in each sequence's cache when decoding starts.
    #[arg(long, default_value_t = 128)]
    pub context: usize,
    #[arg(long, default_value_t = 576)]
    pub hidden: usize,
    #[arg(long, default_value_t = 30)]
    pub layers: usize,
    #[arg(long, default_value_t = 9)]
    pub heads: usize,
    #[arg(long, default_value_t = 3)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 1536)]
    pub ffn: usize,
    #[arg(long, default_value_t = 49152)]
    pub vocab: usize,
    /// Routed experts per layer (0: a dense model). Qwen3-30B-A3B's shape scaled to this
    /// machine: `--experts 128 --top-k 8 --hidden 512 --expert-ffn 192 --heads 8
    /// --kv-heads 1 --layers 12 --vocab 151936`.
    #[arg(long, default_value_t = 0)]
    pub experts: usize,
    /// Experts each token runs through.
    #[arg(long, default_value_t = 8)]
    pub top_k: usize,
    /// Width of each expert's MLP (`moe_intermediate_size`).
    #[arg(long, default_value_t = 192)]
    pub expert_ffn: usize,
}

/// KV block size of the benchmarks.
pub const BLOCK: usize = 16;

/// Best-of-3 read bandwidth (bytes/s) summing a 1 GiB buffer on all threads. Sixteen
/// independent accumulators, so that the sum vectorizes and memory, not the latency of
/// one chain of dependent adds, is the limit (one chain measured 9.2 GB/s on this
/// machine, below what a MoE decode step reads).
fn read_bandwidth() -> f64 {
    let buf = vec![1.0f32; 1 << 28];
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let s: f32 = buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0f32; 16];
                for b in c.chunks_exact(16) {
                    for (a, v) in acc.iter_mut().zip(b) {
                        *a += v;
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum();
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(s);
        best = best.max((buf.len() * 4) as f64 / secs);
    }
    best
}

pub fn run(a: DecodeArgs) -> Result<()> {
    if a.heads == 0
        || a.kv_heads == 0
        || !a.heads.is_multiple_of(a.kv_heads)
        || !a.hidden.is_multiple_of(a.heads)
    {
        bail!("heads must divide hidden and be a multiple of kv_heads");
    }
    if a.experts > 0 && (a.top_k == 0 || a.top_k > a.experts) {
        bail!("--top-k must be in 1..=--experts");
    }
    let max_batch = a.batch.iter().copied().max().unwrap_or(1);
    tracing::info!("measuring memory bandwidth...");
    let bw = read_bandwidth();
    let native = a.cpu_weights == "native";
    let (model, what): (BoxedModel<CpuBackend>, String) = match &a.model {
        Some(path) => {
            tracing::info!("loading {}...", path.display());
            let backend = CpuBackend::new().with_native_weights(native);
            let lm = novastack_models::load_model(path, backend)
                .map_err(|e| anyhow::anyhow!("cannot load {}: {e}", path.display()))?;
            (
                lm.model,
                format!("{}, {} weights", path.display(), a.cpu_weights),
            )
        }
        None => random_model(&a)?,
    };
    if a.context + a.steps + 1 > model.max_positions() {
        bail!(
            "--context {} + --steps {} exceeds the model's {} positions",
            a.context,
            a.steps,
            model.max_positions()
        );
    }
    let params = model.parameters();
    let threads = rayon::current_num_threads();
    println!(
        "decode benchmark: {what}, context {}, {threads} threads",
        a.context
    );
    println!(
        "parameters: {:.1}M total, {:.1}M active per token",
        params.total as f64 / 1e6,
        params.active_per_token as f64 / 1e6
    );
    println!(
        "memory read bandwidth (measured, {threads} threads): {:.1} GB/s",
        bw / 1e9
    );
    println!(
        "{:>6} {:>10} {:>12} {:>12} {:>14} {:>8}",
        "batch", "ms/step", "tokens/s", "MB read/step", "bound tok/s", "ratio"
    );
    let vocab = model.vocab_size();
    let blocks_per_seq = (a.context + a.steps).div_ceil(BLOCK);
    for &b in &a.batch {
        if b == 0 || b > max_batch {
            continue;
        }
        let mut cache = model.new_kv_cache(b * blocks_per_seq, BLOCK)?;
        let tables: Vec<Vec<u32>> = (0..b)
            .map(|s| {
                (0..blocks_per_seq)
                    .map(|i| (s * blocks_per_seq + i) as u32)
                    .collect()
            })
            .collect();
        let step = |lens: &[usize], new: usize| synthetic_step(lens, new, &tables, vocab);
        let mut lens = vec![0usize; b];
        model.forward(&step(&lens, a.context), &mut cache)?;
        lens.iter_mut().for_each(|l| *l = a.context);
        let read_before = model.parameters_read()?;
        let bytes_before = model.weight_bytes_read()?;
        let t = Instant::now();
        for _ in 0..a.steps {
            let logits = model.forward(&step(&lens, 1), &mut cache)?;
            std::hint::black_box(&logits);
            lens.iter_mut().for_each(|l| *l += 1);
        }
        let secs = t.elapsed().as_secs_f64();
        let read = model.parameters_read()? - read_before;
        let tps = (b * a.steps) as f64 / secs;
        let avg_ctx = a.context as f64 + a.steps as f64 / 2.0;
        let kv_read = b as f64 * avg_ctx * model.kv_bytes_per_token(Dtype::F32) as f64;
        // Weight bytes read per step as stored (f32 where the backend does not say),
        // averaged over the timed steps.
        let read_bytes = match (bytes_before, model.weight_bytes_read()?) {
            (Some(before), Some(after)) => (after - before) as f64,
            _ => read as f64 * 4.0,
        };
        let weight_bytes = read_bytes / a.steps.max(1) as f64;
        let bound = b as f64 * bw / (weight_bytes + kv_read);
        println!(
            "{:>6} {:>10.1} {:>12.1} {:>12.1} {:>14.1} {:>8.2}",
            b,
            secs * 1e3 / a.steps as f64,
            tps,
            (weight_bytes + kv_read) / 1e6,
            bound,
            tps / bound
        );
        if tps > bound {
            println!(
                "       ^ faster than the bound: the bandwidth probe measured too little (or \
                 the bytes a step reads were over-counted); this ratio is not to be trusted"
            );
        }
    }
    Ok(())
}

/// A random model of the flags' shape (f32 weights).
fn random_model(a: &DecodeArgs) -> Result<(BoxedModel<CpuBackend>, String)> {
    let mut config = llama_shape(
        a.hidden,
        a.ffn,
        a.layers,
        a.heads,
        a.kv_heads,
        a.vocab,
        a.context + a.steps + 1,
        true,
    );
    if a.experts > 0 {
        make_qwen3_moe(&mut config, a.experts, a.top_k, a.expert_ffn);
    }
    tracing::info!("building a random model...");
    // Router weights random like the rest, so tokens spread over the experts.
    let model = Llama::load(config, &RandomSource::new(0, 0.02), CpuBackend::new())?;
    let shape = if a.experts > 0 {
        format!(
            "{} experts top-{} expert ffn {}",
            a.experts, a.top_k, a.expert_ffn
        )
    } else {
        format!("ffn {}", a.ffn)
    };
    let what = format!(
        "random f32 weights, hidden {} layers {} heads {}/{} {shape} vocab {}",
        a.hidden, a.layers, a.heads, a.kv_heads, a.vocab
    );
    Ok((Box::new(model), what))
}

/// Turns a [`llama_shape`] config into Qwen3-MoE's: every layer sparse, `experts` routed
/// experts of width `expert_ffn`, softmax top-`top_k` renormalized; shared by `bench
/// decode` and `gpu-check`'s MoE run.
pub fn make_qwen3_moe(c: &mut ModelConfig, experts: usize, top_k: usize, expert_ffn: usize) {
    c.architecture = Architecture::Qwen3Moe;
    c.moe = Some(MoeConfig {
        shared_intermediate: None,
        num_experts: experts,
        top_k,
        expert_intermediate: expert_ffn,
        scoring: MoeScoring::Softmax,
        renormalize: true,
        routed_scale: 1.0,
        correction_bias: false,
        sparse_layers: vec![true; c.num_layers],
        naming: MoeNaming::Qwen,
        group_limit: None,
    });
}

/// A Llama-shaped config (default RoPE, no biases, no sliding window) for benchmarks
/// with random weights; shared by `bench decode` and `gpu-check`.
#[allow(clippy::too_many_arguments)]
pub fn llama_shape(
    hidden: usize,
    ffn: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    vocab: usize,
    max_positions: usize,
    tie_word_embeddings: bool,
) -> ModelConfig {
    ModelConfig {
        mla: None,
        architecture: Architecture::Llama,
        hidden_size: hidden,
        intermediate_size: ffn,
        num_layers: layers,
        num_heads: heads,
        num_kv_heads: kv_heads,
        head_dim: hidden / heads,
        vocab_size: vocab,
        rms_norm_eps: 1e-5,
        rope_theta: 500000.0,
        rope_scaling: RopeScaling::None,
        max_position_embeddings: max_positions,
        tie_word_embeddings,
        qkv_bias: false,
        o_bias: false,
        mlp_bias: false,
        qk_norm: QkNorm::None,
        rotary_dim: hidden / heads,
        moe: None,
        sliding_window: vec![None; layers],
        dtype: None,
        bos_token_id: None,
        eos_token_ids: vec![],
    }
}

/// One benchmark step: `new` deterministic tokens for each sequence at its length
/// `lens[s]`, over block table `tables[s]` (blocks of [`BLOCK`] tokens).
pub fn synthetic_step(
    lens: &[usize],
    new: usize,
    tables: &[Vec<u32>],
    vocab: usize,
) -> ForwardInput {
    let mut inp = ForwardInput::default();
    for (s, &len) in lens.iter().enumerate() {
        let toks: Vec<u32> = (len..len + new)
            .map(|p| ((p * 7919 + s * 104729) % vocab) as u32)
            .collect();
        inp.push_seq(&toks, len, tables[s].clone(), BLOCK, true);
    }
    inp
}
