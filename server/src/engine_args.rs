//! The engine sizing flags (vLLM's names) every command that runs a model shares, and
//! the engine built from them.

use anyhow::{bail, Result};
use clap::Args;
use novastack_engine::{Buckets, Engine, EngineConfig, SchedulerConfig, SchedulingPolicy};
use novastack_kernels::Backend;
use novastack_models::{BoxedModel, CausalLm, Dtype};

/// Engine sizing flags (vLLM's names).
#[derive(Args, Debug, Clone)]
pub struct EngineArgs {
    /// Most sequences in one step.
    #[arg(long, default_value_t = 64)]
    pub max_num_seqs: usize,
    /// Token budget per step (prefill chunks + decodes). Default: 512 on the CPU, where a
    /// step of 2,048 prompt tokens takes ~10 s on 2 cores and stalls every stream (in
    /// `scripts/compare_llamacpp.sh` runs, 256 / 512 / 1024 differed by less than the
    /// run-to-run noise); 2048 on a GPU.
    #[arg(long)]
    pub max_num_batched_tokens: Option<usize>,
    /// KV cache size in MiB (f32 keys and values on the CPU backend; `--gpu-dtype` on the
    /// simulated device).
    #[arg(long, default_value_t = 1024)]
    pub kv_cache_mb: usize,
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Context-length bucket boundaries, e.g. 512,2048,8192; `off` disables bucketing;
    /// `auto` is off on the CPU (its attention costs per token, so mixing lengths wastes
    /// nothing and bucketing only delays requests) and the engine's default boundaries (512, 2048, 8192, 32768, 131072) on a GPU
    /// (where a batch's attention time follows its longest context).
    #[arg(long, default_value = "auto")]
    pub buckets: String,
    /// Steps a request may go unserved before it is served first (aging).
    #[arg(long, default_value_t = 8)]
    pub max_wait_steps: u64,
    /// How steps are filled. Running decodes always get their token; prompts take the
    /// rest in `srpf` (shortest remaining prompt first; a prompt that arrived over 10 s
    /// ago goes oldest first, `srpf:5s` sets that age) or `fcfs` order, within the
    /// token budget (`-tokens`) or also a step time budget (`-time`: at most 4x the
    /// predicted time of the step's decodes alone, or `-time:R` for R x, `-time:150ms`
    /// for a fixed time). The budget gives way when waiting prompts would otherwise miss
    /// their first token 1 s after arrival (`-time:4:3s` sets that target, `:inf` turns
    /// it off). Step times come from a cost model learned from the measured steps, on
    /// any device.
    #[arg(long, default_value = "srpf-time")]
    pub scheduling_policy: SchedulingPolicy,
    /// `cpu`, `cuda` / `hip` for a GPU (needs a build with `--features cuda` / `hip`), or
    /// `sim`: the GPU backend on a simulated device that runs the HIP kernels on the CPU
    /// (needs a C++ compiler; slow, for checking the GPU code, not for serving).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// `--device cpu`: `native` keeps weights in the file's precision (bf16 / f16
    /// safetensors; GGUF's F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q6_K) and
    /// computes on them as stored, as llama.cpp does (quantized weights against 8-bit
    /// activations); `f32` widens every weight to f32 at load (the reference).
    #[arg(long, value_enum, default_value = "native")]
    pub cpu_weights: CpuWeights,
    /// `--device sim`: lanes per warp, 64 (MI250's wavefront) or 32.
    #[arg(long, default_value_t = 64)]
    pub sim_warp: u32,
    /// `--device sim`: the vendor branch of the kernels' compat.h, `amd` (at 64 or 32
    /// lanes) or `nvidia` (32 lanes).
    #[arg(long, default_value = "amd")]
    pub sim_vendor: String,
    /// GPU: fraction of the card's memory for weights and KV cache; the KV cache gets
    /// what the weights leave (replaces --kv-cache-mb).
    #[arg(long, default_value_t = 0.9)]
    pub gpu_memory_utilization: f64,
    /// GPU storage type for weights, activations and KV cache: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub gpu_dtype: String,
    /// GPU: run every step eagerly, kernel by kernel, instead of replaying decode steps
    /// from CUDA / HIP graphs captured per batch-size bucket (vLLM's flag).
    #[arg(long)]
    pub enforce_eager: bool,
}

/// `--cpu-weights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuWeights {
    Native,
    F32,
}

impl EngineArgs {
    /// The per-step token budget: the flag, else 512 on the CPU and 2048 on a GPU.
    pub fn token_budget(&self) -> usize {
        self.max_num_batched_tokens
            .unwrap_or(if self.device == "cpu" { 512 } else { 2048 })
            .max(1)
    }

    pub fn buckets(&self) -> Result<Buckets> {
        if self.buckets == "auto" {
            return Ok(if self.device == "cpu" {
                Buckets::off()
            } else {
                Buckets::new(Buckets::default_boundaries())
            });
        }
        Buckets::parse(&self.buckets).map_err(|e| anyhow::anyhow!("--{e}"))
    }

    /// Sizes the KV cache from `--kv-cache-mb`, which the CPU backend stores in f32.
    pub fn build<B: Backend>(&self, model: BoxedModel<B>, eos: Vec<u32>) -> Result<Engine<B>> {
        let per_block = model.kv_bytes_per_token(Dtype::F32) * self.block_size.max(1);
        self.build_with_blocks(model, eos, self.kv_cache_bytes() / per_block.max(1))
    }

    /// `--kv-cache-mb` in bytes (saturating: a huge value stays huge instead of
    /// wrapping to a small one).
    pub fn kv_cache_bytes(&self) -> usize {
        self.kv_cache_mb.saturating_mul(1 << 20)
    }

    /// [`EngineArgs::build_with_blocks`] when the device sized the KV cache
    /// (`crate::device::ModelJob`), else [`EngineArgs::build`].
    pub fn build_for<B: Backend>(
        &self,
        model: BoxedModel<B>,
        eos: Vec<u32>,
        kv_blocks: Option<usize>,
    ) -> Result<Engine<B>> {
        match kv_blocks {
            Some(n) => self.build_with_blocks(model, eos, n),
            None => self.build(model, eos),
        }
    }

    /// Like [`EngineArgs::build`] with the KV cache size given in blocks (GPU sizing).
    pub fn build_with_blocks<B: Backend>(
        &self,
        model: BoxedModel<B>,
        eos: Vec<u32>,
        num_blocks: usize,
    ) -> Result<Engine<B>> {
        let per_block = model.kv_bytes_per_token(Dtype::F32) * self.block_size.max(1);
        if num_blocks == 0 {
            bail!(
                "--kv-cache-mb {} holds no block of {} bytes",
                self.kv_cache_mb,
                per_block
            );
        }
        let max_model_len = model.max_positions();
        let scheduler = SchedulerConfig {
            max_num_batched_tokens: self.token_budget(),
            max_num_seqs: self.max_num_seqs.max(1),
            max_model_len,
            buckets: self.buckets()?,
            max_wait_steps: self.max_wait_steps,
            policy: self.scheduling_policy,
        };
        tracing::info!(
            "scheduling policy {}: {} sequences, {} tokens a step, {} KV blocks of {}",
            self.scheduling_policy,
            scheduler.max_num_seqs,
            scheduler.max_num_batched_tokens,
            num_blocks,
            self.block_size.max(1)
        );
        Ok(Engine::new(
            model,
            eos,
            EngineConfig {
                scheduler,
                num_blocks,
                block_size: self.block_size.max(1),
            },
        )?)
    }
}
