//! `novastack bench decode --model` on a bf16 fixture: one row per batch size, and the
//! bytes a step reads follow the weights' storage (bf16 kept as stored reads about half
//! of what the same weights widened to f32 read). Nothing is timed.

mod common;

use common::process::fixture;
use std::process::Command;

/// `(batch, MB read per step)` of each table row.
fn rows(cpu_weights: &str) -> Vec<(usize, f64)> {
    let out = Command::new(env!("CARGO_BIN_EXE_novastack"))
        .args(["bench", "decode", "--model"])
        .arg(fixture("llama-bf16-tied"))
        .args(["--batch", "1,2", "--steps", "2", "--context", "4"])
        .args(["--cpu-weights", cpu_weights])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("{cpu_weights} weights")), "{text}");
    text.lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() == 6 && f[0].parse::<usize>().is_ok())
        .map(|f| (f[0].parse().unwrap(), f[3].parse().unwrap()))
        .collect()
}

#[test]
fn bench_decode_counts_the_bytes_weights_are_stored_in() {
    let (native, wide) = (rows("native"), rows("f32"));
    assert_eq!(native.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(wide.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2]);
    let ratio = native[0].1 / wide[0].1;
    assert!(
        (0.4..0.8).contains(&ratio),
        "native / f32 bytes per step: {ratio}"
    );
}
