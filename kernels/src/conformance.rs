//! The conformance table: every op's cases, each run on the CPU oracle and on any
//! [`Backend`] and compared within a tolerance per storage type, as llama.cpp's
//! `test-backend-ops` does. `novastack gpu-check` walks it on a GPU; the unit tests walk
//! it CPU against CPU (every case runs, and the oracle agrees with itself bit for bit)
//! and on the GPU backend over a recording device (every case passes the host-side
//! checks, and every compiled kernel is launched by some case).
//!
//! A case is defined beside the op's GPU launch and kernel (`gpu/ops/<kernel file>.rs`)
//! and listed in that file's `cases` (`gpu/ops/mod.rs` lists the files). Inputs are
//! drawn from a fixed seed and rounded to the target's storage type, so oracle and
//! target see the same values; outputs start as NaN, so a value the target never
//! writes fails the check.

use crate::{Backend, CpuBackend, Dtype, Result};

/// One shape of one op: host inputs, and how to run the op on any backend.
pub trait Case {
    /// The op (and variant) a result is named after: `rms_norm`, `paged_attention decode`.
    fn op(&self) -> String;
    /// The shape, for the result's name: `5x4096`, `hd64` (may be empty).
    fn shape(&self) -> String;
    /// The largest relative error accepted against the oracle, inputs stored as `dtype`.
    fn tolerance(&self, dtype: Dtype) -> f64 {
        default_tolerance(dtype)
    }
    /// The input is empty (0 rows, 0 tokens, 0 sequences): the op must succeed, launch
    /// nothing, and leave its outputs as they were (see [`output`]).
    fn empty_input(&self) -> bool {
        false
    }
    /// Uploads the inputs to `b`, runs the op, and returns each output as downloaded:
    /// `("", values)` for the op's output, `("residual", values)` for a second one.
    fn run<B: Backend>(&self, b: &B) -> Result<Vec<(&'static str, Vec<f32>)>>;
}

/// What walks the table: called once per case, in table order.
pub trait Visit {
    fn case<C: Case>(&mut self, case: C) -> Result<()>;
}

/// f32 agrees to rounding; f16/bf16 storage rounds every intermediate buffer.
pub fn default_tolerance(dtype: Dtype) -> f64 {
    match dtype {
        Dtype::F32 => 1e-4,
        _ => 3e-2,
    }
}

/// The seed of every table walk, so that two walks build the same inputs.
const SEED: u64 = 7;

/// Every registered case with inputs stored as `dtype`, in table order.
pub fn for_each_case(dtype: Dtype, v: &mut impl Visit) -> Result<()> {
    crate::gpu::ops::cases(&mut Gen::new(SEED, dtype), v)
}

/// Deterministic case inputs (splitmix64: the library needs no `rand`), rounded to the
/// storage type under test.
pub struct Gen {
    state: u64,
    dtype: Dtype,
}

impl Gen {
    pub fn new(seed: u64, dtype: Dtype) -> Gen {
        Gen { state: seed, dtype }
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `n` values uniform in `[-scale, scale)`, as the target stores them.
    pub fn rand(&mut self, n: usize, scale: f32) -> Vec<f32> {
        let dtype = self.dtype;
        (0..n)
            .map(|_| {
                let u = (self.next() >> 40) as f32 / (1u64 << 24) as f32;
                dtype.round_one((2.0 * u - 1.0) * scale)
            })
            .collect()
    }

    /// A number in `lo..=hi`, uniform: a shape drawn from the seed.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// One of `items`, uniform.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }

    /// `v` as the target stores it.
    pub fn round(&self, v: &[f32]) -> Vec<f32> {
        self.dtype.round(v)
    }
}

/// An output buffer of `n` NaNs: what the op does not write stays NaN and fails.
pub fn poisoned<B: Backend>(b: &B, n: usize) -> Result<B::Buf> {
    b.upload(&vec![f32::NAN; n])
}

/// Values an op over an empty input must leave alone: exact in every storage type.
const SPARE: usize = 8;

/// A case's output buffer of `n` values: NaNs (see [`poisoned`]), or for an empty input
/// (`n == 0`) a few finite values that the op must leave as they are, so that one
/// block launched over "row 0" of an empty batch is caught.
pub fn output<B: Backend>(b: &B, n: usize) -> Result<B::Buf> {
    if n == 0 {
        b.upload(
            &(0..SPARE)
                .map(|i| i as f32 * 0.25 - 1.0)
                .collect::<Vec<_>>(),
        )
    } else {
        poisoned(b, n)
    }
}

/// `max |got - want| / max |want|`; a NaN or infinity in `got`, or another length, is
/// an infinite error.
pub fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    if got.len() != want.len() || got.iter().any(|v| !v.is_finite()) {
        return f64::INFINITY;
    }
    let scale = want
        .iter()
        .fold(0f64, |m, v| m.max(v.abs() as f64))
        .max(1e-6);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    diff / scale
}

/// One output of one case against the oracle.
#[derive(Debug, Clone)]
pub struct Check {
    /// `op[.output] dtype shape`, e.g. `add_rms_norm.residual bf16 5x4096`.
    pub name: String,
    pub err: f64,
    pub tol: f64,
}

impl Check {
    /// Within tolerance (a NaN error fails).
    pub fn passed(&self) -> bool {
        self.err <= self.tol
    }
}

/// The name of output `out` of `case` for inputs stored as `dtype`.
pub fn check_name(case: &impl Case, out: &str, dtype: Dtype) -> String {
    let op = if out.is_empty() {
        case.op()
    } else {
        format!("{}.{out}", case.op())
    };
    let name = format!("{op} {dtype} {}", case.shape());
    name.trim_end().to_string()
}

/// The storage type `b` gives new buffers: what case inputs are rounded to.
pub fn storage_dtype<B: Backend>(b: &B) -> Result<Dtype> {
    Ok(b.dtype(&b.zeros(1)?))
}

/// Runs every case on the CPU oracle and on `target`: one [`Check`] per output.
/// An op that fails on either side is an error naming the case.
pub fn check<B: Backend>(target: &B) -> Result<Vec<Check>> {
    struct Compare<'a, B> {
        target: &'a B,
        dtype: Dtype,
        checks: Vec<Check>,
    }
    impl<B: Backend> Visit for Compare<'_, B> {
        fn case<C: Case>(&mut self, case: C) -> Result<()> {
            let want = case.run(&CpuBackend::new())?;
            let got = case.run(self.target)?;
            for ((name, w), (_, g)) in want.iter().zip(&got) {
                self.checks.push(Check {
                    name: check_name(&case, name, self.dtype),
                    err: rel_err(g, w),
                    tol: case.tolerance(self.dtype),
                });
            }
            Ok(())
        }
    }
    let dtype = storage_dtype(target)?;
    let mut v = Compare {
        target,
        dtype,
        checks: Vec::new(),
    };
    for_each_case(dtype, &mut v)?;
    Ok(v.checks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The whole table through the runner, the oracle against itself: every case runs,
    /// writes every value of every output (an unwritten NaN is an infinite error), and
    /// agrees with itself exactly (the oracle is deterministic); names are unique.
    #[test]
    fn the_table_runs_cpu_against_cpu_exactly() {
        let checks = check(&CpuBackend::new()).unwrap();
        let names: BTreeSet<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), checks.len(), "two results of one name");
        assert!(checks.len() >= 12, "{names:?}");
        for c in &checks {
            assert!(c.name.contains(" f32"), "{}", c.name);
            assert!(c.err == 0.0 && c.passed(), "{c:?}");
        }
    }

    #[test]
    fn rel_err_fails_nan_and_length_mismatch() {
        assert_eq!(rel_err(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
        assert!((rel_err(&[1.0, 2.1], &[1.0, 2.0]) - 0.05).abs() < 1e-6);
        assert_eq!(rel_err(&[f32::NAN, 2.0], &[1.0, 2.0]), f64::INFINITY);
        assert_eq!(rel_err(&[1.0], &[1.0, 2.0]), f64::INFINITY);
        let c = Check {
            name: String::new(),
            err: f64::NAN,
            tol: 1.0,
        };
        assert!(!c.passed());
    }

    #[test]
    fn inputs_are_seeded_and_rounded() {
        let a = Gen::new(1, Dtype::Bf16).rand(64, 2.0);
        assert_eq!(a, Gen::new(1, Dtype::Bf16).rand(64, 2.0));
        assert_ne!(a, Gen::new(2, Dtype::Bf16).rand(64, 2.0));
        assert_eq!(Dtype::Bf16.round(&a), a);
        assert!(a.iter().all(|v| (-2.0..2.0).contains(v)));
        let f = Gen::new(1, Dtype::F32).rand(1000, 1.0);
        assert!(f.iter().any(|v| *v < -0.9) && f.iter().any(|v| *v > 0.9));
        let mut g = Gen::new(3, Dtype::F32);
        let r: Vec<usize> = (0..200).map(|_| g.range(5, 9)).collect();
        assert!(r.iter().all(|v| (5..=9).contains(v)));
        assert!((5..=9).all(|v| r.contains(&v)));
        assert_eq!(g.range(4, 4), 4);
        assert!([2, 3].contains(&g.pick(&[2, 3])));
    }
}
