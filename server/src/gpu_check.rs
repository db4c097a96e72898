//! `novastack gpu-check` (feature `cuda` or `hip`): every GPU op against the CPU oracle
//! on random inputs of several shapes (outputs poisoned with NaN before each run), the
//! golden fixtures end to end on the GPU, then decode of a Llama-3-8B-shaped model with
//! random bf16 weights at several batch sizes against the weight-bandwidth bound. Prints
//! a short table last; exits non-zero when a check fails. Run by `scripts/gpu_check.sh`
//! on NVIDIA (`--device cuda`), and by users on AMD with `--device hip`.

use anyhow::{bail, Context, Result};
use clap::Args;
use novastack_engine::{generate, GenerateParams, SamplingParams};
use novastack_kernels::gpu::{Device, Dtype, GpuBackend, GpuBuf};
use novastack_kernels::{AttentionMetadata, Backend, CpuBackend, KvCacheConfig, SeqAttention};
use novastack_models::random::RandomSource;
use novastack_models::{load_model, CausalLm, Llama};
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct GpuCheckArgs {
    /// cuda or hip (each needs its cargo feature).
    #[arg(long, default_value = "cuda")]
    pub device: String,
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
}

struct Check {
    name: String,
    err: f64,
    tol: f64,
}

fn round(v: &[f32], d: Dtype) -> Vec<f32> {
    match d {
        Dtype::F32 => v.to_vec(),
        Dtype::F16 => v.iter().map(|x| half::f16::from_f32(*x).to_f32()).collect(),
        Dtype::Bf16 => v
            .iter()
            .map(|x| half::bf16::from_f32(*x).to_f32())
            .collect(),
    }
}

/// max |gpu - cpu| / max |cpu| (NaN anywhere: infinite).
fn rel_err(gpu: &[f32], cpu: &[f32]) -> f64 {
    if gpu.len() != cpu.len() || gpu.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = cpu
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-6);
    let diff = gpu
        .iter()
        .zip(cpu)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    diff / scale
}

struct Pair<'a, D: Device> {
    gpu: &'a GpuBackend<D>,
    rng: rand_chacha::ChaCha8Rng,
    checks: Vec<Check>,
}

