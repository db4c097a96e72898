//! Operations of `novastack serve`: several models and aliases, API keys, 503 while
//! loading, 413 for big bodies, JSON 404/405, request counts by status and the
//! end-to-end histogram in /metrics, and the OpenAPI document.

use novastack_server::serve::{ModelEntry, ServeArgs};
use novastack_tests::{empty_state, fixtures_dir, http, http_full, serve_state, start_models};
use serde_json::{json, Value};

fn error_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
    assert!(v["error"]["message"].is_string(), "{body}");
    assert!(v["error"]["type"].is_string(), "{body}");
    v["error"].clone()
}

fn metric(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{name_and_labels} ")))
        .map(|v| v.trim().parse().unwrap())
}

#[test]
fn several_models_with_aliases_keys_and_metrics_by_status() {
    let qwen = fixtures_dir().join("models/qwen3-f32");
    let llama = fixtures_dir().join("models/llama-f32");
    let args = ServeArgs {
        api_key: Some("sk-test".into()),
        max_body_bytes: 4096,
        ..Default::default()
    };
    let addr = start_models(&[(&qwen, &["qwen", "q-alias"]), (&llama, &["llama"])], args);
    let auth = "Authorization: Bearer sk-test\r\n";

    // Both models and the alias are listed.
    let (st, _, body) = http_full(addr, "GET", "/v1/models", "", auth);
    assert_eq!(st, 200, "{body}");
    let ids: Vec<String> = serde_json::from_str::<Value>(&body).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["qwen", "q-alias", "llama"]);

    // Each name reaches its own model: the same token-id prompt gives each model's
    // golden tokens; the alias answers with the model's id.
    for (name, dir, id) in [
        ("qwen", &qwen, "qwen"),
        ("q-alias", &qwen, "qwen"),
        ("llama", &llama, "llama"),
    ] {
        let golden: Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
        let case = &golden["cases"][0];
        let req = json!({"model": name, "prompt": case["prompt_token_ids"], "max_tokens": 8,
                         "temperature": 0, "ignore_eos": true, "logprobs": 0, "return_tokens_as_token_ids": true});
        let (st, _, body) = http_full(addr, "POST", "/v1/completions", &req.to_string(), auth);
        assert_eq!(st, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["model"], id);
        let got: Vec<String> = v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = case["greedy_token_ids"].as_array().unwrap()[..8]
            .iter()
            .map(|t| format!("token_id:{t}"))
            .collect();
        assert_eq!(got, want, "{name}");
    }

    // Keys: missing, wrong, and right; /health and /metrics stay open.
    let chat =
        json!({"model": "llama", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            .to_string();
    for hdr in [
        "",
        "Authorization: Bearer nope\r\n",
        "Authorization: sk-test\r\n",
    ] {
        let (st, _, body) = http_full(addr, "POST", "/v1/chat/completions", &chat, hdr);
        assert_eq!(st, 401, "{hdr:?} -> {body}");
        assert_eq!(error_of(&body)["type"], "authentication_error");
    }
    let (st, _, _) = http_full(addr, "POST", "/tokenize", r#"{"prompt": "hi"}"#, "");
    assert_eq!(st, 401);
    assert_eq!(http(addr, "GET", "/health", "").0, 200);

    // Unknown model: 404 naming the served ones.
    let (st, _, body) = http_full(
        addr,
        "POST",
        "/v1/chat/completions",
        &chat.replace("llama", "gpt-9"),
        auth,
    );
    assert_eq!(st, 404);
    let msg = error_of(&body)["message"].as_str().unwrap().to_string();
    assert!(msg.contains("gpt-9") && msg.contains("qwen"), "{msg}");

    // A body over --max-body-bytes: 413 in OpenAI's shape.
    let big = json!({"model": "qwen", "prompt": "x".repeat(10_000)}).to_string();
    let (st, _, body) = http_full(addr, "POST", "/v1/completions", &big, auth);
    assert_eq!(st, 413, "{body}");
    assert!(error_of(&body)["message"]
        .as_str()
        .unwrap()
        .contains("max-body-bytes"));

    // Unknown route and wrong method: JSON errors, not empty bodies.
    let (st, body) = http(addr, "GET", "/v2/nothing", "");
    assert_eq!(st, 404);
    error_of(&body);
    let (st, _, body) = http_full(addr, "GET", "/v1/chat/completions", "", auth);
    assert_eq!(st, 405);
    error_of(&body);

    // Request counts by route and status, and the end-to-end histogram per model. The
    // engine records a finished request's latency beside sending its answer, so a loaded
    // machine may show the page a moment before the last one is counted.
    let e2e = |page: &str, model: &str| {
        metric(
            page,
            &format!("novastack_e2e_request_latency_seconds_count{{model=\"{model}\"}}"),
        )
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let page = loop {
        let (_, page) = http(addr, "GET", "/metrics", "");
        let settled = e2e(&page, "qwen") == Some(2.0) && e2e(&page, "llama") == Some(1.0);
        if settled || std::time::Instant::now() > deadline {
            break page;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let count = |route: &str, status: u16| {
        metric(
            &page,
            &format!("novastack_http_requests_total{{route=\"{route}\",status=\"{status}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(count("/v1/completions", 200), 3.0, "{page}");
    assert_eq!(count("/v1/chat/completions", 401), 3.0, "{page}");
    assert_eq!(count("/v1/chat/completions", 404), 1.0, "{page}");
    assert_eq!(count("/v1/completions", 413), 1.0, "{page}");
    assert_eq!(
        metric(
            &page,
            "novastack_e2e_request_latency_seconds_count{model=\"qwen\"}"
        ),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        metric(
            &page,
            "novastack_e2e_request_latency_seconds_count{model=\"llama\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &page,
            "novastack_request_finished_total{model=\"llama\",finished_reason=\"length\"}"
        ),
        Some(1.0)
    );
    assert!(page.contains("# TYPE novastack_kv_usage_ratio gauge"));
}

#[test]
fn answers_503_while_loading_then_ready() {
    let state = empty_state(&ServeArgs::default());
    let addr = serve_state(state.clone());
    assert_eq!(http(addr, "GET", "/health", "").0, 200);
    let (st, body) = http(addr, "GET", "/ready", "");
    assert_eq!(st, 503);
    assert!(error_of(&body)["message"]
        .as_str()
        .unwrap()
        .contains("loading"));
    let chat =
        json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).to_string();
    let (st, body) = http(addr, "POST", "/v1/chat/completions", &chat);
    assert_eq!(st, 503, "{body}");
    assert_eq!(error_of(&body)["type"], "service_unavailable");
    assert_eq!(http(addr, "GET", "/v1/models", "").0, 503);

    let dir = fixtures_dir().join("models/qwen3-f32");
    let lm = novastack_models::load_model(&dir, novastack_kernels::CpuBackend::new()).unwrap();
    let entry = ModelEntry::start(lm, vec!["m".into()], &ServeArgs::default().engine).unwrap();
    state.set_models(vec![entry]).unwrap();
    assert_eq!(http(addr, "GET", "/ready", "").0, 200);
    let (st, body) = http(addr, "POST", "/v1/chat/completions", &chat);
    assert_eq!(st, 200, "{body}");
}

#[test]
fn openapi_document_describes_the_api_from_its_types() {
    let state = empty_state(&ServeArgs::default());
    let addr = serve_state(state);
    let (st, head, body) = http_full(addr, "GET", "/openapi.json", "", "");
    assert_eq!(st, 200);
    assert!(head.contains("application/json"), "{head}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{id}",
        "/tokenize",
        "/detokenize",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    let schemas = &doc["components"]["schemas"];
    // Request fields from both halves of the chat body, and the response shapes.
    let chat = schemas["ChatCompletionRequest"].to_string();
    for field in [
        "messages",
        "max_completion_tokens",
        "top_logprobs",
        "temperature",
        "stream_options",
        "ignore_eos",
    ] {
        assert!(
            chat.contains(&format!("\"{field}\"")),
            "{field} not in {chat}"
        );
    }
    let completion = schemas["CompletionBody"].to_string();
    assert!(
        completion.contains("\"prompt\"") && completion.contains("\"return_tokens_as_token_ids\"")
    );
    for s in [
        "ChatCompletion",
        "ChatCompletionChunk",
        "Completion",
        "ErrorResponse",
        "ModelList",
        "Usage",
    ] {
        assert!(schemas[s].is_object(), "schema {s} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
