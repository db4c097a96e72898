//! `novastack gpu-check` (`--device cuda|hip` with that cargo feature, or `--device sim`
//! in any build, the simulated device): every GPU op against the CPU oracle
//! on random inputs of several shapes (outputs poisoned with NaN before each run), the
//! golden fixtures end to end on the GPU, then decode of a Llama-3-8B-shaped model with
//! random bf16 weights at several batch sizes against the weight-bandwidth bound, timing
//! the step the engine runs for greedy requests (`forward_greedy`: the argmax stays on
//! the device and only the ids come back), and decode of a Qwen3-30B-A3B-shaped MoE
//! model three ways (`gpu_moe_bench.rs`: graphs, eager with the router's choices grouped
//! on the device, eager with them grouped on the host). Prints
//! a short table last; exits non-zero when a check fails. Run by `scripts/gpu_check.sh`
//! on NVIDIA (`--device cuda`), and by users on AMD with `--device hip`.

use crate::gpu_moe_bench::{self, MoeShape};
use anyhow::{bail, Context, Result};
use clap::Args;
use novastack_engine::{generate, GenerateParams, SamplingParams};
use novastack_kernels::conformance::{self, Check};
use novastack_kernels::gpu::{Device, GpuBackend};
use novastack_kernels::Dtype;
use novastack_models::random::RandomSource;
use novastack_models::{load_model, CausalLm, Llama};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    /// cuda or hip (each needs its cargo feature), or sim: the simulated device, which
    /// runs the same kernels on the CPU (no decode benchmark there).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// `--device sim`: lanes per warp, 64 (MI250) or 32.
    #[arg(long, default_value_t = 64)]
    pub sim_warp: u32,
    /// `--device sim`: compat.h's `amd` or `nvidia` branch.
    #[arg(long, default_value = "amd")]
    pub sim_vendor: String,
    #[arg(long, default_value_t = 0)]
    pub device_index: usize,
    /// Golden fixture folders (each with golden.json).
    #[arg(long, default_value = "tests/fixtures/models")]
    pub fixtures: PathBuf,
    /// Batch sizes for the 8B-shaped decode benchmark (empty: skip it).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    pub batch: Vec<usize>,
    #[arg(long, default_value_t = 512)]
    pub prompt_len: usize,
    #[arg(long, default_value_t = 16)]
    pub steps: usize,
    /// Layers of the 8B shape (32; fewer for a quick run).
    #[arg(long, default_value_t = 32)]
    pub layers: usize,
    /// Layers of the Qwen3-30B-A3B-shaped MoE decode run (of 48; 0 skips it).
    #[arg(long, default_value_t = 4)]
    pub moe_layers: usize,
    /// Batch sizes of the MoE decode run.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub moe_batch: Vec<usize>,
}

/// Every op of the kernels' conformance table (`novastack_kernels::conformance`) on the
/// GPU against the CPU oracle: inputs rounded to the GPU's storage type, outputs
/// poisoned with NaN, one check per output.
fn ops<D: Device>(gpu: &GpuBackend<D>) -> Result<Vec<Check>> {
    Ok(conformance::check(gpu)?)
}

/// Opens the checked GPU with a storage type.
type Open<'a, D> = &'a dyn Fn(Dtype) -> Result<GpuBackend<D>>;

fn fixtures<D: Device>(args: &GpuCheckArgs, open: Open<D>, out: &mut Vec<Check>) -> Result<()> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&args.fixtures)
        .with_context(|| format!("cannot read {}", args.fixtures.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        let golden: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json"))?)?;
        let lm = load_model(&dir, open(Dtype::F32)?)?;
        let (mut same, mut total) = (0usize, 0usize);
        for case in golden["cases"].as_array().into_iter().flatten() {
            let prompt: Vec<u32> = serde_json::from_value(case["prompt_token_ids"].clone())?;
            let want: Vec<u32> = serde_json::from_value(case["greedy_token_ids"].clone())?;
            let params = GenerateParams {
                max_tokens: want.len(),
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            };
            let got = generate(&lm.model, &prompt, &[], &params, |_| {})?;
            total += want.len();
            same += got
                .token_ids
                .iter()
                .zip(&want)
                .take_while(|(a, b)| a == b)
                .count();
        }
        let name = dir
            .file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned());
        out.push(Check {
            name: format!("golden {name} (f32 on GPU): {same}/{total} greedy tokens"),
            err: (total - same) as f64,
            tol: 0.0,
        });
    }
    Ok(())
}

