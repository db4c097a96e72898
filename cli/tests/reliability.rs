//! The reliability suite's process-level tests: `novastack serve` as a real process on
//! 127.0.0.1, driven the way hostile and careless clients drive it.
//!
//! - a corpus of bad inputs (malformed HTTP and JSON, every field out of range or of the
//!   wrong type, on every route): each gets a 4xx with OpenAI error JSON naming the field,
//!   the server stays healthy and no KV block is left in use;
//! - a disconnect storm: clients vanish at every point of a request's life; every KV
//!   block comes back, each abort is counted as finished, and the server still answers
//!   exactly;
//! - KV exhaustion: far more concurrent work than the cache holds; preemption keeps every
//!   greedy output equal to the request run alone;
//! - schemathesis over `/openapi.json` when `NOVASTACK_SCHEMATHESIS` names its binary
//!   (CI installs a pinned version and sets `NOVASTACK_REQUIRE_SCHEMATHESIS=1`).
//!
//! Bursts, slow connections and SIGTERM have their own files (`serve_signals.rs`,
//! `tests/tests/serve_limits.rs`, `tests/tests/connections.rs`); gateway faults are in
//! `tests/tests/gateway_faults.rs`.

#![cfg(unix)]

mod common;

use common::process::{fixture, post_json, request, send_raw, Answer, Server};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What a bad input must get.
struct Case {
    label: String,
    raw: Vec<u8>,
    /// Accepted statuses.
    status: &'static [u16],
    /// The `param` the error must name, when the input has one bad field.
    param: Option<&'static str>,
}

fn http_post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    raw
}

