//! The gateway against real HTTP upstreams on 127.0.0.1 that misbehave on a script:
//! retries, fallbacks, cooldowns, timeouts, resets, streams dying before and after the
//! first byte, malformed SSE, OpenAI quirks, Anthropic translation, auth translation
//! without leaks, per-key limits, the adaptive concurrency limit, routing, local models
//! and reloads.

use novastack_tests::mock_upstream::{Behavior as B, MockUpstream};
use novastack_tests::{fixtures_dir, http, http_full, start_gateway};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const UP_KEY: &str = "sk-upstream-SECRET-1234";
const CLIENT_KEY: &str = "client-key-abc";

fn model_yaml(name: &str, up: &MockUpstream, extra: &str) -> String {
    format!(
        "  - {{name: {name}, provider: openai, base_url: \"{}\", upstream_model: up-{name}, timeout_s: 2, auth: {{header: Authorization, prefix: \"Bearer \", key_env: UP_KEY}}{extra}}}\n",
        up.url()
    )
}

const FAST_RETRY: &str =
    "retry: {max_attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 40, jitter: true}\n";

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}],
           "max_tokens": 16, "stream": stream, "stream_options": {"include_usage": true}})
    .to_string()
}

struct Resp {
    status: u16,
    head: String,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// Streamed content, the finish reason, and whether an error chunk came.
    fn stream(&self) -> (String, Option<String>, Option<String>, Vec<Value>) {
        let mut text = String::new();
        let (mut finish, mut error) = (None, None);
        let mut all = Vec::new();
        let mut done = 0;
        for d in self.body.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if d == "[DONE]" {
                done += 1;
                continue;
            }
            assert_eq!(done, 0, "data after [DONE]: {}", self.body);
            let v: Value = serde_json::from_str(d).unwrap();
            if let Some(e) = v.get("error") {
                error = Some(e["message"].as_str().unwrap().to_string());
            }
            if let Some(c) = v["choices"].get(0) {
                text += c["delta"]["content"].as_str().unwrap_or("");
                if let Some(f) = c["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
            all.push(v);
        }
        assert_eq!(done, 1, "exactly one [DONE]: {}", self.body);
        (text, finish, error, all)
    }
}

fn post(addr: std::net::SocketAddr, body: &str, headers: &str) -> Resp {
    let (status, head, body) = http_full(addr, "POST", "/v1/chat/completions", body, headers);
    Resp { status, head, body }
}

fn auth() -> String {
    format!("Authorization: Bearer {CLIENT_KEY}\r\n")
}

fn metric(addr: std::net::SocketAddr, line_start: &str) -> f64 {
    let (_, page) = http(addr, "GET", "/metrics", "");
    page.lines()
        .find_map(|l| l.strip_prefix(&format!("{line_start} ")))
        .map_or(0.0, |v| v.parse().unwrap())
}

#[test]
fn retries_with_backoff_honours_retry_after_then_succeeds() {
    let a = MockUpstream::start(B::Stream(vec!["Hel", "lo"]));
    let yaml = format!("models:\n{}{FAST_RETRY}", model_yaml("a", &a, ""));
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    a.script([B::Status(429, Some("1")), B::Status(500, None)]);
    let t = Instant::now();
    let r = post(addr, &chat("a", false), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "Retry-After: 1 not honoured"
    );
    assert_eq!(r.header("x-novastack-attempts").as_deref(), Some("3"));
    assert_eq!(r.header("x-novastack-model").as_deref(), Some("a"));
    let v = r.json();
    assert_eq!(v["model"], "a");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello");
    assert_eq!(v["usage"]["completion_tokens"], 2);
    assert!(r.header("x-novastack-cost-usd").is_some());
    // The upstream got its own model name, the client's stream flag (a JSON answer for
    // a JSON client), and no routing metadata.
    let sent: Value = serde_json::from_str(&a.requests.lock().unwrap()[2].body).unwrap();
    assert_eq!(sent["model"], "up-a");
    assert_eq!(sent["stream"], false);
    assert!(sent.get("stream_options").is_none() && sent.get("metadata").is_none());
    assert_eq!(
        metric(
            addr,
            "novastack_gateway_upstream_retries_total{model=\"a\"}"
        ),
        2.0
    );
    assert_eq!(
        metric(
            addr,
            "novastack_gateway_upstream_errors_total{model=\"a\",class=\"http_429\"}"
        ),
        1.0
    );
    // A non-retryable client error is passed through at once, not retried.
    a.script([B::Status(400, None)]);
    let before = a.count();
    let r = post(addr, &chat("a", false), "");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(a.count(), before + 1);
}

#[test]
fn falls_back_along_the_chain_and_cools_down_a_failing_model() {
    let a = MockUpstream::start(B::Status(503, None));
    let b = MockUpstream::start(B::Stream(vec!["from ", "b"]));
    let yaml = format!(
        "models:\n{}{}routes:\n  - when: {{model: main}}\n    use: a\n    fallback: [b]\n{FAST_RETRY}cooldown: {{failures: 3, window_s: 60, cooldown_s: 30}}\n",
        model_yaml("a", &a, ""),
        model_yaml("b", &b, "")
    );
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    let r = post(addr, &chat("main", false), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-novastack-model").as_deref(), Some("b"));
    assert_eq!(r.header("x-novastack-attempts").as_deref(), Some("4"));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "from b");
    assert_eq!(
        r.json()["model"],
        "main",
        "the client sees the name it asked for"
    );
    assert_eq!(a.count(), 3);
    // Three failures cooled `a` down: the next request goes straight to b.
    let r = post(addr, &chat("main", true), "");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-novastack-attempts").as_deref(), Some("1"));
    assert_eq!(a.count(), 3, "a cooling down must not be called");
    assert_eq!(
        metric(addr, "novastack_gateway_upstream_cooling_down{model=\"a\"}"),
        1.0
    );
    assert_eq!(
        metric(
            addr,
            "novastack_gateway_upstream_cooldowns_total{model=\"a\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            addr,
            "novastack_gateway_upstream_fallbacks_total{model=\"b\"}"
        ),
        1.0
    );
    // Asking for the cooling model alone: 503 with Retry-After.
    let r = post(addr, &chat("a", false), "");
    assert_eq!(r.status, 503, "{}", r.body);
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&ra), "{ra}");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("cooling down"));
}

