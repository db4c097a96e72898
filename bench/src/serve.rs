//! `novastack bench serve`: replays a workload against any OpenAI-compatible server
//! (ours, llama.cpp's llama-server, vLLM...) with streaming requests and reports the
//! metrics vLLM's serving benchmark made standard: TTFT, TPOT, ITL, end-to-end latency,
//! request and token throughput, goodput. Flags are named as vLLM's.
//! `novastack bench compare A.json B.json` prints the ratios of two runs.
//!
//! Prompts are token ids sent to `/v1/completions`, so every request has exactly its
//! input length on any server that accepts token-id prompts; `--prompt-format text`
//! decodes them to text for servers that do not.

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ServeBenchArgs {
    /// The server, e.g. http://127.0.0.1:8080 (the /v1 path is added).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub base_url: String,
    /// The model name sent in requests.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Tokenizer for synthesising prompts: a model folder, a .gguf file or `default`.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub workload: crate::workload::WorkloadArgs,
    /// `ids` (exact lengths) or `text`.
    #[arg(long, default_value = "ids")]
    pub prompt_format: String,
    /// Stop sending after this many seconds (requests in flight finish).
    #[arg(long)]
    pub max_duration: Option<f64>,
    #[arg(long)]
    pub result_json: Option<PathBuf>,
    /// A label for this run in the JSON (e.g. `novastack` or `llama.cpp`).
    #[arg(long)]
    pub label: Option<String>,
    /// Write PNG plots here: latency CDFs and throughput over time.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Req {
    prompt: Vec<u32>,
    output_len: usize,
    arrival: f64,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Outcome {
    ok: bool,
    input_len: usize,
    output_len: usize,
    ttft_ms: f64,
    e2el_ms: f64,
    itl_ms: Vec<f64>,
    start_s: f64,
    error: Option<String>,
}

/// Token ids a prompt can be built from: no special or control tokens.
fn ordinary_ids(tok: &novastack_models::Tokenizer) -> Vec<u32> {
    (0..tok.vocab_size() as u32)
        .filter(|&i| {
            tok.id_to_token(i).is_some_and(|t| {
                let special = (t.starts_with('<') && t.ends_with('>')) || t.starts_with('[');
                !special && !t.is_empty()
            })
        })
        .collect()
}

fn load_tokenizer(path: Option<&std::path::Path>) -> Result<novastack_models::Tokenizer> {
    let p = novastack_server::default_model::resolve(path)?;
    if p.is_dir() {
        return Ok(novastack_models::Tokenizer::from_dir(&p)?);
    }
    // Only the tokenizer: a GGUF's metadata, not its (dequantized) weights.
    let file = novastack_models::gguf::GgufFile::open(&p)?;
    Ok(novastack_models::gguf::tokenizer_from_gguf(&file)?)
}

fn workload(a: &ServeBenchArgs, tok: &novastack_models::Tokenizer) -> Result<Vec<Req>> {
    let shapes = a.workload.shapes()?;
    let pool = ordinary_ids(tok);
    if pool.is_empty() {
        bail!("the tokenizer has no ordinary tokens to build prompts from");
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.workload.seed ^ 0x70726f6d7074);
    Ok(shapes
        .into_iter()
        .map(|r| Req {
            prompt: (0..r.input_len)
                .map(|_| pool[rng.random_range(0..pool.len())])
                .collect(),
            output_len: r.output_len,
            arrival: r.arrival,
        })
        .collect())
}

async fn one(
    client: &reqwest::Client,
    url: &str,
    a: &ServeBenchArgs,
    tok: &novastack_models::Tokenizer,
    r: &Req,
    t0: Instant,
) -> Outcome {
    let prompt = if a.prompt_format == "text" {
        json!(tok.decode(&r.prompt, false).unwrap_or_default())
    } else {
        json!(r.prompt)
    };
    let body = json!({"model": a.model, "prompt": prompt, "max_tokens": r.output_len, "temperature": 0,
                      "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}});
    let start = Instant::now();
    let mut out = Outcome {
        input_len: r.prompt.len(),
        start_s: t0.elapsed().as_secs_f64(),
        ..Default::default()
    };
    let resp = match client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            out.error = Some(e.to_string());
            return out;
        }
    };
    if !resp.status().is_success() {
        let st = resp.status();
        out.error = Some(format!(
            "{st}: {}",
            resp.text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        ));
        return out;
    }
    let mut parser = novastack_openai::sse_parser::SseParser::new();
    let mut stream = resp.bytes_stream();
    let (mut last, mut chunks, mut usage_out) = (None::<Instant>, 0usize, None::<usize>);
    let mut done = false;
    while let Some(b) = stream.next().await {
        let Ok(b) = b else {
            out.error = Some("the stream broke".into());
            return out;
        };
        for ev in parser.push(&b) {
            if ev.data.trim() == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
                continue;
            };
            if let Some(e) = v.get("error") {
                out.error = Some(e.to_string());
                return out;
            }
            if let Some(n) = v
                .pointer("/usage/completion_tokens")
                .and_then(Value::as_u64)
            {
                usage_out = Some(n as usize);
            }
            let text = v
                .pointer("/choices/0/text")
                .or_else(|| v.pointer("/choices/0/delta/content"))
                .and_then(Value::as_str);
            if text.is_some_and(|t| !t.is_empty()) {
                let now = Instant::now();
                match last {
                    None => out.ttft_ms = now.duration_since(start).as_secs_f64() * 1e3,
                    Some(l) => out.itl_ms.push(now.duration_since(l).as_secs_f64() * 1e3),
                }
                last = Some(now);
                chunks += 1;
            }
        }
    }
    out.e2el_ms = start.elapsed().as_secs_f64() * 1e3;
    out.output_len = usage_out.unwrap_or(chunks);
    out.ok = chunks > 0 || done;
    if !out.ok {
        out.error = Some("no tokens came back".into());
    }
    out
}

