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
    /// `random`, or `trace:PATH` (Azure CSV with arrival times, or ShareGPT/arXiv length CSV).
    #[arg(long, default_value = "random")]
    pub dataset: String,
    #[arg(long, default_value_t = 100)]
    pub num_prompts: usize,
    /// Requests per second (Poisson or gamma arrivals); `inf` sends all at once. Azure
    /// traces use their own arrival times unless this is given.
    #[arg(long)]
    pub request_rate: Option<f64>,
    /// Gamma shape of inter-arrival times: 1 is Poisson, < 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Divide trace arrival times by this (2 = twice as fast).
    #[arg(long, default_value_t = 1.0)]
    pub time_scale: f64,
    /// Multiply trace lengths by this before fitting them to --max-model-len.
    #[arg(long, default_value_t = 1.0)]
    pub length_scale: f64,
    /// Requests in flight at most.
    #[arg(long)]
    pub max_concurrency: Option<usize>,
    #[arg(long, default_value_t = 1024)]
    pub random_input_len: usize,
    #[arg(long, default_value_t = 128)]
    pub random_output_len: usize,
    /// Lengths drawn from [len * (1 - r), len * (1 + r)].
    #[arg(long, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Prompt + output tokens per request at most (trace lengths are fitted to it).
    #[arg(long, default_value_t = 8192)]
    pub max_model_len: usize,
    /// `ids` (exact lengths) or `text`.
    #[arg(long, default_value = "ids")]
    pub prompt_format: String,
    /// SLOs for goodput, e.g. `ttft:500 tpot:50 e2el:10000` (milliseconds).
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    /// Stop sending after this many seconds (requests in flight finish).
    #[arg(long)]
    pub max_duration: Option<f64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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

/// Arrival offsets in seconds: Poisson (burstiness 1) or gamma inter-arrival times.
fn arrivals(n: usize, rate: f64, burstiness: f64, rng: &mut impl Rng) -> Vec<f64> {
    if !rate.is_finite() {
        return vec![0.0; n];
    }
    let shape = burstiness.max(1e-3);
    let scale = 1.0 / (rate * shape);
    let mut t = 0.0;
    (0..n)
        .map(|_| {
            t += gamma(shape, rng) * scale;
            t
        })
        .collect()
}

/// Gamma(shape, 1) by Marsaglia-Tsang (boosted for shape < 1).
fn gamma(shape: f64, rng: &mut impl Rng) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        return gamma(shape + 1.0, rng) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x: f64 = normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return d * v;
        }
    }
}

