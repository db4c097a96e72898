//! A scripted upstream on 127.0.0.1 that misbehaves on demand: statuses with or without
//! Retry-After, hangs, connection resets, streams that die midway, malformed SSE, error
//! objects mid-stream, OpenAI quirks and Anthropic-format streams; and the faults a
//! gateway must bound: keep-alive comments with no data, silence after the headers,
//! endless SSE lines, oversized bodies, and answers that echo the key they were sent
//! (templates: `{key}`, `{KEY}` upper case, `{key_url}` / `{KEY_URL}` percent-encoded
//! with lower / upper hex). Raw TCP, so every failure is real on the wire. It records
//! each request (head and body).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone, Debug)]
pub enum Behavior {
    /// An error status with an OpenAI error body quoting the key the request carried;
    /// optional `Retry-After` value.
    Status(u16, Option<&'static str>),
    /// Read the request, never answer.
    Hang,
    /// Read the request, then reset the connection.
    Reset,
    /// An OpenAI SSE stream of these text pieces, then finish, usage and [DONE].
    Stream(Vec<&'static str>),
    /// Stream these pieces, then drop the connection mid-body (no finish, no [DONE]).
    DieAfter(Vec<&'static str>),
    /// Stream these pieces, then an `{"error": ...}` object.
    ErrorAfter(Vec<&'static str>),
    /// A first event that is not JSON.
    Malformed,
    /// Keep-alive comments, no usage, finish, and two [DONE]s.
    QuirkyStream(Vec<&'static str>),
    /// Finish but no [DONE] before the connection closes.
    NoDone(Vec<&'static str>),
    /// Pieces with a pause before each (for in-flight tests).
    SlowStream(Vec<&'static str>, Duration),
    /// A non-streaming JSON answer even though streaming was asked.
    Json(&'static str),
    /// An Anthropic Messages stream of these pieces (stop reason `max_tokens`).
    Anthropic(Vec<&'static str>),
    /// These pieces, then only `: ping` comments at this interval (for up to 20 s),
    /// then the connection closes without a finish.
    PingsAfter(Vec<&'static str>, Duration),
    /// SSE headers, then nothing (the connection stays open).
    SilentAfterHeaders,
    /// SSE headers, then `data: ` and this many bytes with no newline, then nothing.
    EndlessLine(usize),
    /// A non-streaming answer whose content is this many bytes.
    BigJson(usize),
    /// An error status with a `text/plain` body from a template (key placeholders).
    StatusText(u16, String),
    /// An OpenAI stream of these template pieces (key placeholders filled in).
    StreamText(Vec<String>),
    /// A non-streaming answer whose content is a template (key placeholders).
    JsonText(String),
    /// Tool calls (a name and its argument fragments each), streamed as OpenAI's deltas
    /// (id, type and name first, then the fragments) or as one JSON answer, as asked;
    /// finish reason `tool_calls`.
    ToolCalls(Vec<(&'static str, Vec<&'static str>)>),
    /// Anthropic: a text block, then `tool_use` blocks (a name and its `input_json_delta`
    /// fragments each), stop reason `tool_use`; streamed or one message, as asked.
    AnthropicTools(&'static str, Vec<(&'static str, Vec<&'static str>)>),
    /// Several choices (`n` > 1), one per list of text pieces: chat chunks, or text
    /// completion chunks when the request came to `/completions`. Streamed, the choices'
    /// pieces are interleaved and each choice finishes on its own (the last with
    /// `length`, the others `stop`); else one JSON answer.
    Choices(Vec<Vec<&'static str>>),
    /// An embeddings answer: one vector of this many dimensions per input, the
    /// input's position and the dimension in each value (`index + d / 100`).
    Embeddings(usize),
}

/// `template` with the key placeholders filled in (see the module doc).
pub fn fill(template: &str, key: &str) -> String {
    let enc = |upper: bool| -> String {
        key.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    };
    template
        .replace("{key_url}", &enc(false))
        .replace("{KEY_URL}", &enc(true))
        .replace("{KEY}", &key.to_uppercase())
        .replace("{key}", key)
}

#[derive(Clone, Debug)]
pub struct Recorded {
    /// Request line and headers, as sent (header names lower-cased).
    pub head: String,
    pub body: String,
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    script: Arc<Mutex<VecDeque<Behavior>>>,
    default: Arc<Mutex<Behavior>>,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
}

impl MockUpstream {
    /// Starts the mock on its own thread; `default` answers once the script is empty.
    pub fn start(default: Behavior) -> MockUpstream {
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let default = Arc::new(Mutex::new(default));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (s, d, r) = (script.clone(), default.clone(), requests.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(l.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((sock, _)) = l.accept().await else {
                        continue;
                    };
                    let (s, d, r) = (s.clone(), d.clone(), r.clone());
                    tokio::spawn(async move {
                        let _ = serve_one(sock, s, d, r).await;
                    });
                }
            });
        });
        MockUpstream {
            addr: rx.recv().unwrap(),
            script,
            default,
            requests,
        }
    }

    /// Queues behaviours for the next requests, in order.
    pub fn script(&self, b: impl IntoIterator<Item = Behavior>) {
        self.script.lock().unwrap().extend(b);
    }

    pub fn set_default(&self, b: Behavior) {
        *self.default.lock().unwrap() = b;
    }

    pub fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

async fn serve_one(
    mut sock: tokio::net::TcpStream,
    script: Arc<Mutex<VecDeque<Behavior>>>,
    default: Arc<Mutex<Behavior>>,
    requests: Arc<Mutex<Vec<Recorded>>>,
) -> std::io::Result<()> {
    // Read one request (Connection: close on every answer).
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    let head_end = loop {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).to_string();
    let lower_head = head
        .lines()
        .map(|l| match l.split_once(':') {
            Some((k, v)) => format!("{}:{}", k.to_ascii_lowercase(), v),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let streaming = body.contains("\"stream\":true");
    requests.lock().unwrap().push(Recorded {
        head: lower_head,
        body,
    });
    let behavior = script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| default.lock().unwrap().clone());
    let sse_head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    let chunk = |s: &str| format!("{:x}\r\n{s}\r\n", s.len());
    let delta = |t: &str| {
        chunk(&format!(
            "data: {}\n\n",
            serde_json::json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]})
        ))
    };
    let finish = |reason: &str| {
        chunk(&format!(
            "data: {}\n\n",
            serde_json::json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                "choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
        ))
    };
    let usage = |c: usize| {
        chunk(&format!(
            "data: {}\n\n",
            serde_json::json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": c, "total_tokens": 11 + c}})
        ))
    };
    let done = chunk("data: [DONE]\n\n");
    let end = "0\r\n\r\n";
    // The key the request carried (without an auth prefix), for echoing answers.
    let key = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            ["authorization", "x-api-key"]
                .contains(&k.trim().to_ascii_lowercase().as_str())
                .then(|| v.trim().trim_start_matches("Bearer ").to_string())
        })
        .unwrap_or_default();
    let json_answer = |text: &str| {
        let body = serde_json::json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": "up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}).to_string();
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len())
    };
    match behavior {
        Behavior::ToolCalls(calls) if streaming => {
            let mut out = sse_head.to_string();
            let tool_delta = |d: serde_json::Value| {
                chunk(&format!(
                    "data: {}\n\n",
                    serde_json::json!({"id": "up-1", "object": "chat.completion.chunk", "created": 1, "model": "up",
                        "choices": [{"index": 0, "delta": {"tool_calls": [d]}, "finish_reason": null}]})
                ))
            };
            for (i, (name, args)) in calls.iter().enumerate() {
                out += &tool_delta(
                    serde_json::json!({"index": i, "id": format!("call_up_{i}"), "type": "function",
                    "function": {"name": name, "arguments": ""}}),
                );
                for a in args {
                    out +=
                        &tool_delta(serde_json::json!({"index": i, "function": {"arguments": a}}));
                }
            }
            out += &finish("tool_calls");
            out += &usage(calls.len());
            out += &done;
            out += end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::Choices(choices) => {
            let text_api = head.starts_with("POST /v1/completions");
            let object = if text_api {
                "text_completion"
            } else {
                "chat.completion.chunk"
            };
            let reason = |i: usize| {
                if i + 1 == choices.len() {
                    "length"
                } else {
                    "stop"
                }
            };
            let piece = |i: usize, t: &str, finish: Option<&str>| {
                let mut c = if text_api {
                    serde_json::json!({"index": i, "text": t})
                } else if finish.is_some() {
                    serde_json::json!({"index": i, "delta": {}})
                } else {
                    serde_json::json!({"index": i, "delta": {"content": t}})
                };
                c["finish_reason"] = serde_json::json!(finish);
                c
            };
            let pieces: usize = choices.iter().map(Vec::len).sum();
            if streaming {
                let mut out = sse_head.to_string();
                let ev = |c: serde_json::Value| {
                    chunk(&format!(
                        "data: {}\n\n",
                        serde_json::json!({"id": "up-1", "object": object, "created": 1, "model": "up", "choices": [c]})
                    ))
                };
                let longest = choices.iter().map(Vec::len).max().unwrap_or(0);
                for k in 0..=longest {
                    for (i, c) in choices.iter().enumerate() {
                        if let Some(t) = c.get(k) {
                            out += &ev(piece(i, t, None));
                        } else if k == c.len() {
                            out += &ev(piece(i, "", Some(reason(i))));
                        }
                    }
                }
                out += &usage(pieces);
                out += &done;
                out += end;
                sock.write_all(out.as_bytes()).await?;
            } else {
                let list: Vec<serde_json::Value> = choices
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let text = c.concat();
                        if text_api {
                            serde_json::json!({"index": i, "text": text, "logprobs": null, "finish_reason": reason(i)})
                        } else {
                            serde_json::json!({"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": reason(i)})
                        }
                    })
                    .collect();
                let object = if text_api {
                    "text_completion"
                } else {
                    "chat.completion"
                };
                let body = serde_json::json!({"id": "up-1", "object": object, "created": 1, "model": "up", "choices": list,
                    "usage": {"prompt_tokens": 11, "completion_tokens": pieces, "total_tokens": 11 + pieces}}).to_string();
                sock.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
            }
        }
        Behavior::Embeddings(dims) => {
            let req: serde_json::Value =
                serde_json::from_str(&requests.lock().unwrap().last().unwrap().body)
                    .unwrap_or_default();
            let inputs = match &req["input"] {
                serde_json::Value::Array(a) if a.iter().all(|x| x.is_number()) => 1,
                serde_json::Value::Array(a) => a.len(),
                _ => 1,
            };
            let data: Vec<serde_json::Value> = (0..inputs)
                .map(|i| {
                    let v: Vec<f64> = (0..dims).map(|d| i as f64 + d as f64 / 100.0).collect();
                    serde_json::json!({"object": "embedding", "index": i, "embedding": v})
                })
                .collect();
            let body = serde_json::json!({"object": "list", "data": data, "model": "up",
                "usage": {"prompt_tokens": 3 * inputs, "total_tokens": 3 * inputs}})
            .to_string();
            sock.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
        }
        Behavior::ToolCalls(calls) => {
            let tool_calls: Vec<serde_json::Value> = calls
                .iter()
                .enumerate()
                .map(|(i, (name, args))| {
                    serde_json::json!({"id": format!("call_up_{i}"), "type": "function",
                        "function": {"name": name, "arguments": args.concat()}})
                })
                .collect();
            let body = serde_json::json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": "up",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": tool_calls},
                    "finish_reason": "tool_calls"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 9, "total_tokens": 14}}).to_string();
            sock.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
        }
        Behavior::Status(code, retry_after) => {
            // Like real providers ("Incorrect API key provided: sk-..."), echo the key the
            // request carried, so the gateway's redaction is really exercised.
            let sent_key = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    ["authorization", "x-api-key"]
                        .contains(&k.trim().to_ascii_lowercase().as_str())
                        .then(|| v.trim().to_string())
                })
                .unwrap_or_default();
            let body = serde_json::json!({"error": {"message": format!("scripted {code}; key sent: {sent_key}"), "type": "mock", "code": null}}).to_string();
            let ra = retry_after.map_or(String::new(), |v| format!("retry-after: {v}\r\n"));
            sock.write_all(format!("HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{ra}connection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
        }
        Behavior::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Behavior::Reset => {
            #[allow(deprecated)] // zero linger: an immediate RST, which is the point
            sock.set_linger(Some(Duration::ZERO))?;
            drop(sock);
            return Ok(());
        }
        Behavior::Stream(pieces) => {
            let mut out = sse_head.to_string();
            for p in &pieces {
                out += &delta(p);
            }
            out += &finish("stop");
            out += &usage(pieces.len());
            out += &done;
            out += end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::SlowStream(pieces, pause) => {
            sock.write_all(sse_head.as_bytes()).await?;
            for p in &pieces {
                tokio::time::sleep(pause).await;
                sock.write_all(delta(p).as_bytes()).await?;
            }
            let tail = finish("stop") + &usage(pieces.len()) + &done + end;
            sock.write_all(tail.as_bytes()).await?;
        }
        Behavior::DieAfter(pieces) => {
            let mut out = sse_head.to_string();
            for p in &pieces {
                out += &delta(p);
            }
            sock.write_all(out.as_bytes()).await?;
            sock.flush().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
            #[allow(deprecated)] // zero linger: an immediate RST, which is the point
            sock.set_linger(Some(Duration::ZERO))?;
            drop(sock);
            return Ok(());
        }
        Behavior::ErrorAfter(pieces) => {
            let mut out = sse_head.to_string();
            for p in &pieces {
                out += &delta(p);
            }
            out += &chunk("data: {\"error\": {\"message\": \"scripted mid-stream failure\", \"type\": \"server_error\"}}\n\n");
            out += end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::Malformed => {
            let out = sse_head.to_string() + &chunk("data: {this is not json\n\n") + end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::QuirkyStream(pieces) => {
            let mut out = sse_head.to_string() + &chunk(": keep-alive\n\n");
            for p in &pieces {
                out += &delta(p);
                out += &chunk(":\n\n");
            }
            out += &finish("length");
            out += &done;
            out += &done;
            out += end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::NoDone(pieces) => {
            let mut out = sse_head.to_string();
            for p in &pieces {
                out += &delta(p);
            }
            out += &finish("stop");
            out += end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::Json(text) => {
            let body = serde_json::json!({"id": "up-1", "object": "chat.completion", "created": 1, "model": "up",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}).to_string();
            sock.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
        }
        Behavior::PingsAfter(pieces, every) => {
            let mut out = sse_head.to_string();
            for p in &pieces {
                out += &delta(p);
            }
            sock.write_all(out.as_bytes()).await?;
            let until = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < until {
                tokio::time::sleep(every).await;
                sock.write_all(chunk(": ping\n\n").as_bytes()).await?;
                sock.flush().await?;
            }
            sock.write_all(end.as_bytes()).await?;
        }
        Behavior::SilentAfterHeaders => {
            sock.write_all(sse_head.as_bytes()).await?;
            sock.flush().await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Behavior::EndlessLine(n) => {
            sock.write_all(sse_head.as_bytes()).await?;
            sock.write_all(chunk("data: ").as_bytes()).await?;
            let piece = "a".repeat(64 << 10);
            let mut sent = 0;
            while sent < n {
                let k = piece.len().min(n - sent);
                sock.write_all(chunk(&piece[..k]).as_bytes()).await?;
                sent += k;
            }
            sock.flush().await?;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Behavior::BigJson(n) => {
            sock.write_all(json_answer(&"b".repeat(n)).as_bytes())
                .await?;
        }
        Behavior::StatusText(code, template) => {
            let body = fill(&template, &key);
            sock.write_all(format!("HTTP/1.1 {code} X\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
        }
        Behavior::StreamText(pieces) => {
            let mut out = sse_head.to_string();
            for p in &pieces {
                out += &delta(&fill(p, &key));
            }
            out += &finish("stop");
            out += &usage(pieces.len());
            out += &done;
            out += end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::JsonText(template) => {
            sock.write_all(json_answer(&fill(&template, &key)).as_bytes())
                .await?;
        }
        Behavior::Anthropic(pieces) => {
            let ev = |name: &str, data: serde_json::Value| {
                chunk(&format!("event: {name}\ndata: {data}\n\n"))
            };
            let mut out = sse_head.to_string();
            out += &ev(
                "message_start",
                serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude", "usage": {"input_tokens": 21, "output_tokens": 1}}}),
            );
            out += &ev(
                "content_block_start",
                serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            out += &ev("ping", serde_json::json!({"type": "ping"}));
            for p in &pieces {
                out += &ev(
                    "content_block_delta",
                    serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}),
                );
            }
            out += &ev(
                "content_block_stop",
                serde_json::json!({"type": "content_block_stop", "index": 0}),
            );
            out += &ev(
                "message_delta",
                serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": null}, "usage": {"output_tokens": pieces.len()}}),
            );
            out += &ev("message_stop", serde_json::json!({"type": "message_stop"}));
            out += end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::AnthropicTools(text, calls) if streaming => {
            let ev = |name: &str, data: serde_json::Value| {
                chunk(&format!("event: {name}\ndata: {data}\n\n"))
            };
            let mut out = sse_head.to_string();
            out += &ev(
                "message_start",
                serde_json::json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude", "usage": {"input_tokens": 30, "output_tokens": 1}}}),
            );
            out += &ev(
                "content_block_start",
                serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            out += &ev(
                "content_block_delta",
                serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            );
            out += &ev(
                "content_block_stop",
                serde_json::json!({"type": "content_block_stop", "index": 0}),
            );
            for (i, (name, frags)) in calls.iter().enumerate() {
                let block = i + 1;
                out += &ev(
                    "content_block_start",
                    serde_json::json!({"type": "content_block_start", "index": block,
                        "content_block": {"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": {}}}),
                );
                for f in frags {
                    out += &ev(
                        "content_block_delta",
                        serde_json::json!({"type": "content_block_delta", "index": block, "delta": {"type": "input_json_delta", "partial_json": f}}),
                    );
                }
                out += &ev(
                    "content_block_stop",
                    serde_json::json!({"type": "content_block_stop", "index": block}),
                );
            }
            out += &ev(
                "message_delta",
                serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 12}}),
            );
            out += &ev("message_stop", serde_json::json!({"type": "message_stop"}));
            out += end;
            sock.write_all(out.as_bytes()).await?;
        }
        Behavior::AnthropicTools(text, calls) => {
            let mut content = vec![serde_json::json!({"type": "text", "text": text})];
            for (i, (name, frags)) in calls.iter().enumerate() {
                let input: serde_json::Value = serde_json::from_str(&frags.concat()).unwrap();
                content.push(serde_json::json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": input}));
            }
            let body = serde_json::json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
                "content": content, "stop_reason": "tool_use", "stop_sequence": null,
                "usage": {"input_tokens": 30, "output_tokens": 12}}).to_string();
            sock.write_all(format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len()).as_bytes()).await?;
        }
    }
    sock.flush().await?;
    let _ = sock.shutdown().await;
    Ok(())
}
