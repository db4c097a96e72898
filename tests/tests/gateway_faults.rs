//! Upstream faults the gateway must bound, against real HTTP upstreams on 127.0.0.1
//! (`mock_upstream`): keep-alives without data, silence, hangs across retries and
//! fallbacks (one deadline), endless SSE lines and oversized bodies (caps), and
//! upstreams that echo their key (redaction in every form, before truncation, inside
//! completion text and tool-call arguments). Timing bounds are generous: each is well under what the unfixed
//! gateway takes, and far above what a loaded machine adds.

use novastack_tests::http_full;
use novastack_tests::mock_upstream::{fill, Behavior as B, MockUpstream};
use novastack_tests::start_gateway;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A key as providers issue them (no dictionary words, so no 8-character run of it
/// occurs in the gateway's own messages).
const KEY: &str = "sk-proj-7fQ2xLm9Vt4Rz8Kw3Np6";

fn model(name: &str, up: &MockUpstream, extra: &str) -> String {
    format!(
        "  - {{name: {name}, provider: openai, base_url: \"{}\", auth: {{header: Authorization, prefix: \"Bearer \", key_env: UP_KEY}}{extra}}}\n",
        up.url()
    )
}

fn gateway(yaml: &str) -> std::net::SocketAddr {
    start_gateway(yaml, &[("UP_KEY", KEY)]).0
}

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": stream})
        .to_string()
}

struct Resp {
    status: u16,
    head: String,
    body: String,
    took: Duration,
}

fn post(addr: std::net::SocketAddr, body: &str) -> Resp {
    let t = Instant::now();
    let (status, head, body) = http_full(addr, "POST", "/v1/chat/completions", body, "");
    Resp {
        status,
        head,
        body,
        took: t.elapsed(),
    }
}

/// A JSON error answer's message.
fn error_message(r: &Resp) -> String {
    let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.body));
    v["error"]["message"].as_str().unwrap().to_string()
}

/// A streamed answer: its text, and the message of its error chunk if any (after which
/// `[DONE]` must come).
fn streamed(r: &Resp) -> (String, Option<String>) {
    let (mut text, mut error) = (String::new(), None);
    let data: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{}", r.body);
    for d in &data[..data.len() - 1] {
        let v: Value = serde_json::from_str(d).unwrap();
        if let Some(e) = v.get("error") {
            error = Some(e["message"].as_str().unwrap().to_string());
        }
        if let Some(c) = v["choices"].get(0) {
            text += c["delta"]["content"].as_str().unwrap_or("");
        }
    }
    (text, error)
}

/// Whether any 8 consecutive characters of `KEY` are in `s`, in any case, plain or
/// percent-encoded.
fn leaks(s: &str) -> bool {
    let mut decoded = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                decoded.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        decoded.push(b[i]);
        i += 1;
    }
    let hay = [
        s.to_ascii_lowercase(),
        String::from_utf8_lossy(&decoded).to_ascii_lowercase(),
    ];
    let key = KEY.to_ascii_lowercase();
    (0..=key.len() - 8).any(|i| hay.iter().any(|h| h.contains(&key[i..i + 8])))
}

#[test]
fn leak_check_finds_every_form() {
    for form in ["{key}", "{KEY}", "{key_url}", "{KEY_URL}"] {
        assert!(leaks(&format!("x {} y", fill(form, KEY))), "{form}");
    }
    assert!(leaks(&format!("..{}", &KEY[..8])));
    assert!(!leaks(&format!("..{}", &KEY[..7])));
}

/// An upstream that answers with only keep-alive comments, or nothing, after its
/// headers is cut at `timeout_s`: a JSON client gets a 504 with an OpenAI error, a
/// streaming client its text so far, then an error chunk and `[DONE]`.
#[test]
fn keep_alives_and_silence_do_not_hold_an_attempt_open() {
    let a = MockUpstream::start(B::PingsAfter(vec![], Duration::from_millis(100)));
    let yaml = format!(
        "models:\n{}retry: {{max_attempts: 1}}\n",
        model("a", &a, ", timeout_s: 1")
    );
    let addr = gateway(&yaml);
    // Pings only (the unfixed gateway waited for as long as they came: 20 s here).
    let r = post(addr, &chat("a", false));
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        error_message(&r).contains("no data from the upstream"),
        "{}",
        r.body
    );
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
    // Text, then pings only: the stream ends with an error chunk.
    a.script([B::PingsAfter(vec!["Hel", "lo"], Duration::from_millis(100))]);
    let r = post(addr, &chat("a", true));
    assert_eq!(r.status, 200, "{}", r.body);
    let (text, error) = streamed(&r);
    assert_eq!(text, "Hello");
    let error = error.expect("an error chunk");
    assert!(error.contains("no data from the upstream"), "{error}");
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
    // Nothing at all after the headers.
    a.script([B::SilentAfterHeaders]);
    let r = post(addr, &chat("a", false));
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.took < Duration::from_secs(10), "took {:?}", r.took);
}

