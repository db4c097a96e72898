//! The connection limits through the real `serve` and gateway apps on 127.0.0.1: a slow
//! request body is answered 408 with OpenAI error JSON by the real routes, and one
//! connection over `--max-connections` gets 503 while a freed slot serves `/health`.

use novastack_server::serve::{serve_with_shutdown, ServeArgs};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn limits_args() -> ServeArgs {
    ServeArgs {
        request_body_timeout: 1,
        max_connections: 2,
        ..ServeArgs::default()
    }
}

/// `serve` with no model (the routes still read bodies first) under `limits_args()`.
fn start_serve() -> SocketAddr {
    let args = limits_args();
    let limits = args.connection_limits().unwrap();
    let state = novastack_tests::empty_state(&args);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            serve_with_shutdown(
                listener,
                state,
                Duration::from_secs(1),
                limits,
                std::future::pending(),
            )
            .await
            .unwrap();
        });
    });
    rx.recv().unwrap()
}

/// The gateway in front of an upstream that is never reached, under `limits_args()`.
fn start_gateway() -> SocketAddr {
    let args = novastack_gateway::GatewayArgs {
        connections: limits_args().connection_limits().unwrap(),
        ..Default::default()
    };
    let yaml = "models:\n  - {name: m, provider: openai, base_url: \"http://127.0.0.1:9/v1\"}\n";
    let gw = novastack_gateway::Gateway::from_config(
        yaml,
        &args,
        novastack_gateway::no_local_models(),
        &|_: &str| None,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let _ = novastack_gateway::serve_with_limits(
                listener,
                gw,
                None,
                Duration::from_secs(1),
                args.connections,
            )
            .await;
        });
    });
    rx.recv().unwrap()
}

/// Sends a body a byte every 100 ms; returns the answer once the server closes.
fn slow_body(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{"
    )
    .unwrap();
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while t.elapsed() < Duration::from_secs(10) {
        let _ = s.write_all(b" ");
        match s.read(&mut buf) {
            Ok(0) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(k) => out.extend_from_slice(&buf[..k]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return String::from_utf8_lossy(&out).into_owned(),
        }
    }
    panic!("a byte-a-100ms body was still being read after 10 s");
}

fn assert_408(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["error"]["code"], "request_timeout", "{answer}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{answer}");
}

#[test]
fn slow_bodies_get_408_from_serve_and_the_gateway() {
    assert_408(&slow_body(start_serve(), "/v1/chat/completions"));
    assert_408(&slow_body(start_gateway(), "/v1/chat/completions"));
}

fn health(addr: SocketAddr, keep: bool) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = if keep { "keep-alive" } else { "close" };
    write!(
        s,
        "GET /health HTTP/1.1\r\nHost: x\r\nConnection: {conn}\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let k = s.read(&mut buf).unwrap();
    (s, String::from_utf8_lossy(&buf[..k]).into_owned())
}

#[test]
fn one_connection_over_the_cap_gets_503_until_a_slot_frees() {
    let addr = start_serve();
    let (a, ra) = health(addr, true);
    let (_b, rb) = health(addr, true);
    assert!(ra.starts_with("HTTP/1.1 200") && rb.starts_with("HTTP/1.1 200"));
    let (_, rc) = health(addr, true);
    assert!(rc.starts_with("HTTP/1.1 503"), "{rc}");
    assert!(rc.contains("\"code\":\"too_many_connections\""), "{rc}");
    drop(a);
    let t = Instant::now();
    loop {
        let (_, r) = health(addr, false);
        if r.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{r}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The listener's 503s are in /metrics, by reason and as responses. The health
    // check's connection may still hold its slot for a moment after its response (the
    // server closes it after the client does): retry a 503 within the same bound.
    let t = Instant::now();
    let page = loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        if page.starts_with("HTTP/1.1 200") {
            break page;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{page}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let value = |prefix: &str| -> f64 {
        page.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("{prefix} not in\n{page}"))
    };
    assert!(value("novastack_http_refused_total{reason=\"connection_cap\"}") >= 1.0);
    assert!(value("novastack_http_requests_total{route=\"(listener)\",status=\"503\"}") >= 1.0);
    // `_b` and this one.
    assert!(value("novastack_http_connections_open") >= 1.0);
}
