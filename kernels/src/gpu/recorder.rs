//! A [`Device`] that records what it is asked to do instead of running kernels, and the
//! tests of `GpuBackend`'s host-side logic on it (checks, launch geometry, argument
//! counts, which kernels exist and which ops launch them), without a GPU. Memory is
//! host memory, so uploads and downloads are real; kernels and GEMMs compute nothing.

use super::{Device, DeviceInfo, Gemm, GpuBackend, Launch};
use crate::conformance::{self, Case, Visit};
use crate::{AttentionMetadata, Backend, Dtype, Error, KvCacheConfig, Result, SeqAttention};
use std::collections::BTreeSet;
use std::ffi::c_void;
use std::sync::Mutex;

#[derive(Default)]
pub(crate) struct Recorder {
    info: DeviceInfo,
    /// (kernel, geometry, argument count) of every launch.
    launches: Mutex<Vec<(String, Launch, usize)>>,
    /// The bytes of every launch's arguments, in launch order.
    args: Mutex<Vec<Vec<Vec<u8>>>>,
    gemms: Mutex<usize>,
    sources: Mutex<Vec<String>>,
    /// Every entry point loaded.
    loaded: Mutex<Vec<String>>,
}

impl Device for Recorder {
    type Mem = Vec<u8>;
    type Func = String;
    type Graph = ();
    const NAME: &'static str = "recorder";
    fn info(&self) -> &DeviceInfo {
        &self.info
    }
    fn load_kernels(&self, _: &str, source: &str, names: &[String]) -> Result<Vec<String>> {
        self.sources.lock().unwrap().push(source.to_string());
        self.loaded.lock().unwrap().extend_from_slice(names);
        Ok(names.to_vec())
    }
    fn alloc_zeros(&self, bytes: usize) -> Result<Vec<u8>> {
        Ok(vec![0; bytes.max(1)])
    }
    fn htod(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }
    fn write(&self, m: &mut Vec<u8>, offset: usize, bytes: &[u8]) -> Result<()> {
        m[offset..offset + bytes.len()].copy_from_slice(bytes);
        Ok(())
    }
    fn dtoh(&self, m: &Vec<u8>, out: &mut [u8]) -> Result<()> {
        out.copy_from_slice(&m[..out.len()]);
        Ok(())
    }
    fn ptr(&self, m: &Vec<u8>) -> u64 {
        m.as_ptr() as u64
    }
    unsafe fn launch(
        &self,
        f: &String,
        cfg: Launch,
        params: &mut [*mut c_void],
        sizes: &[usize],
    ) -> Result<()> {
        let args = params
            .iter()
            .zip(sizes)
            // SAFETY: each parameter addresses a value of its size (`Params`).
            .map(|(&p, &n)| unsafe { std::slice::from_raw_parts(p as *const u8, n).to_vec() })
            .collect();
        self.args.lock().unwrap().push(args);
        self.launches
            .lock()
            .unwrap()
            .push((f.clone(), cfg, params.len()));
        Ok(())
    }
    unsafe fn gemm_bt(&self, _: Dtype, _: Gemm) -> Result<()> {
        *self.gemms.lock().unwrap() += 1;
        Ok(())
    }
    unsafe fn copy(&self, _: &Vec<u8>, _: &mut Vec<u8>, _: usize) -> Result<()> {
        Ok(())
    }
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
    fn mem_info(&self) -> Result<(usize, usize)> {
        Ok((1 << 30, 1 << 30))
    }
}

fn backend_of(warp: u32, dtype: Dtype) -> GpuBackend<Recorder> {
    let dev = Recorder {
        info: DeviceInfo {
            warp,
            ..Default::default()
        },
        ..Default::default()
    };
    GpuBackend::with_device(dev, dtype).unwrap()
}

pub(crate) fn backend(warp: u32) -> GpuBackend<Recorder> {
    backend_of(warp, Dtype::F32)
}

/// The launches since the last call: (kernel, geometry, argument count).
pub(crate) fn launches(b: &GpuBackend<Recorder>) -> Vec<(String, Launch, usize)> {
    b.dev.args.lock().unwrap().clear();
    std::mem::take(&mut *b.dev.launches.lock().unwrap())
}

/// The launches since the last call with their arguments' bytes.
pub(crate) fn launches_with_args(b: &GpuBackend<Recorder>) -> Vec<(String, Launch, Vec<Vec<u8>>)> {
    let args = std::mem::take(&mut *b.dev.args.lock().unwrap());
    let l = std::mem::take(&mut *b.dev.launches.lock().unwrap());
    l.into_iter()
        .zip(args)
        .map(|((f, cfg, _), a)| (f, cfg, a))
        .collect()
}

