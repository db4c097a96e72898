//! `novastack bench gateway`: the gateway's added latency (p50/p99 over a direct call)
//! at fixed request rates, open loop, and its maximum request rate closed loop, against
//! an instant mock upstream on 127.0.0.1; optionally the same for another gateway (e.g.
//! the LiteLLM proxy, see `scripts/bench_gateway.sh`) in front of the same mock, side by
//! side in one run.

use anyhow::{bail, Context, Result};
use clap::Args;
use novastack_metrics::percentile;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct GatewayBenchArgs {
    /// Request rates (per second) for the open-loop latency runs.
    #[arg(long, value_delimiter = ',', default_value = "50,1000")]
    pub rates: Vec<f64>,
    /// Seconds per open-loop run and per closed-loop run.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Connections for the closed-loop maximum-rate run.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Port of the mock upstream (0: any); another gateway under test points here.
    #[arg(long, default_value_t = 0)]
    pub mock_port: u16,
    /// Base URL (…/v1) of another gateway in front of the same mock, measured alike.
    #[arg(long)]
    pub compare_url: Option<String>,
    /// The model name the other gateway maps to the mock.
    #[arg(long, default_value = "mock")]
    pub compare_model: String,
    /// The other gateway's name in the report.
    #[arg(long, default_value = "litellm")]
    pub compare_name: String,
    /// Streaming requests instead of plain JSON (the same as `--formats stream`).
    #[arg(long)]
    pub stream: bool,
    /// Answer formats to measure, each against a direct call of the same format:
    /// `json`, `stream` or both (`json,stream`: the runs alternate, so the two see the
    /// same machine and the report compares their added latency).
    #[arg(long, value_delimiter = ',')]
    pub formats: Vec<String>,
    /// Open-loop runs per target and rate, alternating targets; the report gives the
    /// median p50 and p99 over them (one short run's p99 on a small shared machine moves
    /// with whatever else the cores were doing).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    #[arg(long)]
    pub result_json: Option<std::path::PathBuf>,
}

const ANSWER: &str = "Hello from the mock upstream.";

