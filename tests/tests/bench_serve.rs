//! `novastack bench serve` against our server on 127.0.0.1: every request gets exactly
//! its input and output length, and the report's counts and latencies are consistent.

use clap::Parser;
use novastack_tests::{fixtures_dir, start_server};

#[derive(Parser)]
struct Wrap {
    #[command(flatten)]
    args: novastack_bench::serve::ServeBenchArgs,
}

#[test]
fn bench_serve_reports_exact_token_counts_and_latencies() {
    let dir = fixtures_dir().join("models/qwen3-f32");
    let addr = start_server(&dir, "tiny");
    let out = std::env::temp_dir().join(format!("ns-bench-serve-{}.json", std::process::id()));
    let args = Wrap::parse_from([
        "x",
        "--base-url",
        &format!("http://{addr}"),
        "--model",
        "tiny",
        "--tokenizer",
        dir.to_str().unwrap(),
        "--num-prompts",
        "12",
        "--random-input-len",
        "40",
        "--random-output-len",
        "9",
        "--random-range-ratio",
        "0.5",
        "--request-rate",
        "50",
        "--max-concurrency",
        "4",
        "--goodput",
        "ttft:100000",
        "--seed",
        "3",
        "--result-json",
        out.to_str().unwrap(),
    ])
    .args;
    novastack_bench::serve::run(args).unwrap();
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(r["completed"], 12, "{r}");
    assert_eq!(r["failed"], 0);
    let reqs = r["requests"].as_array().unwrap();
    let (mut inp, mut outp) = (0, 0);
    for q in reqs {
        let (i, o) = (
            q["input_len"].as_u64().unwrap(),
            q["output_len"].as_u64().unwrap(),
        );
        assert!((20..=60).contains(&i) && (4..=14).contains(&o), "{q}");
        // At most one inter-token gap per token after the first (a token that completes
        // no character yet sends no chunk).
        assert!((q["itl_ms"].as_array().unwrap().len() as u64) < o, "{q}");
        assert!(q["ttft_ms"].as_f64().unwrap() <= q["e2el_ms"].as_f64().unwrap());
        inp += i;
        outp += o;
    }
    assert_eq!(r["total_input_tokens"].as_u64(), Some(inp));
    assert_eq!(r["total_output_tokens"].as_u64(), Some(outp));
    // The server counted the same prompt tokens: the prompts had exact lengths.
    let (_, metrics) = novastack_tests::http(addr, "GET", "/metrics", "");
    let prompt_tokens: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("novastack_prompt_tokens_total{model=\"tiny\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(prompt_tokens >= inp as f64, "{prompt_tokens} < {inp}");
    assert!(r["goodput"].as_f64().unwrap() > 0.0);
    for m in ["ttft_ms", "tpot_ms", "itl_ms", "e2el_ms"] {
        assert!(
            r[m]["p99"].as_f64().unwrap() >= r[m]["median"].as_f64().unwrap(),
            "{m}"
        );
    }
}
