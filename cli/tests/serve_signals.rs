//! `novastack serve` as a process: SIGTERM answers new requests 503, lets in-flight
//! streams finish, then exits 0; past `--shutdown-timeout` it ends the streams still
//! running with an error chunk and `[DONE]` and exits 1; SIGTERM while the model loads
//! exits at once.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fixture() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen3-f32")
}

/// Starts the server on port 0; returns the child and its address once it serves.
fn spawn_server(extra: &[&str]) -> (Child, SocketAddr) {
    spawn_model(&fixture(), extra, " serving [")
}

/// Starts the server for `model` on port 0; returns once a log line contains `until`.
fn spawn_model(model: &Path, extra: &[&str], until: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_novastack"))
        .args([
            "serve",
            "--port",
            "0",
            "--served-model-name",
            "m",
            "--model",
        ])
        .arg(model)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut addr = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        // Logs to a pipe carry no terminal colour codes.
        assert!(!line.contains('\x1b'), "{line:?}");
        if let Some((_, rest)) = line.split_once("listening on http://") {
            addr = Some(rest.split_whitespace().next().unwrap().parse().unwrap());
        }
        if line.contains(until) {
            break;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr.expect("the server printed its address"))
}

fn stream_request(addr: SocketAddr, max_tokens: usize, n: usize) -> TcpStream {
    let body = format!(
        r#"{{"model": "m", "prompt": [1, 2, 3, 4], "max_tokens": {max_tokens}, "n": {n}, "temperature": 0, "ignore_eos": true, "stream": true}}"#
    );
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(s, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 64];
    let k = s.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..k]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..k])
    );
    s
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not exit within {within:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_drains_in_flight_streams_then_exits() {
    let (mut child, addr) = spawn_server(&["--shutdown-timeout", "60"]);
    let mut s = stream_request(addr, 1000, 8);
    sigterm(&child);
    let mut rest = String::new();
    s.read_to_string(&mut rest).unwrap();
    // Every one of the 8 choices ran to its length and the stream ended properly.
    assert_eq!(
        rest.matches(r#""finish_reason":"length""#).count(),
        8,
        "{rest}"
    );
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let st = wait_exit(&mut child, Duration::from_secs(30));
    assert!(st.success(), "{st:?}");
    assert!(
        TcpStream::connect(addr).is_err(),
        "still accepting after exit"
    );
}

#[test]
fn sigterm_gives_up_after_the_shutdown_timeout() {
    let (mut child, addr) = spawn_server(&["--shutdown-timeout", "0"]);
    let mut s = stream_request(addr, 1000, 16);
    let t = Instant::now();
    sigterm(&child);
    // The stream still ends the SSE way: an error chunk, then [DONE], then the close.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    let err_at = rest
        .rfind(r#"data: {"error":"#)
        .unwrap_or_else(|| panic!("no error chunk: {rest}"));
    let done_at = rest
        .rfind("data: [DONE]")
        .unwrap_or_else(|| panic!("no [DONE]: {rest}"));
    assert!(err_at < done_at, "{rest}");
    assert!(
        rest[err_at..].contains(r#""code":"shutdown_timeout""#),
        "{rest}"
    );
    assert_eq!(rest.matches("data: [DONE]").count(), 1, "{rest}");
    // Requests were abandoned: the exit code says so.
    let st = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(1), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn sigterm_while_the_model_loads_exits_at_once() {
    // A model whose config.json is a FIFO nobody writes: loading blocks for good, as on
    // a hung network filesystem.
    let dir = std::env::temp_dir().join(format!("ns-loading-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in std::fs::read_dir(fixture()).unwrap() {
        let f = f.unwrap();
        if f.file_name() != "config.json" {
            std::fs::copy(f.path(), dir.join(f.file_name())).unwrap();
        }
    }
    assert!(Command::new("mkfifo")
        .arg(dir.join("config.json"))
        .status()
        .unwrap()
        .success());
    let (mut child, addr) = spawn_model(&dir, &[], "listening on http://");
    // Listening, still loading: /health answers, the API is not ready.
    assert!(get(addr, "/health").starts_with("HTTP/1.1 200"));
    assert!(get(addr, "/ready").starts_with("HTTP/1.1 503"));
    assert!(child.try_wait().unwrap().is_none());
    let t = Instant::now();
    sigterm(&child);
    let st = wait_exit(&mut child, Duration::from_secs(10));
    assert!(st.success(), "{st:?}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn gateway_streams_past_the_shutdown_timeout_end_with_an_error_chunk() {
    use novastack_tests::mock_upstream::{Behavior, MockUpstream};
    let up = MockUpstream::start(Behavior::SlowStream(
        vec!["a"; 100],
        Duration::from_millis(200),
    ));
    let dir = std::env::temp_dir().join(format!("ns-gw-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.yaml");
    std::fs::write(
        &cfg,
        format!(
            "models:\n  - {{name: m, provider: openai, base_url: \"{}\"}}\n",
            up.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_novastack"))
        .args([
            "serve",
            "--port",
            "0",
            "--shutdown-timeout",
            "1",
            "--config",
        ])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = lines
        .by_ref()
        .find_map(|l| {
            let l = l.unwrap();
            let (_, rest) = l.split_once("gateway at http://")?;
            rest.split('/').next()?.parse().ok()
        })
        .expect("the gateway printed its address");
    std::thread::spawn(move || for _ in lines {});
    let body = r#"{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": true}"#;
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 64];
    let k = s.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..k]).starts_with("HTTP/1.1 200"));
    sigterm(&child);
    // While draining, a new connection is answered 503 with OpenAI error JSON.
    std::thread::sleep(Duration::from_millis(200));
    let late = get(addr, "/v1/models");
    assert!(late.starts_with("HTTP/1.1 503"), "{late}");
    assert!(late.contains(r#""code":"shutting_down""#), "{late}");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    let err_at = rest.rfind(r#"data: {"error":"#).expect(&rest);
    let done_at = rest.rfind("data: [DONE]").expect(&rest);
    assert!(err_at < done_at, "{rest}");
    assert!(
        rest[err_at..].contains(r#""code":"shutdown_timeout""#),
        "{rest}"
    );
    let st = wait_exit(&mut child, Duration::from_secs(20));
    assert_eq!(st.code(), Some(1), "{st:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn gateway_yaml(names: &[&str]) -> String {
    let mut y = String::from("models:\n");
    for n in names {
        y += &format!("  - {{name: {n}, provider: openai, base_url: \"http://127.0.0.1:9/v1\"}}\n");
    }
    y
}

#[test]
fn gateway_config_errors_name_the_field_and_sighup_reloads() {
    let dir = std::env::temp_dir().join(format!("ns-gw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("gateway.yaml");
    // A bad config at start: exit 1, naming the file and the field.
    std::fs::write(&cfg, gateway_yaml(&["a"]) + "routes:\n  - {use: nothere}\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_novastack"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("gateway.yaml") && err.contains("routes[0].use"),
        "{err}"
    );

    std::fs::write(&cfg, gateway_yaml(&["a"])).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_novastack"))
        .args(["serve", "--port", "0", "--config"])
        .arg(&cfg)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr: SocketAddr = lines
        .by_ref()
        .find_map(|l| {
            let l = l.unwrap();
            let (_, rest) = l.split_once("gateway at http://")?;
            rest.split('/').next()?.parse().ok()
        })
        .expect("the gateway printed its address");
    std::thread::spawn(move || for _ in lines {});
    assert!(get(addr, "/v1/models").contains("\"a\""));
    let hup = |child: &Child| {
        Command::new("kill")
            .args(["-HUP", &child.id().to_string()])
            .status()
            .unwrap()
    };
    std::fs::write(&cfg, gateway_yaml(&["a", "b"])).unwrap();
    hup(&child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !get(addr, "/v1/models").contains("\"b\"") {
        assert!(Instant::now() < deadline, "SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A broken file on SIGHUP: the running config stays.
    std::fs::write(&cfg, "models: [{name: c, provider: nope}]").unwrap();
    hup(&child);
    std::thread::sleep(Duration::from_millis(500));
    let models = get(addr, "/v1/models");
    assert!(
        models.contains("\"b\"") && !models.contains("\"c\""),
        "{models}"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}