#[test]
fn hangs_resets_malformed_and_early_deaths_are_retried_invisibly() {
    let a = MockUpstream::start(B::Stream(vec!["ok"]));
    let yaml = format!(
        "models:\n{}retry: {{max_attempts: 6, initial_backoff_ms: 5, max_backoff_ms: 20, deadline_s: 30}}\ncooldown: {{failures: 100}}\n",
        model_yaml("a", &a, "").replace("timeout_s: 2", "timeout_s: 0.3")
    );
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    // Each of these fails before any content: the client never sees them.
    a.script([
        B::Hang,
        B::Reset,
        B::Malformed,
        B::DieAfter(vec![]),
        B::ErrorAfter(vec![]),
    ]);
    let r = post(addr, &chat("a", true), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let (text, finish, error, _) = r.stream();
    assert_eq!(
        (text.as_str(), finish.as_deref(), error),
        ("ok", Some("stop"), None)
    );
    assert_eq!(r.header("x-novastack-attempts").as_deref(), Some("6"));
    for class in ["timeout", "connect_error", "protocol_error"] {
        assert!(
            metric(
                addr,
                &format!(
                    "novastack_gateway_upstream_errors_total{{model=\"a\",class=\"{class}\"}}"
                )
            ) >= 1.0,
            "{class}"
        );
    }
    // Every attempt failing: 502 or 504 with the last cause, never a hang.
    a.script([B::Reset, B::Reset, B::Reset, B::Reset, B::Reset, B::Hang]);
    let r = post(addr, &chat("a", false), "");
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "upstream_error");
}

#[test]
fn a_stream_dying_after_the_first_byte_ends_with_an_error_chunk_and_no_duplicates() {
    let a = MockUpstream::start(B::Stream(vec!["never"]));
    let b = MockUpstream::start(B::Stream(vec!["never"]));
    let yaml = format!(
        "models:\n{}{}routes:\n  - when: {{model: main}}\n    use: a\n    fallback: [b]\n{FAST_RETRY}",
        model_yaml("a", &a, ""),
        model_yaml("b", &b, "")
    );
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    for behavior in [
        B::DieAfter(vec!["Hel", "lo"]),
        B::ErrorAfter(vec!["Hel", "lo"]),
    ] {
        a.script([behavior]);
        let before = (a.count(), b.count());
        let r = post(addr, &chat("main", true), "");
        assert_eq!(r.status, 200);
        let (text, finish, error, _) = r.stream();
        assert_eq!(text, "Hello", "exactly what the upstream sent, once");
        assert_eq!(finish, None);
        let e = error.expect("an explicit error chunk");
        assert!(e.contains("mid-stream"), "{e}");
        assert_eq!(
            (a.count(), b.count()),
            (before.0 + 1, before.1),
            "no retry after bytes went out"
        );
    }
    // Non-streaming clients get nothing until the end, so the same death is retried.
    a.script([B::DieAfter(vec!["Hel"])]);
    let r = post(addr, &chat("main", false), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["choices"][0]["message"]["content"], "never");
}