/// Hanging upstreams along a chain with retries cost one deadline (by default twice
/// the longest `timeout_s`), not attempts × `timeout_s`; `retry.deadline_s` sets it.
#[test]
fn hangs_across_retries_and_fallbacks_share_one_deadline() {
    let a = MockUpstream::start(B::Hang);
    let b = MockUpstream::start(B::Hang);
    let routes = "routes:\n  - {when: {model: a}, use: a, fallback: [b]}\n";
    let retry = "retry: {max_attempts: 3, initial_backoff_ms: 10, max_backoff_ms: 20}\n";
    let yaml = format!(
        "models:\n{}{}{routes}{retry}",
        model("a", &a, ", timeout_s: 1"),
        model("b", &b, ", timeout_s: 1")
    );
    let addr = gateway(&yaml);
    // Unfixed: 6 attempts of 1 s each. Now the 2 s default deadline.
    let r = post(addr, &chat("a", false));
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(
        r.took >= Duration::from_millis(1900) && r.took < Duration::from_millis(4500),
        "took {:?}",
        r.took
    );
    assert!(error_message(&r).contains("deadline"), "{}", r.body);
    let attempts: u32 = r
        .head
        .lines()
        .find_map(|l| l.strip_prefix("x-novastack-attempts: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!((1..6).contains(&attempts), "{attempts}");
    // An explicit deadline shorter than one attempt's timeout.
    let yaml = format!(
        "models:\n{}retry: {{max_attempts: 3, deadline_s: 1.5}}\n",
        model("a", &a, ", timeout_s: 30")
    );
    let addr = gateway(&yaml);
    let r = post(addr, &chat("a", true));
    assert_eq!(r.status, 504, "{}", r.body);
    assert!(r.took < Duration::from_secs(8), "took {:?}", r.took);
    assert!(error_message(&r).contains("1.5s deadline"), "{}", r.body);
}

/// An SSE line with no end is refused at `max_sse_line_bytes` (not buffered to its
/// end); a JSON answer past `max_response_bytes` is refused, and one under the 16 MiB
/// default (but over the old silent 1 MiB cut) passes.
#[test]
fn endless_lines_and_huge_bodies_hit_their_caps() {
    let a = MockUpstream::start(B::EndlessLine(8 << 20));
    let yaml = format!(
        "models:\n{}{}retry: {{max_attempts: 1}}\n",
        model(
            "a",
            &a,
            ", timeout_s: 20, max_sse_line_bytes: 65536, max_response_bytes: 1048576"
        ),
        model("big", &a, "")
    );
    let addr = gateway(&yaml);
    let r = post(addr, &chat("a", true));
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        error_message(&r).contains("longer than the 65536-byte limit"),
        "{}",
        r.body
    );
    assert!(r.took < Duration::from_secs(15), "took {:?}", r.took);
    a.script([B::BigJson(2 << 20)]);
    let r = post(addr, &chat("a", false));
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(
        error_message(&r).contains("larger than 1048576 bytes"),
        "{}",
        r.body
    );
    a.script([B::BigJson(2 << 20)]);
    let r = post(addr, &chat("big", false));
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(300)]);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .len(),
        2 << 20
    );
}

/// Error bodies echoing the key (cut by the 300-byte truncation, upper-cased,
/// percent-encoded) and completion text echoing it (split across deltas, or whole in a
/// JSON answer) never reach the client in any form.
#[test]
fn keys_never_reach_the_client_in_any_form() {
    let a = MockUpstream::start(B::Stream(vec!["x"]));
    let yaml = format!(
        "models:\n{}retry: {{max_attempts: 1}}\ncooldown: {{failures: 100}}\n",
        model("a", &a, "")
    );
    let addr = gateway(&yaml);
    // The key straddles byte 300 of a text body: the kept part is a 10-byte prefix.
    let pad = "e".repeat(290);
    let bodies = [
        format!("{pad}{{key}} and more"),
        "invalid key {KEY}".to_string(),
        "invalid key {key_url}".to_string(),
        "invalid key {KEY_URL} in the URL".to_string(),
    ];
    for body in bodies {
        a.script([B::StatusText(401, body.clone())]);
        let r = post(addr, &chat("a", false));
        assert_eq!(r.status, 502, "{}", r.body);
        assert!(!leaks(&r.body) && !leaks(&r.head), "{body}: {}", r.body);
        assert!(r.body.contains("[redacted]"), "{}", r.body);
    }
    // The key in streamed text, cut across deltas; and URL-encoded in one.
    let k = KEY;
    let pieces = vec![
        "Your key is ".to_string(),
        k[..3].to_string(),
        k[3..9].to_string(),
        k[9..14].to_string(),
        k[14..].to_string(),
        ", encoded ".to_string(),
        "{key_url}".to_string(),
        ". Bye".to_string(),
    ];
    a.script([B::StreamText(pieces)]);
    let r = post(addr, &chat("a", true));
    assert_eq!(r.status, 200, "{}", r.body);
    let (text, error) = streamed(&r);
    assert!(error.is_none(), "{}", r.body);
    assert!(!leaks(&r.body), "{}", r.body);
    assert_eq!(text, "Your key is [redacted], encoded [redacted]. Bye");
    // Whole, upper-cased, in a JSON answer.
    a.script([B::JsonText("I was called with {KEY}.".into())]);
    let r = post(addr, &chat("a", false));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!leaks(&r.body), "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "I was called with [redacted]."
    );
    // In a tool call's arguments, cut across deltas, streamed and whole.
    let (k1, k2) = KEY.split_at(11);
    let k1: &'static str = Box::leak(format!("{{\"key\": \"{k1}").into_boxed_str());
    let k2: &'static str = Box::leak(format!("{k2}\"}}").into_boxed_str());
    for stream in [true, false] {
        a.script([B::ToolCalls(vec![("f", vec![k1, k2])])]);
        let r = post(addr, &chat("a", stream));
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!leaks(&r.body), "{}", r.body);
        let args: String = if stream {
            r.body
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                .filter_map(|v| {
                    v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"]
                        .as_str()
                        .map(str::to_string)
                })
                .collect()
        } else {
            let v: Value = serde_json::from_str(&r.body).unwrap();
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(args, "{\"key\": \"[redacted]\"}", "{}", r.body);
    }
}