fn decode_bench<D: Device>(args: &GpuCheckArgs, open: Open<D>) -> Result<Vec<String>> {
    let (hidden, heads, kv_heads, ffn, vocab) = (4096, 32, 8, 14336, 128256);
    let hd = hidden / heads;
    let steps = args.steps.max(1);
    let config = novastack_bench::decode::llama_shape(
        hidden,
        ffn,
        args.layers,
        heads,
        kv_heads,
        vocab,
        args.prompt_len + steps + 1,
        false,
    );
    let backend = open(Dtype::Bf16)?;
    let bw = backend.copy_bandwidth(1 << 30)?;
    let per_layer = (hidden + 2 * kv_heads * hd) * hidden + hidden * hidden + 3 * ffn * hidden;
    let weight_bytes = ((per_layer * args.layers + 2 * vocab * hidden) * 2) as f64;
    eprintln!(
        "loading a random 8B-shaped model ({:.1} GB of bf16 weights)...",
        weight_bytes / 1e9
    );
    let model = Llama::load(config, &RandomSource::new(0, 0.02), backend)?;
    let mut rows = vec![format!(
        "decode, Llama-3-8B shape ({} layers), bf16, prompt {}: copy bandwidth {:.2} TB/s, weights {:.2} GB",
        args.layers,
        args.prompt_len,
        bw / 1e12,
        weight_bytes / 1e9
    )];
    rows.push(format!(
        "{:>6} {:>10} {:>12} {:>10}",
        "batch", "ms/step", "tokens/s", "of bound"
    ));
    use novastack_bench::decode::{synthetic_step, BLOCK};
    for &b in &args.batch {
        let per_seq = (args.prompt_len + steps + 1).div_ceil(BLOCK);
        let mut cache = model.new_kv_cache(b * per_seq, BLOCK)?;
        let tables: Vec<Vec<u32>> = (0..b)
            .map(|s| (0..per_seq).map(|i| (s * per_seq + i) as u32).collect())
            .collect();
        let step = |lens: &[usize], new: usize| synthetic_step(lens, new, &tables, vocab);
        // Prefill in chunks of at most 8192 tokens.
        let per_chunk = (8192 / args.prompt_len.max(1)).max(1);
        for chunk in (0..b).step_by(per_chunk) {
            let end = (chunk + per_chunk).min(b);
            let zeros = vec![0; end - chunk];
            model.forward_greedy(
                &synthetic_step(&zeros, args.prompt_len, &tables[chunk..end], vocab),
                &mut cache,
            )?;
        }
        let mut lens = vec![args.prompt_len; b];
        model.forward_greedy(&step(&lens, 1), &mut cache)?; // warm-up
        lens.iter_mut().for_each(|l| *l += 1);
        // What `Engine::step` runs for greedy requests: the argmax of each row on the
        // device and `b` ids back (which also waits for the step), not `b × vocab`
        // logits downloaded and converted on the host (66 MB at batch 256).
        let t = Instant::now();
        for _ in 0..steps {
            std::hint::black_box(model.forward_greedy(&step(&lens, 1), &mut cache)?);
            lens.iter_mut().for_each(|l| *l += 1);
        }
        let secs = t.elapsed().as_secs_f64() / steps as f64;
        let bound = weight_bytes / bw;
        rows.push(format!(
            "{:>6} {:>10.2} {:>12.0} {:>9.0}%",
            b,
            secs * 1e3,
            b as f64 / secs,
            100.0 * bound / secs
        ));
    }
    Ok(rows)
}

pub fn run(args: GpuCheckArgs) -> Result<()> {
    match args.device.as_str() {
        #[cfg(feature = "cuda")]
        "cuda" => check(&args, &|d| {
            Ok(novastack_kernels::vendor::cuda::CudaBackend::new(
                args.device_index,
                d,
            )?)
        }),
        #[cfg(feature = "hip")]
        "hip" => check(&args, &|d| {
            Ok(novastack_kernels::vendor::hip::HipBackend::new(
                args.device_index,
                d,
            )?)
        }),
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!("--device cuda needs a build with `--features cuda`"),
        #[cfg(not(feature = "hip"))]
        "hip" => bail!("--device hip needs a build with `--features hip`"),
        "sim" => {
            let options = novastack_server::device::sim_options(args.sim_warp, &args.sim_vendor)?;
            check(&args, &|d| {
                Ok(novastack_kernels::vendor::sim::SimBackend::new(
                    options.clone(),
                    d,
                )?)
            })
        }
        other => bail!("--device {other:?}: use cuda, hip or sim"),
    }
}

fn check<D: Device>(args: &GpuCheckArgs, open: Open<D>) -> Result<()> {
    let mut checks = Vec::new();
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let gpu = open(dtype)?;
        if dtype == Dtype::F32 {
            println!(
                "device: {} ({}), {:.1} GiB free",
                gpu.info().name,
                gpu.info().arch,
                gpu.info().free_bytes as f64 / (1u64 << 30) as f64
            );
        }
        checks.extend(ops(&gpu)?);
    }
    fixtures(args, open, &mut checks)?;
    let mut bench = if args.batch.is_empty() {
        Vec::new()
    } else if args.device == "sim" {
        vec!["decode benchmark: not on the simulated device (it checks, it does not time)".into()]
    } else {
        decode_bench(args, open)?
    };
    if args.device == "sim" {
        // A tiny MoE model decoded the three ways, untimed: graphs must equal eager.
        let (rows, moe_checks) =
            gpu_moe_bench::moe_decode(open(Dtype::F32)?, &MoeShape::tiny(), &[1, 3], 8, 4, false)?;
        checks.extend(moe_checks);
        bench.push(String::new());
        bench.extend(rows);
    } else if args.moe_layers > 0 && !args.moe_batch.is_empty() {
        let shape = MoeShape::qwen3_30b_a3b(args.moe_layers);
        let (rows, _) = gpu_moe_bench::moe_decode(
            open(Dtype::Bf16)?,
            &shape,
            &args.moe_batch,
            args.prompt_len,
            args.steps.max(1),
            true,
        )?;
        bench.push(String::new());
        bench.extend(rows);
    }
    let passed = |c: &Check| c.err <= c.tol; // NaN fails
    let failed = checks.iter().filter(|c| !passed(c)).count();
    println!(
        "\n{:<52} {:>12} {:>10} result",
        "check", "rel err", "tolerance"
    );
    for c in &checks {
        let ok = if passed(c) { "ok" } else { "FAIL" };
        println!("{:<52} {:>12.3e} {:>10.0e} {ok}", c.name, c.err, c.tol);
    }
    println!();
    for r in &bench {
        println!("{r}");
    }
    println!("\n{} checks, {failed} failed", checks.len());
    if failed > 0 {
        bail!("{failed} GPU checks failed");
    }
    Ok(())
}