fn stats(v: &mut [f64]) -> Value {
    if v.is_empty() {
        return json!({"mean": null, "median": null, "p90": null, "p99": null});
    }
    v.sort_by(f64::total_cmp);
    let p = |q: f64| novastack_metrics::percentile(v, q);
    json!({"mean": v.iter().sum::<f64>() / v.len() as f64, "median": p(0.5), "p90": p(0.9), "p99": p(0.99)})
}

fn tpot(o: &Outcome) -> Option<f64> {
    (o.output_len > 1).then(|| (o.e2el_ms - o.ttft_ms) / (o.output_len - 1) as f64)
}

pub fn run(a: ServeBenchArgs) -> Result<()> {
    if !["ids", "text"].contains(&a.prompt_format.as_str()) {
        bail!("--prompt-format {:?}: use ids or text", a.prompt_format);
    }
    let slos = crate::workload::parse_goodput(&a.workload.goodput)?;
    let tok = Arc::new(load_tokenizer(a.tokenizer.as_deref())?);
    let reqs = workload(&a, &tok)?;
    let url = format!(
        "{}/v1/completions",
        a.base_url.trim_end_matches('/').trim_end_matches("/v1")
    );
    let rt = tokio::runtime::Runtime::new()?;
    let n = reqs.len();
    tracing::info!("{n} requests to {url} (model {:?})", a.model);
    let (outcomes, wall) = rt.block_on(async {
        let client = reqwest::Client::builder()
            // A fresh connection per request: a pooled keep-alive connection the server is
            // closing at that moment fails the send (seen with llama-server), and a
            // loopback connect costs microseconds against requests of seconds.
            .pool_max_idle_per_host(0)
            .build()?;
        let sem = Arc::new(tokio::sync::Semaphore::new(
            a.workload.max_concurrency.unwrap_or(usize::MAX >> 4),
        ));
        let t0 = Instant::now();
        let deadline = a.max_duration.map(|d| t0 + Duration::from_secs_f64(d));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for r in reqs {
            let at = t0 + Duration::from_secs_f64(r.arrival);
            if deadline.is_some_and(|d| at > d) {
                break;
            }
            tokio::time::sleep_until(at.into()).await;
            let permit = sem.clone().acquire_owned().await?;
            let (client, url, a, tok, done) = (
                client.clone(),
                url.clone(),
                a.clone(),
                tok.clone(),
                done.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let o = one(&client, &url, &a, &tok, &r, t0).await;
                drop(permit);
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                eprint!("\r{k}/{n} done");
                o
            }));
        }
        let mut outs = Vec::new();
        for t in tasks {
            outs.push(t.await?);
        }
        eprintln!();
        anyhow::Ok((outs, t0.elapsed().as_secs_f64()))
    })?;
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
    let failed = outcomes.len() - ok.len();
    if let Some(e) = outcomes.iter().find_map(|o| o.error.as_ref()) {
        tracing::info!("{failed} failed; first error: {e}");
    }
    let input: usize = ok.iter().map(|o| o.input_len).sum();
    let output: usize = ok.iter().map(|o| o.output_len).sum();
    let good = ok
        .iter()
        .filter(|o| {
            slos.iter().all(|(k, ms)| match k.as_str() {
                "ttft" => o.ttft_ms <= *ms,
                "tpot" => tpot(o).is_none_or(|t| t <= *ms),
                _ => o.e2el_ms <= *ms,
            })
        })
        .count();
    let mut ttft: Vec<f64> = ok.iter().map(|o| o.ttft_ms).collect();
    let mut tpots: Vec<f64> = ok.iter().filter_map(|o| tpot(o)).collect();
    let mut itl: Vec<f64> = ok.iter().flat_map(|o| o.itl_ms.iter().copied()).collect();
    let mut e2el: Vec<f64> = ok.iter().map(|o| o.e2el_ms).collect();
    let result = json!({
        "label": a.label, "base_url": a.base_url, "model": a.model, "dataset": a.workload.dataset,
        "settings": {"num_prompts": a.workload.num_prompts, "request_rate": a.workload.request_rate, "burstiness": a.workload.burstiness,
                     "max_concurrency": a.workload.max_concurrency, "time_scale": a.workload.time_scale, "length_scale": a.workload.length_scale,
                     "max_model_len": a.workload.max_model_len, "seed": a.workload.seed, "goodput": a.workload.goodput},
        "completed": ok.len(), "failed": failed, "duration_s": wall,
        "total_input_tokens": input, "total_output_tokens": output,
        "request_throughput": ok.len() as f64 / wall, "output_throughput": output as f64 / wall,
        "total_token_throughput": (input + output) as f64 / wall,
        "goodput": if slos.is_empty() { Value::Null } else { json!(good as f64 / wall) },
        "ttft_ms": stats(&mut ttft), "tpot_ms": stats(&mut tpots), "itl_ms": stats(&mut itl), "e2el_ms": stats(&mut e2el),
        "requests": outcomes,
    });
    print_report(&result);
    if let Some(p) = &a.result_json {
        std::fs::write(p, serde_json::to_string_pretty(&result)?)
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    if let Some(dir) = &a.plot_dir {
        let label = a.label.clone().unwrap_or_else(|| a.base_url.clone());
        for f in crate::plot::plot_runs(dir, &[(label, &result)])? {
            tracing::info!("wrote {}", f.display());
        }
    }
    Ok(())
}