#[test]
fn openai_quirks_are_normalized() {
    let a = MockUpstream::start(B::Stream(vec!["x"]));
    let yaml = format!(
        "models:\n{}",
        model_yaml(
            "a",
            &a,
            ", price: {input_per_mtok: 1000000, output_per_mtok: 2000000}"
        )
    );
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    // Keep-alives, no usage, two [DONE]s: usage is computed, one [DONE] goes out.
    a.script([B::QuirkyStream(vec!["abcd", "efgh"])]);
    let r = post(addr, &chat("a", true), "");
    let (text, finish, error, chunks) = r.stream();
    assert_eq!(
        (text.as_str(), finish.as_deref(), error),
        ("abcdefgh", Some("length"), None)
    );
    let ids: std::collections::HashSet<&str> =
        chunks.iter().map(|c| c["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1, "one id for every chunk");
    assert!(chunks
        .iter()
        .all(|c| c["model"] == "a" && c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    assert_eq!(
        last["usage"]["completion_tokens"], 2,
        "8 characters ≈ 2 tokens"
    );
    // Finish without [DONE]: a proper end.
    a.script([B::NoDone(vec!["fine"])]);
    let r = post(addr, &chat("a", false), "");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "fine");
    // A JSON answer to a streaming request, and its cost from the real usage.
    a.script([B::Json("plain json")]);
    let r = post(addr, &chat("a", false), "");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "plain json");
    assert_eq!(r.json()["usage"]["total_tokens"], 7);
    let cost: f64 = r.header("x-novastack-cost-usd").unwrap().parse().unwrap();
    assert!((cost - (5.0 + 2.0 * 2.0)).abs() < 1e-6, "{cost}");
}

#[test]
fn anthropic_upstreams_are_translated_both_ways() {
    let c = MockUpstream::start(B::Anthropic(vec!["Bonjour", " le monde"]));
    let yaml = format!(
        "models:\n  - {{name: claude, provider: anthropic, base_url: \"http://{}\", upstream_model: claude-x, auth: {{header: x-api-key, key_env: UP_KEY}}}}\n",
        c.addr
    );
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    let body = json!({"model": "claude", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
        {"role": "user", "content": [{"type": "text", "text": "again"}]}], "max_tokens": 2, "temperature": 0.5, "stop": "END", "stream": true,
        "stream_options": {"include_usage": true}});
    let r = post(
        addr,
        &body.to_string(),
        "Authorization: Bearer client-secret\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let (text, finish, error, chunks) = r.stream();
    assert_eq!(
        (text.as_str(), finish.as_deref(), error),
        ("Bonjour le monde", Some("length"), None)
    );
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(21), Some(2))
    );
    let req = c.requests.lock().unwrap()[0].clone();
    assert!(req.head.starts_with("POST /v1/messages "), "{}", req.head);
    assert!(req.head.contains(&format!("x-api-key: {UP_KEY}")));
    assert!(req.head.contains("anthropic-version: 2023-06-01"));
    assert!(
        !req.head.contains("authorization"),
        "no Authorization header upstream: {}",
        req.head
    );
    assert!(!req.head.contains("client-secret") && !req.body.contains("client-secret"));
    let sent: Value = serde_json::from_str(&req.body).unwrap();
    assert_eq!(sent["model"], "claude-x");
    assert_eq!(sent["system"], "be brief");
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "hi\n\nagain"}])
    );
    assert_eq!(
        (sent["max_tokens"].as_u64(), sent["temperature"].as_f64()),
        (Some(2), Some(0.5))
    );
    assert_eq!(sent["stop_sequences"], json!(["END"]));
    // Non-streaming from the same stream.
    let r = post(
        addr,
        &body
            .to_string()
            .replace("\"stream\":true", "\"stream\":false"),
        "",
    );
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        "Bonjour le monde"
    );
    assert_eq!(r.json()["choices"][0]["finish_reason"], "length");
}

#[test]
fn keys_are_translated_and_never_leak() {
    let a = MockUpstream::start(B::Stream(vec!["x"]));
    let yaml = format!(
        "models:\n{}api_keys:\n  - {{name: team, key_env: CLIENT_KEY}}\n",
        model_yaml("a", &a, "")
    );
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY), ("CLIENT_KEY", CLIENT_KEY)]);
    let r = post(addr, &chat("a", false), &auth());
    assert_eq!(r.status, 200, "{}", r.body);
    let req = a.requests.lock().unwrap()[0].clone();
    assert!(
        req.head
            .contains(&format!("authorization: Bearer {UP_KEY}")),
        "{}",
        req.head
    );
    assert!(!req.head.contains(CLIENT_KEY) && !req.body.contains(CLIENT_KEY));
    // An upstream error that quotes our key: the client sees it redacted.
    a.set_default(B::Status(401, None));
    a.script([B::Status(401, None)]);
    let r = post(addr, &chat("a", false), &auth());
    assert!(r.status >= 400);
    assert!(
        !r.body.contains(UP_KEY) && !r.head.contains(UP_KEY),
        "{}",
        r.body
    );
    assert!(r.body.contains("key sent: Bearer [redacted]"), "{}", r.body);
    // Wrong or missing client keys: 401 before anything goes upstream.
    let before = a.count();
    for h in ["", "Authorization: Bearer nope\r\n"] {
        let r = post(addr, &chat("a", false), h);
        assert_eq!(r.status, 401);
    }
    assert_eq!(a.count(), before);
}

#[test]
fn per_key_rate_limits_and_allowed_models() {
    let a = MockUpstream::start(B::Stream(vec!["x"]));
    let yaml = format!(
        "models:\n{}{}api_keys:\n  - {{name: team, key_env: CLIENT_KEY, rpm: 2, tpm: 100000, models: [a]}}\n",
        model_yaml("a", &a, ""),
        model_yaml("b", &a, "")
    );
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY), ("CLIENT_KEY", CLIENT_KEY)]);
    let r = post(addr, &chat("b", false), &auth());
    assert_eq!(r.status, 403, "{}", r.body);
    for i in 0..2 {
        let r = post(addr, &chat("a", false), &auth());
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit-requests").as_deref(), Some("2"));
        assert_eq!(
            r.header("x-ratelimit-remaining-requests"),
            Some(format!("{}", 1 - i))
        );
        assert!(r.header("x-ratelimit-remaining-tokens").is_some());
    }
    let r = post(addr, &chat("a", false), &auth());
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=30).contains(&ra), "{ra}");
    assert_eq!(
        a.count(),
        2,
        "the limited request never reached the upstream"
    );
}

