//! `--device`: loads a model on the CPU, a CUDA GPU, a HIP GPU or the simulated GPU
//! device (`sim`, which runs the GPU backend and the HIP kernels on the host) and hands
//! it to a job
//! that is generic over the backend, so `serve`, `generate` and `bench offline` share
//! one device switch (and one set of messages for builds without a GPU feature).

use crate::engine_args::EngineArgs;
use anyhow::{bail, Context, Result};
use novastack_kernels::vendor::sim::{Branch, SimBackend, SimOptions};
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
        "cpu" => {
            let native = engine.cpu_weights == crate::engine_args::CpuWeights::Native;
            let backend = CpuBackend::new().with_native_weights(native);
            let lm = load_model(path, backend).with_context(ctx)?;
            kv_cache_fits_host_memory(engine)?;
            job.run(lm, None)
        }
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
        "sim" => {
            use novastack_models::CausalLm;
            let dtype = gpu_dtype(engine)?;
            let backend = SimBackend::new(sim_options(engine.sim_warp, &engine.sim_vendor)?, dtype)?;
            backend.set_graphs(!engine.enforce_eager);
            tracing::info!("{} ({}), {dtype} storage", backend.info().name, backend.info().arch);
            let lm = load_model(path, backend).with_context(ctx)?;
            kv_cache_fits_host_memory(engine)?;
            // Host memory: the KV cache is sized by --kv-cache-mb, in the storage type.
            let per_block = lm.model.kv_bytes_per_token(dtype) * engine.block_size.max(1);
            let blocks = engine.kv_cache_bytes() / per_block.max(1);
            job.run(lm, Some(blocks))
        }
        other => bail!("--device {other:?}: use cpu, cuda, hip or sim"),
    }
}

/// `--kv-cache-mb` against the host memory left once the weights are loaded (the CPU
/// and the simulated device keep the KV cache in host memory), before anything is
/// allocated for it: a typo of 10,000,000 is an error naming the sizes, not a cache
/// that grows until the OOM killer ends the process. GPU devices size the KV cache
/// from the device's free memory instead (`--gpu-memory-utilization`).
fn kv_cache_fits_host_memory(engine: &EngineArgs) -> Result<()> {
    crate::host_memory::check_kv_cache_fits(
        engine.kv_cache_mb,
        crate::host_memory::available_bytes(),
    )
}

/// The simulated device of `--sim-warp` and `--sim-vendor`.
pub fn sim_options(warp: u32, vendor: &str) -> Result<SimOptions> {
    let options = match vendor {
        "amd" => SimOptions::amd(warp),
        "nvidia" => SimOptions::nvidia(),
        other => bail!("--sim-vendor {other:?}: use amd or nvidia"),
    };
    match (warp, options.branch) {
        (64 | 32, Branch::Amd) | (32, Branch::Nvidia) => Ok(options),
        (w, Branch::Amd) => bail!("--sim-warp {w}: use 64 (MI250) or 32"),
        (w, Branch::Nvidia) => bail!("--sim-warp {w}: NVIDIA warps are 32 lanes"),
    }
}

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
    backend.set_graphs(!engine.enforce_eager);
    tracing::info!(
        "decode graphs {}",
        if backend.graphs_enabled() {
            "on (--enforce-eager turns them off)"
        } else {
            "off"
        }
    );
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

    #[test]
    fn sim_flags_name_what_is_wrong() {
        assert_eq!(sim_options(64, "amd").unwrap().label(), "amd64");
        assert_eq!(sim_options(32, "amd").unwrap().label(), "amd32");
        assert_eq!(sim_options(32, "nvidia").unwrap().label(), "nvidia32");
        let e = sim_options(16, "amd").unwrap_err().to_string();
        assert!(e.contains("--sim-warp 16"), "{e}");
        let e = sim_options(64, "nvidia").unwrap_err().to_string();
        assert!(e.contains("NVIDIA warps are 32"), "{e}");
        let e = sim_options(64, "intel").unwrap_err().to_string();
        assert!(e.contains("--sim-vendor \"intel\""), "{e}");
    }

    fn args(device: &str) -> EngineArgs {
        Cli::parse_from(["x", "--device", device]).engine
    }

    /// Decode graphs are on unless `--enforce-eager` (vLLM's name) turns them off.
    #[test]
    fn enforce_eager_turns_decode_graphs_off() {
        assert!(!args("sim").enforce_eager);
        let e = Cli::parse_from(["x", "--device", "sim", "--enforce-eager"]).engine;
        assert!(e.enforce_eager);
    }

    #[test]
    fn unknown_and_missing_devices_fail_with_a_clear_message() {
        let p = Path::new("/nonexistent");
        let e = with_model(p, &args("tpu"), Probe).unwrap_err().to_string();
        assert!(e.contains("use cpu, cuda, hip or sim"), "{e}");
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
        let e = format!("{:#}", with_model(p, &args("sim"), Probe).unwrap_err());
        assert!(e.contains("/nonexistent"), "{e}");
    }

    /// A KV cache larger than the host memory is refused after the weights load and
    /// before the job (which would allocate it) runs.
    #[test]
    fn a_kv_cache_larger_than_memory_is_refused_before_the_job_runs() {
        let model =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/llama-f32");
        let fits = Cli::parse_from(["x", "--kv-cache-mb", "4"]).engine;
        assert_eq!(with_model(&model, &fits, Probe).unwrap().1, None);
        let huge = Cli::parse_from(["x", "--kv-cache-mb", "10000000"]).engine;
        let e = with_model(&model, &huge, Probe).unwrap_err().to_string();
        assert!(
            e.starts_with("--kv-cache-mb 10000000 (9.5 TiB) does not fit: ")
                && e.ends_with(" of memory available"),
            "{e}"
        );
    }
}
