//! The official `openai` Python SDK as the client: chat and completions, streaming and
//! not, usage, stop strings, logprobs, `n`, and the error classes.
//!
//! Needs a Python with `openai` installed: `NOVASTACK_OPENAI_PYTHON` (set by `.ci/run`,
//! which makes the venv). Without it the test says so and passes only when
//! `NOVASTACK_REQUIRE_OPENAI_SDK` is unset.

use novastack_server::serve::ServeArgs;
use novastack_tests::{fixtures_dir, start_server_with};
use std::process::Command;

const KEY: &str = "sk-novastack-test";

/// A server for the fixture model at `dir`, named `name`, guarded by [`KEY`].
fn server(dir: &std::path::Path, name: &str, max_waiting: Option<usize>) -> std::net::SocketAddr {
    let mut args = ServeArgs {
        api_key: Some(KEY.into()),
        ..Default::default()
    };
    if let Some(m) = max_waiting {
        args.max_waiting = m;
    }
    start_server_with(dir, name, args)
}

/// Runs `tests/python/SCRIPT` against the server at `base` for `model` (plus `extra`
/// environment); asserts it passed all `checks` checks.
fn run_checks(
    python: &str,
    script: &str,
    base: &str,
    model: &str,
    extra: &[(&str, String)],
    checks: usize,
) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut cmd = Command::new(python);
    cmd.arg(&path)
        .env("NOVASTACK_BASE_URL", base)
        .env("NOVASTACK_KEY", KEY)
        .env("NOVASTACK_MODEL", model);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    for k in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
    ] {
        cmd.env_remove(k);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} failed:\n{stdout}");
    assert!(
        stdout.contains(&format!("{checks}/{checks} checks passed")),
        "{stdout}"
    );
}

#[test]
fn official_openai_python_sdk() {
    let Some(python) = sdk_python() else { return };
    let dir = fixtures_dir().join("models/qwen3-f32");
    let main = server(&dir, "tiny-qwen3", None);
    let busy = server(&dir, "tiny-qwen3", Some(0));
    let busy = [("NOVASTACK_BUSY_URL", format!("http://{busy}/v1"))];
    run_checks(
        &python,
        "openai_sdk_check.py",
        &format!("http://{main}/v1"),
        "tiny-qwen3",
        &busy,
        13,
    );
}

/// Structured output (`response_format`, the `guided_*` fields) through the SDK against
/// a random fixture model: every answer must validate against its schema, greedy and
/// sampled. Needs `jsonschema` beside `openai` in that Python.
#[test]
fn structured_output_through_the_openai_python_sdk() {
    let Some(python) = sdk_python() else { return };
    let addr = server(&fixtures_dir().join("models/qwen3-f32"), "tiny-qwen3", None);
    run_checks(
        &python,
        "structured_output_check.py",
        &format!("http://{addr}/v1"),
        "tiny-qwen3",
        &[],
        6,
    );
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
    let addr = server(&dir, "tiny-qwen3-tools", None);
    let model = "tiny-qwen3-tools";
    run_checks(
        &python,
        "tool_calls_check.py",
        &format!("http://{addr}/v1"),
        model,
        &[],
        6,
    );
    // The same model through Anthropic's Messages API and its SDK.
    if std::env::var_os("NOVASTACK_REQUIRE_ANTHROPIC_SDK").is_some()
        || Command::new(&python)
            .args(["-c", "import anthropic"])
            .status()
            .is_ok_and(|s| s.success())
    {
        run_checks(
            &python,
            "anthropic_sdk_check.py",
            &format!("http://{addr}"),
            model,
            &[],
            6,
        );
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
