//! The workload both `bench serve` and `bench sim` replay: request lengths from a
//! random draw or a trace (fitted to the context window), arrival times (the trace's
//! own, Poisson or gamma), the concurrency cap and the goodput SLOs. One set of flags,
//! so a simulated run and a real one are the same workload.

use anyhow::{bail, Context, Result};
use clap::Args;
use rand::{Rng, SeedableRng};

#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
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
    /// SLOs for goodput, e.g. `ttft:500 tpot:50 e2el:10000` (milliseconds).
    #[arg(long, num_args = 1..)]
    pub goodput: Vec<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One request of the workload: its lengths and when it is sent (seconds from the
/// start, before any concurrency cap).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RequestShape {
    pub input_len: usize,
    pub output_len: usize,
    pub arrival: f64,
}

impl WorkloadArgs {
    /// The requests, in arrival order.
    pub fn shapes(&self) -> Result<Vec<RequestShape>> {
        let a = self;
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
        Ok(lengths
            .into_iter()
            .zip(arrival)
            .map(|((i, o), arrival)| {
                // Scale, then fit into the context window keeping the output whole if
                // possible.
                let (mut i, mut o) = (
                    ((i as f64 * a.length_scale).round() as usize).max(1),
                    ((o as f64 * a.length_scale).round() as usize).max(1),
                );
                o = o.min(a.max_model_len.saturating_sub(1).max(1));
                i = i.min(a.max_model_len.saturating_sub(o).max(1));
                RequestShape {
                    input_len: i,
                    output_len: o,
                    arrival,
                }
            })
            .collect())
    }
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

pub fn parse_goodput(specs: &[String]) -> Result<Vec<(String, f64)>> {
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