fn json_case(
    path: &str,
    body: &Value,
    status: &'static [u16],
    param: Option<&'static str>,
) -> Case {
    Case {
        label: format!("POST {path} {}", truncate(&body.to_string())),
        raw: http_post(path, "application/json", body.to_string().as_bytes()),
        status,
        param,
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 160 {
        s.to_string()
    } else {
        format!("{}… ({} bytes)", &s[..s.floor_char_boundary(160)], s.len())
    }
}

const BAD: &[u16] = &[400];

/// Sampling and length fields shared by both generation routes: (field, bad value).
fn sampling_cases() -> Vec<(&'static str, Value)> {
    vec![
        ("max_tokens", json!(-1)),
        ("max_tokens", json!(0)),
        ("max_tokens", json!(4.5)),
        ("max_tokens", json!("5")),
        ("max_tokens", json!(true)),
        ("max_tokens", json!(1_000_000_000)),
        ("max_tokens", json!(18446744073709551615u64)),
        ("temperature", json!(-1)),
        ("temperature", json!(2.5)),
        ("temperature", json!(1000)),
        ("temperature", json!(1e39)),
        ("temperature", json!("hot")),
        ("top_p", json!(0)),
        ("top_p", json!(-0.5)),
        ("top_p", json!(1.5)),
        ("top_p", json!([1])),
        ("top_k", json!(1.5)),
        ("top_k", json!("3")),
        ("min_p", json!(2)),
        ("min_p", json!(-1)),
        ("n", json!(0)),
        ("n", json!(-1)),
        ("n", json!(1000)),
        ("n", json!(2.5)),
        ("presence_penalty", json!(3)),
        ("presence_penalty", json!(-2.5)),
        ("presence_penalty", json!(1e39)),
        ("frequency_penalty", json!(5)),
        ("frequency_penalty", json!(-100)),
        ("frequency_penalty", json!("x")),
        ("repetition_penalty", json!(0)),
        ("repetition_penalty", json!(-1)),
        ("repetition_penalty", json!(1e30)),
        ("logit_bias", json!({"x": 1})),
        ("logit_bias", json!({"99999999": 1})),
        ("logit_bias", json!({"-5": 1})),
        ("logit_bias", json!({"5": 1000})),
        ("logit_bias", json!({"5": -1e39})),
        ("logit_bias", json!({"5": "a"})),
        ("logit_bias", json!([5])),
        ("seed", json!("x")),
        ("seed", json!(1.5)),
        ("stop", json!(["a", "b", "c", "d", "e"])),
        ("stop", json!([1])),
        ("stop", json!({"a": 1})),
        ("stop", json!("x".repeat(2000))),
        ("stream", json!("yes")),
        ("stream_options", json!({"include_usage": "x"})),
        ("stream_options", json!("x")),
        ("ignore_eos", json!(3)),
        ("stop_token_ids", json!([-1])),
        ("stop_token_ids", json!("x")),
    ]
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    let chat =
        json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let comp = json!({"model": "m", "prompt": "Hi", "max_tokens": 4});
    // Malformed bodies on every JSON route.
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/tokenize",
        "/detokenize",
    ] {
        for (what, body) in [
            ("empty", &b""[..]),
            ("open brace", b"{"),
            ("array", b"[]"),
            ("null", b"null"),
            ("number", b"1"),
            ("string", b"\"x\""),
            ("trailing garbage", b"{}x"),
            ("invalid utf-8", b"{\"model\": \"\xff\xfe\"}"),
            ("nul byte", b"{\"model\": \"m\x00\"}"),
            ("duplicate comma", b"{\"model\": \"m\",,}"),
        ] {
            cases.push(Case {
                label: format!("POST {path} {what}"),
                raw: http_post(path, "application/json", body),
                status: BAD,
                param: None,
            });
        }
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        cases.push(Case {
            label: format!("POST {path} nested 100,000 deep"),
            raw: http_post(path, "application/json", deep.as_bytes()),
            status: BAD,
            param: None,
        });
    }
    // Every sampling field, on both generation routes.
    for (field, v) in sampling_cases() {
        for base in [&chat, &comp] {
            let path = if base.get("messages").is_some() {
                "/v1/chat/completions"
            } else {
                "/v1/completions"
            };
            let mut b = base.clone();
            b[field] = v.clone();
            cases.push(json_case(path, &b, BAD, Some(field)));
        }
    }
    // Chat messages.
    for (v, status) in [
        (json!(null), BAD),
        (json!([]), BAD),
        (json!("x"), BAD),
        (json!([1]), BAD),
        (json!([{"role": "alien", "content": "x"}]), BAD),
        (json!([{"content": "x"}]), BAD),
        (json!([{"role": "user", "content": 123}]), BAD),
        (
            json!([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
            BAD,
        ),
        (
            json!([{"role": "user", "content": [{"type": "text"}]}]),
            BAD,
        ),
        (
            json!([{"role": "user", "content": [{"type": "text", "text": 5}]}]),
            BAD,
        ),
        (json!([{"role": 5, "content": "x"}]), BAD),
    ] {
        let mut b = chat.clone();
        b["messages"] = v;
        cases.push(json_case(
            "/v1/chat/completions",
            &b,
            status,
            Some("messages"),
        ));
    }
    let mut b = chat.clone();
    b.as_object_mut().unwrap().remove("messages");
    cases.push(json_case("/v1/chat/completions", &b, BAD, None));
    for (field, v) in [
        (
            "tools",
            json!([{"type": "function", "function": {"name": "no spaces"}}]),
        ),
        ("tools", json!({"type": "function"})),
        ("tool_choice", json!("required")),
        ("response_format", json!({"type": "yaml"})),
        ("response_format", json!({"type": "json_schema"})),
        ("guided_regex", json!("(unclosed")),
        ("guided_choice", json!([])),
        ("guided_grammar", json!("root ::= undefined")),
        ("top_logprobs", json!(21)),
        ("top_logprobs", json!(-1)),
        ("logprobs", json!("yes")),
    ] {
        let mut b = chat.clone();
        b[field] = v;
        if field == "top_logprobs" {
            b["logprobs"] = json!(true);
        }
        cases.push(json_case("/v1/chat/completions", &b, BAD, Some(field)));
    }
    // Completion prompts.
    for v in [
        json!(null),
        json!(123),
        json!([]),
        json!([[]]),
        json!([-1]),
        json!([999_999_999]),
        json!([1.5]),
        json!(["a", 1]),
        json!({"x": 1}),
        json!([[1], "a"]),
    ] {
        let mut b = comp.clone();
        b["prompt"] = v;
        cases.push(json_case("/v1/completions", &b, BAD, Some("prompt")));
    }
    for (field, v) in [
        ("logprobs", json!(21)),
        ("logprobs", json!(-1)),
        ("echo", json!("x")),
    ] {
        let mut b = comp.clone();
        b[field] = v;
        cases.push(json_case("/v1/completions", &b, BAD, Some(field)));
    }
    // Models that do not exist, and ids of the wrong type.
    for path in ["/v1/chat/completions", "/v1/completions"] {
        let base = if path.contains("chat") { &chat } else { &comp };
        for (v, status, param) in [
            (json!("nope"), &[404u16][..], Some("model")),
            (json!(123), BAD, Some("model")),
            (json!(["m"]), BAD, Some("model")),
        ] {
            let mut b = base.clone();
            b["model"] = v;
            cases.push(json_case(path, &b, status, param));
        }
    }
    // Tokenize / detokenize.
    for (body, status, param) in [
        (
            json!({"model": "nope", "prompt": "x"}),
            &[404u16][..],
            Some("model"),
        ),
        (json!({"model": "m"}), BAD, None),
        (json!({"model": "m", "prompt": 5}), BAD, Some("prompt")),
        (
            json!({"model": "m", "messages": "x"}),
            BAD,
            Some("messages"),
        ),
    ] {
        cases.push(json_case("/tokenize", &body, status, param));
    }
    for (body, status, param) in [
        (
            json!({"model": "nope", "tokens": [1]}),
            &[404u16][..],
            Some("model"),
        ),
        (json!({"model": "m", "tokens": [-1]}), BAD, Some("tokens")),
        (json!({"model": "m", "tokens": ["a"]}), BAD, Some("tokens")),
        (
            json!({"model": "m", "tokens": [999_999_999]}),
            BAD,
            Some("tokens"),
        ),
        (json!({"model": "m"}), BAD, None),
    ] {
        cases.push(json_case("/detokenize", &body, status, param));
    }
    // HTTP-level mistakes.
    let raw = |label: &str, raw: Vec<u8>, status: &'static [u16]| Case {
        label: label.to_string(),
        raw,
        status,
        param: None,
    };
    cases.push(raw(
        "GET on a POST route",
        b"GET /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        &[405],
    ));
    cases.push(raw(
        "DELETE /v1/models",
        b"DELETE /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        &[405],
    ));
    cases.push(raw(
        "unknown route",
        b"GET /v2/everything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        &[404],
    ));
    cases.push(raw(
        "unknown model id",
        b"GET /v1/models/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".to_vec(),
        &[404],
    ));
    cases.push(raw(
        "body over --max-body-bytes",
        http_post("/v1/completions", "application/json", &vec![b' '; 2 << 20]),
        &[413],
    ));
    cases.push(raw(
        "text/plain JSON",
        http_post("/v1/completions", "text/plain", comp.to_string().as_bytes()),
        &[200, 400, 415],
    ));
    cases.push(raw(
        "no content type",
        format!(
            "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{comp}",
            comp.to_string().len()
        )
        .into_bytes(),
        &[200, 400, 415],
    ));
    cases.push(raw(
        "content-length larger than the body",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{}".to_vec(),
        &[400, 408],
    ));
    cases.push(raw(
        "bad chunked encoding",
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
        &[400],
    ));
    cases.push(raw(
        "a 600 KB header",
        format!(
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(600 << 10)
        )
        .into_bytes(),
        &[431, 400],
    ));
    cases.push(raw(
        "garbage request line",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS hello\r\n\r\n".to_vec(),
        &[400],
    ));
    cases
}

/// Checks one answer to a bad input: the status, OpenAI error JSON (except where the
/// HTTP layer answers before the app), the named field.
fn check(case: &Case, a: &Answer) -> Result<(), String> {
    if !case.status.contains(&a.status) {
        return Err(format!(
            "status {} (wanted {:?}): {}",
            a.status,
            case.status,
            truncate(&a.body_text())
        ));
    }
    if a.status == 200 {
        return Ok(());
    }
    // hyper answers malformed HTTP (400, 431) itself, with an empty body.
    let from_hyper = a.body.is_empty() && matches!(a.status, 400 | 431);
    if from_hyper {
        return Ok(());
    }
    let v = a.json().ok_or_else(|| {
        format!(
            "{} without a JSON body: {}",
            a.status,
            truncate(&a.body_text())
        )
    })?;
    let msg = v["error"]["message"].as_str().unwrap_or("");
    if msg.is_empty() || v["error"]["type"].as_str().is_none() {
        return Err(format!("not OpenAI error JSON: {v}"));
    }
    if let Some(p) = case.param {
        let got = v["error"]["param"].as_str().unwrap_or("");
        let ok = got == p || got.starts_with(&format!("{p}.")) || got.starts_with(&format!("{p}["));
        if !ok {
            return Err(format!("param {got:?}, wanted {p:?}: {msg}"));
        }
    }
    Ok(())
}

#[test]
fn every_bad_input_is_a_clear_4xx_and_leaves_nothing_behind() {
    let server = Server::start(
        &fixture("llama-f32"),
        &["--max-body-bytes", "1048576", "--request-body-timeout", "2"],
    );
    let cases = corpus();
    let mut failures = Vec::new();
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    for case in &cases {
        let a = send_raw(server.addr, &case.raw);
        *by_status.entry(a.status).or_default() += 1;
        if let Err(e) = check(case, &a) {
            failures.push(format!("{}: {e}", case.label));
        }
    }
    eprintln!(
        "bad inputs: {} tried, answers by status {by_status:?}",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs answered wrongly:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert!(cases.len() >= 150, "{} cases", cases.len());
    // Still healthy, still exact, nothing left in use, nothing counted as a 5xx.
    assert_eq!(request(server.addr, "GET", "/health", &[], b"").status, 200);
    let ok = post_json(
        server.addr,
        "/v1/completions",
        r#"{"model": "m", "prompt": [1, 2, 3], "max_tokens": 4, "temperature": 0}"#,
    );
    assert_eq!(ok.status, 200, "{}", ok.body_text());
    server.wait_kv_free(Duration::from_secs(10));
    let metrics = request(server.addr, "GET", "/metrics", &[], b"").body_text();
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("novastack_http_requests_total") && l.contains("status=\"5")),
        "{metrics}"
    );
}

