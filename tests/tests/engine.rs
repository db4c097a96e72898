//! The continuous-batching engine end to end on the CPU backend: batch invariance
//! against solo runs and the golden references, seeded sampling across batch
//! compositions, preemption under a tiny KV cache, and no leaked blocks.

use novastack_engine::{
    generate, Buckets, Engine, EngineConfig, FinishReason, GenerateParams, RequestId,
    RequestParams, SamplingParams, SchedulerConfig, TokenEvent,
};
use novastack_kernels::CpuBackend;
use novastack_models::{load_model, CausalLm, LoadedModel};
use novastack_tests::fixtures_dir;
use serde_json::Value;
use std::collections::HashMap;

fn model(name: &str) -> LoadedModel<CpuBackend> {
    load_model(&fixtures_dir().join("models").join(name), CpuBackend::new()).unwrap()
}

fn engine(
    lm: LoadedModel<CpuBackend>,
    num_blocks: usize,
    sched: SchedulerConfig,
) -> Engine<CpuBackend> {
    let eos = lm.tokenizer.eos_token_ids().to_vec();
    Engine::new(
        lm.model,
        eos,
        EngineConfig {
            scheduler: sched,
            num_blocks,
            block_size: 16,
        },
    )
    .unwrap()
}

/// Runs the engine until idle; returns each request's tokens and finish reason.
fn run_all(e: &mut Engine<CpuBackend>) -> HashMap<RequestId, (Vec<u32>, FinishReason)> {
    let mut out: HashMap<RequestId, (Vec<u32>, FinishReason)> = HashMap::new();
    let mut t = 0.0;
    let mut steps = 0;
    while e.has_work() {
        t += 0.01;
        for ev in e.step(t).unwrap() {
            let entry = out
                .entry(ev.id)
                .or_insert((Vec::new(), FinishReason::Error));
            if let Some(tok) = ev.token {
                entry.0.push(tok);
            }
            if let Some(f) = ev.finished {
                entry.1 = f;
            }
        }
        steps += 1;
        assert!(steps < 100_000, "engine did not finish");
        e.scheduler().check_invariants().unwrap();
    }
    out
}

fn greedy(max_tokens: usize) -> RequestParams {
    RequestParams {
        max_tokens,
        sampling: SamplingParams::greedy(),
        ignore_eos: true,
        ..Default::default()
    }
}

/// 64 prompts of mixed lengths: the golden ones plus pseudo-random token runs.
fn mixed_prompts(golden: &Value, vocab: u32) -> Vec<Vec<u32>> {
    let mut prompts: Vec<Vec<u32>> = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| serde_json::from_value(c["prompt_token_ids"].clone()).unwrap())
        .collect();
    let mut x = 12345u64;
    while prompts.len() < 64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = 1 + (x >> 33) as usize % 300;
        prompts.push(
            (0..len)
                .map(|i| ((x >> 20) as u32 + i as u32 * 7) % vocab)
                .collect(),
        );
    }
    prompts
}

#[test]
fn batched_greedy_equals_solo_and_golden() {
    let dir = fixtures_dir().join("models/llama-f32");
    let golden: Value =
        serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    let lm = model("llama-f32");
    let vocab = lm.model.vocab_size() as u32;
    let prompts = mixed_prompts(&golden, vocab);
    // Solo references through the single-sequence path.
    let solo: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let params = GenerateParams {
                max_tokens: 12,
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            };
            generate(&lm.model, p, &[], &params, |_| {})
                .unwrap()
                .token_ids
        })
        .collect();
    for (bucketed, budget) in [(true, 256), (false, 97)] {
        let cfg = SchedulerConfig {
            max_num_batched_tokens: budget,
            max_num_seqs: 16,
            buckets: if bucketed {
                Buckets::new(vec![64, 256])
            } else {
                Buckets::off()
            },
            ..Default::default()
        };
        let mut e = engine(model("llama-f32"), 400, cfg);
        let ids: Vec<RequestId> = prompts
            .iter()
            .map(|p| e.add_request(p.clone(), greedy(12), 0.0).unwrap()[0])
            .collect();
        let out = run_all(&mut e);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(out[id].0, solo[i], "prompt {i} (buckets {bucketed})");
            assert_eq!(out[id].1, FinishReason::Length);
        }
        // The golden prompts also equal transformers' greedy tokens.
        for (i, c) in golden["cases"].as_array().unwrap().iter().enumerate() {
            let want: Vec<u32> = serde_json::from_value(c["greedy_token_ids"].clone()).unwrap();
            assert_eq!(out[&ids[i]].0[..], want[..12]);
        }
        assert_eq!(e.stats.kv_blocks_free, 400, "blocks leaked");
    }
}

