//! The official `openai` Python SDK as the client: chat and completions, streaming and
//! not, usage, stop strings, logprobs, `n`, and the error classes.
//!
//! Needs a Python with `openai` installed: `NOVASTACK_OPENAI_PYTHON` (set by `.ci/run`,
//! which makes the venv). Without it the test says so and passes only when
//! `NOVASTACK_REQUIRE_OPENAI_SDK` is unset.

use novastack_server::serve::ServeArgs;
use novastack_tests::{fixtures_dir, start_server_with};
use std::process::Command;

#[test]
fn official_openai_python_sdk() {
    let Some(python) = sdk_python() else { return };
    let dir = fixtures_dir().join("models/qwen3-f32");
    let key = "sk-novastack-test";
    let main = start_server_with(
        &dir,
        "tiny-qwen3",
        ServeArgs {
            api_key: Some(key.into()),
            ..Default::default()
        },
    );
    let busy = start_server_with(
        &dir,
        "tiny-qwen3",
        ServeArgs {
            api_key: Some(key.into()),
            max_waiting: 0,
            ..Default::default()
        },
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/openai_sdk_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("NOVASTACK_BASE_URL", format!("http://{main}/v1"))
        .env("NOVASTACK_BUSY_URL", format!("http://{busy}/v1"))
        .env("NOVASTACK_KEY", key)
        .env("NOVASTACK_MODEL", "tiny-qwen3")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "openai SDK checks failed:\n{stdout}");
    assert!(stdout.contains("13/13 checks passed"), "{stdout}");
}

/// Structured output (`response_format`, the `guided_*` fields) through the SDK against
/// a random fixture model: every answer must validate against its schema, greedy and
/// sampled. Needs `jsonschema` beside `openai` in that Python.
#[test]
fn structured_output_through_the_openai_python_sdk() {
    let Some(python) = sdk_python() else { return };
    let dir = fixtures_dir().join("models/qwen3-f32");
    let key = "sk-novastack-test";
    let addr = start_server_with(
        &dir,
        "tiny-qwen3",
        ServeArgs {
            api_key: Some(key.into()),
            ..Default::default()
        },
    );
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/structured_output_check.py");
    let out = Command::new(&python)
        .arg(&script)
        .env("NOVASTACK_BASE_URL", format!("http://{addr}/v1"))
        .env("NOVASTACK_KEY", key)
        .env("NOVASTACK_MODEL", "tiny-qwen3")
        .env_remove("OPENAI_API_KEY")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "structured output checks failed:\n{stdout}"
    );
    assert!(stdout.contains("6/6 checks passed"), "{stdout}");
}

/// Tool calling through the SDK, then `/v1/messages` through the `anthropic` SDK: the
/// fixture model with the real Qwen3 chat template
/// (which renders `tools`, assistant `tool_calls` and `tool` results): `required` and
/// named calls always validate, JSON and streamed; a history with calls is rendered;
/// content parts equal the plain string.
#[test]
fn tool_calls_through_the_openai_python_sdk() {
    let Some(python) = sdk_python() else { return };
    let src = fixtures_dir().join("models/qwen3-f32");
    let dir = std::env::temp_dir().join(format!("ns-tools-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let read = |p: std::path::PathBuf| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    // The tools' descriptions take ~800 of the fixture's 1024 positions: give it 4096
    // (RoPE has no learned positions; the random weights do not care).
    let mut config = read(src.join("config.json"));
    config["max_position_embeddings"] = 4096.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut cfg = read(src.join("tokenizer_config.json"));
    let real = read(fixtures_dir().join("templates/qwen3/tokenizer_config.json"));
    cfg["chat_template"] = real["chat_template"].clone();
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let key = "sk-novastack-test";
    let addr = start_server_with(
        &dir,
        "tiny-qwen3-tools",
        ServeArgs {
            api_key: Some(key.into()),
            ..Default::default()
        },
    );
    let run = |script: &str, base: String| {
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
        let out = Command::new(&python)
            .arg(&script)
            .env("NOVASTACK_BASE_URL", base)
            .env("NOVASTACK_KEY", key)
            .env("NOVASTACK_MODEL", "tiny-qwen3-tools")
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env_remove("ANTHROPIC_API_KEY")
            .env_remove("ANTHROPIC_BASE_URL")
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        (out.status.success(), stdout)
    };
    let (ok, stdout) = run("python/tool_calls_check.py", format!("http://{addr}/v1"));
    assert!(ok, "tool call checks failed:\n{stdout}");
    assert!(stdout.contains("6/6 checks passed"), "{stdout}");
    // The same model through Anthropic's Messages API and its SDK.
    if std::env::var_os("NOVASTACK_REQUIRE_ANTHROPIC_SDK").is_some()
        || Command::new(&python)
            .args(["-c", "import anthropic"])
            .status()
            .is_ok_and(|s| s.success())
    {
        let (ok, stdout) = run("python/anthropic_sdk_check.py", format!("http://{addr}"));
        assert!(ok, "anthropic SDK checks failed:\n{stdout}");
        assert!(stdout.contains("5/5 checks passed"), "{stdout}");
    } else {
        eprintln!("skipped the anthropic SDK checks: no `anthropic` in {python}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The Python with the SDK, or `None` (the test is skipped) when none is configured and
/// none is required.
fn sdk_python() -> Option<String> {
    match std::env::var("NOVASTACK_OPENAI_PYTHON") {
        Ok(p) => Some(p),
        Err(_) => {
            assert!(
                std::env::var_os("NOVASTACK_REQUIRE_OPENAI_SDK").is_none(),
                "NOVASTACK_REQUIRE_OPENAI_SDK is set but NOVASTACK_OPENAI_PYTHON is not"
            );
            eprintln!("skipped: set NOVASTACK_OPENAI_PYTHON to a python with `openai` installed");
            None
        }
    }
}