impl<D: Device> Pair<'_, D> {
    fn rand(&mut self, n: usize, scale: f32) -> Vec<f32> {
        let v: Vec<f32> = (0..n)
            .map(|_| self.rng.random_range(-scale..scale))
            .collect();
        round(&v, self.gpu.dtype)
    }

    fn tol(&self) -> f64 {
        match self.gpu.dtype {
            Dtype::F32 => 1e-4,
            _ => 3e-2,
        }
    }

    fn poisoned(&self, n: usize) -> Result<GpuBuf<D>> {
        Ok(self.gpu.upload(&vec![f32::NAN; n])?)
    }

    fn record(&mut self, name: String, gpu: &[f32], cpu: &[f32]) {
        let err = rel_err(gpu, cpu);
        let tol = self.tol();
        self.checks.push(Check { name, err, tol });
    }

    fn ops(&mut self) -> Result<()> {
        let (g, c) = (self.gpu, CpuBackend::new());
        let d = format!("{:?}", g.dtype).to_lowercase();
        for (vocab, hidden) in [(1000, 64), (32000, 4096)] {
            let table = self.rand(vocab * hidden, 1.0);
            let ids: Vec<u32> = (0..7).map(|i| (i * 7919 % vocab) as u32).collect();
            let mut co = c.zeros(ids.len() * hidden)?;
            c.embedding(&table, vocab, hidden, &ids, &mut co)?;
            let mut go = self.poisoned(ids.len() * hidden)?;
            g.embedding(&g.upload(&table)?, vocab, hidden, &ids, &mut go)?;
            self.record(
                format!("embedding {d} {vocab}x{hidden}"),
                &g.download(&go)?,
                &co,
            );
        }
        for (rows, dim) in [(1, 64), (5, 4096), (33, 896)] {
            let (x, r, w) = (
                self.rand(rows * dim, 2.0),
                self.rand(rows * dim, 2.0),
                self.rand(dim, 1.0),
            );
            let mut co = c.zeros(rows * dim)?;
            c.rms_norm(&x, &w, rows, dim, 1e-6, &mut co)?;
            let mut go = self.poisoned(rows * dim)?;
            g.rms_norm(&g.upload(&x)?, &g.upload(&w)?, rows, dim, 1e-6, &mut go)?;
            self.record(format!("rms_norm {d} {rows}x{dim}"), &g.download(&go)?, &co);
            let (mut cr, mut gr) = (r.clone(), g.upload(&r)?);
            c.add_rms_norm(&mut cr, &x, &w, rows, dim, 1e-6, &mut co)?;
            let mut go = self.poisoned(rows * dim)?;
            g.add_rms_norm(
                &mut gr,
                &g.upload(&x)?,
                &g.upload(&w)?,
                rows,
                dim,
                1e-6,
                &mut go,
            )?;
            self.record(
                format!("add_rms_norm {d} {rows}x{dim}"),
                &g.download(&go)?,
                &co,
            );
            self.record(
                format!("add_rms_norm.residual {d} {rows}x{dim}"),
                &g.download(&gr)?,
                &cr,
            );
        }
        for (m, k, n, bias) in [
            (1, 64, 96, false),
            (7, 4096, 4096, false),
            (33, 896, 1000, true),
            (1, 4096, 14336, false),
        ] {
            let (x, w, b) = (
                self.rand(m * k, 1.0),
                self.rand(n * k, 0.05),
                self.rand(n, 1.0),
            );
            let mut co = c.zeros(m * n)?;
            c.matmul(&x, &w, bias.then_some(&b), m, k, n, &mut co)?;
            let gb = g.upload(&b)?;
            let mut go = self.poisoned(m * n)?;
            g.matmul(
                &g.upload(&x)?,
                &g.upload(&w)?,
                bias.then_some(&gb),
                m,
                k,
                n,
                &mut go,
            )?;
            self.record(
                format!("matmul {d} {m}x{k}x{n}{}", if bias { "+bias" } else { "" }),
                &g.download(&go)?,
                &co,
            );
        }
        for (rows, inter) in [(1, 128), (9, 14336)] {
            let x = self.rand(rows * 2 * inter, 3.0);
            let mut co = c.zeros(rows * inter)?;
            c.silu_and_mul(&x, rows, inter, &mut co)?;
            let mut go = self.poisoned(rows * inter)?;
            g.silu_and_mul(&g.upload(&x)?, rows, inter, &mut go)?;
            self.record(
                format!("silu_and_mul {d} {rows}x{inter}"),
                &g.download(&go)?,
                &co,
            );
        }
        for hd in [64, 128] {
            let (heads, kvh, toks, max_pos) = (8, 2, 5, 64);
            let stride = (heads + 2 * kvh) * hd;
            let x = self.rand(toks * stride, 1.0);
            let table: Vec<f32> = round(
                &(0..max_pos * hd)
                    .map(|i| {
                        let (p, j) = ((i / hd) as f32, (i % hd) % (hd / 2));
                        let a = p / 10000f32.powf(2.0 * j as f32 / hd as f32);
                        if (i % hd) < hd / 2 {
                            a.cos()
                        } else {
                            a.sin()
                        }
                    })
                    .collect::<Vec<_>>(),
                g.dtype,
            );
            let pos: Vec<u32> = vec![0, 3, 17, 40, 63];
            let mut cx = x.clone();
            c.rope(&mut cx, stride, heads * hd, kvh, hd, &pos, &table)?;
            let mut gx = g.upload(&x)?;
            g.rope(
                &mut gx,
                stride,
                heads * hd,
                kvh,
                hd,
                &pos,
                &g.upload(&table)?,
            )?;
            self.record(format!("rope {d} hd{hd}"), &g.download(&gx)?, &cx);
            let w = self.rand(hd, 1.0);
            let mut cx = x.clone();
            c.head_rms_norm(&mut cx, toks, stride, 0, heads, hd, &w, 1e-6)?;
            let mut gx = g.upload(&x)?;
            g.head_rms_norm(&mut gx, toks, stride, 0, heads, hd, &g.upload(&w)?, 1e-6)?;
            self.record(format!("head_rms_norm {d} hd{hd}"), &g.download(&gx)?, &cx);
            self.attention(hd)?;
        }
        let x = self.rand(40 * 64, 1.0);
        let idx = vec![39, 0, 7];
        let mut co = c.zeros(3 * 64)?;
        c.gather_rows(&x, 64, &idx, &mut co)?;
        let mut go = self.poisoned(3 * 64)?;
        g.gather_rows(&g.upload(&x)?, 64, &idx, &mut go)?;
        self.record(format!("gather_rows {d}"), &g.download(&go)?, &co);
        Ok(())
    }

    /// reshape_and_cache, then paged attention for decode, prefill, chunked prefill and a
    /// sliding window, over scattered blocks.
    fn attention(&mut self, hd: usize) -> Result<()> {
        let (g, c) = (self.gpu, CpuBackend::new());
        let d = format!("{:?}", g.dtype).to_lowercase();
        let cfg = KvCacheConfig {
            num_blocks: 96,
            block_size: 16,
            num_kv_heads: 2,
            head_dim: hd,
        };
        let heads = 8;
        let stride = (heads + 2 * cfg.num_kv_heads) * hd;
        // Every slot of the cache holds random keys and values already.
        let (kc, vc) = (
            self.rand(cfg.layer_len(), 1.0),
            self.rand(cfg.layer_len(), 1.0),
        );
        let (ctxs, queries) = ([700usize, 40, 100], [1usize, 40, 20]);
        let mut seqs = Vec::new();
        let mut slots = Vec::new();
        let mut start = 0;
        for (s, (&ctx, &nq)) in ctxs.iter().zip(&queries).enumerate() {
            let blocks: Vec<u32> = (0..ctx.div_ceil(16))
                .map(|i| ((i * 3 + s * 31) % 96) as u32)
                .collect();
            for p in ctx - nq..ctx {
                slots.push(blocks[p / 16] * 16 + (p % 16) as u32);
            }
            seqs.push(SeqAttention {
                query_start: start,
                num_queries: nq,
                context_len: ctx,
                block_table: blocks,
            });
            start += nq;
        }
        let n = start;
        let qkv = self.rand(n * stride, 1.0);
        let (mut ck, mut cv) = (kc.clone(), vc.clone());
        c.reshape_and_cache(&qkv, stride, heads * hd, &cfg, &slots, &mut ck, &mut cv)?;
        let (mut gk, mut gv) = (g.upload(&kc)?, g.upload(&vc)?);
        let gq = g.upload(&qkv)?;
        g.reshape_and_cache(&gq, stride, heads * hd, &cfg, &slots, &mut gk, &mut gv)?;
        self.record(
            format!("reshape_and_cache {d} hd{hd}"),
            &g.download(&gk)?,
            &ck,
        );
        let scale = 1.0 / (hd as f32).sqrt();
        let cases: [(&str, Vec<SeqAttention>, Option<usize>); 3] = [
            ("mixed prefill", seqs.clone(), None),
            ("mixed prefill window 64", seqs.clone(), Some(64)),
            (
                "decode",
                seqs.iter()
                    .enumerate()
                    .map(|(i, s)| SeqAttention {
                        query_start: i,
                        num_queries: 1,
                        ..s.clone()
                    })
                    .collect(),
                None,
            ),
        ];
        for (label, seqs, window) in cases {
            let meta = AttentionMetadata { seqs };
            let rows = meta.num_tokens();
            let mut co = c.zeros(rows * heads * hd)?;
            c.paged_attention(
                &qkv, stride, heads, &cfg, &ck, &cv, &meta, scale, window, &mut co,
            )?;
            let mut go = self.poisoned(rows * heads * hd)?;
            g.paged_attention(
                &gq, stride, heads, &cfg, &gk, &gv, &meta, scale, window, &mut go,
            )?;
            self.record(
                format!("paged_attention {label} {d} hd{hd}"),
                &g.download(&go)?,
                &co,
            );
        }
        Ok(())
    }
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
    let config = crate::bench::llama_shape(
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
    use crate::bench::{synthetic_step, BLOCK};
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
            model.forward(
                &synthetic_step(&zeros, args.prompt_len, &tables[chunk..end], vocab),
                &mut cache,
            )?;
        }
        let mut lens = vec![args.prompt_len; b];
        model.forward(&step(&lens, 1), &mut cache)?; // warm-up
        lens.iter_mut().for_each(|l| *l += 1);
        let t = Instant::now();
        for _ in 0..steps {
            std::hint::black_box(model.forward(&step(&lens, 1), &mut cache)?);
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
    let index = args.device_index;
    match args.device.as_str() {
        #[cfg(feature = "cuda")]
        "cuda" => check(&args, &|d| {
            Ok(novastack_kernels::cuda_backend::CudaBackend::new(index, d)?)
        }),
        #[cfg(feature = "hip")]
        "hip" => check(&args, &|d| {
            Ok(novastack_kernels::hip_backend::HipBackend::new(index, d)?)
        }),
        #[cfg(not(feature = "cuda"))]
        "cuda" => bail!("--device cuda needs a build with `--features cuda`"),
        #[cfg(not(feature = "hip"))]
        "hip" => bail!("--device hip needs a build with `--features hip`"),
        other => bail!("--device {other:?}: use cuda or hip"),
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
        let mut pair = Pair {
            gpu: &gpu,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(7),
            checks: Vec::new(),
        };
        pair.ops()?;
        checks.extend(pair.checks);
    }
    fixtures(args, open, &mut checks)?;
    let bench = if args.batch.is_empty() {
        Vec::new()
    } else {
        decode_bench(args, open)?
    };
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