/// A kernel's name without its dtype suffix (`rms_norm_bf16` -> `rms_norm`).
fn base(name: &str) -> &str {
    match name.rsplit_once('_') {
        Some((b, "f32" | "f16" | "bf16")) => b,
        _ => name,
    }
}

#[test]
fn kernels_are_compiled_for_the_devices_warp_width() {
    for warp in [32, 64] {
        let b = backend(warp);
        let sources = b.dev.sources.lock().unwrap();
        assert!(!sources.is_empty());
        let line = format!("#define NS_WARP {warp}\n");
        assert!(sources.iter().all(|s| s.starts_with(&line)));
    }
}

/// An op over no rows launches nothing: one block over row 0 would write into
/// buffers that hold no rows (a chunked-prefill step samples no sequence).
#[test]
fn ops_over_no_rows_launch_nothing() {
    let b = backend(32);
    let h = 8;
    let x = b.zeros(0).unwrap();
    let mut out = b.zeros(0).unwrap();
    let w = b.upload(&[1.0; 8]).unwrap();
    b.gather_rows(&x, h, &[], &mut out).unwrap();
    b.rms_norm(&x, &w, 0, h, 1e-5, &mut out).unwrap();
    let mut r = b.zeros(0).unwrap();
    b.add_rms_norm(&mut r, &x, &w, 0, h, 1e-5, &mut out)
        .unwrap();
    b.silu_and_mul(&x, 0, h, &mut out).unwrap();
    let wt = b.upload_weight(&[1.0; 8], 1, 8, 1).unwrap();
    b.matmul(&x, &wt, Some(&w), 0, 1, 8, &mut out).unwrap();
    let table = b.upload(&[1.0; 8]).unwrap();
    b.embedding(&table, 1, 8, &[], &mut out).unwrap();
    let mut q = b.zeros(0).unwrap();
    b.rope(&mut q, 8, 0, 1, 8, 8, &[], &table).unwrap();
    b.add_inplace(&mut q, &x, 0).unwrap();
    b.head_rms_norm(&mut q, 0, 8, 0, 1, 8, &w, 1e-5).unwrap();
    let cache = KvCacheConfig {
        num_blocks: 1,
        block_size: 4,
        num_kv_heads: 1,
        head_dim: 4,
    };
    let (mut kc, mut vc) = (b.zeros(16).unwrap(), b.zeros(16).unwrap());
    b.reshape_and_cache(&q, 8, 0, &cache, &[], &mut kc, &mut vc)
        .unwrap();
    assert!(launches(&b).is_empty());
    assert_eq!(*b.dev.gemms.lock().unwrap(), 0);
    // One row does launch.
    let x1 = b.upload(&[1.0; 8]).unwrap();
    let mut o1 = b.zeros(8).unwrap();
    b.rms_norm(&x1, &w, 1, h, 1e-5, &mut o1).unwrap();
    let l = launches(&b);
    assert_eq!(l.len(), 1);
    assert_eq!(l[0].1.grid, (1, 1, 1));
}

/// Shapes the kernels would overrun are errors before any launch, as on the CPU.
#[test]
fn bad_shapes_fail_before_launching() {
    let b = backend(32);
    let mut x = b.upload(&[0.0; 32]).unwrap();
    let cs = b.upload(&[1.0; 64]).unwrap();
    let short = b.upload(&[1.0; 4]).unwrap();
    let mut out = b.zeros(32).unwrap();
    // rope: heads past the row, odd head_dim.
    assert!(b.rope(&mut x, 8, 4, 1, 8, 8, &[0], &cs).is_err());
    assert!(b.rope(&mut x, 8, 0, 1, 7, 7, &[0], &cs).is_err());
    assert!(b.rope(&mut x, 8, 0, 1, 8, 10, &[0], &cs).is_err());
    // norms: a weight shorter than the row.
    assert!(b.rms_norm(&x, &short, 4, 8, 1e-5, &mut out).is_err());
    assert!(b
        .head_rms_norm(&mut x, 4, 8, 0, 1, 8, &short, 1e-5)
        .is_err());
    assert!(b.head_rms_norm(&mut x, 4, 8, 4, 1, 8, &cs, 1e-5).is_err());
    // reshape_and_cache: k and v past the row.
    let cache = KvCacheConfig {
        num_blocks: 2,
        block_size: 4,
        num_kv_heads: 1,
        head_dim: 4,
    };
    let (mut kc, mut vc) = (b.zeros(32).unwrap(), b.zeros(32).unwrap());
    assert!(b
        .reshape_and_cache(&x, 8, 4, &cache, &[0], &mut kc, &mut vc)
        .is_err());
    assert!(launches(&b).is_empty());
}

