//! Every GPU op on the simulated device against the CPU oracle: the conformance table
//! (`novastack_kernels::conformance`) through the real GPU backend, at each device the
//! project targets (compat.h's AMD branch at 64 lanes, MI250; AMD at 32; NVIDIA at 32),
//! for f32 and bf16 storage, and under several thread interleavings, which must all
//! give the same bits.

use novastack_kernels::conformance;
use novastack_kernels::vendor::sim::{Order, Poison, SimBackend, SimOptions};
use novastack_kernels::Dtype;

fn devices() -> Vec<SimOptions> {
    vec![SimOptions::amd(64), SimOptions::amd(32), SimOptions::nvidia()]
}

fn check_all(options: SimOptions, dtype: Dtype) {
    let label = options.label();
    let b = SimBackend::new(options, dtype).unwrap_or_else(|e| panic!("{label}: {e}"));
    let checks = conformance::check(&b).unwrap_or_else(|e| panic!("{label} {dtype}: {e}"));
    assert!(checks.len() >= 12, "{label}");
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