#[test]
fn seeded_sampling_is_reproducible_across_batch_compositions() {
    let params = |seed| RequestParams {
        max_tokens: 20,
        sampling: SamplingParams {
            temperature: 0.9,
            top_p: 0.95,
            top_k: 50,
            seed: Some(seed),
            ..Default::default()
        },
        ignore_eos: true,
        ..Default::default()
    };
    let prompt: Vec<u32> = (10..50).collect();
    let mut alone = engine(model("qwen3-f32"), 64, SchedulerConfig::default());
    let id = alone.add_request(prompt.clone(), params(7), 0.0).unwrap()[0];
    let want = run_all(&mut alone)[&id].0.clone();

    let mut busy = engine(
        model("qwen3-f32"),
        256,
        SchedulerConfig {
            max_num_batched_tokens: 64,
            ..Default::default()
        },
    );
    for k in 0..6u32 {
        busy.add_request((0..(5 + 30 * k)).collect(), params(100 + k as u64), 0.0)
            .unwrap();
    }
    let id = busy.add_request(prompt.clone(), params(7), 0.0).unwrap()[0];
    busy.add_request(prompt.clone(), params(8), 0.0).unwrap();
    let out = run_all(&mut busy);
    assert_eq!(out[&id].0, want);
}

#[test]
fn tiny_kv_cache_preempts_and_every_request_finishes_correctly() {
    let lm = model("qwen2-bf16");
    let prompts: Vec<Vec<u32>> = (0..12u32)
        .map(|k| (0..(20 + 17 * k)).map(|t| (t * 31 + k) % 300).collect())
        .collect();
    let solo: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let params = GenerateParams {
                max_tokens: 24,
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            };
            generate(&lm.model, p, &[], &params, |_| {})
                .unwrap()
                .token_ids
        })
        .collect();
    // The longest request needs 13 blocks; 24 blocks cannot hold many at once.
    let mut e = engine(
        model("qwen2-bf16"),
        24,
        SchedulerConfig {
            max_num_batched_tokens: 128,
            max_num_seqs: 8,
            ..Default::default()
        },
    );
    let ids: Vec<RequestId> = prompts
        .iter()
        .map(|p| e.add_request(p.clone(), greedy(24), 0.0).unwrap()[0])
        .collect();
    let out = run_all(&mut e);
    assert!(
        e.stats.num_preemptions > 0,
        "the test should force preemption"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(out[id].0, solo[i], "request {i}");
    }
    assert_eq!(e.stats.kv_blocks_free, 24);
    // A request that can never fit is rejected with a clear error.
    let err = e
        .add_request(vec![1; 400], greedy(10), 0.0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("KV blocks"), "{err}");
}

#[test]
fn prefix_cache_and_n_share_blocks_and_aborts_free_everything() {
    let mut e = engine(model("mistral-f16"), 128, SchedulerConfig::default());
    let prefix: Vec<u32> = (0..64).map(|t| (t * 13) % 300).collect();
    let a = e.add_request(prefix.clone(), greedy(4), 0.0).unwrap()[0];
    run_all(&mut e);
    // Same 64-token prefix + 5 more: the 4 full blocks come from the cache.
    let mut longer = prefix.clone();
    longer.extend([1, 2, 3, 4, 5]);
    let mut events: Vec<TokenEvent> = Vec::new();
    let b = e.add_request(longer.clone(), greedy(3), 1.0).unwrap()[0];
    while e.has_work() {
        events.extend(e.step(2.0).unwrap());
    }
    let last = events.iter().rfind(|ev| ev.id == b).unwrap();
    assert_eq!(last.num_cached_tokens, 64);
    assert!(e.stats.prefix_hit_rate() > 0.0);
    assert_ne!(a, b);

    // n = 3 seeded samples of one prompt: siblings reuse the first one's blocks.
    let params = RequestParams {
        max_tokens: 6,
        n: 3,
        sampling: SamplingParams {
            temperature: 1.0,
            seed: Some(3),
            ..Default::default()
        },
        ignore_eos: true,
        ..Default::default()
    };
    let fresh: Vec<u32> = (0..50).map(|t| (t * 7 + 1) % 300).collect();
    let ids = e.add_request(fresh, params, 3.0).unwrap();
    assert_eq!(ids.len(), 3);
    let mut evs = Vec::new();
    while e.has_work() {
        evs.extend(e.step(4.0).unwrap());
    }
    for (i, id) in ids.iter().enumerate() {
        let fin = evs.iter().rfind(|ev| ev.id == *id).unwrap();
        assert_eq!(fin.index, i);
        assert_eq!(fin.num_output_tokens, 6);
        if i > 0 {
            assert_eq!(
                fin.num_cached_tokens, 48,
                "sibling {i} reused the full prompt blocks"
            );
        }
    }

    // Abort requests in every state: waiting, running mid-prefill, running decoding.
    let r1 = e.add_request((0..200).collect(), greedy(50), 5.0).unwrap()[0];
    let r2 = e.add_request((0..30).collect(), greedy(50), 5.0).unwrap()[0];
    e.step(5.1).unwrap();
    e.step(5.2).unwrap();
    let r3 = e.add_request((0..10).collect(), greedy(50), 5.3).unwrap()[0];
    assert!(e.abort(r1) && e.abort(r2) && e.abort(r3));
    assert!(!e.abort(r3));
    assert!(!e.has_work());
    assert_eq!(e.scheduler().blocks.num_free_blocks(), 128);
    e.scheduler().check_invariants().unwrap();
}

