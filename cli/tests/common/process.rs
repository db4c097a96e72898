//! `novastack serve` as a child process on 127.0.0.1:0, killed when dropped, and a raw
//! HTTP/1.1 client that can send anything (malformed requests included) and reads the
//! whole answer, de-chunked.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A fixture model folder under `tests/fixtures/models`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/models")
        .join(name)
}

/// A running server; its stderr lines are kept (the last 2,000) for failure messages.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// `novastack serve --port 0 --served-model-name m --model MODEL ARGS...`, once it
    /// serves.
    pub fn start(model: &Path, args: &[&str]) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_novastack"))
            .args([
                "serve",
                "--port",
                "0",
                "--served-model-name",
                "m",
                "--model",
            ])
            .arg(model)
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server::watch(child, "listening on http://", " serving [")
    }

    /// `novastack serve --config CONFIG --port 0` (the gateway), once it listens.
    pub fn gateway(config: &Path, env: &[(&str, &str)]) -> Server {
        let child = Command::new(env!("CARGO_BIN_EXE_novastack"))
            .args(["serve", "--port", "0", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server::watch(child, "gateway at http://", "gateway at http://")
    }

    /// Reads `child`'s stderr until a line holding `ready` (the address follows
    /// `addr_after`, up to a space or `/v1`), then keeps its last 2,000 lines.
    fn watch(mut child: Child, addr_after: &str, ready: &str) -> Server {
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let mut addr = None;
        let log = Arc::new(Mutex::new(Vec::new()));
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some((_, rest)) = line.split_once(addr_after) {
                let a = rest
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .trim_end_matches("/v1");
                addr = Some(a.parse().unwrap());
            }
            let done = line.contains(ready);
            log.lock().unwrap().push(line);
            if done {
                break;
            }
        }
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                let mut v = sink.lock().unwrap();
                if v.len() > 2000 {
                    v.remove(0);
                }
                v.push(l);
            }
        });
        let addr = addr.unwrap_or_else(|| panic!("no address in {:?}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// A Prometheus sample `name{labels}` from `/metrics` (0 when absent).
    pub fn metric(&self, series: &str) -> f64 {
        let r = request(self.addr, "GET", "/metrics", &[], b"");
        r.body_text()
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// Waits until no KV block is in use (cached prefixes are free blocks).
    pub fn wait_kv_free(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let used = self.metric("novastack_kv_blocks_used{model=\"m\"}");
            if used == 0.0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{used} KV blocks still in use after {within:?}\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// Sends `method path` with `headers` and `body` (Content-Length set unless a header
/// gives one) on a fresh connection, `Connection: close`, and reads the whole answer.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        head += &format!("{k}: {v}\r\n");
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    send_raw(addr, &raw)
}

/// A JSON POST.
pub fn post_json(addr: SocketAddr, path: &str, body: &str) -> Answer {
    request(
        addr,
        "POST",
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
}

/// Writes `raw` bytes and parses the answer (panics when there is none in 120 s).
pub fn send_raw(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    // The server may answer (413, 431) and close before reading everything.
    let _ = s.write_all(raw);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_answer(&out).unwrap_or_else(|| {
        panic!(
            "no HTTP answer to {:?}: got {:?}",
            String::from_utf8_lossy(&raw[..raw.len().min(200)]),
            String::from_utf8_lossy(&out)
        )
    })
}

/// Parses a complete HTTP/1.1 answer, de-chunking the body.
pub fn parse_answer(out: &[u8]) -> Option<Answer> {
    let end = out.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&out[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = out[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        let mut plain = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let n =
                usize::from_str_radix(std::str::from_utf8(&rest[..eol]).ok()?.trim(), 16).ok()?;
            rest = &rest[eol + 2..];
            if n == 0 || rest.len() < n {
                break;
            }
            plain.extend_from_slice(&rest[..n]);
            rest = &rest[(n + 2).min(rest.len())..];
        }
        body = plain;
    }
    Some(Answer {
        status,
        headers,
        body,
    })
}
