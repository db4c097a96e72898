//! `novastack bench replicas`: a replica pool behind the gateway, per balance policy.
//! For each policy it starts N fresh engines (`novastack serve --model ...`) and a
//! gateway whose one model lists them as `replicas`, replays multi-turn conversations
//! through the gateway (conversations share one of K long system prompts, and each turn
//! resends the whole conversation so far), and reports the engines' prefix-cache hit
//! rates (scraped from their `/metrics` before and after), TTFT p50/p99 and how the
//! requests spread over the replicas (from the `x-novastack-replica` header).
//!
//! Every process listens on 127.0.0.1 port 0; all are killed when a policy ends, on
//! error too.

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use novastack_metrics::percentile;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

mod workload;

use workload::{load_tokenizer, workload, Workload};

#[derive(Args, Debug, Clone)]
pub struct ReplicasArgs {
    /// The model every engine replica serves: a model folder, a .gguf file or `default`
    /// (SmolLM2-135M-Instruct).
    #[arg(long, default_value = "default")]
    pub model: PathBuf,
    /// Engine replicas in the pool.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Balance policies to run, one after the other, each on fresh engines.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "prefix,least_loaded,round_robin"
    )]
    pub balance: Vec<String>,
    /// Conversations replayed per policy.
    #[arg(long, default_value_t = 24)]
    pub conversations: usize,
    /// User turns per conversation; turn k resends the system prompt and all earlier
    /// turns with the answers as the server gave them.
    #[arg(long, default_value_t = 4)]
    pub turns: usize,
    /// Conversations in flight at once (each one's turns in order).
    #[arg(long, default_value_t = 6)]
    pub concurrency: usize,
    /// Tokens per answer.
    #[arg(long, default_value_t = 8)]
    pub max_tokens: usize,
    /// Distinct system prompts; conversation c uses prompt c mod K, so conversations
    /// share prefixes with each other as well as across their own turns.
    #[arg(long, default_value_t = 3)]
    pub system_prompts: usize,
    /// Words per system prompt (shortened to fit `--system-share` of the context).
    #[arg(long, default_value_t = 400)]
    pub system_words: usize,
    /// The largest share of the model's context window a system prompt may take.
    #[arg(long, default_value_t = 0.4)]
    pub system_share: f64,
    /// Words per user message.
    #[arg(long, default_value_t = 24)]
    pub user_words: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// An argument for every engine, repeatable: `--engine-arg=--kv-cache-mb=64`.
    #[arg(long = "engine-arg", allow_hyphen_values = true)]
    pub engine_args: Vec<String>,
    /// Seconds to wait for an engine to load its model and serve.
    #[arg(long, default_value_t = 300)]
    pub startup_timeout: u64,
    /// Seconds one request may take.
    #[arg(long, default_value_t = 120)]
    pub request_timeout: u64,
    #[arg(long)]
    pub result_json: Option<PathBuf>,
}

const POLICIES: [&str; 3] = ["prefix", "least_loaded", "round_robin"];

/// The header the gateway names the serving replica in.
const REPLICA_HEADER: &str = "x-novastack-replica";

// ---------------------------------------------------------------------------------
// Child processes

/// A `novastack` child process, killed (and reaped) when dropped. Its stderr is read
/// to the end by a thread (so the pipe never fills), the last lines kept for errors.
struct Proc {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<VecDeque<String>>>,
}

const LOG_LINES: usize = 200;

enum Line {
    Addr(SocketAddr),
    Ready,
}

impl Proc {
    /// Starts `exe args...` and waits for its address (a `listening on http://ADDR` or
    /// `gateway at http://ADDR/...` line) and for a line `ready` accepts.
    fn start(
        name: &str,
        exe: &Path,
        args: &[String],
        ready: fn(&str) -> bool,
        within: Duration,
    ) -> Result<Proc> {
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", exe.display()))?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        let log = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if let Some(a) = parse_addr(&line) {
                    let _ = tx.send(Line::Addr(a));
                }
                if ready(&line) {
                    let _ = tx.send(Line::Ready);
                }
                if let Ok(mut v) = sink.lock() {
                    if v.len() >= LOG_LINES {
                        v.pop_front();
                    }
                    v.push_back(line);
                }
            }
        });
        let mut p = Proc {
            name: name.to_string(),
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        let deadline = Instant::now() + within;
        let mut addr = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Line::Addr(a)) => addr = Some(a),
                Ok(Line::Ready) => match addr {
                    Some(a) => {
                        p.addr = a;
                        return Ok(p);
                    }
                    None => bail!("{name} is ready but logged no address:\n{}", p.log_tail()),
                },
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{name} did not start within {within:?}:\n{}", p.log_tail())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = p.child.wait().ok();
                    bail!(
                        "{name} exited before serving ({}):\n{}",
                        status.map_or("?".into(), |s| s.to_string()),
                        p.log_tail()
                    )
                }
            }
        }
    }

    fn log_tail(&self) -> String {
        self.log.lock().map_or_else(
            |_| String::new(),
            |v| v.iter().cloned().collect::<Vec<_>>().join("\n"),
        )
    }

    /// Whether the process has exited.
    fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `127.0.0.1:PORT` from `... listening on http://127.0.0.1:PORT ...` or