/// How a client leaves.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// Mid-headers.
    InHeaders,
    /// After the headers, before all of the body.
    InBody,
    /// A non-streaming request, before the answer.
    BeforeAnswer,
    /// A stream, after its first bytes.
    AfterFirstChunk,
    /// A stream, after a few hundred bytes.
    MidStream,
}

#[test]
fn a_disconnect_storm_frees_every_block_and_counts_every_abort() {
    use std::io::{Read, Write};
    let server = Server::start(&fixture("llama-f32"), &["--max-num-seqs", "32"]);
    let finished_before = finished(&server);
    let leaves = [
        Leave::InHeaders,
        Leave::InBody,
        Leave::BeforeAnswer,
        Leave::AfterFirstChunk,
        Leave::MidStream,
    ];
    let mut started = 0usize;
    // Four waves of 40 clients, every way of leaving in each.
    for wave in 0..4 {
        let mut handles = Vec::new();
        for i in 0..40 {
            let leave = leaves[(i + wave) % leaves.len()];
            let addr = server.addr;
            let stream = matches!(leave, Leave::AfterFirstChunk | Leave::MidStream);
            if matches!(
                leave,
                Leave::BeforeAnswer | Leave::AfterFirstChunk | Leave::MidStream
            ) {
                started += 1;
            }
            handles.push(std::thread::spawn(move || {
                let body = json!({"model": "m", "prompt": [1 + (i % 50) as u32, 2, 3, 4, 5, 6, 7, 8], "max_tokens": 600, "ignore_eos": true, "stream": stream, "n": 1 + i % 3}).to_string();
                let head = format!("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len());
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                match leave {
                    Leave::InHeaders => {
                        let _ = s.write_all(&head.as_bytes()[..head.len() / 2]);
                    }
                    Leave::InBody => {
                        let _ = s.write_all(head.as_bytes());
                        let _ = s.write_all(&body.as_bytes()[..body.len() / 2]);
                    }
                    Leave::BeforeAnswer => {
                        let _ = s.write_all((head + &body).as_bytes());
                        std::thread::sleep(Duration::from_millis(30 + 7 * i as u64));
                    }
                    Leave::AfterFirstChunk | Leave::MidStream => {
                        let _ = s.write_all((head + &body).as_bytes());
                        let want = if matches!(leave, Leave::MidStream) { 600 } else { 1 };
                        let mut got = 0;
                        let mut buf = [0u8; 256];
                        while got < want {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(k) => got += k,
                            }
                        }
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
    }
    server.wait_kv_free(Duration::from_secs(60));
    // Every admitted request finished (most by abort), none is stuck waiting or running.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let waiting = server.metric("novastack_requests_waiting{model=\"m\"}");
        let running = server.metric("novastack_requests_running{model=\"m\"}");
        if waiting == 0.0 && running == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{waiting} waiting, {running} running after the storm"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let aborted =
        server.metric("novastack_request_finished_total{model=\"m\",finished_reason=\"abort\"}");
    assert!(
        aborted >= 1.0,
        "no abort counted as finished ({started} requests started)\n{}",
        request(server.addr, "GET", "/metrics", &[], b"").body_text()
    );
    assert!(finished(&server) > finished_before);
    // Still exact afterwards: greedy output equals a fresh server's.
    let r = r#"{"model": "m", "prompt": [1, 2, 3, 4], "max_tokens": 16, "temperature": 0, "ignore_eos": true}"#;
    let after = post_json(server.addr, "/v1/completions", r);
    assert_eq!(after.status, 200, "{}", after.body_text());
    let fresh = Server::start(&fixture("llama-f32"), &[]);
    let want = post_json(fresh.addr, "/v1/completions", r);
    assert_eq!(text(&after), text(&want));
}

fn finished(server: &Server) -> f64 {
    let m = request(server.addr, "GET", "/metrics", &[], b"").body_text();
    m.lines()
        .filter(|l| l.starts_with("novastack_request_finished_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn text(a: &Answer) -> String {
    a.json().unwrap()["choices"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn kv_exhaustion_preempts_without_changing_any_output() {
    // 1 MiB of f32 KV for llama-f32 (2 layers, 2 KV heads of 16): 128 blocks of 16
    // tokens, 2,048 tokens in all; 24 requests of 8 + 200 tokens need 2.4 times that.
    let server = Server::start(
        &fixture("llama-f32"),
        &["--kv-cache-mb", "1", "--max-num-seqs", "24"],
    );
    let total = server.metric("novastack_kv_blocks_total{model=\"m\"}");
    assert_eq!(total, 128.0);
    let body = |i: u32| {
        json!({"model": "m", "prompt": [i + 1, i + 2, 7, 9, 11, 13, 17, 19], "max_tokens": 200, "temperature": 0, "ignore_eos": true}).to_string()
    };
    let addr = server.addr;
    let handles: Vec<_> = (0..24u32)
        .map(|i| std::thread::spawn(move || post_json(addr, "/v1/completions", &body(i))))
        .collect();
    let together: Vec<String> = handles
        .into_iter()
        .map(|h| text(&h.join().unwrap()))
        .collect();
    let preempted = server.metric("novastack_preemptions_total{model=\"m\"}");
    assert!(
        preempted >= 1.0,
        "the cache never ran out: the test proves nothing"
    );
    server.wait_kv_free(Duration::from_secs(10));
    for (i, want) in together.iter().enumerate() {
        let alone = text(&post_json(addr, "/v1/completions", &body(i as u32)));
        assert_eq!(&alone, want, "request {i} changed under preemption");
    }
    server.wait_kv_free(Duration::from_secs(10));
}

#[test]
fn a_burst_of_500_never_queues_past_the_limit_and_every_refusal_is_a_429() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    const BURST: usize = 500;
    const MAX_WAITING: usize = 8;
    const MAX_SEQS: usize = 4;
    let server = Server::start(
        &fixture("llama-f32"),
        &["--max-waiting", "8", "--max-num-seqs", "4"],
    );
    // A stream counts as admitted from its 200 until its end; at no moment may more than
    // the running batch plus the queue limit be admitted.
    let open = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(BURST));
    let addr = server.addr;
    let handles: Vec<_> = (0..BURST)
        .map(|i| {
            let (open, peak, barrier) = (open.clone(), peak.clone(), barrier.clone());
            std::thread::spawn(move || -> Result<u16, String> {
                let body = json!({"model": "m", "prompt": [1 + (i % 200) as u32, 2, 3], "max_tokens": 24, "ignore_eos": true, "stream": true}).to_string();
                let mut s = std::net::TcpStream::connect(addr).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                barrier.wait();
                write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).map_err(|e| e.to_string())?;
                let mut r = BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).map_err(|e| e.to_string())?;
                let status: u16 = line.split_whitespace().nth(1).and_then(|x| x.parse().ok()).ok_or(line.clone())?;
                if status == 200 {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    let mut rest = Vec::new();
                    let _ = std::io::Read::read_to_end(&mut r, &mut rest);
                    open.fetch_sub(1, Ordering::SeqCst);
                    if !String::from_utf8_lossy(&rest).contains("data: [DONE]") {
                        return Err("a stream ended without [DONE]".into());
                    }
                    return Ok(200);
                }
                let mut head = Vec::new();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).map_err(|e| e.to_string())? == 0 || l == "\r\n" {
                        break;
                    }
                    head.push(l.to_ascii_lowercase());
                }
                let mut body = Vec::new();
                let _ = std::io::Read::read_to_end(&mut r, &mut body);
                let json: Option<Value> = serde_json::from_slice(&body).ok();
                if status != 429 || !head.iter().any(|h| h.starts_with("retry-after:")) || json.is_none() {
                    return Err(format!("{status} {head:?} {}", String::from_utf8_lossy(&body)));
                }
                Ok(429)
            })
        })
        .collect();
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for h in handles {
        match h.join().unwrap() {
            Ok(s) => *counts.entry(s).or_default() += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let peak = peak.load(Ordering::SeqCst);
    eprintln!("burst of {BURST}: {counts:?}, at most {peak} admitted at once");
    assert!(
        counts.get(&200).copied().unwrap_or(0) >= MAX_SEQS,
        "{counts:?}"
    );
    assert!(counts.get(&429).copied().unwrap_or(0) >= 1, "{counts:?}");
    // The server's own high-water mark of admitted-and-waiting sequences is exact.
    let waiting_max = server.metric("novastack_requests_admitted_waiting_max{model=\"m\"}");
    assert!(
        (1.0..=MAX_WAITING as f64).contains(&waiting_max),
        "{waiting_max} sequences waited at once (limit {MAX_WAITING})"
    );
    // Seen from the clients, a stream holds its slot until they read its end, a little
    // after the server has freed it: allow 2 for that lag (before the fix, 183 to 250
    // requests queued).
    assert!(
        peak <= MAX_WAITING + MAX_SEQS + 2,
        "{peak} requests admitted at once: past --max-waiting {MAX_WAITING} plus the batch of {MAX_SEQS}"
    );
    server.wait_kv_free(Duration::from_secs(30));
}

#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    let Some(st) = std::env::var_os("NOVASTACK_SCHEMATHESIS") else {
        assert!(
            std::env::var_os("NOVASTACK_REQUIRE_SCHEMATHESIS").is_none(),
            "NOVASTACK_REQUIRE_SCHEMATHESIS is set but NOVASTACK_SCHEMATHESIS is not"
        );
        eprintln!("NOVASTACK_SCHEMATHESIS not set (CI installs it): skipping");
        return;
    };
    let server = Server::start(&fixture("llama-f32"), &["--max-waiting", "100000"]);
    let report = std::env::temp_dir().join(format!("ns-schemathesis-{}", std::process::id()));
    let out = std::process::Command::new(st)
        .arg("run")
        .arg(format!("http://{}/openapi.json", server.addr))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,coverage,fuzzing",
            "--max-examples",
            "60",
            "--seed",
            "16",
            "--workers",
            "2",
            "--request-timeout",
            "60",
            "--no-color",
            "--suppress-health-check",
            "all",
            "--report",
            "junit",
            "--report-dir",
        ])
        .arg(&report)
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "schemathesis failed:\n{stdout}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log_text()
    );
    server.wait_kv_free(Duration::from_secs(30));
}