/// A buffer keeps the dtype it was made in, and an op refuses one its kernels were not
/// loaded for (here a bf16 buffer handed to an f32 backend), naming the argument.
#[test]
fn buffers_of_another_dtype_are_refused_before_launching() {
    let (f32b, bf16b) = (backend(32), backend_of(32, Dtype::Bf16));
    let x = bf16b.upload(&[1.0; 8]).unwrap();
    assert_eq!((bf16b.dtype(&x), x.dtype()), (Dtype::Bf16, Dtype::Bf16));
    assert_eq!(f32b.dtype(&f32b.zeros(3).unwrap()), Dtype::F32);
    let w = f32b.upload(&[1.0; 8]).unwrap();
    let mut out = f32b.zeros(8).unwrap();
    match f32b.rms_norm(&x, &w, 1, 8, 1e-5, &mut out) {
        Err(Error::Dtype {
            op: "rms_norm",
            arg: "x",
            found: Dtype::Bf16,
            expected: Dtype::F32,
        }) => {}
        other => panic!("{other:?}"),
    }
    let e = f32b.gather_rows(&x, 8, &[0], &mut out).unwrap_err();
    assert_eq!(
        e.to_string(),
        "gather_rows: x is bf16, the kernels take f32"
    );
    let mut wrong_out = bf16b.zeros(8).unwrap();
    assert!(f32b.rms_norm(&w, &w, 1, 8, 1e-5, &mut wrong_out).is_err());
    assert!(launches(&f32b).is_empty());
    // The same buffers on their own backend do launch.
    let mut o = bf16b.zeros(8).unwrap();
    bf16b
        .rms_norm(&x, &bf16b.upload(&[1.0; 8]).unwrap(), 1, 8, 1e-5, &mut o)
        .unwrap();
    assert_eq!(launches(&bf16b).len(), 1);
}

/// A sliding window of 0 is no window: decode attention splits the whole context,
/// exactly as with `None`.
#[test]
fn a_zero_sliding_window_is_no_window() {
    let b = backend(32);
    let cache = KvCacheConfig {
        num_blocks: 80,
        block_size: 16,
        num_kv_heads: 1,
        head_dim: 8,
    };
    let (kc, vc) = (
        b.zeros(cache.layer_len()).unwrap(),
        b.zeros(cache.layer_len()).unwrap(),
    );
    let qkv = b.zeros(3 * 8).unwrap();
    let meta = AttentionMetadata {
        seqs: vec![SeqAttention {
            query_start: 0,
            num_queries: 1,
            context_len: 1200,
            block_table: (0..75).collect(),
        }],
    };
    let mut grids = Vec::new();
    for window in [None, Some(0)] {
        let mut out = b.zeros(8).unwrap();
        b.paged_attention(&qkv, 24, 1, &cache, &kc, &vc, &meta, 1.0, window, &mut out)
            .unwrap();
        grids.push(
            launches(&b)
                .iter()
                .map(|l| (l.0.clone(), l.1.grid))
                .collect::<Vec<_>>(),
        );
    }
    assert!(!grids[0].is_empty());
    assert_eq!(grids[0], grids[1]);
}

