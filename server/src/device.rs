//! `--device`: loads a model on the CPU, a CUDA GPU or a HIP GPU and hands it to a job
//! that is generic over the backend, so `serve`, `generate` and `bench offline` share
//! one device switch (and one set of messages for builds without a GPU feature).

use crate::engine_args::EngineArgs;
use anyhow::{bail, Context, Result};
use novastack_kernels::{Backend, CpuBackend};
use novastack_models::{load_model, LoadedModel};
use std::path::Path;

/// Work to do with a model once it is loaded: `kv_blocks` is the KV cache size the
/// device's free memory allows (`None` on the CPU, where `--kv-cache-mb` decides).
pub trait ModelJob {
    type Output;
    fn run<B: Backend + 'static>(
        self,
        lm: LoadedModel<B>,
        kv_blocks: Option<usize>,
    ) -> Result<Self::Output>
    where
        B::Buf: 'static;
}

/// Loads the model at `path` on `engine.device` and runs `job` with it.
pub fn with_model<J: ModelJob>(path: &Path, engine: &EngineArgs, job: J) -> Result<J::Output> {
    let ctx = || format!("cannot load model from {}", path.display());
    match engine.device.as_str() {
        "cpu" => job.run(load_model(path, CpuBackend::new()).with_context(ctx)?, None),
        #[cfg(feature = "cuda")]
        "cuda" => {
            let backend = novastack_kernels::vendor::cuda::CudaBackend::new(0, gpu_dtype(engine)?)?;
            let (lm, blocks) = load_on_gpu(path, engine, backend)?;
            job.run(lm, Some(blocks))
        }
        #[cfg(feature = "hip")]
        "hip" => {
            let backend = novastack_kernels::vendor::hip::HipBackend::new(0, gpu_dtype(engine)?)?;
            let (lm, blocks) = load_on_gpu(path, engine, backend)?;
            job.run(lm, Some(blocks))
        }
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!(
            "--device cuda needs a build with `--features cuda` (cargo build --release --features cuda)"
        ),
        #[cfg(not(feature = "hip"))]
        "hip" => bail!(
            "--device hip needs a build with `--features hip` (cargo build --release --features hip)"
        ),
        other => bail!("--device {other:?}: use cpu, cuda or hip"),
    }
}

#[cfg(any(feature = "cuda", feature = "hip"))]
fn gpu_dtype(engine: &EngineArgs) -> Result<novastack_kernels::Dtype> {
    novastack_kernels::Dtype::parse(&engine.gpu_dtype)
        .with_context(|| format!("--gpu-dtype {:?}: use bf16, f16 or f32", engine.gpu_dtype))
}

/// Uploads the weights to the GPU once and sizes the KV cache (in blocks) from what
/// they leave of `--gpu-memory-utilization`.
#[cfg(any(feature = "cuda", feature = "hip"))]
fn load_on_gpu<D: novastack_kernels::gpu::Device>(
    path: &Path,
    engine: &EngineArgs,
    backend: novastack_kernels::gpu::GpuBackend<D>,
) -> Result<(LoadedModel<novastack_kernels::gpu::GpuBackend<D>>, usize)> {
    use novastack_models::CausalLm;
    let info = backend.info().clone();
    let dtype = backend.dtype;
    let total = info.total_bytes as f64;
    let gib = |b: f64| b / (1u64 << 30) as f64;
    tracing::info!(
        "{} ({}, warp {}), {:.1} GiB",
        info.name,
        info.arch,
        info.warp,
        gib(total)
    );
    let lm = load_model(path, backend)
        .with_context(|| format!("cannot load model from {}", path.display()))?;
    let (free, _) = lm.model.backend().mem_info()?;
    let kv_dtype = dtype;
    let per_block = lm.model.kv_bytes_per_token(kv_dtype) * engine.block_size.max(1);
    let budget = total * engine.gpu_memory_utilization.clamp(0.05, 0.99) - (total - free as f64);
    if budget < per_block as f64 {
        bail!(
            "--gpu-memory-utilization {}: the weights leave no room for the KV cache ({:.2} GiB free of {:.2} GiB)",
            engine.gpu_memory_utilization,
            gib(free as f64),
            gib(total)
        );
    }
    let blocks = (budget / per_block as f64) as usize;
    tracing::info!(
        "KV cache: {blocks} blocks of {} tokens ({:.2} GiB)",
        engine.block_size,
        gib((blocks * per_block) as f64)
    );
    Ok((lm, blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use novastack_models::CausalLm;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        engine: EngineArgs,
    }

    struct Probe;
    impl ModelJob for Probe {
        type Output = (usize, Option<usize>);
        fn run<B: Backend + 'static>(
            self,
            lm: LoadedModel<B>,
            kv_blocks: Option<usize>,
        ) -> Result<Self::Output> {
            Ok((lm.model.vocab_size(), kv_blocks))
        }
    }

    fn args(device: &str) -> EngineArgs {
        Cli::parse_from(["x", "--device", device]).engine
    }

    #[test]
    fn unknown_and_missing_devices_fail_with_a_clear_message() {
        let p = Path::new("/nonexistent");
        let e = with_model(p, &args("tpu"), Probe).unwrap_err().to_string();
        assert!(e.contains("use cpu, cuda or hip"), "{e}");
        #[cfg(not(feature = "cuda"))]
        {
            let e = with_model(p, &args("cuda"), Probe).unwrap_err().to_string();
            assert!(e.contains("--features cuda"), "{e}");
        }
        #[cfg(not(feature = "hip"))]
        {
            let e = with_model(p, &args("hip"), Probe).unwrap_err().to_string();
            assert!(e.contains("--features hip"), "{e}");
        }
        let e = format!("{:#}", with_model(p, &args("cpu"), Probe).unwrap_err());
        assert!(e.contains("/nonexistent"), "{e}");
    }
}