/// The instant upstream: a fixed answer, JSON or SSE as asked (found by a byte search,
/// not a JSON parse, so the mock costs as little CPU as possible).
async fn mock_chat(body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse;
    static JSON: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    let (json_body, sse_body) = JSON.get_or_init(|| {
        let chunk = |delta: Value, finish: Value| {
            format!(
                "data: {}\n\n",
                json!({"id": "mock-1", "object": "chat.completion.chunk", "created": 0, "model": "mock",
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let usage = json!({"id": "mock-1", "object": "chat.completion.chunk", "created": 0, "model": "mock", "choices": [],
                           "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}});
        let sse = chunk(json!({"role": "assistant", "content": ""}), Value::Null)
            + &chunk(json!({"content": ANSWER}), Value::Null)
            + &chunk(json!({}), json!("stop"))
            + &format!("data: {usage}\n\ndata: [DONE]\n\n");
        let json = json!({"id": "mock-1", "object": "chat.completion", "created": 0, "model": "mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}})
        .to_string();
        (json, sse)
    });
    let streaming = body.windows(13).any(|w| w == b"\"stream\":true")
        || body.windows(14).any(|w| w == b"\"stream\": true");
    if streaming {
        (
            [(axum::http::header::CONTENT_TYPE, "text/event-stream")],
            sse_body.as_str(),
        )
            .into_response()
    } else {
        (
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            json_body.as_str(),
        )
            .into_response()
    }
}

fn runtime(threads: usize, name: &str) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()?)
}

/// One thing measured: a URL, the request sent to it, and the direct call whose
/// latency it adds to.
struct Target {
    name: String,
    url: String,
    body: String,
    base: String,
}

#[derive(Debug, Clone, serde::Serialize)]
struct OpenLoop {
    target: String,
    rate: f64,
    sent: usize,
    errors: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    achieved_rps: f64,
}

/// One target at one rate over `--repeat` runs: medians, and the spread of p99.
#[derive(Debug, Clone, serde::Serialize)]
struct OpenLoopSummary {
    target: String,
    rate: f64,
    runs: usize,
    errors: usize,
    p50_ms: f64,
    p99_ms: f64,
    p99_min_ms: f64,
    p99_max_ms: f64,
    achieved_rps: f64,
}

impl OpenLoopSummary {
    fn of(runs: Vec<OpenLoop>) -> OpenLoopSummary {
        let median = |f: fn(&OpenLoop) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            percentile(&v, 0.5)
        };
        let p99 = runs.iter().map(|r| r.p99_ms);
        OpenLoopSummary {
            target: runs.first().map_or_else(String::new, |r| r.target.clone()),
            rate: runs.first().map_or(0.0, |r| r.rate),
            runs: runs.len(),
            errors: runs.iter().map(|r| r.errors).sum(),
            p50_ms: median(|r| r.p50_ms),
            p99_ms: median(|r| r.p99_ms),
            p99_min_ms: p99.clone().fold(f64::INFINITY, f64::min),
            p99_max_ms: p99.fold(f64::NEG_INFINITY, f64::max),
            achieved_rps: median(|r| r.achieved_rps),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
struct ClosedLoop {
    target: String,
    concurrency: usize,
    completed: u64,
    errors: u64,
    rps: f64,
}

/// A minimal keep-alive HTTP/1.1 client (like wrk's): a pre-built request written on
/// a reused connection, the answer read by Content-Length or chunked framing. Far less
/// CPU than a general client, so on a small machine the target gets the cores.
struct RawConn {
    addr: std::net::SocketAddr,
    request: Arc<Vec<u8>>,
    sock: Option<tokio::io::BufReader<tokio::net::TcpStream>>,
}

impl RawConn {
    fn new(url: &str, body: &str) -> Result<RawConn> {
        let rest = url
            .strip_prefix("http://")
            .context("only http:// targets")?;
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let addr = std::net::ToSocketAddrs::to_socket_addrs(host)?
            .next()
            .context("bad host")?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        Ok(RawConn {
            addr,
            request: Arc::new(request.into_bytes()),
            sock: None,
        })
    }

    fn clone_fresh(&self) -> RawConn {
        RawConn {
            addr: self.addr,
            request: self.request.clone(),
            sock: None,
        }
    }

    /// One request; true on a 2xx answer read to its end.
    async fn send(&mut self) -> bool {
        for _ in 0..2 {
            if self.sock.is_none() {
                match tokio::net::TcpStream::connect(self.addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        self.sock = Some(tokio::io::BufReader::new(s));
                    }
                    Err(_) => return false,
                }
            }
            match self.exchange().await {
                Ok(ok) => return ok,
                Err(_) => self.sock = None, // stale keep-alive connection: reconnect once
            }
        }
        false
    }

    async fn exchange(&mut self) -> std::io::Result<bool> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
        let sock = self.sock.as_mut().expect("connected");
        sock.get_mut().write_all(&self.request).await?;
        let mut line = String::new();
        let mut status = 0;
        let mut len: Option<usize> = None;
        let mut chunked = false;
        let mut close = false;
        loop {
            line.clear();
            if sock.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if status == 0 {
                status = l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => len = v.parse().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut sink = vec![0u8; 0];
        if chunked {
            loop {
                line.clear();
                sock.read_line(&mut line).await?;
                let n = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
                sink.resize(n + 2, 0);
                sock.read_exact(&mut sink).await?;
                if n == 0 {
                    break;
                }
            }
        } else if let Some(n) = len {
            sink.resize(n, 0);
            sock.read_exact(&mut sink).await?;
        } else {
            let mut rest = Vec::new();
            sock.read_to_end(&mut rest).await?;
            close = true;
        }
        if close {
            self.sock = None;
        }
        Ok((200..300).contains(&status))
    }
}

/// Requests at a fixed rate; latency from each request's scheduled time (so queueing
/// inside the target counts, no coordinated omission).
async fn open_loop(proto: &RawConn, target: &str, rate: f64, secs: f64) -> OpenLoop {
    let n = (rate * secs).round().max(1.0) as usize;
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    // Idle connections are reused; a request finding none opens one.
    let pool: Arc<std::sync::Mutex<Vec<RawConn>>> = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(at).await;
        let pool = pool.clone();
        let mut conn = pool
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| proto.clone_fresh());
        tasks.push(tokio::spawn(async move {
            // Timed from the actual send: tokio's timer wakes up to 1 ms late, which
            // would blur sub-millisecond differences between targets.
            let at = tokio::time::Instant::now();
            let ok = tokio::time::timeout(Duration::from_secs(30), conn.send())
                .await
                .unwrap_or(false);
            let ms = at.elapsed().as_secs_f64() * 1e3;
            if let Ok(mut p) = pool.lock() {
                p.push(conn);
            }
            (ok, ms)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok((true, ms)) => lat.push(ms),
            _ => errors += 1,
        }
    }
    let wall = start.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    OpenLoop {
        target: target.to_string(),
        rate,
        sent: n,
        errors,
        p50_ms: percentile(&lat, 0.5),
        p90_ms: percentile(&lat, 0.9),
        p99_ms: percentile(&lat, 0.99),
        p999_ms: percentile(&lat, 0.999),
        achieved_rps: lat.len() as f64 / wall.max(1e-9),
    }
}

/// `concurrency` clients, each sending as soon as the last answer arrived.
async fn closed_loop(proto: &RawConn, target: &str, concurrency: usize, secs: f64) -> ClosedLoop {
    let done = Arc::new(AtomicU64::new(0));
    let errs = Arc::new(AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (mut conn, done, errs) = (proto.clone_fresh(), done.clone(), errs.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    match tokio::time::timeout_at(deadline + Duration::from_secs(5), conn.send())
                        .await
                    {
                        Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                        _ => errs.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let completed = done.load(Ordering::Relaxed);
    ClosedLoop {
        target: target.to_string(),
        concurrency,
        completed,
        errors: errs.load(Ordering::Relaxed),
        rps: completed as f64 / t0.elapsed().as_secs_f64(),
    }
}

pub fn run(args: GatewayBenchArgs) -> Result<()> {
    if args.rates.iter().any(|r| r.is_nan() || *r <= 0.0)
        || args.duration <= 0.0
        || args.concurrency == 0
        || args.repeat == 0
    {
        bail!("--rates, --duration, --concurrency and --repeat must be positive");
    }
    // Three runtimes, as three processes would be: mock, gateway, load generator.
    let mock_rt = runtime(1, "mock")?;
    let mock_listener = mock_rt
        .block_on(tokio::net::TcpListener::bind(("127.0.0.1", args.mock_port)))
        .with_context(|| format!("cannot listen on 127.0.0.1:{}", args.mock_port))?;
    let mock_addr = mock_listener.local_addr()?;
    mock_rt.spawn(async move {
        let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(mock_chat));
        let _ = axum::serve(mock_listener, app).await;
    });
    let yaml = format!(
        "models:\n  - {{name: mock, provider: openai, base_url: \"http://{mock_addr}/v1\"}}\n"
    );
    let gw = novastack_gateway::Gateway::from_config(
        &yaml,
        &novastack_gateway::GatewayArgs::default(),
        novastack_gateway::no_local_models(),
        &|_: &str| None,
    )?;
    let gw_rt = runtime(2, "gateway")?;
    let gw_listener = gw_rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let gw_addr = gw_listener.local_addr()?;
    gw_rt.spawn(async move {
        let _ = novastack_gateway::serve(gw_listener, gw, None, Duration::from_secs(1)).await;
    });
    let load_rt = runtime(1, "load")?;
    let formats: Vec<bool> = if args.formats.is_empty() {
        vec![args.stream]
    } else {
        args.formats
            .iter()
            .map(|f| match f.as_str() {
                "json" => Ok(false),
                "stream" => Ok(true),
                other => bail!("--formats takes json and stream, not {other:?}"),
            })
            .collect::<Result<_>>()?
    };
    let mut targets = Vec::new();
    for &stream in &formats {
        let body = |model: &str| {
            json!({"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16, "stream": stream}).to_string()
        };
        let name = |n: &str| match formats.len() {
            1 => n.to_string(),
            _ => format!("{n} ({})", if stream { "stream" } else { "json" }),
        };
        let base = name("direct");
        targets.push(Target {
            name: base.clone(),
            url: format!("http://{mock_addr}/v1/chat/completions"),
            body: body("mock"),
            base: base.clone(),
        });
        targets.push(Target {
            name: name("novastack"),
            url: format!("http://{gw_addr}/v1/chat/completions"),
            body: body("mock"),
            base: base.clone(),
        });
        if let Some(url) = &args.compare_url {
            targets.push(Target {
                name: name(&args.compare_name),
                url: format!("{}/chat/completions", url.trim_end_matches('/')),
                body: body(&args.compare_model),
                base,
            });
        }
    }
    tracing::info!(
        "mock upstream at http://{mock_addr}/v1, novastack gateway at http://{gw_addr}/v1"
    );
    let protos: Vec<RawConn> = targets
        .iter()
        .map(|t| RawConn::new(&t.url, &t.body))
        .collect::<Result<_>>()?;
    // Warm up and check every target answers.
    for (Target { name, url, .. }, proto) in targets.iter().zip(&protos) {
        let ok = load_rt.block_on(async {
            let mut conn = proto.clone_fresh();
            let mut ok = 0;
            for _ in 0..50 {
                ok += conn.send().await as usize;
            }
            ok
        });
        if ok == 0 {
            bail!("{name} at {url} does not answer");
        }
    }
    // Closed loop first (bounded in flight), then open loop by rising rate: an
    // overloaded target's backlog then only follows it, never another target's run.
    let settle = |proto: &RawConn| {
        load_rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            let mut conn = proto.clone_fresh();
            while tokio::time::Instant::now() < deadline {
                let t = Instant::now();
                let ok = tokio::time::timeout(Duration::from_secs(5), conn.send())
                    .await
                    .unwrap_or(false);
                if ok && t.elapsed() < Duration::from_millis(200) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let mut closed = Vec::new();
    for (Target { name, .. }, proto) in targets.iter().zip(&protos) {
        settle(proto);
        let r = load_rt.block_on(closed_loop(proto, name, args.concurrency, args.duration));
        tracing::info!("closed loop {name}: {:.0} req/s", r.rps);
        closed.push(r);
    }
    let mut rates = args.rates.clone();
    rates.sort_by(f64::total_cmp);
    let mut runs = Vec::new();
    for &rate in &rates {
        for rep in 0..args.repeat {
            for (Target { name, .. }, proto) in targets.iter().zip(&protos) {
                settle(proto);
                let r = load_rt.block_on(open_loop(proto, name, rate, args.duration));
                tracing::info!(
                    "open loop {name} at {rate}/s, run {}: p50 {:.3} ms p99 {:.3} ms ({} errors)",
                    rep + 1,
                    r.p50_ms,
                    r.p99_ms,
                    r.errors
                );
                runs.push(r);
            }
        }
    }
    let open: Vec<OpenLoopSummary> = rates
        .iter()
        .flat_map(|&rate| {
            let runs = &runs;
            targets.iter().map(move |Target { name, .. }| {
                OpenLoopSummary::of(
                    runs.iter()
                        .filter(|r| &r.target == name && r.rate == rate)
                        .cloned()
                        .collect(),
                )
            })
        })
        .collect();
    println!(
        "\n## gateway overhead vs a direct call (instant mock upstream, 127.0.0.1, {} cores)\n",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "Medians over {} runs of {} s per target and rate, targets alternating; p99 range: the lowest and highest run.\n",
        args.repeat, args.duration
    );
    println!(
        "| target | rate/s | achieved/s | p50 ms | p99 ms | p99 range ms | added p50 ms | added p99 ms | errors |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &open {
        let base_name = targets.iter().find(|t| t.name == r.target).map(|t| &t.base);
        let base = open
            .iter()
            .find(|d| Some(&d.target) == base_name && d.rate == r.rate);
        let (a50, a99) = base.map_or((f64::NAN, f64::NAN), |d| {
            (r.p50_ms - d.p50_ms, r.p99_ms - d.p99_ms)
        });
        println!(
            "| {} | {} | {:.0} | {:.3} | {:.3} | {:.3}–{:.3} | {:.3} | {:.3} | {} |",
            r.target,
            r.rate,
            r.achieved_rps,
            r.p50_ms,
            r.p99_ms,
            r.p99_min_ms,
            r.p99_max_ms,
            a50,
            a99,
            r.errors
        );
    }
    println!(
        "\n| target | closed-loop connections | requests/s | errors |\n| --- | --- | --- | --- |"
    );
    for r in &closed {
        println!(
            "| {} | {} | {:.0} | {} |",
            r.target, r.concurrency, r.rps, r.errors
        );
    }
    if let Some(p) = &args.result_json {
        let v = json!({"settings": {"rates": args.rates, "duration_s": args.duration, "concurrency": args.concurrency, "formats": formats.iter().map(|&s| if s { "stream" } else { "json" }).collect::<Vec<_>>(), "repeat": args.repeat},
                       "open_loop": open, "open_loop_runs": runs, "closed_loop": closed});
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    drop(load_rt);
    gw_rt.shutdown_background();
    mock_rt.shutdown_background();
    Ok(())
}