#[test]
fn engine_thread_streams_events_and_dropped_receivers_abort() {
    use novastack_engine::{EngineHandle, Submission};
    let e = engine(model("llama-f32"), 64, SchedulerConfig::default());
    let h = EngineHandle::spawn(e);
    let (ids, mut rx) = h
        .submit(Submission {
            prompt: (1..20).collect(),
            params: greedy(5),
        })
        .unwrap();
    let mut toks = Vec::new();
    loop {
        let ev = rx.blocking_recv().expect("stream open until finished");
        assert_eq!(ev.id, ids[0]);
        toks.extend(ev.token);
        if ev.finished.is_some() {
            assert_eq!(ev.finished, Some(FinishReason::Length));
            assert_eq!(ev.num_output_tokens, 5);
            break;
        }
    }
    assert_eq!(toks.len(), 5);
    // A client that leaves mid-generation: its blocks come back.
    let (_, rx2) = h
        .submit(Submission {
            prompt: (1..100).collect(),
            params: greedy(900),
        })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    drop(rx2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let s = h.stats();
        if s.kv_blocks_free == 64 && s.num_running == 0 && s.num_waiting == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "blocks not freed: {s:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    // Bad requests are refused through the handle with the engine's message.
    let err = h
        .submit(Submission {
            prompt: vec![1_000_000],
            params: greedy(1),
        })
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("vocabulary"), "{err}");
    h.shutdown();
}

/// A latent cache (DeepSeek-V3) shares prefix blocks like any other: a prompt whose
/// first 64 tokens are cached gives the tokens a cold engine gives it, and the blocks
/// all come back when the engine is idle.
#[test]
fn latent_cache_prefix_hits_give_a_cold_runs_tokens() {
    let prefix: Vec<u32> = (0..64).map(|t| (t * 13) % 300).collect();
    let mut longer = prefix.clone();
    longer.extend([1, 2, 3, 4, 5]);
    let mut cold = engine(model("deepseek-v3-f32"), 64, SchedulerConfig::default());
    let id = cold.add_request(longer.clone(), greedy(6), 0.0).unwrap()[0];
    let want = run_all(&mut cold).remove(&id).unwrap().0;

    let mut warm = engine(model("deepseek-v3-f32"), 64, SchedulerConfig::default());
    warm.add_request(prefix, greedy(2), 0.0).unwrap();
    run_all(&mut warm);
    let mut events: Vec<TokenEvent> = Vec::new();
    let id = warm.add_request(longer, greedy(6), 1.0).unwrap()[0];
    while warm.has_work() {
        events.extend(warm.step(2.0).unwrap());
    }
    let got: Vec<u32> = events
        .iter()
        .filter(|ev| ev.id == id)
        .filter_map(|ev| ev.token)
        .collect();
    let last = events.iter().rfind(|ev| ev.id == id).unwrap();
    assert_eq!(last.num_cached_tokens, 64);
    assert_eq!(got, want);
    assert_eq!(warm.stats.kv_blocks_free, warm.stats.kv_blocks_total);
}