#[test]
fn adaptive_limit_falls_on_429_and_recovers_on_success() {
    let a = MockUpstream::start(B::Stream(vec!["x"]));
    let yaml = format!(
        "models:\n{}retry: {{max_attempts: 1}}\ncooldown: {{failures: 1000}}\n",
        model_yaml("a", &a, ", limits: {max_concurrency: 8}")
    );
    let (addr, gw) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    let limit = || gw.model_state("a").unwrap().adaptive_limit();
    assert_eq!(limit(), 8);
    a.script([
        B::Status(429, None),
        B::Status(429, None),
        B::Status(429, None),
    ]);
    for _ in 0..3 {
        assert_eq!(post(addr, &chat("a", false), "").status, 429);
    }
    assert_eq!(limit(), 1);
    assert_eq!(
        metric(
            addr,
            "novastack_gateway_upstream_adaptive_limit{model=\"a\"}"
        ),
        1.0
    );
    // One slot: concurrent requests queue for it rather than hammering the upstream.
    a.script((0..4).map(|_| B::SlowStream(vec!["s"], Duration::from_millis(100))));
    let t = Instant::now();
    let hs: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(move || post(addr, &chat("a", false), "").status))
        .collect();
    for h in hs {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert!(
        t.elapsed() >= Duration::from_millis(380),
        "requests overlapped under a limit of 1"
    );
    // Additive increase: about `limit` successes per +1, back to the configured 8.
    assert!(limit() <= 4, "{}", limit());
    let mut n = 0;
    while limit() < 8 {
        assert_eq!(post(addr, &chat("a", false), "").status, 200);
        n += 1;
        assert!(n < 100, "limit did not recover");
    }
    assert!(n >= 15, "recovery must be gradual, took {n}");
    assert_eq!(
        metric(
            addr,
            "novastack_gateway_upstream_adaptive_limit{model=\"a\"}"
        ),
        8.0
    );
}

#[test]
fn auto_with_a_budget_picks_the_cheapest_fit_and_task_rules_route() {
    let cheap = MockUpstream::start(B::Stream(vec!["cheap"]));
    let pricey = MockUpstream::start(B::Stream(vec!["pricey"]));
    let smart = MockUpstream::start(B::Stream(vec!["smart"]));
    let yaml = format!(
        "models:\n{}{}{}routes:\n  - when: {{task: reasoning}}\n    use: smart\n  - when: {{model: auto}}\n    use: cheapest_capable\n    require: {{chat: 50}}\n",
        model_yaml("small", &cheap, ", context_window: 64, price: {input_per_mtok: 0.1, output_per_mtok: 0.1}, scores: {chat: 60}"),
        model_yaml("big", &pricey, ", context_window: 100000, price: {input_per_mtok: 5, output_per_mtok: 15}, scores: {chat: 90}"),
        model_yaml("smart", &smart, ", context_window: 100000, price: {input_per_mtok: 50, output_per_mtok: 150}, scores: {chat: 40}")
    );
    let (addr, _) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    let r = post(addr, &chat("auto", false), "");
    assert_eq!(r.header("x-novastack-model").as_deref(), Some("small"));
    // Too long for `small`'s window: the next cheapest that fits.
    let long = json!({"model": "auto", "messages": [{"role": "user", "content": "x".repeat(400)}], "max_tokens": 16}).to_string();
    let r = post(addr, &long, "");
    assert_eq!(r.header("x-novastack-model").as_deref(), Some("big"));
    // A budget `big` would exceed: a clear 400.
    let r = post(addr, &long, "x-novastack-budget-usd: 0.00000001\r\n");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("budget"));
    // The task rule, by header and by metadata.
    let r = post(
        addr,
        &chat("auto", false),
        "x-novastack-task: reasoning\r\n",
    );
    assert_eq!(r.header("x-novastack-model").as_deref(), Some("smart"));
    let body = json!({"model": "auto", "messages": [{"role": "user", "content": "q"}], "metadata": {"task": "reasoning"}}).to_string();
    let r = post(addr, &body, "");
    assert_eq!(r.header("x-novastack-model").as_deref(), Some("smart"));
    assert!(!smart.requests.lock().unwrap()[1].body.contains("metadata"));
    // Unknown model: 404.
    assert_eq!(post(addr, &chat("gpt-9", false), "").status, 404);
    let (_, models) = http(addr, "GET", "/v1/models", "");
    let ids: Vec<String> = serde_json::from_str::<Value>(&models).unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["auto", "small", "big", "smart"]);
}

#[test]
fn local_models_and_reload_without_dropping_in_flight_requests() {
    let slow = MockUpstream::start(B::SlowStream(
        vec!["a", "b", "c", "d", "e"],
        Duration::from_millis(100),
    ));
    let other = MockUpstream::start(B::Stream(vec!["new"]));
    let local = fixtures_dir().join("models/qwen3-f32");
    let yaml = format!(
        "models:\n{}  - {{name: tiny, provider: local, path: \"{}\"}}\n",
        model_yaml("m", &slow, ""),
        local.display()
    );
    let (addr, gw) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    // The local engine answers through the same normalization.
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "temperature": 0,
                      "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}}).to_string();
    let r = post(addr, &body, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let (_, finish, error, chunks) = r.stream();
    assert_eq!((finish.as_deref(), error), (Some("length"), None));
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 5);
    assert_eq!(r.header("x-novastack-model").as_deref(), Some("tiny"));
    // Text completions and n > 1 reach the local engine too.
    let body = json!({"model": "tiny", "prompt": "The capital", "max_tokens": 3, "temperature": 0, "ignore_eos": true, "n": 2}).to_string();
    let (status, _, text) = http_full(addr, "POST", "/v1/completions", &body, "");
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["object"], "text_completion", "{v}");
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 2, "{v}");
    assert_eq!(
        choices[0]["text"], choices[1]["text"],
        "greedy: the same text twice"
    );
    assert_eq!(v["usage"]["completion_tokens"], 6, "{v}");
    let (status, _, text) = http_full(
        addr,
        "POST",
        "/v1/embeddings",
        r#"{"model": "tiny", "input": "x"}"#,
        "",
    );
    assert_eq!(status, 400, "the engine has no embeddings: {text}");
    // Start a slow stream, reload mid-way so `m` points elsewhere: the stream finishes
    // on the old upstream, new requests use the new one.
    let h = std::thread::spawn(move || post(addr, &chat("m", true), ""));
    std::thread::sleep(Duration::from_millis(150));
    let new_yaml = format!("models:\n{}", model_yaml("m", &other, ""));
    let env = |k: &str| (k == "UP_KEY").then(|| UP_KEY.to_string());
    gw.reload(&new_yaml, &env).unwrap();
    assert!(
        gw.reload("models: [{name: broken}]", &env).is_err(),
        "a bad config is refused"
    );
    let r = post(addr, &chat("m", false), "");
    assert_eq!(r.json()["choices"][0]["message"]["content"], "new");
    let (text, finish, error, _) = h.join().unwrap().stream();
    assert_eq!(
        (text.as_str(), finish.as_deref(), error),
        ("abcde", Some("stop"), None)
    );
    assert_eq!(
        post(addr, &chat("tiny", false), "").status,
        404,
        "tiny left the config"
    );
}

