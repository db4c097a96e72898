//! The simulated device finds bugs, not just runs kernels: each kind of GPU bug it
//! claims to catch is planted in a small kernel here, and the test shows the report
//! (with the kernel, block, thread and source line) or, for races and reads of
//! unwritten memory, the result that changes with the interleaving or the poison.
//! Each kernel is built the way the backend builds `kernels/hip/*.hip`: through the
//! real compat.h, with the `#define NS_WARP` prefix, at wave64 and at warp 32.

use novastack_kernels::gpu::{Device, Launch};
use novastack_kernels::vendor::sim::{Order, Poison, SimDevice, SimFunc, SimMem, SimOptions};
use std::ffi::c_void;

const PLANTED: &str = r#"
#include "compat.h"

// Correct: one block-wide sum per block (the reference for the buggy versions).
NS_KERNEL void block_sum(const float* x, float* out, int n) {
  __shared__ float scratch[NS_MAX_WARPS];
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
  v = ns_block_sum(v, scratch);
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

// Bug: half the block waits at one barrier, half at another.
NS_KERNEL void divergent_barrier(float* out) {
  if (threadIdx.x < blockDim.x / 2) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

// Bug: a warp reduction that only some lanes of the warp reach.
NS_KERNEL void divergent_collective(float* out) {
  float v = 1.0f;
  if (threadIdx.x % NS_WARP < 16) v = ns_warp_sum(v);
  out[threadIdx.x] = v;
}

// Bug: lane 0 reduces while the others wait at a barrier.
NS_KERNEL void deadlock(float* out) {
  float v = 1.0f;
  if (threadIdx.x == 0) v = ns_warp_sum(v);
  __syncthreads();
  out[threadIdx.x] = v;
}

// Correct code, launched with a block that is not a whole number of warps.
NS_KERNEL void warp_sums(float* out) {
  out[threadIdx.x] = ns_warp_sum(1.0f);
}

// Takes a long: a launch that passes an int is wrong on every GPU.
NS_KERNEL void takes_long(float* out, long n) {
  if (threadIdx.x == 0) out[0] = (float)n;
}

// Bug: 80 KB of static shared memory (the most is 64 KB on AMD, 48 KB on NVIDIA).
NS_KERNEL void too_much_shared(float* out) {
  __shared__ float big[20000];
  big[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = big[(threadIdx.x + 1) % blockDim.x];
}

// Bug: `<=` writes one value past the end of `out`.
NS_KERNEL void off_by_one(float* out, int n) {
  for (int i = threadIdx.x; i <= n; i += blockDim.x) out[i] = 1.0f;
}

// Bug: reads a neighbour's shared value without a barrier in between (a race).
NS_KERNEL void missing_barrier(float* out) {
  __shared__ float s[1024];
  s[threadIdx.x] = (float)threadIdx.x;
  // __syncthreads() belongs here.
  out[threadIdx.x] = s[(threadIdx.x + NS_WARP) % blockDim.x];
}

// Bug: reads shared memory nobody wrote.
NS_KERNEL void uninitialized_shared(float* out) {
  __shared__ float s[256];
  if (threadIdx.x > 0) s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// Bug: the block reduction without the barrier that orders the scratch reuse: right
// in a thread-order pass, wrong when one warp runs ahead of the others.
NS_KERNEL void reduce_missing_barrier(const float* x, float* out, int n) {
  __shared__ float scratch[NS_MAX_WARPS];
  const int lane = threadIdx.x % NS_WARP, warp = threadIdx.x / NS_WARP;
  const int nwarps = blockDim.x / NS_WARP;
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
  for (int round = 0; round < 2; ++round) {
    float w = ns_warp_sum(v);
    // (missing __syncthreads(): the previous round may still be reading scratch)
    if (lane == 0) scratch[warp] = w + (float)round;
    __syncthreads();
    w = lane < nwarps ? scratch[lane] : 0.0f;
    v = ns_warp_sum(w);
  }
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

// Bug for strict mode: threads leave early while the rest wait at a barrier.
NS_KERNEL void early_exit(float* out) {
  if (threadIdx.x >= NS_WARP) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}
"#;

const NAMES: &[&str] = &[
    "block_sum",
    "divergent_barrier",
    "divergent_collective",
    "deadlock",
    "warp_sums",
    "takes_long",
    "too_much_shared",
    "off_by_one",
    "missing_barrier",
    "uninitialized_shared",
    "reduce_missing_barrier",
    "early_exit",
];

/// A device with the planted kernels loaded.
struct Planted {
    dev: SimDevice,
    funcs: Vec<SimFunc>,
}

#[derive(Clone, Copy)]
enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
}

impl Planted {
    fn new(options: SimOptions) -> Planted {
        let dev = SimDevice::new(options).unwrap();
        let src = format!("#define NS_WARP {}\n{PLANTED}", dev.info().warp);
        let names: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        let funcs = dev.load_kernels("planted.hip", &src, &names).unwrap();
        Planted { dev, funcs }
    }

    fn warp(&self) -> u32 {
        self.dev.info().warp
    }

    fn buf(&self, values: &[f32]) -> SimMem {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.dev.htod(&bytes).unwrap()
    }

    fn read(&self, m: &SimMem, n: usize) -> Vec<f32> {
        let mut out = vec![0u8; n * 4];
        self.dev.dtoh(m, &mut out).unwrap();
        out.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Launches `name` with one block row of `grid` blocks of `threads`; the error text.
    fn launch(
        &self,
        name: &str,
        grid: u32,
        threads: u32,
        shared: u32,
        args: &[Arg],
    ) -> Result<(), String> {
        let f = &self.funcs[NAMES.iter().position(|n| *n == name).unwrap()];
        let mut slots: Vec<u64> = Vec::new();
        let mut sizes = Vec::new();
        for a in args {
            match *a {
                Arg::Ptr(p) => (slots.push(p), sizes.push(8)),
                Arg::I32(v) => (slots.push(v as u32 as u64), sizes.push(4)),
                Arg::I64(v) => (slots.push(v as u64), sizes.push(8)),
            };
        }
        let mut ptrs: Vec<*mut c_void> = slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect();
        let cfg = Launch {
            grid: (grid, 1, 1),
            block: (threads, 1, 1),
            shared,
        };
        // SAFETY: the arguments are what each planted kernel takes (or, where the test
        // says so, deliberately not: the simulator must refuse before running).
        unsafe { self.dev.launch(f, cfg, &mut ptrs, &sizes) }.map_err(|e| e.to_string())
    }
}

fn each_width() -> Vec<Planted> {
    vec![
        Planted::new(SimOptions::amd(64)),
        Planted::new(SimOptions::amd(32)),
        Planted::new(SimOptions::nvidia()),
    ]
}

fn expect_err(r: Result<(), String>, parts: &[&str]) -> String {
    let e = r.expect_err("the planted bug was not reported");
    for p in parts {
        assert!(e.contains(p), "report {e:?} lacks {p:?}");
    }
    e
}

#[test]
fn the_correct_kernel_runs_clean_at_every_width() {
    for p in each_width() {
        let x = p.buf(&(0..1000).map(|i| i as f32).collect::<Vec<_>>());
        let out = p.buf(&[0.0; 2]);
        p.launch(
            "block_sum",
            2,
            256,
            0,
            &[Arg::Ptr(x.addr()), Arg::Ptr(out.addr()), Arg::I32(1000)],
        )
        .unwrap();
        assert_eq!(p.read(&out, 2), vec![499500.0; 2], "warp {}", p.warp());
    }
}

#[test]
fn a_divergent_barrier_is_reported_with_both_lines() {
    for p in each_width() {
        let out = p.buf(&[0.0; 256]);
        expect_err(
            p.launch("divergent_barrier", 1, 256, 0, &[Arg::Ptr(out.addr())]),
            &[
                "kernel divergent_barrier",
                "block (0,0,0)",
                "different __syncthreads",
                "planted.hip:16",
                "planted.hip:18",
            ],
        );
    }
}

#[test]
fn a_collective_not_every_lane_reaches_is_reported() {
    for p in each_width() {
        let out = p.buf(&[0.0; 256]);
        let e = expect_err(
            p.launch("divergent_collective", 1, 256, 0, &[Arg::Ptr(out.addr())]),
            &["kernel divergent_collective", "warp 0", "compat.h"],
        );
        assert!(
            e.contains("lanes exited") || e.contains("different warp collectives"),
            "{e}"
        );
    }
}

#[test]
fn a_deadlock_is_reported_not_hung() {
    for p in each_width() {
        let out = p.buf(&[0.0; 256]);
        expect_err(
            p.launch("deadlock", 1, 256, 0, &[Arg::Ptr(out.addr())]),
            &[
                "kernel deadlock",
                "deadlock",
                "thread 0 at a collective",
                "__syncthreads planted.hip:34",
            ],
        );
    }
}

#[test]
fn a_collective_in_a_partial_warp_is_reported() {
    for p in each_width() {
        let out = p.buf(&[0.0; 100]);
        expect_err(
            p.launch("warp_sums", 1, 100, 0, &[Arg::Ptr(out.addr())]),
            &["kernel warp_sums", "partial warp of", "lanes"],
        );
        // A whole number of warps is fine.
        p.launch(
            "warp_sums",
            1,
            2 * p.warp(),
            0,
            &[Arg::Ptr(p.buf(&[0.0; 128]).addr())],
        )
        .unwrap();
    }
}

#[test]
fn wrong_argument_counts_and_sizes_are_refused_before_running() {
    let p = Planted::new(SimOptions::amd(64));
    let out = p.buf(&[0.0; 1]);
    expect_err(
        p.launch("takes_long", 1, 64, 0, &[Arg::Ptr(out.addr())]),
        &["takes_long takes 2 arguments, the launch passed 1"],
    );
    expect_err(
        p.launch("takes_long", 1, 64, 0, &[Arg::Ptr(out.addr()), Arg::I32(5)]),
        &["argument 1 is 8 bytes, the launch passed 4"],
    );
    p.launch("takes_long", 1, 64, 0, &[Arg::Ptr(out.addr()), Arg::I64(5)])
        .unwrap();
    assert_eq!(p.read(&out, 1), vec![5.0]);
}

#[test]
fn shared_memory_over_the_device_limit_is_reported() {
    for p in each_width() {
        let out = p.buf(&[0.0; 64]);
        expect_err(
            p.launch("too_much_shared", 1, 64, 0, &[Arg::Ptr(out.addr())]),
            &[
                "__shared__ big",
                "planted.hip:50",
                "80000 bytes of shared memory",
            ],
        );
    }
    // Dynamic shared memory: 50 KB fits AMD's 64 KB of LDS, not NVIDIA's 48 KB.
    let nv = Planted::new(SimOptions::nvidia());
    let out = nv.buf(&[0.0; 32]);
    expect_err(
        nv.launch("warp_sums", 1, 32, 50_000, &[Arg::Ptr(out.addr())]),
        &["50000 bytes of dynamic shared memory, over the device's 49152"],
    );
    let amd = Planted::new(SimOptions::amd(64));
    amd.launch(
        "warp_sums",
        1,
        64,
        50_000,
        &[Arg::Ptr(amd.buf(&[0.0; 64]).addr())],
    )
    .unwrap();
}

#[test]
fn an_out_of_bounds_write_is_caught_at_its_line() {
    for p in each_width() {
        let out = p.buf(&[0.0; 100]);
        let e = expect_err(
            p.launch(
                "off_by_one",
                1,
                64,
                0,
                &[Arg::Ptr(out.addr()), Arg::I32(100)],
            ),
            &[
                "kernel off_by_one",
                "memory fault",
                "0 bytes after the end of a 400-byte allocation",
            ],
        );
        // The source line comes from addr2line, where binutils are installed.
        if std::process::Command::new("addr2line")
            .arg("--version")
            .output()
            .is_ok()
        {
            assert!(e.contains("planted.hip:58"), "{e}");
        }
    }
}

#[test]
fn a_use_after_free_is_caught() {
    let p = Planted::new(SimOptions::amd(64));
    let out = p.buf(&[0.0; 64]);
    let addr = out.addr();
    drop(out);
    expect_err(
        p.launch("off_by_one", 1, 64, 0, &[Arg::Ptr(addr), Arg::I32(10)]),
        &[
            "memory fault",
            "inside a freed 256-byte allocation",
            "use after free",
        ],
    );
}

/// The result under each interleaving; all equal for a correct kernel.
fn under_orders(options: SimOptions, run: impl Fn(&Planted) -> Vec<f32>) -> Vec<(Order, Vec<f32>)> {
    [
        Order::Pass,
        Order::Reverse,
        Order::Warp,
        Order::WarpReverse,
        Order::Random(3),
    ]
    .into_iter()
    .map(|order| {
        let p = Planted::new(SimOptions {
            order,
            poison: Poison::Big,
            ..options.clone()
        });
        (order, run(&p))
    })
    .collect()
}

#[test]
fn a_race_shows_as_results_that_change_with_the_interleaving() {
    for options in [
        SimOptions::amd(64),
        SimOptions::amd(32),
        SimOptions::nvidia(),
    ] {
        let racy = under_orders(options.clone(), |p| {
            let out = p.buf(&[0.0; 256]);
            p.launch("missing_barrier", 1, 256, 0, &[Arg::Ptr(out.addr())])
                .unwrap();
            p.read(&out, 256)
        });
        assert!(
            racy.iter().any(|(_, r)| r != &racy[0].1),
            "{}: the race went unseen",
            options.label()
        );
        // The correct reduction gives the same bits under every order.
        let x: Vec<f32> = (0..777).map(|i| (i % 13) as f32 * 0.37).collect();
        let ok = under_orders(options.clone(), |p| {
            let (xb, out) = (p.buf(&x), p.buf(&[0.0; 3]));
            p.launch(
                "block_sum",
                3,
                256,
                0,
                &[Arg::Ptr(xb.addr()), Arg::Ptr(out.addr()), Arg::I32(777)],
            )
            .unwrap();
            p.read(&out, 3)
        });
        assert!(
            ok.iter().all(|(_, r)| r == &ok[0].1),
            "{}: {ok:?}",
            options.label()
        );
    }
}

#[test]
fn a_dropped_reduction_barrier_is_caught_when_a_warp_runs_ahead() {
    let x = vec![1.0f32; 256];
    let results = under_orders(SimOptions::amd(64), |p| {
        let (xb, out) = (p.buf(&x), p.buf(&[0.0; 1]));
        p.launch(
            "reduce_missing_barrier",
            1,
            256,
            0,
            &[Arg::Ptr(xb.addr()), Arg::Ptr(out.addr()), Arg::I32(256)],
        )
        .unwrap();
        p.read(&out, 1)
    });
    // Right answer: round 0 gives 256 everywhere; round 1 sums 4 warps of 64 x 256, + 1 each.
    let right = vec![4.0 * (64.0 * 256.0 + 1.0)];
    assert_eq!(results[0].1, right, "the thread-order pass hides the bug");
    assert!(
        results.iter().any(|(_, r)| r != &right),
        "no interleaving exposed the bug: {results:?}"
    );
}

#[test]
fn unwritten_shared_memory_reads_the_poison() {
    for (poison, want) in [
        (Poison::Nan, f32::from_bits(u32::MAX)),
        (Poison::Big, f32::from_bits(0x7f7f7f7f)),
    ] {
        let p = Planted::new(SimOptions {
            poison,
            ..SimOptions::amd(64)
        });
        let out = p.buf(&[0.0; 64]);
        p.launch("uninitialized_shared", 1, 64, 0, &[Arg::Ptr(out.addr())])
            .unwrap();
        let got = p.read(&out, 64);
        assert_eq!(got[0].to_bits(), want.to_bits(), "{poison:?}");
        assert!(got[1..].iter().all(|&v| v == 1.0));
    }
}

#[test]
fn strict_mode_reports_threads_that_leave_a_barrier_early() {
    let lenient = Planted::new(SimOptions::amd(64));
    let out = lenient.buf(&[0.0; 128]);
    lenient
        .launch("early_exit", 1, 128, 0, &[Arg::Ptr(out.addr())])
        .unwrap();
    let strict = Planted::new(SimOptions {
        strict_exit: true,
        ..SimOptions::amd(64)
    });
    let out = strict.buf(&[0.0; 128]);
    expect_err(
        strict.launch("early_exit", 1, 128, 0, &[Arg::Ptr(out.addr())]),
        &["64 threads exited while 64 wait at __syncthreads (planted.hip:99)"],
    );
}

/// Mutations of the real kernel sources, as the issue's reviewers would make them by
/// mistake: a warp butterfly written for 32 lanes (`m = 16` instead of `NS_WARP / 2`) in
/// `sampling.hip`'s argmax passes on NVIDIA's 32-lane warps and is wrong on MI250's
/// 64-lane wavefronts. Only the wave64 device catches it, which is why CI runs it.
#[test]
fn a_butterfly_written_for_32_lanes_is_caught_only_at_wave64() {
    let real = novastack_kernels::sources::KERNELS
        .iter()
        .find(|(f, _)| *f == "sampling.hip")
        .unwrap()
        .1;
    let needle = "for (int m = NS_WARP / 2; m > 0; m >>= 1) {";
    assert!(
        real.contains(needle),
        "sampling.hip changed: update the mutation"
    );
    let mutated = real.replace(needle, "for (int m = 16; m > 0; m >>= 1) {");
    // 4 rows of 1000 logits, each with its maximum at a different lane position.
    let (rows, vocab) = (4usize, 1000usize);
    let mut logits = vec![0f32; rows * vocab];
    let peaks = [3usize, 40, 517, 999];
    for (r, &p) in peaks.iter().enumerate() {
        logits[r * vocab + p] = 5.0;
    }
    let run = |options: SimOptions, src: &str| -> Vec<u32> {
        let dev = SimDevice::new(options).unwrap();
        let src = format!("#define NS_WARP {}\n{src}", dev.info().warp);
        let f = dev
            .load_kernels("sampling.hip", &src, &["argmax_rows".to_string()])
            .unwrap();
        let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
        let x = dev.htod(&bytes).unwrap();
        let out = dev.alloc_zeros(rows * 4).unwrap();
        let mut args: [u64; 3] = [x.addr(), out.addr(), vocab as u64];
        let mut ptrs: Vec<*mut c_void> = args
            .iter_mut()
            .map(|a| a as *mut u64 as *mut c_void)
            .collect();
        let cfg = Launch {
            grid: (rows as u32, 1, 1),
            block: (256, 1, 1),
            shared: 0,
        };
        // SAFETY: argmax_rows(const float*, unsigned*, int): two addresses and an int
        // (its low 4 bytes in the third slot, size 4).
        unsafe { dev.launch(&f[0], cfg, &mut ptrs, &[8, 8, 4]) }.unwrap();
        let mut b = vec![0u8; rows * 4];
        dev.dtoh(&out, &mut b).unwrap();
        b.chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let want: Vec<u32> = peaks.iter().map(|&p| p as u32).collect();
    for options in [
        SimOptions::amd(64),
        SimOptions::amd(32),
        SimOptions::nvidia(),
    ] {
        assert_eq!(
            run(options.clone(), real),
            want,
            "{}: the real kernel",
            options.label()
        );
    }
    assert_eq!(
        run(SimOptions::nvidia(), &mutated),
        want,
        "warp 32 cannot see the bug"
    );
    assert_ne!(
        run(SimOptions::amd(64), &mutated),
        want,
        "wave64 must catch the bug"
    );
}