/// `... gateway at http://127.0.0.1:PORT/v1 ...`.
fn parse_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line
        .split_once("listening on http://")
        .or_else(|| line.split_once("gateway at http://"))?;
    let hostport = rest.split(|c: char| c == '/' || c.is_whitespace()).next()?;
    hostport.parse().ok()
}

fn engine_ready(line: &str) -> bool {
    line.contains(" serving [")
}

/// The gateway serves once it logged where: its listener is bound before that line.
fn gateway_ready(line: &str) -> bool {
    line.contains("gateway at http://")
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------
// One request

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Outcome {
    conversation: usize,
    turn: usize,
    ok: bool,
    /// The replica URL from the gateway's header, or `unknown`.
    replica: String,
    prompt_tokens: usize,
    /// Earlier turns left out so that the prompt fits the context window.
    dropped_turns: usize,
    ttft_ms: Option<f64>,
    e2e_ms: f64,
    error: Option<String>,
}

struct Reply {
    text: String,
    replica: String,
    ttft_ms: Option<f64>,
    e2e_ms: f64,
    prompt_tokens: Option<usize>,
}

async fn chat(
    client: &reqwest::Client,
    url: &str,
    body: &Value,
) -> Result<Reply, (String, String)> {
    let start = Instant::now();
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| (format!("{e:#}"), "unknown".to_string()))?;
    let replica = resp
        .headers()
        .get(REPLICA_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "unknown".to_string(), str::to_string);
    if !resp.status().is_success() {
        let st = resp.status();
        let text = resp.text().await.unwrap_or_default();
        return Err((
            format!("{st}: {}", text.chars().take(300).collect::<String>()),
            replica,
        ));
    }
    let mut parser = novastack_openai::sse_parser::SseParser::new();
    let mut stream = resp.bytes_stream();
    let (mut text, mut ttft_ms, mut prompt_tokens, mut done) = (String::new(), None, None, false);
    while let Some(b) = stream.next().await {
        let b = b.map_err(|e| (format!("the stream broke: {e}"), replica.clone()))?;
        for ev in parser.push(&b) {
            if ev.data.trim() == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                return Err((e.to_string(), replica));
            }
            if let Some(n) = v.pointer("/usage/prompt_tokens").and_then(Value::as_u64) {
                prompt_tokens = Some(n as usize);
            }
            if let Some(t) = v
                .pointer("/choices/0/delta/content")
                .and_then(Value::as_str)
            {
                if !t.is_empty() && ttft_ms.is_none() {
                    ttft_ms = Some(start.elapsed().as_secs_f64() * 1e3);
                }
                text.push_str(t);
            }
        }
    }
    if !done && text.is_empty() {
        return Err(("the stream ended with no answer".into(), replica));
    }
    Ok(Reply {
        text,
        replica,
        ttft_ms,
        e2e_ms: start.elapsed().as_secs_f64() * 1e3,
        prompt_tokens,
    })
}