/// `/v1/completions`, `/v1/embeddings` and `n` > 1 go through the same routing,
/// limits and attempt loop as chat, to the models that serve them: the upstream gets
/// the client's request on the right endpoint, and answers come back in the client's
/// API's shape, every choice apart (JSON and streamed). Models that do not serve an
/// API are left out of `auto`, and naming one is a 400.
#[test]
fn completions_embeddings_and_several_choices_reach_upstreams_that_serve_them() {
    let a = MockUpstream::start(B::Choices(vec![
        vec!["Hel", "lo"],
        vec!["Bon", "jour", " à tous"],
    ]));
    let e = MockUpstream::start(B::Embeddings(3));
    let c = MockUpstream::start(B::Anthropic(vec!["hi"]));
    let yaml = format!(
        "models:\n{}{}{}{}",
        model_yaml("a", &a, ", price: {input_per_mtok: 1, output_per_mtok: 2}"),
        model_yaml("emb", &e, ""),
        model_yaml("chatonly", &e, ", apis: [chat]"),
        format_args!("  - {{name: claude, provider: anthropic, base_url: \"http://{}\", auth: {{header: x-api-key, key_env: UP_KEY}}}}\n", c.addr),
    );
    let (addr, _gw) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    let call = |path: &str, body: Value| {
        let (status, head, body) = http_full(addr, "POST", path, &body.to_string(), "");
        Resp { status, head, body }
    };
    let sent = |up: &MockUpstream| {
        let r = up.requests.lock().unwrap().last().unwrap().clone();
        let v: Value = serde_json::from_str(&r.body).unwrap();
        (r.head.lines().next().unwrap().to_string(), v)
    };
    // Chat, n = 2: both choices, each with its own text and finish reason.
    let chat_n = |stream: bool| {
        json!({"model": "a", "n": 2, "stream": stream, "stream_options": {"include_usage": true},
               "messages": [{"role": "user", "content": "greet"}]})
    };
    let r = call("/v1/chat/completions", chat_n(false));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let texts: Vec<_> = v["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["index"].clone(),
                c["message"]["content"].clone(),
                c["finish_reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        texts,
        [
            (json!(0), json!("Hello"), json!("stop")),
            (json!(1), json!("Bonjour à tous"), json!("length"))
        ]
    );
    let (line, body) = sent(&a);
    assert!(line.starts_with("POST /v1/chat/completions "), "{line}");
    assert_eq!(
        (body["n"].clone(), body["model"].clone()),
        (json!(2), json!("up-a"))
    );
    // Streamed: interleaved pieces rebuild each choice; every choice opens with its
    // role and ends with its own finish chunk.
    let by_choice = |r: &Resp, text_of: &dyn Fn(&Value) -> Option<String>| {
        let (_, _, error, chunks) = r.stream();
        assert_eq!(error, None);
        let mut out = vec![(String::new(), None::<String>, 0); 2];
        for ch in &chunks {
            for c in ch["choices"].as_array().unwrap() {
                let i = c["index"].as_u64().unwrap() as usize;
                assert!(
                    out[i].1.is_none(),
                    "a piece after choice {i} finished: {}",
                    r.body
                );
                if c["delta"]["role"] == "assistant" {
                    out[i].2 += 1;
                }
                out[i].0 += &text_of(c).unwrap_or_default();
                out[i].1 = c["finish_reason"].as_str().map(str::to_string);
            }
        }
        (
            out,
            chunks.last().unwrap()["usage"]["completion_tokens"].clone(),
        )
    };
    let r = call("/v1/chat/completions", chat_n(true));
    assert_eq!(r.status, 200, "{}", r.body);
    let (out, usage) = by_choice(&r, &|c| c["delta"]["content"].as_str().map(str::to_string));
    assert_eq!(
        out,
        [
            ("Hello".to_string(), Some("stop".to_string()), 1),
            ("Bonjour à tous".to_string(), Some("length".to_string()), 1)
        ]
    );
    assert_eq!(usage, 5);
    // Text completions, JSON and streamed, on the upstream's /completions.
    let comp = |stream: bool| {
        json!({"model": "a", "prompt": ["Say hi", "Say hello"], "max_tokens": 8, "stream": stream,
               "stream_options": {"include_usage": true}, "logprobs": 1})
    };
    let r = call("/v1/completions", comp(false));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "text_completion", "{v}");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"), "{v}");
    assert_eq!(v["choices"][0]["text"], "Hello");
    assert_eq!(v["choices"][1]["text"], "Bonjour à tous");
    assert_eq!(v["choices"][1]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 5);
    let (line, body) = sent(&a);
    assert!(line.starts_with("POST /v1/completions "), "{line}");
    assert_eq!(body["prompt"], json!(["Say hi", "Say hello"]));
    assert_eq!(
        (body["logprobs"].clone(), body.get("messages")),
        (json!(1), None)
    );
    let r = call("/v1/completions", comp(true));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.body.contains("\"object\":\"text_completion\""),
        "{}",
        r.body
    );
    let (out, usage) = by_choice(&r, &|c| c["text"].as_str().map(str::to_string));
    assert_eq!(
        out,
        [
            ("Hello".to_string(), Some("stop".to_string()), 0),
            ("Bonjour à tous".to_string(), Some("length".to_string()), 0)
        ]
    );
    assert_eq!(usage, 5);
    // Embeddings: the vectors as the upstream sent them, the client's model name.
    let r = call(
        "/v1/embeddings",
        json!({"model": "emb", "input": ["one", "two"], "encoding_format": "float"}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "emb");
    assert_eq!(v["data"][1]["embedding"], json!([1.0, 1.01, 1.02]), "{v}");
    assert_eq!(v["usage"], json!({"prompt_tokens": 6, "total_tokens": 6}));
    let (line, body) = sent(&e);
    assert!(line.starts_with("POST /v1/embeddings "), "{line}");
    assert_eq!(
        (
            body["input"].clone(),
            body["encoding_format"].clone(),
            body.get("stream")
        ),
        (json!(["one", "two"]), json!("float"), None)
    );
    // `auto` embeddings: `a` costs more and claude and chatonly do not serve them.
    let r = call("/v1/embeddings", json!({"model": "auto", "input": "x"}));
    assert_eq!(
        (r.status, r.header("x-novastack-model").as_deref()),
        (200, Some("emb")),
        "{}",
        r.body
    );
    // What cannot be served is a 400 naming the field, before any attempt.
    let before = c.count() + e.count();
    for (path, body, param, needle) in [
        (
            "/v1/embeddings",
            json!({"model": "claude", "input": "x"}),
            "model",
            "does not serve /v1/embeddings",
        ),
        (
            "/v1/embeddings",
            json!({"model": "chatonly", "input": "x"}),
            "model",
            "does not serve /v1/embeddings",
        ),
        (
            "/v1/completions",
            json!({"model": "claude", "prompt": "x"}),
            "model",
            "does not serve /v1/completions",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "claude", "n": 2, "messages": [{"role": "user", "content": "x"}]}),
            "n",
            "Anthropic",
        ),
        (
            "/v1/embeddings",
            json!({"model": "emb", "input": "x", "stream": true}),
            "stream",
            "not streamed",
        ),
        (
            "/v1/completions",
            json!({"model": "a"}),
            "prompt",
            "`prompt`",
        ),
    ] {
        let r = call(path, body);
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        let err = &r.json()["error"];
        assert_eq!(err["param"], param, "{path}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{path}: {err}"
        );
    }
    assert_eq!(
        c.count() + e.count(),
        before,
        "no upstream saw a refused request"
    );
}

