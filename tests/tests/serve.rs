//! `novastack serve` on a real socket: chat completions equal the engine's own output,
//! and bad requests get OpenAI-shaped errors with the right status.

use novastack_engine::{generate, GenerateParams, SamplingParams};
use novastack_kernels::CpuBackend;
use novastack_models::load_model;
use novastack_tests::{fixtures_dir, http, model_fixtures, start_server};
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

fn sse_events(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn completions_with_token_ids_reproduce_golden_greedy_tokens() {
    for dir in model_fixtures() {
        let golden: Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
        let addr = start_server(&dir, "m");
        for case in golden["cases"].as_array().unwrap() {
            let req = json!({"model": "m", "prompt": case["prompt_token_ids"], "max_tokens": 32, "temperature": 0,
                             "ignore_eos": true, "logprobs": 1, "return_tokens_as_token_ids": true});
            let (status, body) = http(addr, "POST", "/v1/completions", &req.to_string());
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            let ids: Vec<u64> = v["choices"][0]["logprobs"]["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    t.as_str()
                        .unwrap()
                        .strip_prefix("token_id:")
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect();
            let want: Vec<u64> = serde_json::from_value(case["greedy_token_ids"].clone()).unwrap();
            assert_eq!(ids, want, "{} / {}", dir.display(), case["name"]);
            assert_eq!(v["usage"]["completion_tokens"], 32);
            assert_eq!(v["choices"][0]["finish_reason"], "length");
        }
    }
}

#[test]
fn streaming_chat_is_openai_shaped_with_usage_and_stop_strings() {
    let dir = fixtures_dir().join("models/qwen2-f32-tied");
    let addr = start_server(&dir, "m");
    let base = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 20, "temperature": 0, "ignore_eos": true});
    let (_, full) = http(addr, "POST", "/v1/chat/completions", &base.to_string());
    let full: Value = serde_json::from_str(&full).unwrap();
    let text = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();

    let mut req = base.clone();
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, body) = http(addr, "POST", "/v1/chat/completions", &req.to_string());
    assert_eq!(status, 200);
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"].as_array().unwrap().len(), 0);
    assert_eq!(usage["usage"]["completion_tokens"], 20);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );

    // A stop string taken from the middle of the answer: cut there, never leaked.
    let chars: Vec<char> = text.chars().collect();
    if chars.len() >= 6 {
        let stop: String = chars[3..5].iter().collect();
        let cut = &text[..text.find(&stop).unwrap()];
        let mut r = base.clone();
        r["stop"] = json!([stop]);
        let (_, b) = http(addr, "POST", "/v1/chat/completions", &r.to_string());
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], cut);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        r["stream"] = json!(true);
        let (_, b) = http(addr, "POST", "/v1/chat/completions", &r.to_string());
        let ev = sse_events(&b);
        let s: String = ev[..ev.len() - 1]
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|c| {
                c["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(s, cut);
    }

    // n = 3 seeded samples.
    let r = json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "n": 3, "seed": 1, "logprobs": true, "top_logprobs": 2});
    let (status, b) = http(addr, "POST", "/v1/chat/completions", &r.to_string());
    assert_eq!(status, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 3);
    assert_eq!(v["choices"][2]["index"], 2);
    assert!(
        v["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            .as_array()
            .unwrap()
            .len()
            == 2
    );
}

#[test]
fn disconnecting_streaming_clients_frees_every_kv_block() {
    use std::io::{Read, Write};
    let dir = fixtures_dir().join("models/llama-f32");
    let addr = start_server(&dir, "m");
    let body = json!({"prompt": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], "max_tokens": 900, "ignore_eos": true, "stream": true}).to_string();
    let mut conns = Vec::new();
    for _ in 0..50 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        conns.push(s);
    }
    for s in conns.iter_mut() {
        let mut buf = [0u8; 256];
        let _ = s.read(&mut buf).unwrap(); // the answer has started
    }
    drop(conns);
    let used = |addr| {
        let (_, m) = http(addr, "GET", "/metrics", "");
        m.lines()
            .find_map(|l| l.strip_prefix("novastack_kv_blocks_used{model=\"m\"} "))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while used(addr) > 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "KV blocks still in use after clients left"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The latency histograms saw the first tokens of those requests.
    let (_, m) = http(addr, "GET", "/metrics", "");
    let ttft_count: f64 = m
        .lines()
        .find_map(|l| l.strip_prefix("novastack_time_to_first_token_seconds_count{model=\"m\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(ttft_count >= 1.0, "{m}");
    assert!(m.contains("novastack_inter_token_latency_seconds_bucket{model=\"m\",le=\"+Inf\"}"));
}

#[test]
fn tokenize_models_request_ids_and_a_burst_past_the_queue_gets_429() {
    use novastack_tests::{http_full, start_server_with};
    let dir = fixtures_dir().join("models/llama-f32");
    let mut args = novastack_server::serve::ServeArgs {
        max_waiting: 2,
        ..Default::default()
    };
    args.engine.max_num_seqs = 1;
    let addr = start_server_with(&dir, "m", args);

    let (s, b) = http(
        addr,
        "POST",
        "/tokenize",
        &json!({"prompt": "The terms"}).to_string(),
    );
    assert_eq!(s, 200, "{b}");
    let v: Value = serde_json::from_str(&b).unwrap();
    let (s, b) = http(
        addr,
        "POST",
        "/detokenize",
        &json!({"tokens": v["tokens"]}).to_string(),
    );
    assert_eq!(s, 200, "{b}");
    assert!(serde_json::from_str::<Value>(&b).unwrap()["prompt"]
        .as_str()
        .unwrap()
        .ends_with("The terms"));
    assert_eq!(http(addr, "GET", "/v1/models/m", "").0, 200);
    assert_eq!(http(addr, "GET", "/v1/models/zz", "").0, 404);
    assert_eq!(http(addr, "GET", "/ready", "").0, 200);
    let (_, head, _) = http_full(addr, "GET", "/health", "", "x-request-id: abc-123\r\n");
    assert!(head.contains("x-request-id: abc-123"), "{head}");

    // A burst: one sequence at a time, two may wait; the rest get 429 + Retry-After and
    // every admitted request completes.
    let handles: Vec<_> = (0..16)
        .map(|i| {
            std::thread::sleep(std::time::Duration::from_millis(5));
            std::thread::spawn(move || {
                let body = json!({"prompt": [1, 2, 3, i], "max_tokens": 40, "ignore_eos": true})
                    .to_string();
                http_full(addr, "POST", "/v1/completions", &body, "")
            })
        })
        .collect();
    let results: Vec<(u16, String, String)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let rejected: Vec<&(u16, String, String)> = results.iter().filter(|r| r.0 == 429).collect();
    assert!(!rejected.is_empty(), "no 429 in the burst");
    for r in &rejected {
        assert!(r.1.contains("retry-after:"), "{}", r.1);
        assert_eq!(
            serde_json::from_str::<Value>(&r.2).unwrap()["error"]["type"],
            "rate_limit_error"
        );
    }
    for r in results.iter().filter(|r| r.0 != 429) {
        assert_eq!(r.0, 200, "{}", r.2);
        assert_eq!(
            serde_json::from_str::<Value>(&r.2).unwrap()["usage"]["completion_tokens"],
            40
        );
    }
}