/// One conversation's turns in order; a failed turn ends it (its later turns count as
/// failed: they cannot be built without the answer).
async fn conversation(
    client: &reqwest::Client,
    url: &str,
    a: &ReplicasArgs,
    w: &Workload,
    c: usize,
    count: &(dyn Fn(&[Value]) -> Result<usize> + Sync),
    max_context: usize,
) -> Vec<Outcome> {
    let (sys, users) = &w.conversations[c];
    let system = json!({"role": "system", "content": w.systems[*sys]});
    let mut history: Vec<Value> = Vec::new();
    let mut out = Vec::new();
    let mut failed = None::<String>;
    for (t, user) in users.iter().enumerate() {
        let mut o = Outcome {
            conversation: c,
            turn: t,
            replica: "unknown".into(),
            ..Default::default()
        };
        if let Some(e) = &failed {
            o.error = Some(format!("not sent: an earlier turn failed ({e})"));
            out.push(o);
            continue;
        }
        history.push(json!({"role": "user", "content": user}));
        // The oldest exchanges go first when the whole conversation does not fit.
        let (messages, tokens) = loop {
            let mut msgs = vec![system.clone()];
            msgs.extend(history[o.dropped_turns * 2..].iter().cloned());
            match count(&msgs) {
                Ok(n) if n + a.max_tokens > max_context && o.dropped_turns < t => {
                    o.dropped_turns += 1
                }
                Ok(n) => break (msgs, n),
                Err(e) => {
                    tracing::warn!("cannot count the prompt's tokens: {e:#}");
                    break (msgs, 0);
                }
            }
        };
        let body = json!({"model": "m", "messages": messages, "max_tokens": a.max_tokens,
                          "temperature": 0, "ignore_eos": true, "stream": true,
                          "stream_options": {"include_usage": true}});
        match chat(client, url, &body).await {
            Ok(r) => {
                o.ok = true;
                o.replica = r.replica;
                o.ttft_ms = r.ttft_ms;
                o.e2e_ms = r.e2e_ms;
                o.prompt_tokens = r.prompt_tokens.unwrap_or(tokens);
                history.push(json!({"role": "assistant", "content": r.text}));
            }
            Err((e, replica)) => {
                o.replica = replica;
                o.prompt_tokens = tokens;
                o.error = Some(e.clone());
                failed = Some(e);
            }
        }
        out.push(o);
    }
    out
}

// ---------------------------------------------------------------------------------
// Metrics

/// The prefix-cache and prompt counters of one engine, summed over models.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct Counters {
    hit_blocks: f64,
    queried_blocks: f64,
    computed_prompt_tokens: f64,
}

/// The sum of every sample of `name` (any labels) in a Prometheus text page.
fn sum_samples(page: &str, name: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.trim().parse::<f64>().ok()
        })
        .sum()
}

async fn scrape(client: &reqwest::Client, addr: SocketAddr) -> Result<Counters> {
    let page = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(Counters {
        hit_blocks: sum_samples(&page, "novastack_prefix_cache_hits_total"),
        queried_blocks: sum_samples(&page, "novastack_prefix_cache_queries_total"),
        computed_prompt_tokens: sum_samples(&page, "novastack_prompt_tokens_total"),
    })
}

// ---------------------------------------------------------------------------------
// One policy