/// A client that leaves mid-stream takes its upstream request with it: the model's
/// only slot is free again at once, not when the upstream would have finished.
#[test]
fn a_client_leaving_mid_stream_frees_its_slot_at_once() {
    use std::io::{Read, Write};
    let a = MockUpstream::start(B::SlowStream(
        vec![
            "alpha one two three ",
            "beta one two three ",
            "gamma one two three ",
            "delta one two three ",
            "epsilon one two three ",
        ],
        Duration::from_millis(800),
    ));
    let yaml = format!(
        "models:\n{}",
        model_yaml("a", &a, ", limits: {max_concurrency: 1}")
    );
    let (addr, _gw) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    let body = chat("a", true);
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // Read until text has arrived (the key redactor holds back the last few
    // characters of each piece), then leave.
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("alpha") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let in_flight = "novastack_gateway_upstream_in_flight{model=\"a\"}";
    assert_eq!(metric(addr, in_flight), 1.0);
    drop(s);
    // The upstream would take 3.2 s more; the slot is back well before that.
    let t = Instant::now();
    while metric(addr, in_flight) != 0.0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "the slot is still held"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    a.set_default(B::Stream(vec!["ok"]));
    let r = post(addr, &chat("a", true), "");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.stream().0, "ok");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
}

/// Tools, `tool_choice`, `parallel_tool_calls` and `response_format` reach an
/// OpenAI-compatible upstream unchanged, and its tool calls come back as OpenAI's, JSON
/// and streamed (the deltas rebuild the same calls).
#[test]
fn tool_calls_pass_through_openai_upstreams_both_ways() {
    let a = MockUpstream::start(B::ToolCalls(vec![
        ("get_weather", vec!["{\"city\":", " \"Paris\"}"]),
        ("get_time", vec!["{\"tz\": \"CET\"}"]),
    ]));
    let yaml = format!("models:\n{}", model_yaml("a", &a, ""));
    let (addr, _gw) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let request = |model: &str, stream: bool| {
        json!({"model": model, "stream": stream, "tools": tools, "tool_choice": "required", "parallel_tool_calls": true,
               "response_format": {"type": "text"},
               "messages": [
                   {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
                   {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function",
                       "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
                   {"role": "tool", "tool_call_id": "call_0", "content": "sunny"}]})
        .to_string()
    };
    let expected = json!([
        {"id": "call_up_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "call_up_1", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\": \"CET\"}"}}]);
    // JSON.
    let r = post(addr, &request("a", false), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["tool_calls"], expected, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], Value::Null, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    // On the wire: the client's fields, unchanged.
    let sent: Value = serde_json::from_str(&a.requests.lock().unwrap()[0].body).unwrap();
    let asked: Value = serde_json::from_str(&request("a", false)).unwrap();
    for k in [
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "messages",
    ] {
        assert_eq!(sent[k], asked[k], "{k}: {sent}");
    }
    // Streamed: the deltas rebuild the same calls.
    let r = post(addr, &request("a", true), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let (text, finish, error, chunks) = r.stream();
    assert_eq!(
        (text.as_str(), finish.as_deref(), error),
        ("", Some("tool_calls"), None)
    );
    assert_eq!(calls_from_deltas(&chunks), expected);
}

/// Rebuilds streamed tool calls from their deltas (id, type and name first).
fn calls_from_deltas(chunks: &[Value]) -> Value {
    let mut calls: Vec<Value> = Vec::new();
    for d in chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
    {
        for piece in d {
            let i = piece["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                assert!(
                    piece["id"].is_string() && piece["function"]["name"].is_string(),
                    "{piece}"
                );
                calls.push(json!({"id": piece["id"], "type": piece["type"],
                    "function": {"name": piece["function"]["name"], "arguments": ""}}));
            }
            let args = piece["function"]["arguments"].as_str().unwrap_or("");
            let so_far = calls[i]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_string();
            calls[i]["function"]["arguments"] = Value::from(so_far + args);
        }
    }
    Value::from(calls)
}

/// Tools through an Anthropic upstream: OpenAI tools become `{name, description,
/// input_schema}`, `tool_choice` Anthropic's, assistant `tool_calls` `tool_use` blocks and
/// `tool` messages `tool_result` blocks in a user turn; `tool_use` blocks and
/// `input_json_delta` events come back as OpenAI tool calls and deltas, `tool_use` as
/// `finish_reason: tool_calls`. `response_format` json_schema, which Anthropic lacks, is
/// a 400 naming it.
#[test]
fn tool_calls_are_translated_for_anthropic_upstreams_both_ways() {
    let c = MockUpstream::start(B::AnthropicTools(
        "Let me check.",
        vec![("get_weather", vec!["{\"city\": ", "\"Paris\"}"])],
    ));
    let yaml = format!(
        "models:\n  - {{name: claude, provider: anthropic, base_url: \"{}\", auth: {{header: x-api-key, key_env: UP_KEY}}}}\n",
        c.url()
    );
    let (addr, _gw) = start_gateway(&yaml, &[("UP_KEY", UP_KEY)]);
    let request = |stream: bool, extra: Value| {
        let mut v = json!({"model": "claude", "stream": stream, "max_tokens": 64,
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "Weather in Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [{"id": "toolu_a", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_a", "content": "sunny"},
                {"role": "user", "content": "And Paris?"}]});
        if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
            o.extend(e);
        }
        v.to_string()
    };
    let expected = json!([{"id": "toolu_0", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]);
    // Streamed.
    let r = post(addr, &request(true, json!({})), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let (text, finish, error, chunks) = r.stream();
    assert_eq!(
        (text.as_str(), finish.as_deref(), error),
        ("Let me check.", Some("tool_calls"), None)
    );
    assert_eq!(calls_from_deltas(&chunks), expected);
    // The request on the wire, in Anthropic's shapes.
    let sent: Value = serde_json::from_str(&c.requests.lock().unwrap()[0].body).unwrap();
    assert_eq!(
        sent["tools"],
        json!([{"name": "get_weather", "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
    );
    assert_eq!(sent["system"], "be brief");
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "user", "content": "Weather in Rome?"},
            {"role": "assistant", "content": [{"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {"city": "Rome"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "sunny"},
                {"type": "text", "text": "And Paris?"}]}])
    );
    // JSON.
    let r = post(addr, &request(false, json!({})), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["message"]["content"], "Let me check.");
    // (A whole `tool_use` block's input comes back as compact JSON text.)
    let mut compact = expected.clone();
    compact[0]["function"]["arguments"] = Value::from("{\"city\":\"Paris\"}");
    assert_eq!(v["choices"][0]["message"]["tool_calls"], compact, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // What Anthropic has no equivalent for is refused before any attempt.
    let before = c.count();
    let schema = json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}});
    let r = post(addr, &request(false, schema), "");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "response_format", "{}", r.body);
    let audio = json!({"messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}]}]});
    let r = post(addr, &request(false, audio), "");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"]["param"], "messages", "{}", r.body);
    assert_eq!(c.count(), before);
    // Image parts become image blocks: base64 from a data URL, else the URL.
    let images = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "Compare"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.jpg"}}]}]});
    let r = post(addr, &request(false, images), "");
    assert_eq!(r.status, 200, "{}", r.body);
    let sent: Value = serde_json::from_str(&c.requests.lock().unwrap()[before].body).unwrap();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [
            {"type": "text", "text": "Compare"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/b.jpg"}}]}])
    );
}

/// Anthropic's Messages API in front of the gateway: a client speaking `/v1/messages`
/// (with `x-api-key`) reaches an OpenAI upstream; the upstream gets an OpenAI request
/// (tools as functions, `any` as `required`, tool_use / tool_result as calls and a
/// `tool` message), and the answer comes back as `tool_use` blocks, JSON and streamed.
#[test]
fn anthropic_clients_reach_openai_upstreams_through_v1_messages() {
    let a = MockUpstream::start(B::ToolCalls(vec![(
        "get_weather",
        vec!["{\"city\":", " \"Paris\"}"],
    )]));
    let yaml = format!(
        "models:\n{}api_keys:\n  - {{name: team, key_env: CLIENT_KEY}}\n",
        model_yaml("a", &a, "")
    );
    let (addr, _gw) = start_gateway(&yaml, &[("UP_KEY", UP_KEY), ("CLIENT_KEY", CLIENT_KEY)]);
    let request = |stream: bool| {
        json!({"model": "a", "max_tokens": 64, "stream": stream, "system": "be brief",
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object",
                "properties": {"city": {"type": "string"}}}}],
            "tool_choice": {"type": "any"},
            "messages": [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_0", "name": "get_weather", "input": {"city": "Rome"}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_0", "content": "sunny"}]}]})
        .to_string()
    };
    let key = format!("x-api-key: {CLIENT_KEY}\r\nanthropic-version: 2023-06-01\r\n");
    let (status, _, body) = http_full(addr, "POST", "/v1/messages", &request(false), &key);
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["stop_reason"], "tool_use", "{v}");
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "call_up_0", "name": "get_weather", "input": {"city": "Paris"}}])
    );
    let sent: Value = serde_json::from_str(&a.requests.lock().unwrap()[0].body).unwrap();
    assert_eq!(sent["tool_choice"], "required", "{sent}");
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(
        sent["messages"][0],
        json!({"role": "system", "content": "be brief"})
    );
    assert_eq!(
        sent["messages"][2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Rome\"}"
    );
    assert_eq!(
        sent["messages"][3],
        json!({"role": "tool", "tool_call_id": "toolu_0", "content": "sunny"})
    );
    // Streamed: Anthropic's events, the tool input as input_json_delta pieces.
    let (status, _, body) = http_full(addr, "POST", "/v1/messages", &request(true), &key);
    assert_eq!(status, 200, "{body}");
    let events: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"), "{body}");
    assert_eq!(events.last(), Some(&"message_stop"), "{body}");
    let data: Vec<Value> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let json_text: String = data
        .iter()
        .filter(|d| d["delta"]["type"] == "input_json_delta")
        .map(|d| d["delta"]["partial_json"].as_str().unwrap())
        .collect();
    assert_eq!(json_text, "{\"city\": \"Paris\"}");
    assert!(data
        .iter()
        .any(|d| d["content_block"]["type"] == "tool_use"
            && d["content_block"]["name"] == "get_weather"));
    assert!(data
        .iter()
        .any(|d| d["type"] == "message_delta" && d["delta"]["stop_reason"] == "tool_use"));
    // A wrong key: Anthropic's error shape.
    let (status, _, body) = http_full(
        addr,
        "POST",
        "/v1/messages",
        &request(false),
        "x-api-key: wrong\r\n",
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, v["type"].as_str()), (401, Some("error")), "{body}");
    assert_eq!(v["error"]["type"], "authentication_error");
}