fn normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Arrival offsets (seconds) from an Azure trace's TIMESTAMP column, if it has one.
fn trace_times(path: &str) -> Result<Option<Vec<f64>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read trace {path}"))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .collect();
    let Some(ti) = header.iter().position(|h| *h == "TIMESTAMP") else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let ts = line.split(',').nth(ti).unwrap_or("").trim();
        // "2023-11-16 18:15:46.6805900": seconds of the day are enough within a trace.
        let time = ts
            .split(' ')
            .nth(1)
            .with_context(|| format!("{path}:{}: bad TIMESTAMP", n + 2))?;
        let mut parts = time.split(':');
        let (h, m, s) = (parts.next(), parts.next(), parts.next());
        let secs = match (
            h.and_then(|v| v.parse::<f64>().ok()),
            m.and_then(|v| v.parse::<f64>().ok()),
            s.and_then(|v| v.parse::<f64>().ok()),
        ) {
            (Some(h), Some(m), Some(s)) => h * 3600.0 + m * 60.0 + s,
            _ => bail!("{path}:{}: bad TIMESTAMP {ts:?}", n + 2),
        };
        out.push(secs);
    }
    let t0 = out.first().copied().unwrap_or(0.0);
    // Traces may cross midnight.
    let mut day = 0.0;
    let mut prev = t0;
    for t in out.iter_mut() {
        if *t + day < prev - 43200.0 {
            day += 86400.0;
        }
        *t += day;
        prev = *t;
        *t -= t0;
    }
    Ok(Some(out))
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
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
    let (lengths, times): (Vec<(usize, usize)>, Option<Vec<f64>>) = if a.dataset == "random" {
        let draw = |len: usize, rng: &mut rand_chacha::ChaCha8Rng| {
            let lo = ((len as f64) * (1.0 - a.random_range_ratio))
                .round()
                .max(1.0) as usize;
            let hi = ((len as f64) * (1.0 + a.random_range_ratio))
                .round()
                .max(lo as f64) as usize;
            rng.random_range(lo..=hi)
        };
        let v = (0..a.num_prompts)
            .map(|_| {
                (
                    draw(a.random_input_len, &mut rng),
                    draw(a.random_output_len, &mut rng),
                )
            })
            .collect();
        (v, None)
    } else if let Some(path) = a.dataset.strip_prefix("trace:") {
        let mut v = crate::trace::read_trace(path)?;
        v.truncate(a.num_prompts);
        let mut times = trace_times(path)?;
        if let Some(t) = times.as_mut() {
            t.truncate(a.num_prompts);
        }
        (v, times)
    } else {
        bail!("--dataset {:?}: use `random` or `trace:PATH`", a.dataset);
    };
    if lengths.is_empty() {
        bail!("the workload is empty");
    }
    let arrival = match (a.request_rate, times) {
        (Some(rate), _) => arrivals(lengths.len(), rate, a.burstiness, &mut rng),
        (None, Some(t)) => t.iter().map(|t| t / a.time_scale.max(1e-9)).collect(),
        (None, None) => vec![0.0; lengths.len()],
    };
    let pool = ordinary_ids(tok);
    if pool.is_empty() {
        bail!("the tokenizer has no ordinary tokens to build prompts from");
    }
    Ok(lengths
        .into_iter()
        .zip(arrival)
        .map(|((i, o), arrival)| {
            // Scale, then fit into the context window keeping the output whole if possible.
            let (mut i, mut o) = (
                ((i as f64 * a.length_scale).round() as usize).max(1),
                ((o as f64 * a.length_scale).round() as usize).max(1),
            );
            o = o.min(a.max_model_len.saturating_sub(1).max(1));
            i = i.min(a.max_model_len.saturating_sub(o).max(1));
            let prompt = (0..i)
                .map(|_| pool[rng.random_range(0..pool.len())])
                .collect();
            Req {
                prompt,
                output_len: o,
                arrival,
            }
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
    let p = |q: f64| crate::stats::percentile(v, q);
    json!({"mean": v.iter().sum::<f64>() / v.len() as f64, "median": p(0.5), "p90": p(0.9), "p99": p(0.99)})
}

fn parse_goodput(specs: &[String]) -> Result<Vec<(String, f64)>> {
    specs
        .iter()
        .map(|s| {
            let (k, v) = s
                .split_once(':')
                .with_context(|| format!("--goodput {s:?}: use NAME:MS"))?;
            if !["ttft", "tpot", "e2el"].contains(&k) {
                bail!("--goodput {s:?}: NAME is ttft, tpot or e2el");
            }
            Ok((
                k.to_string(),
                v.parse()
                    .with_context(|| format!("--goodput {s:?}: bad number"))?,
            ))
        })
        .collect()
}

fn tpot(o: &Outcome) -> Option<f64> {
    (o.output_len > 1).then(|| (o.e2el_ms - o.ttft_ms) / (o.output_len - 1) as f64)
}

pub fn run(a: ServeBenchArgs) -> Result<()> {
    if !["ids", "text"].contains(&a.prompt_format.as_str()) {
        bail!("--prompt-format {:?}: use ids or text", a.prompt_format);
    }
    let slos = parse_goodput(&a.goodput)?;
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
            a.max_concurrency.unwrap_or(usize::MAX >> 4),
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
        "label": a.label, "base_url": a.base_url, "model": a.model, "dataset": a.dataset,
        "settings": {"num_prompts": a.num_prompts, "request_rate": a.request_rate, "burstiness": a.burstiness,
                     "max_concurrency": a.max_concurrency, "time_scale": a.time_scale, "length_scale": a.length_scale,
                     "max_model_len": a.max_model_len, "seed": a.seed, "goodput": a.goodput},
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_and_gamma_arrivals_have_the_requested_rate() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for burst in [1.0, 0.5, 3.0] {
            let t = arrivals(20000, 10.0, burst, &mut rng);
            let rate = t.len() as f64 / t.last().unwrap();
            assert!((rate - 10.0).abs() < 0.5, "burstiness {burst}: {rate}");
            // Coefficient of variation of gaps: 1/sqrt(shape).
            let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
            let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
            let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
            let cv = var.sqrt() / mean;
            assert!(
                (cv - 1.0 / burst.sqrt()).abs() < 0.1,
                "burstiness {burst}: cv {cv}"
            );
        }
        assert_eq!(arrivals(3, f64::INFINITY, 1.0, &mut rng), vec![0.0; 3]);
    }

    #[test]
    fn azure_timestamps_become_offsets() {
        let dir = std::env::temp_dir().join(format!("ns-trace-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("t.csv");
        std::fs::write(&p, "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 23:59:59.5,10,2\n2023-11-17 00:00:01.0,20,3\n").unwrap();
        let t = trace_times(p.to_str().unwrap()).unwrap().unwrap();
        assert!((t[1] - 1.5).abs() < 1e-9, "{t:?}");
        assert!(parse_goodput(&["ttft:500".into(), "tpot:50".into()]).is_ok());
        assert!(parse_goodput(&["foo:1".into()]).is_err());
    }
}