#[derive(Debug, Clone, serde::Serialize)]
struct ReplicaResult {
    url: String,
    requests: usize,
    hit_blocks: f64,
    queried_blocks: f64,
    /// Hit blocks over queried blocks (the engine's counters; a lookup stops at its
    /// first miss, which is one queried block).
    block_hit_rate: Option<f64>,
    prompt_tokens: usize,
    computed_prompt_tokens: f64,
    /// Prompt tokens found in the cache over prompt tokens sent.
    token_hit_rate: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
struct PolicyResult {
    policy: String,
    requests: usize,
    completed: usize,
    failed: usize,
    /// Requests whose replica header was missing.
    unknown_replica: usize,
    /// Requests that named a replica not in the pool.
    unlisted_replica: usize,
    trimmed_requests: usize,
    duration_s: f64,
    block_hit_rate: Option<f64>,
    token_hit_rate: Option<f64>,
    ttft_p50_ms: Option<f64>,
    ttft_p99_ms: Option<f64>,
    ttft_mean_ms: Option<f64>,
    /// Most requests on one replica over the mean per replica.
    load_spread: Option<f64>,
    replicas: Vec<ReplicaResult>,
    first_error: Option<String>,
    outcomes: Vec<Outcome>,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

fn run_policy(
    a: &ReplicasArgs,
    exe: &Path,
    policy: &str,
    tok: &Arc<novastack_models::Tokenizer>,
    workload_cache: &mut Option<Arc<Workload>>,
) -> Result<PolicyResult> {
    let startup = Duration::from_secs(a.startup_timeout);
    let mut engines = Vec::new();
    for i in 0..a.replicas {
        let mut args: Vec<String> = ["serve", "--host", "127.0.0.1", "--port", "0"]
            .map(String::from)
            .to_vec();
        args.extend(["--served-model-name".into(), "m".into(), "--model".into()]);
        args.push(a.model.display().to_string());
        args.extend(a.engine_args.iter().cloned());
        let p = Proc::start(&format!("engine {i}"), exe, &args, engine_ready, startup)?;
        tracing::info!("{policy}: engine {i} at http://{}", p.addr);
        engines.push(p);
    }
    let urls: Vec<String> = engines
        .iter()
        .map(|e| format!("http://{}/v1", e.addr))
        .collect();
    let yaml = format!(
        "models:\n  - name: m\n    provider: openai\n    replicas: [{}]\n    balance: {policy}\n    health_check: {{interval_s: 1}}\n    timeout_s: {}\n",
        urls.join(", "),
        a.request_timeout
    );
    let cfg = TempFile(std::env::temp_dir().join(format!(
        "novastack-bench-replicas-{}-{policy}.yaml",
        std::process::id()
    )));
    std::fs::write(&cfg.0, &yaml).with_context(|| format!("cannot write {}", cfg.0.display()))?;
    let gw_args: Vec<String> = vec![
        "serve".into(),
        "--config".into(),
        cfg.0.display().to_string(),
        "--host".into(),
        "127.0.0.1".into(),
        "--port".into(),
        "0".into(),
    ];
    let mut gateway = Proc::start("gateway", exe, &gw_args, gateway_ready, startup)?;
    tracing::info!(
        "{policy}: gateway at http://{}/v1 over {}",
        gateway.addr,
        urls.join(" ")
    );
    let url = format!("http://{}/v1/chat/completions", gateway.addr);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        // A fresh connection per request (see bench serve).
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(a.request_timeout))
        .build()?;
    let max_context = rt.block_on(async {
        let v: Value = client
            .get(format!("http://{}/v1/models", engines[0].addr))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?
            .parse()?;
        v.pointer("/data/0/max_model_len")
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .context("no max_model_len in the engine's /v1/models")
    })?;
    let count = |msgs: &[Value]| -> Result<usize> { Ok(tok.encode_chat(msgs, true)?.len()) };
    let w = match workload_cache {
        Some(w) => w.clone(),
        None => {
            let w = Arc::new(workload(a, &count, max_context)?);
            *workload_cache = Some(w.clone());
            w
        }
    };