#[test]
fn a_replica_pool_moves_to_the_next_replica_ejects_and_brings_back() {
    let a = MockUpstream::start(B::Stream(vec!["from a"]));
    let b = MockUpstream::start(B::Stream(vec!["from b"]));
    let yaml = format!(
        "models:\n  - {{name: m, provider: openai, replicas: [\"{}\", \"{}\"], balance: round_robin, auth: none, timeout_s: 2, health_check: {{interval_s: 0.2, timeout_s: 1, failures: 1}}}}\n{FAST_RETRY}",
        a.url(),
        b.url()
    );
    let (addr, _gw) = start_gateway(&yaml, &[]);
    let healthy = |u: &MockUpstream| {
        metric(
            addr,
            &format!(
                "novastack_gateway_replica_healthy{{model=\"m\",replica=\"{}\"}}",
                u.url()
            ),
        )
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // Round robin: both serve, and the answer says which.
    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = post(addr, &chat("m", false), "");
        assert_eq!(r.status, 200, "{}", r.body);
        seen.push(r.header("x-novastack-replica").unwrap());
    }
    seen.sort();
    let mut want = vec![a.url(), b.url()];
    want.sort();
    assert_eq!(seen, want);

    // Replica a fails (and so do its health checks): every request is answered by b,
    // a's failures move on to b at once, and a leaves the pool.
    a.set_default(B::Status(503, None));
    for _ in 0..4 {
        let r = post(addr, &chat("m", false), "");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-novastack-replica"), Some(b.url()));
        assert!(r.body.contains("from b"));
    }
    wait("a is ejected", &|| healthy(&a) == 0.0);
    assert_eq!(healthy(&b), 1.0);
    let sent_to_a = a.count();
    for _ in 0..3 {
        let r = post(addr, &chat("m", true), "");
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-novastack-replica"), Some(b.url()));
    }
    // Only health checks reach an ejected replica.
    assert!(a.count() - sent_to_a <= 20);
    assert!(a
        .requests
        .lock()
        .unwrap()
        .iter()
        .skip(sent_to_a)
        .all(|r| r.head.starts_with("GET /health")));

    // a recovers: a health check brings it back, and it serves again.
    a.set_default(B::Stream(vec!["from a"]));
    wait("a is back", &|| healthy(&a) == 1.0);
    let back = (0..4).any(|_| {
        let r = post(addr, &chat("m", false), "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.header("x-novastack-replica") == Some(a.url())
    });
    assert!(back, "a serves again");
    let ejections = format!(
        "novastack_gateway_replica_ejections_total{{model=\"m\",replica=\"{}\"}}",
        a.url()
    );
    assert_eq!(metric(addr, &ejections), 1.0);
}
