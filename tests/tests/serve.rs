//! `novastack serve` on a real socket: chat completions equal the engine's own output,
//! and bad requests get OpenAI-shaped errors with the right status.

use novastack_engine::{generate, GenerateParams, SamplingParams};
use novastack_kernels::CpuBackend;
use novastack_models::load_model;
use novastack_tests::{fixtures_dir, http, start_server};
use serde_json::{json, Value};

#[test]
fn chat_completion_matches_engine_and_errors_are_openai_shaped() {
    let dir = fixtures_dir().join("models/qwen3-f32");
    let addr = start_server(&dir, "tiny");
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello"}]}]);
    let req = json!({"model": "tiny", "messages": messages, "max_tokens": 10, "temperature": 0});
    let (status, body) = http(addr, "POST", "/v1/chat/completions", &req.to_string());
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny");

    // The same request through the engine directly.
    let lm = load_model(&dir, CpuBackend::new()).unwrap();
    let msgs = vec![
        json!({"role": "system", "content": "Be brief."}),
        json!({"role": "user", "content": "Hello"}),
    ];
    let prompt = lm.tokenizer.encode_chat(&msgs, true).unwrap();
    let params = GenerateParams {
        max_tokens: 10,
        sampling: SamplingParams::greedy(),
        ..Default::default()
    };
    let out = generate(
        &lm.model,
        &prompt,
        lm.tokenizer.eos_token_ids(),
        &params,
        |_| {},
    )
    .unwrap();
    let text = lm.tokenizer.decode(&out.token_ids, true).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], text);
    assert_eq!(v["choices"][0]["finish_reason"], out.finish_reason.as_str());
    assert_eq!(v["usage"]["prompt_tokens"], prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], out.token_ids.len());

    let cases = [
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}).to_string(),
            404,
            "nope",
        ),
        ("{not json".to_string(), 400, "invalid request body"),
        (json!({"messages": []}).to_string(), 400, "messages"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}).to_string(),
            400,
            "role",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000})
                .to_string(),
            400,
            "context window",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": -1}).to_string(),
            400,
            "temperature",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"})
                .to_string(),
            400,
            "max_tokens",
        ),
    ];
    for (body, want_status, needle) in cases {
        let (status, resp) = http(addr, "POST", "/v1/chat/completions", &body);
        assert_eq!(status, want_status, "{body} -> {resp}");
        let v: Value = serde_json::from_str(&resp).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
        assert!(v["error"]["type"].is_string());
    }
    let (status, body) = http(addr, "GET", "/v1/models", "");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["data"][0]["id"],
        "tiny"
    );
}