/// The whole conformance table on the GPU backend over the recorder, f32 and bf16:
/// every case passes the host-side checks, launches kernels that were loaded (or a
/// GEMM; nothing at all for an empty input), and downloads its outputs. Across the dtypes, every kernel
/// compiled is launched by some case: a kernel no op uses is dead code, to be removed.
#[test]
fn the_conformance_table_passes_the_host_checks_and_launches_every_kernel() {
    struct OnRecorder<'a> {
        gpu: &'a GpuBackend<Recorder>,
        launched: BTreeSet<String>,
    }
    impl Visit for OnRecorder<'_> {
        fn case<C: Case>(&mut self, case: C) -> Result<()> {
            let name = conformance::check_name(&case, "", self.gpu.dtype);
            let got = case.run(self.gpu).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!got.is_empty(), "{name}");
            let l = launches(self.gpu);
            let gemms = std::mem::take(&mut *self.gpu.dev.gemms.lock().unwrap());
            if case.empty_input() {
                // An empty batch launches nothing (one block would write "row 0").
                assert!(l.is_empty() && gemms == 0, "{name}: launched {l:?}");
                return Ok(());
            }
            assert!(got.iter().all(|(_, v)| !v.is_empty()), "{name}");
            assert!(!l.is_empty() || gemms > 0, "{name}: nothing ran");
            self.launched
                .extend(l.into_iter().map(|(f, _, _)| base(&f).to_string()));
            Ok(())
        }
    }
    let mut launched = BTreeSet::new();
    let mut compiled = BTreeSet::new();
    // The dtypes `gpu-check` runs; f16 takes bf16's paths.
    for dtype in [Dtype::F32, Dtype::Bf16] {
        let gpu = backend_of(64, dtype);
        let mut v = OnRecorder {
            gpu: &gpu,
            launched: BTreeSet::new(),
        };
        conformance::for_each_case(dtype, &mut v).unwrap();
        launched.extend(v.launched);
        compiled.extend(
            gpu.dev
                .loaded
                .lock()
                .unwrap()
                .iter()
                .map(|f| base(f).to_string()),
        );
    }
    let all: BTreeSet<String> = crate::sources::KERNELS
        .iter()
        .flat_map(|(_, src)| super::launch::kernel_names(src))
        .map(|f| base(&f).to_string())
        .collect();
    assert_eq!(compiled, all);
    assert_eq!(
        launched, all,
        "kernels compiled but never launched by a case"
    );
}

/// A MoE plan lives in one area per backend: a later `moe_plan` (or `moe_route`) makes
/// every older plan stale, and an op given a stale plan is an error, not a read of
/// another layer's choices.
#[test]
fn a_stale_moe_plan_is_an_error() {
    let b = backend(64);
    let routing = crate::MoeRouting {
        num_experts: 4,
        top_k: 2,
        scoring: crate::MoeScoring::Softmax,
        renormalize: false,
        scale: 1.0,
        group_limit: None,
    };
    let route = crate::MoeRoute {
        experts: vec![0, 3],
        weights: vec![0.5, 0.5],
    };
    let first = b.moe_plan(&route, 1, &routing).unwrap();
    let second = b.moe_plan(&route, 1, &routing).unwrap();
    let y = b.zeros(2 * 8).unwrap();
    let mut out = b.zeros(8).unwrap();
    b.moe_combine(&y, &second, 8, &mut out).unwrap();
    let e = b.moe_combine(&y, &first, 8, &mut out).unwrap_err();
    assert!(e.to_string().contains("stale"), "{e}");
}

/// A decode-sized batch is grouped on the device (`moe_align`, then `moe_gemm`); a
/// larger one on the host (gather, one vendor GEMM per expert with rows, scatter); and
/// 0 as the device limit sends every batch to the host.
#[test]
fn moe_batches_group_on_the_device_up_to_the_limit() {
    let b = backend(64);
    let (experts, k, n) = (4, 8, 8);
    let routing = crate::MoeRouting {
        num_experts: experts,
        top_k: 1,
        scoring: crate::MoeScoring::Softmax,
        renormalize: false,
        scale: 1.0,
        group_limit: None,
    };
    let w = b
        .upload_weight(&vec![0.0; experts * n * k], experts, n, k)
        .unwrap();
    let names = |b: &GpuBackend<Recorder>| -> Vec<String> {
        launches(b)
            .into_iter()
            .map(|(f, _, _)| base(&f).to_string())
            .collect()
    };
    let run = |tokens: usize| {
        let route = crate::MoeRoute {
            experts: (0..tokens as u32).map(|t| t % 2).collect(),
            weights: vec![1.0; tokens],
        };
        let x = b.zeros(tokens * k).unwrap();
        let mut out = b.zeros(tokens * n).unwrap();
        launches(&b);
        let plan = b.moe_plan(&route, tokens, &routing).unwrap();
        b.moe_matmul(&x, crate::MoeInput::Tokens, &plan, &w, k, n, &mut out)
            .unwrap();
        names(&b)
    };
    let small = super::DEVICE_GROUPING_ROWS;
    assert_eq!(run(small), ["moe_align", "moe_gemm"]);
    assert_eq!(run(small + 1), ["moe_gather", "moe_scatter"]);
    b.set_moe_device_grouping_rows(0);
    assert_eq!(run(3), ["moe_gather", "moe_scatter"]);
}
