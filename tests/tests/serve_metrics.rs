//! `/metrics` against what clients see: the time to first token is above 0 and at most
//! what a streaming client measured; clients that disconnect are counted as finished
//! with reason `abort`.

use novastack_tests::{fixtures_dir, http, start_server};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The value of one sample line of the `/metrics` page (`name{labels}`), if present.
fn metric(addr: SocketAddr, sample: &str) -> Option<f64> {
    let (_, page) = http(addr, "GET", "/metrics", "");
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .map(|v| v.trim().parse().unwrap())
}

/// Opens a streaming completion on a raw socket and reads until `until` appears in
/// what came back (the head, or a first `data:` event).
fn open_stream(addr: SocketAddr, body: &str, until: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(until) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    s
}

/// The engine's time to first token covers the step that computed the prompt (it
/// used to read 0.000 s for a request on an idle server) and never exceeds the time a
/// client measured from sending the request to receiving the first token.
#[test]
fn time_to_first_token_is_positive_and_at_most_what_the_client_saw() {
    let addr = start_server(&fixtures_dir().join("models/llama-f32"), "m");
    let prompt: Vec<u32> = (1..300).collect();
    let body =
        json!({"prompt": prompt, "max_tokens": 2, "ignore_eos": true, "stream": true}).to_string();
    let start = Instant::now();
    let s = open_stream(addr, &body, "data: {");
    let client = start.elapsed().as_secs_f64();
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(
        addr,
        "novastack_time_to_first_token_seconds_count{model=\"m\"}",
    ) != Some(1.0)
    {
        assert!(Instant::now() < deadline, "no first token recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ttft = metric(
        addr,
        "novastack_time_to_first_token_seconds_sum{model=\"m\"}",
    )
    .unwrap();
    assert!(
        ttft > 0.0 && ttft <= client,
        "metric TTFT {ttft} s, client TTFT {client} s"
    );
}

/// Streams whose clients hang up count as finished with reason `abort`, one per
/// sequence, once their blocks are back.
#[test]
fn disconnected_clients_are_counted_as_finished_with_reason_abort() {
    let addr = start_server(&fixtures_dir().join("models/llama-f32"), "m");
    let abort = "novastack_request_finished_total{model=\"m\",finished_reason=\"abort\"}";
    assert_eq!(metric(addr, abort), Some(0.0));
    let body = json!({"prompt": [1, 2, 3, 4, 5], "max_tokens": 900, "ignore_eos": true, "stream": true, "n": 2})
        .to_string();
    let conns: Vec<TcpStream> = (0..4)
        .map(|_| open_stream(addr, &body, "data: {"))
        .collect();
    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(addr, abort) != Some(8.0) {
        assert!(
            Instant::now() < deadline,
            "{:?} aborted, not 8",
            metric(addr, abort)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Counted in the same engine snapshot that has every block back.
    assert_eq!(
        metric(addr, "novastack_kv_blocks_used{model=\"m\"}"),
        Some(0.0)
    );
}

/// Elements of every tensor in a fixture's checkpoint, by name.
fn checkpoint_sizes(dir: &std::path::Path) -> Vec<(String, u64)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| (n, t.shape().iter().product::<usize>() as u64))
        .collect()
}

/// `model_parameters` counts every tensor of the checkpoint (kind total), and for a
/// mixture-of-experts model only `num_experts_per_tok` experts per MoE layer besides the
/// non-expert weights (kind active_per_token); a dense model runs all of them.
#[test]
fn parameter_counts_are_the_checkpoints_and_the_experts_a_token_uses() {
    for (fixture, moe) in [
        ("llama-f32", false),
        ("qwen3-moe-f32-top1", true),
        ("deepseek-v3-bf16", true),
    ] {
        let dir = fixtures_dir().join("models").join(fixture);
        let addr = start_server(&dir, "m");
        let sizes = checkpoint_sizes(&dir);
        let total: u64 = sizes.iter().map(|(_, n)| n).sum();
        let total_metric = "novastack_model_parameters{model=\"m\",kind=\"total\"}";
        let active_metric = "novastack_model_parameters{model=\"m\",kind=\"active_per_token\"}";
        assert_eq!(metric(addr, total_metric), Some(total as f64), "{fixture}");
        let active = metric(addr, active_metric).unwrap();
        if !moe {
            assert_eq!(active, total as f64, "{fixture}");
            continue;
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        let (e, k) = (
            config["num_local_experts"]
                .as_u64()
                .or(config["n_routed_experts"].as_u64())
                .unwrap(),
            config["num_experts_per_tok"].as_u64().unwrap(),
        );
        // Each MoE layer leaves e - k experts (of three tensors each) unread per token.
        let unread: u64 = sizes
            .iter()
            .filter(|(n, _)| n.contains(".mlp.experts."))
            .map(|(_, n)| n)
            .sum::<u64>()
            * (e - k)
            / e;
        assert!(unread > 0);
        assert_eq!(active, (total - unread) as f64, "{fixture}");
    }
}

/// `kv_cache_bytes_per_token` is the model's cache spec in the cache's storage type (f32
/// on the CPU): a latent-attention model caches one slot of latent + rope per layer
/// (deepseek-v3-bf16: 2 layers x (48 + 16) values), a grouped-query one keys and values
/// per kv head.
#[test]
fn kv_bytes_per_token_follow_the_cache_spec() {
    for (fixture, want) in [
        ("deepseek-v3-bf16", 2 * (48 + 16) * 4u64),
        ("llama-f32", {
            let c: serde_json::Value = serde_json::from_slice(
                &std::fs::read(fixtures_dir().join("models/llama-f32/config.json")).unwrap(),
            )
            .unwrap();
            let n = |k: &str| c[k].as_u64().unwrap();
            let hd = n("hidden_size") / n("num_attention_heads");
            n("num_hidden_layers") * 2 * n("num_key_value_heads") * hd * 4
        }),
    ] {
        let dir = fixtures_dir().join("models").join(fixture);
        let addr = start_server(&dir, "m");
        let got = metric(addr, "novastack_kv_cache_bytes_per_token{model=\"m\"}");
        assert_eq!(got, Some(want as f64), "{fixture}");
    }
}
