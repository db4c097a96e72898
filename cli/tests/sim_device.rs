//! `novastack generate --device sim`: the GPU backend on the simulated device, as a
//! user runs it. For every golden fixture, at wavefront 64 (MI250) and warp 32, a
//! prompt run solo and all of the fixture's prompts through `--prompts-file` (the
//! engine, in chunks of 64 tokens) give transformers' greedy tokens; `gpu-check
//! --device sim` passes its op table and fixtures; bad sim flags are clear errors.

mod common;

use common::{golden, ids_arg, novastack, novastack_env};
use serde_json::Value;
use std::process::Output;

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn every_fixture_at(warp: &str) {
    let dirs = novastack_tests::model_fixtures();
    assert!(dirs.len() >= 9);
    for dir in dirs {
        let d = dir.to_str().unwrap();
        let g = golden(&dir);
        let cases = g["cases"].as_array().unwrap();
        let sim = ["--device", "sim", "--sim-warp", warp, "--gpu-dtype", "f32"];
        // Solo: the first case on its own.
        let ids = ids_arg(&cases[0]["prompt_token_ids"]);
        let mut args = vec!["generate", "--model", d, "--prompt-ids", &ids];
        args.extend(sim);
        args.extend([
            "--temperature",
            "0",
            "--ignore-eos",
            "--max-tokens",
            "32",
            "--json",
        ]);
        let v: Value = serde_json::from_str(&ok(&novastack(&args))).unwrap();
        assert_eq!(
            v["token_ids"], cases[0]["greedy_token_ids"],
            "{d} solo, warp {warp}"
        );
        // Every case through the engine, prefilled in 64-token chunks beside decodes.
        let lines: Vec<String> = cases
            .iter()
            .map(|c| {
                serde_json::json!({"prompt_ids": c["prompt_token_ids"], "max_tokens": 32,
                    "temperature": 0, "ignore_eos": true})
                .to_string()
            })
            .collect();
        let file = std::env::temp_dir().join(format!(
            "novastack-sim-{}-{warp}-{}.jsonl",
            std::process::id(),
            dir.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(&file, lines.join("\n")).unwrap();
        let mut args = vec![
            "generate",
            "--model",
            d,
            "--prompts-file",
            file.to_str().unwrap(),
        ];
        args.extend(sim);
        args.extend(["--max-num-batched-tokens", "64"]);
        let out = ok(&novastack(&args));
        let _ = std::fs::remove_file(&file);
        let rows: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), cases.len(), "{d}");
        for (r, c) in rows.iter().zip(cases) {
            assert_eq!(
                r["token_ids"], c["greedy_token_ids"],
                "{d} {}, warp {warp}",
                c["name"]
            );
        }
    }
}

#[test]
fn generate_on_the_simulated_device_equals_transformers_at_wave64() {
    every_fixture_at("64");
}

#[test]
fn generate_on_the_simulated_device_equals_transformers_at_warp32() {
    every_fixture_at("32");
}

#[test]
fn gpu_check_passes_on_the_simulated_device() {
    let out = novastack(&[
        "gpu-check",
        "--device",
        "sim",
        "--sim-warp",
        "64",
        "--fixtures",
        novastack_tests::fixtures_dir()
            .join("models")
            .to_str()
            .unwrap(),
    ]);
    let text = ok(&out);
    assert!(text.contains("simulated amd64 GPU"), "{text}");
    assert!(text.contains("0 failed"), "{text}");
    assert!(
        text.contains("golden qwen3-f32 (f32 on GPU): 128/128 greedy tokens"),
        "{text}"
    );
    // The MoE decode run: graphs and eager device grouping agree on every id, and the
    // host grouping ran too.
    assert!(
        text.contains("MoE decode batch 3: graphs = eager"),
        "{text}"
    );
    assert!(text.contains("eager, host grouping"), "{text}");
}

#[test]
fn bad_sim_flags_are_clear_errors() {
    let dir = novastack_tests::model_fixtures().remove(0);
    let d = dir.to_str().unwrap();
    let base = [
        "generate",
        "--model",
        d,
        "--prompt-ids",
        "1",
        "--device",
        "sim",
    ];
    for (flags, want) in [
        (
            vec!["--sim-warp", "16"],
            "--sim-warp 16: use 64 (MI250) or 32",
        ),
        (
            vec!["--sim-vendor", "nvidia", "--sim-warp", "64"],
            "NVIDIA warps are 32 lanes",
        ),
        (
            vec!["--sim-vendor", "intel"],
            "--sim-vendor \"intel\": use amd or nvidia",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend(flags);
        let out = novastack(&args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err}");
    }
    // No C++ compiler: a message that says what --device sim needs.
    let empty = std::env::temp_dir().join(format!("ns-sim-empty-{}", std::process::id()));
    let out = novastack_env(
        &base,
        &[
            ("CXX", "/nonexistent/c++".as_ref()),
            ("NOVASTACK_SIM_CACHE", empty.as_os_str()),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no C++ compiler") && err.contains("set CXX"),
        "{err}"
    );
}
