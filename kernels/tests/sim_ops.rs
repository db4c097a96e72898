//! Every GPU op on the simulated device against the CPU oracle: the conformance table
//! (`novastack_kernels::conformance`, random and edge shapes: 0 rows, head sizes
//! 64-256, GQA groups 1-8, block-boundary and split-K contexts) through the real GPU
//! backend, on each device the project targets (compat.h's AMD branch at 64 lanes,
//! MI250; AMD at 32; NVIDIA at 32), for f32 and bf16 storage; and under several thread
//! interleavings and another poison, which must all give the same bits (a difference is
//! a race or a read of memory nobody wrote).

use novastack_kernels::conformance::{self, Case, Visit};
use novastack_kernels::vendor::sim::{Order, Poison, SimBackend, SimOptions};
use novastack_kernels::{Dtype, Result};

fn check_all(options: SimOptions, dtype: Dtype) {
    let label = options.label();
    let b = SimBackend::new(options, dtype).unwrap_or_else(|e| panic!("{label}: {e}"));
    let checks = conformance::check(&b).unwrap_or_else(|e| panic!("{label} {dtype}: {e}"));
    assert!(checks.len() >= 100, "{label}: {} checks", checks.len());
    let failed: Vec<String> = checks
        .iter()
        .filter(|c| !c.passed())
        .map(|c| format!("{} err {:.3e} > tol {:.0e}", c.name, c.err, c.tol))
        .collect();
    assert!(failed.is_empty(), "{label} {dtype}:\n{}", failed.join("\n"));
}

#[test]
fn every_op_matches_the_oracle_at_amd_wave64() {
    for dtype in [Dtype::F32, Dtype::Bf16] {
        check_all(SimOptions::amd(64), dtype);
    }
}

#[test]
fn every_op_matches_the_oracle_at_amd_warp32() {
    for dtype in [Dtype::F32, Dtype::Bf16] {
        check_all(SimOptions::amd(32), dtype);
    }
}

#[test]
fn every_op_matches_the_oracle_at_nvidia_warp32() {
    for dtype in [Dtype::F32, Dtype::Bf16] {
        check_all(SimOptions::nvidia(), dtype);
    }
}

/// Runs every case on a reference device and on others; any output that differs in a
/// single bit is named.
struct SameBits<'a> {
    reference: &'a SimBackend,
    others: Vec<(String, SimBackend)>,
    differ: Vec<String>,
    cases: usize,
}

impl Visit for SameBits<'_> {
    fn case<C: Case>(&mut self, case: C) -> Result<()> {
        self.cases += 1;
        let want = case.run(self.reference)?;
        for (name, b) in &self.others {
            let got = case.run(b)?;
            for ((out, w), (_, g)) in want.iter().zip(&got) {
                let same =
                    w.len() == g.len() && w.iter().zip(g).all(|(a, b)| a.to_bits() == b.to_bits());
                if !same {
                    self.differ
                        .push(format!("{} {}{out} under {name}", case.op(), case.shape()));
                }
            }
        }
        Ok(())
    }
}

/// The wavefront-64 device under reversed, warp-serial and random interleavings, with
/// shared memory and scratch poisoned with 3.4e38 instead of NaN (`fmaxf` skips a NaN,
/// so a stale maximum would hide under the NaN poison): every output bit for bit as
/// the default order and poison give it.
#[test]
fn results_do_not_depend_on_thread_order_or_poison_at_wave64() {
    let reference = SimBackend::new(SimOptions::amd(64), Dtype::F32).unwrap();
    let variant = |order, poison| SimOptions {
        order,
        poison,
        ..SimOptions::amd(64)
    };
    let others = [
        ("reverse", Order::Reverse, Poison::Nan),
        ("warp-serial", Order::Warp, Poison::Big),
        ("warp-serial reversed", Order::WarpReverse, Poison::Nan),
        ("random order", Order::Random(0x5eed), Poison::Big),
    ]
    .into_iter()
    .map(|(name, o, p)| {
        (
            name.to_string(),
            SimBackend::new(variant(o, p), Dtype::F32).unwrap(),
        )
    })
    .collect();
    let mut v = SameBits {
        reference: &reference,
        others,
        differ: Vec::new(),
        cases: 0,
    };
    conformance::for_each_case(Dtype::F32, &mut v).unwrap();
    assert!(v.cases >= 50, "{} cases", v.cases);
    assert!(v.differ.is_empty(), "{}", v.differ.join("\n"));
}