    let before = rt.block_on(async {
        let mut v = Vec::new();
        for e in &engines {
            v.push(scrape(&client, e.addr).await?);
        }
        anyhow::Ok(v)
    })?;
    let t0 = Instant::now();
    let total = a.conversations * a.turns;
    let outcomes: Vec<Outcome> = rt.block_on(async {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let results = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..a.concurrency.max(1) {
            let (client, url, a, w, next, done, results, tok, policy) = (
                client.clone(),
                url.clone(),
                a.clone(),
                w.clone(),
                next.clone(),
                done.clone(),
                results.clone(),
                tok.clone(),
                policy.to_string(),
            );
            tasks.push(tokio::spawn(async move {
                let count =
                    |msgs: &[Value]| -> Result<usize> { Ok(tok.encode_chat(msgs, true)?.len()) };
                loop {
                    let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if c >= w.conversations.len() {
                        break;
                    }
                    let outs = conversation(&client, &url, &a, &w, c, &count, max_context).await;
                    let k = done.fetch_add(outs.len(), std::sync::atomic::Ordering::Relaxed)
                        + outs.len();
                    if std::io::stderr().is_terminal() {
                        eprint!("\r{policy}: {k}/{total} requests");
                    }
                    if let Ok(mut r) = results.lock() {
                        r.extend(outs);
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
        let mut v = std::mem::take(&mut *results.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
        v.sort_by_key(|o| (o.conversation, o.turn));
        anyhow::Ok(v)
    })?;
    let duration_s = t0.elapsed().as_secs_f64();
    // Counters are updated by the engine step that ran the request: all are in by now.
    let after = rt.block_on(async {
        let mut v = Vec::new();
        for e in &engines {
            v.push(scrape(&client, e.addr).await?);
        }
        anyhow::Ok(v)
    })?;
    if gateway.exited() {
        tracing::warn!(
            "the {} exited during the run:\n{}",
            gateway.name,
            gateway.log_tail()
        );
    }

    let mut replicas: Vec<ReplicaResult> = urls
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(u, (b, af))| {
            let served: Vec<&Outcome> = outcomes
                .iter()
                .filter(|o| o.ok && &o.replica == u)
                .collect();
            let prompt_tokens: usize = served.iter().map(|o| o.prompt_tokens).sum();
            let hit = af.hit_blocks - b.hit_blocks;
            let queried = af.queried_blocks - b.queried_blocks;
            let computed = af.computed_prompt_tokens - b.computed_prompt_tokens;
            ReplicaResult {
                url: u.clone(),
                requests: served.len(),
                hit_blocks: hit,
                queried_blocks: queried,
                block_hit_rate: ratio(hit, queried),
                prompt_tokens,
                computed_prompt_tokens: computed,
                token_hit_rate: ratio(
                    (prompt_tokens as f64 - computed).max(0.0),
                    prompt_tokens as f64,
                ),
            }
        })
        .collect();
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let unknown_replica = ok.iter().filter(|o| o.replica == "unknown").count();
    let unlisted_replica = ok
        .iter()
        .filter(|o| o.replica != "unknown" && !urls.contains(&o.replica))
        .count();
    if unknown_replica > 0 {
        tracing::warn!(
            "{unknown_replica} answers had no {REPLICA_HEADER} header (counted as unknown)"
        );
    }
    let (hit, queried): (f64, f64) = replicas.iter().fold((0.0, 0.0), |(h, q), r| {
        (h + r.hit_blocks, q + r.queried_blocks)
    });
    let all_prompt: f64 = ok.iter().map(|o| o.prompt_tokens as f64).sum();
    let all_computed: f64 = replicas.iter().map(|r| r.computed_prompt_tokens).sum();
    let mut ttft: Vec<f64> = ok.iter().filter_map(|o| o.ttft_ms).collect();
    ttft.sort_by(f64::total_cmp);
    let pct = |q: f64| (!ttft.is_empty()).then(|| percentile(&ttft, q));
    let mean_load = ok.len() as f64 / a.replicas as f64;
    let max_load = replicas.iter().map(|r| r.requests).max().unwrap_or(0);
    let result = PolicyResult {
        policy: policy.to_string(),
        requests: outcomes.len(),
        completed: ok.len(),
        failed: outcomes.len() - ok.len(),
        unknown_replica,
        unlisted_replica,
        trimmed_requests: outcomes.iter().filter(|o| o.dropped_turns > 0).count(),
        duration_s,
        block_hit_rate: ratio(hit, queried),
        // Only the requests a listed replica served count on the computed side.
        token_hit_rate: ratio((all_prompt - all_computed).max(0.0), all_prompt),
        ttft_p50_ms: pct(0.5),
        ttft_p99_ms: pct(0.99),
        ttft_mean_ms: (!ttft.is_empty()).then(|| ttft.iter().sum::<f64>() / ttft.len() as f64),
        load_spread: ratio(max_load as f64, mean_load),
        first_error: outcomes.iter().find_map(|o| o.error.clone()),
        replicas: std::mem::take(&mut replicas),
        outcomes,
    };
    drop(gateway);
    drop(engines);
    Ok(result)
}

// ---------------------------------------------------------------------------------
// The report

fn pct_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.1}%", x * 100.0))
}

fn ms_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.1}"))
}

fn print_table(a: &ReplicasArgs, results: &[PolicyResult]) {
    println!(
        "\n## replica pool: {} engines behind the gateway, {} conversations x {} turns, {} at once, {} system prompts\n",
        a.replicas, a.conversations, a.turns, a.concurrency, a.system_prompts
    );
    println!(
        "| policy | prefix-cache hit rate (hit/queried blocks) | per replica | cached prompt tokens | per replica | TTFT p50 ms | TTFT p99 ms | requests per replica | load spread (max/mean) | failed |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in results {
        let per: Vec<String> = r.replicas.iter().map(|x| pct_s(x.block_hit_rate)).collect();
        let per_tok: Vec<String> = r.replicas.iter().map(|x| pct_s(x.token_hit_rate)).collect();
        let mut load: Vec<String> = r.replicas.iter().map(|x| x.requests.to_string()).collect();
        if r.unknown_replica > 0 {
            load.push(format!("unknown {}", r.unknown_replica));
        }
        if r.unlisted_replica > 0 {
            load.push(format!("unlisted {}", r.unlisted_replica));
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.policy,
            pct_s(r.block_hit_rate),
            per.join(" / "),
            pct_s(r.token_hit_rate),
            per_tok.join(" / "),
            ms_s(r.ttft_p50_ms),
            ms_s(r.ttft_p99_ms),
            load.join(" / "),
            r.load_spread.map_or("-".into(), |x| format!("{x:.2}")),
            r.failed
        );
    }
    println!(
        "\nhit/queried blocks: the engines' prefix-cache counters (every full prompt block a \
         lookup could have found); cached prompt tokens: the share of the prompt tokens sent \
         that the engines did not compute."
    );
    let trimmed: usize = results.iter().map(|r| r.trimmed_requests).sum();
    if trimmed > 0 {
        println!("\n{trimmed} requests left out their oldest turns to fit the context window.");
    }
    for r in results.iter().filter(|r| r.failed > 0) {
        println!(
            "\n{}: {} failed; first error: {}",
            r.policy,
            r.failed,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    if let Some(p) = results.iter().find(|r| r.policy == "prefix") {
        let highest = |get: fn(&PolicyResult) -> Option<f64>| {
            let best = results
                .iter()
                .filter_map(get)
                .fold(f64::NEG_INFINITY, f64::max);
            if get(p).is_some_and(|h| h >= best) {
                "yes"
            } else {
                "no"
            }
        };
        println!(
            "\ntarget: prefix has the highest prefix-cache hit rate: {} (and share of cached prompt tokens: {}); its load spread {} (target <= 1.30)",
            highest(|r| r.block_hit_rate),
            highest(|r| r.token_hit_rate),
            p.load_spread.map_or("-".into(), |x| format!("{x:.2}"))
        );
    }
}

pub fn run(a: ReplicasArgs) -> Result<()> {
    if a.replicas == 0 || a.conversations == 0 || a.turns == 0 || a.concurrency == 0 {
        bail!("--replicas, --conversations, --turns and --concurrency must be positive");
    }
    if a.system_prompts == 0 || a.max_tokens == 0 {
        bail!("--system-prompts and --max-tokens must be positive");
    }
    if let Some(p) = a.balance.iter().find(|p| !POLICIES.contains(&p.as_str())) {
        bail!("--balance {p:?}: use {}", POLICIES.join(", "));
    }
    let exe = std::env::current_exe().context("cannot find the novastack binary")?;
    let tok = Arc::new(
        load_tokenizer(&a.model)
            .with_context(|| format!("cannot load the tokenizer of {}", a.model.display()))?,
    );
    let mut workload = None;
    let mut results = Vec::new();
    for policy in &a.balance {
        tracing::info!("policy {policy}: starting {} engines", a.replicas);
        results.push(run_policy(&a, &exe, policy, &tok, &mut workload)?);
    }
    print_table(&a, &results);
    if let Some(p) = &a.result_json {
        let v = json!({
            "settings": {"model": a.model, "replicas": a.replicas, "balance": a.balance,
                         "conversations": a.conversations, "turns": a.turns, "concurrency": a.concurrency,
                         "max_tokens": a.max_tokens, "system_prompts": a.system_prompts,
                         "system_words": a.system_words, "user_words": a.user_words, "seed": a.seed,
                         "engine_args": a.engine_args},
            "policies": results,
        });
        std::fs::write(p, serde_json::to_string_pretty(&v)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    let failed: usize = results.iter().map(|r| r.failed).sum();
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_from_log_lines() {
        assert_eq!(
            parse_addr("INFO listening on http://127.0.0.1:4321 (loading models; ...)"),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(
            parse_addr("INFO gateway at http://127.0.0.1:55/v1 for [\"m\"]"),
            Some("127.0.0.1:55".parse().unwrap())
        );
        assert_eq!(parse_addr("INFO serving [\"m\"]"), None);
    }

    #[test]
    fn samples_are_summed_over_labels() {
        let page = "# HELP novastack_prefix_cache_hits_total x\n# TYPE novastack_prefix_cache_hits_total counter\n\
                    novastack_prefix_cache_hits_total{model=\"a\"} 3\nnovastack_prefix_cache_hits_total{model=\"b\"} 4.5\n\
                    novastack_prefix_cache_hits_total_other 100\nnovastack_prefix_cache_queries_total{model=\"a\"} 9\n";
        assert_eq!(sum_samples(page, "novastack_prefix_cache_hits_total"), 7.5);
        assert_eq!(
            sum_samples(page, "novastack_prefix_cache_queries_total"),
            9.0
        );
        assert_eq!(sum_samples(page, "novastack_missing"), 0.0);
    }
}