fn f(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{x:.2}"))
}

fn print_report(r: &Value) {
    println!("\n============ Serving Benchmark Result ============");
    for (k, label) in [
        ("completed", "Successful requests"),
        ("failed", "Failed requests"),
        ("duration_s", "Benchmark duration (s)"),
        ("total_input_tokens", "Total input tokens"),
        ("total_output_tokens", "Total generated tokens"),
        ("request_throughput", "Request throughput (req/s)"),
        ("output_throughput", "Output token throughput (tok/s)"),
        ("total_token_throughput", "Total token throughput (tok/s)"),
        ("goodput", "Request goodput (req/s)"),
    ] {
        println!("{label:<40} {}", f(&r[k]));
    }
    println!("| metric (ms) | mean | median | p90 | p99 |\n| --- | --- | --- | --- | --- |");
    for (k, label) in [
        ("ttft_ms", "TTFT"),
        ("tpot_ms", "TPOT"),
        ("itl_ms", "ITL"),
        ("e2el_ms", "E2E latency"),
    ] {
        let s = &r[k];
        println!(
            "| {label} | {} | {} | {} | {} |",
            f(&s["mean"]),
            f(&s["median"]),
            f(&s["p90"]),
            f(&s["p99"])
        );
    }
}

/// `novastack bench compare A.json B.json`: B's figures over A's.
#[derive(Args, Debug)]
pub struct CompareArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    /// Also plot both runs together (latency CDFs, throughput over time) into this folder.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
}

pub fn compare(c: CompareArgs) -> Result<()> {
    let read = |p: &PathBuf| -> Result<Value> {
        serde_json::from_slice(
            &std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a bench serve result", p.display()))
    };
    let (a, b) = (read(&c.a)?, read(&c.b)?);
    let name = |v: &Value, p: &PathBuf| {
        v["label"]
            .as_str()
            .map_or(p.display().to_string(), str::to_string)
    };
    let (na, nb) = (name(&a, &c.a), name(&b, &c.b));
    println!("| metric | {na} | {nb} | {nb} / {na} |\n| --- | --- | --- | --- |");
    let mut rows: Vec<(String, Option<f64>, Option<f64>)> = [
        "request_throughput",
        "output_throughput",
        "total_token_throughput",
        "goodput",
    ]
    .iter()
    .map(|k| (k.to_string(), a[k].as_f64(), b[k].as_f64()))
    .collect();
    for m in ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] {
        for s in ["median", "p99"] {
            rows.push((format!("{m} {s}"), a[m][s].as_f64(), b[m][s].as_f64()));
        }
    }
    for (k, x, y) in rows {
        let ratio = match (x, y) {
            (Some(x), Some(y)) if x != 0.0 => format!("{:.2}", y / x),
            _ => "-".into(),
        };
        let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        println!("| {k} | {} | {} | {ratio} |", fmt(x), fmt(y));
    }
    if let Some(dir) = &c.plot_dir {
        for f in crate::plot::plot_runs(dir, &[(na, &a), (nb, &b)])? {
            tracing::info!("wrote {}", f.display());
        }
    }
    Ok(())
}
