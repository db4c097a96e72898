//! Shared helpers for the end-to-end tests.

use std::path::PathBuf;

/// The repository's `tests/fixtures` folder.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Every golden model fixture folder, sorted.
pub fn model_fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures_dir().join("models"))
        .expect("tests/fixtures/models exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("golden.json").exists())
        .collect();
    dirs.sort();
    dirs
}

/// Starts `novastack serve`'s app for `model` on 127.0.0.1:0 in a background thread and
/// returns its address.
pub fn start_server(model: &std::path::Path, name: &str) -> std::net::SocketAddr {
    start_server_with(model, name, novastack_server::serve::ServeArgs::default())
}

/// Like [`start_server`] with explicit serve arguments (engine sizing, queue limit,
/// body limit, API key).
pub fn start_server_with(
    model: &std::path::Path,
    name: &str,
    args: novastack_server::serve::ServeArgs,
) -> std::net::SocketAddr {
    let names: Vec<&str> = name.split(',').collect();
    start_models(&[(model, &names)], args)
}

/// Serves several models (each with its names, the first being its id) from one server.
pub fn start_models(
    models: &[(&std::path::Path, &[&str])],
    args: novastack_server::serve::ServeArgs,
) -> std::net::SocketAddr {
    let state = empty_state(&args);
    let entries = models
        .iter()
        .map(|(dir, names)| {
            let lm = novastack_models::load_model(dir, novastack_kernels::CpuBackend::new())
                .expect("load model");
            novastack_server::serve::ModelEntry::start(
                lm,
                names.iter().map(|n| n.to_string()).collect(),
                &args.engine,
            )
            .expect("engine")
        })
        .collect();
    state.set_models(entries).expect("names");
    serve_state(state)
}

/// A server state with no model yet (the API answers 503 until `set_models`).
pub fn empty_state(
    args: &novastack_server::serve::ServeArgs,
) -> std::sync::Arc<novastack_server::serve::AppState> {
    novastack_server::serve::AppState::new(
        args.api_key.iter().cloned().collect(),
        args.max_waiting,
        args.max_body_bytes,
    )
}

/// Serves `state` on 127.0.0.1:0 in a background thread; returns the address.
pub fn serve_state(
    state: std::sync::Arc<novastack_server::serve::AppState>,
) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            novastack_server::serve::serve_on(listener, state)
                .await
                .unwrap();
        });
    });
    rx.recv().unwrap()
}

/// A minimal HTTP/1.1 client over a real socket: returns (status, body).
pub fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let (status, _, body) = http_full(addr, method, path, body, "");
    (status, body)
}

/// Like [`http`] with extra header lines (each ending in `\r\n`); also returns the
/// response head (lower-cased).
pub fn http_full(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &str,
) -> (u16, String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_ascii_lowercase(), body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub mod mock_upstream;

/// Starts a gateway from YAML text on 127.0.0.1:0 (environment from `env`); returns
/// its address and handle (for reloads and limits).
pub fn start_gateway(
    yaml: &str,
    env: &[(&str, &str)],
) -> (
    std::net::SocketAddr,
    std::sync::Arc<novastack_gateway::Gateway>,
) {
    let env: std::collections::HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    // Local models run as `novastack serve --config` runs them: in-process servers
    // built from the default serve flags.
    let serve = novastack_server::serve::ServeArgs::default();
    let loader = move |path: &str, served: &str| {
        novastack_server::serve::local_router(
            path,
            served,
            &serve.engine,
            serve.max_waiting,
            serve.max_body_bytes,
        )
    };
    let gw = novastack_gateway::Gateway::from_config(
        yaml,
        &novastack_gateway::GatewayArgs::default(),
        std::sync::Arc::new(loader),
        &move |k: &str| env.get(k).cloned(),
    )
    .expect("gateway config");
    let (tx, rx) = std::sync::mpsc::channel();
    let g = gw.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            novastack_gateway::serve(listener, g, None, std::time::Duration::from_secs(5))
                .await
                .unwrap();
        });
    });
    (rx.recv().unwrap(), gw)
}
