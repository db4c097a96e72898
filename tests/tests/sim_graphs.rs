//! Decode graphs on the simulated device (wavefront 64), where capture records the
//! launches and replay runs the recording: a model with graphs gives the same greedy
//! tokens as the same model without, bit for bit, over many steps whose batches change
//! bucket, pad, lose finished sequences, gain new ones and outgrow the captured
//! block-table width; a replay runs exactly the recorded work and allocates nothing;
//! and the engine with graphs gives transformers' tokens on the golden fixtures.

use novastack_engine::{Buckets, Engine, EngineConfig, FinishReason, RequestParams};
use novastack_engine::{RequestId, SamplingParams, SchedulerConfig};
use novastack_kernels::vendor::sim::{SimBackend, SimOptions};
use novastack_kernels::{Dtype, KvCache};
use novastack_models::{load_model, CausalLm, ForwardInput, GraphOptions, LoadedModel};
use novastack_tests::model_fixtures;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    model_fixtures()
        .into_iter()
        .find(|d| d.ends_with(name))
        .unwrap_or_else(|| panic!("fixture {name}"))
}

fn sim_model(dir: &Path, graphs: bool) -> LoadedModel<SimBackend> {
    let backend = SimBackend::new(SimOptions::amd(64), Dtype::F32).unwrap();
    backend.set_graphs(graphs);
    let lm = load_model(dir, backend).unwrap();
    assert_eq!(lm.model.backend().graphs_enabled(), graphs);
    lm
}

/// SplitMix64, for reproducible schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const BLOCK: usize = 4;
/// The widest block table graphs are captured for in the first test (40 tokens).
const WIDTH: usize = 10;

/// One sequence of the hand-driven schedule: its tokens, blocks and target length.
struct Seq {
    tokens: Vec<u32>,
    /// Tokens already in the KV cache.
    cached: usize,
    blocks: Vec<u32>,
    target: usize,
}

/// The same model twice, with and without graphs, each with its own KV cache, fed the
/// same steps.
struct Pair {
    graph: LoadedModel<SimBackend>,
    eager: LoadedModel<SimBackend>,
    kv_graph: KvCache<SimBackend>,
    kv_eager: KvCache<SimBackend>,
}

impl Pair {
    /// Runs one step on both models; their greedy tokens must be the same.
    fn step(&mut self, input: &ForwardInput, what: &str) -> Vec<u32> {
        let a = self
            .graph
            .model
            .forward_greedy(input, &mut self.kv_graph)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let b = self
            .eager
            .model
            .forward_greedy(input, &mut self.kv_eager)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(a, b, "{what}: graph and eager tokens differ");
        a
    }
}

/// Sequences arrive (each prefilled in a step of its own), decode together in batches
/// of 1 to 11 (buckets 1 to 16, mostly padded), finish at their own lengths, and grow
/// past the widest block table graphs are captured for (10 blocks of 4 tokens), where
/// their steps run eagerly. Every step's greedy tokens must be the same with and
/// without graphs.
#[test]
fn graph_decode_equals_eager_decode_bit_for_bit_through_a_changing_batch() {
    changing_batch("llama-f32");
}

/// The same schedule on a mixture-of-experts model: its decode steps group the
/// router's choices on the device, so they are captured and replayed like a dense
/// model's.
#[test]
fn moe_graph_decode_equals_eager_decode_bit_for_bit_through_a_changing_batch() {
    changing_batch("mixtral-f16");
}

/// The same schedule on a latent-attention model (DeepSeek-V3: per-head absorbed
/// projections, the latent cache write and split-K latent attention inside the graph).
#[test]
fn latent_graph_decode_equals_eager_decode_bit_for_bit_through_a_changing_batch() {
    changing_batch("deepseek-v3-bf16");
}

fn changing_batch(name: &str) {
    let dir = fixture(name);
    let graph = sim_model(&dir, true);
    let eager = sim_model(&dir, false);
    graph.model.set_graph_options(GraphOptions {
        max_blocks: WIDTH,
        ..GraphOptions::default()
    });
    let num_blocks = 256;
    let mut pair = Pair {
        kv_graph: graph.model.new_kv_cache(num_blocks, BLOCK).unwrap(),
        kv_eager: eager.model.new_kv_cache(num_blocks, BLOCK).unwrap(),
        graph,
        eager,
    };
    let vocab = pair.graph.model.vocab_size();
    let mut rng = Rng(15);
    let mut free: Vec<u32> = (0..num_blocks as u32).rev().collect();
    let mut seqs: Vec<Seq> = Vec::new();
    let (mut decode_steps, mut long_steps, mut buckets) = (0, 0, std::collections::BTreeSet::new());
    for step in 0..90 {
        // Arrivals: a burst at the start, then now and then (while blocks last).
        let arrivals = if step == 0 {
            6
        } else {
            (rng.below(5) == 0) as usize * (1 + rng.below(3))
        };
        for _ in 0..arrivals {
            if seqs.len() >= 11 {
                break;
            }
            let prompt_len = 3 + rng.below(14);
            let tokens: Vec<u32> = (0..prompt_len).map(|_| rng.below(vocab) as u32).collect();
            let target = prompt_len + 4 + rng.below(32);
            let blocks: Vec<u32> = (0..target.div_ceil(BLOCK))
                .map(|_| free.pop().unwrap())
                .collect();
            let mut input = ForwardInput::default();
            input.push_seq(&tokens, 0, blocks.clone(), BLOCK, true);
            let next = pair.step(&input, &format!("step {step}: prefill"))[0];
            let mut s = Seq {
                tokens,
                cached: prompt_len,
                blocks,
                target,
            };
            s.tokens.push(next);
            seqs.push(s);
        }
        if seqs.is_empty() {
            continue;
        }
        // One decode step over every running sequence.
        let mut input = ForwardInput::default();
        for s in &seqs {
            let used = (s.cached + 1).div_ceil(BLOCK);
            input.push_seq(
                &s.tokens[s.cached..],
                s.cached,
                s.blocks[..used].to_vec(),
                BLOCK,
                true,
            );
        }
        let n = seqs.len();
        buckets.insert(n.next_power_of_two());
        if seqs.iter().any(|s| s.cached + 1 > WIDTH * BLOCK) {
            long_steps += 1;
        }
        let next = pair.step(&input, &format!("step {step}: decode of {n}"));
        decode_steps += 1;
        for (s, t) in seqs.iter_mut().zip(next) {
            s.cached += 1;
            s.tokens.push(t);
        }
        // Finished sequences leave and give their blocks back.
        seqs.retain(|s| {
            let done = s.tokens.len() >= s.target;
            if done {
                free.extend(&s.blocks);
            }
            !done
        });
    }
    let stats = pair.graph.model.backend().device().stats();
    let eager_stats = pair.eager.model.backend().device().stats();
    eprintln!(
        "{decode_steps} decode steps in buckets {buckets:?}, {long_steps} past the graph width; \
         graphs: {stats:?}; eager: {eager_stats:?}"
    );
    assert!(buckets.len() >= 4, "buckets {buckets:?}");
    assert!(
        long_steps > 5,
        "too few steps outgrew the block-table width"
    );
    assert!(stats.replays > 20, "{stats:?}");
    assert_eq!(eager_stats.replays + eager_stats.recorded, 0);
}

/// Captures a decode step of 3 sequences (bucket 4), then replays the bucket's graph
/// for a step with other positions, slots and contexts: the replay runs exactly the
/// kernels and GEMMs the capture recorded (and the argmax after it), and allocates
/// nothing: the metadata is written into the buffers the graph reads.
#[test]
fn a_replay_runs_the_recorded_work_and_allocates_nothing() {
    replay_runs_the_recorded_work("qwen3-f32");
}

/// The same for a mixture-of-experts model (routing, device grouping, expert GEMMs and
/// combine inside the graph; nothing comes back to the host).
#[test]
fn a_moe_replay_runs_the_recorded_work_and_allocates_nothing() {
    replay_runs_the_recorded_work("qwen3-moe-bf16");
}

fn replay_runs_the_recorded_work(name: &str) {
    let dir = fixture(name);
    let lm = sim_model(&dir, true);
    let model = &lm.model;
    let dev = || model.backend().device().stats();
    let mut kv = model.new_kv_cache(64, BLOCK).unwrap();
    let decode = |contexts: &[usize]| {
        let mut input = ForwardInput::default();
        for (i, &c) in contexts.iter().enumerate() {
            let table: Vec<u32> = (0..c.div_ceil(BLOCK) as u32)
                .map(|b| 16 * i as u32 + b)
                .collect();
            input.push_seq(&[(c * 7 % 50) as u32 + 1], c - 1, table, BLOCK, true);
        }
        input
    };
    // Prefill the three contexts (eagerly: not a decode step).
    let mut prefill = ForwardInput::default();
    for i in 0..3 {
        let table: Vec<u32> = (0..8).map(|b| 16 * i + b).collect();
        prefill.push_seq(&[3; 20], 0, table, BLOCK, true);
    }
    model.forward_greedy(&prefill, &mut kv).unwrap();
    assert_eq!(dev().recorded, 0, "prefill is not captured");

    let before = dev();
    let first = model
        .forward_greedy(&decode(&[21, 21, 21]), &mut kv)
        .unwrap();
    let captured = dev();
    let recorded = captured.recorded - before.recorded;
    assert!(recorded > 10, "{captured:?}");
    assert_eq!(model.backend().graph_count(), 1);
    assert_eq!(
        captured.replays, before.replays,
        "the first step runs eagerly"
    );

    let second = model
        .forward_greedy(&decode(&[22, 23, 24]), &mut kv)
        .unwrap();
    let replayed = dev();
    assert_eq!(replayed.replays - captured.replays, 1);
    let ran = (replayed.launches + replayed.gemms) - (captured.launches + captured.gemms);
    assert_eq!(ran, recorded + 1, "the recorded work and the argmax");
    assert_eq!(replayed.allocations, captured.allocations, "no allocation");
    assert!(
        replayed.writes > captured.writes,
        "the step's metadata was written"
    );
    assert_eq!(replayed.recorded, captured.recorded, "nothing recaptured");
    assert_eq!((first.len(), second.len()), (3, 3));

    // The same two steps on a fresh eager model give the same tokens.
    let eager = sim_model(&dir, false);
    let mut kv = eager.model.new_kv_cache(64, BLOCK).unwrap();
    eager.model.forward_greedy(&prefill, &mut kv).unwrap();
    assert_eq!(
        eager
            .model
            .forward_greedy(&decode(&[21, 21, 21]), &mut kv)
            .unwrap(),
        first
    );
    assert_eq!(
        eager
            .model
            .forward_greedy(&decode(&[22, 23, 24]), &mut kv)
            .unwrap(),
        second
    );
}

fn golden(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

/// Every golden prompt of `dir` through the engine (up to 4 at a time, so decode
/// batches of 1 to 4 pad into buckets 1, 2 and 4): each request's tokens.
fn engine_tokens(model: &LoadedModel<SimBackend>, dir: &Path) -> Vec<Vec<u32>> {
    let g = golden(dir);
    let cases = g["cases"].as_array().unwrap();
    let mut e = Engine::new(
        &model.model,
        Vec::new(),
        EngineConfig {
            scheduler: SchedulerConfig {
                max_num_batched_tokens: 512,
                max_num_seqs: 4,
                buckets: Buckets::off(),
                ..Default::default()
            },
            num_blocks: 512,
            block_size: 16,
        },
    )
    .unwrap();
    let mut order: Vec<RequestId> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let params = RequestParams {
            max_tokens: ids(&c["greedy_token_ids"]).len(),
            sampling: SamplingParams::greedy(),
            ignore_eos: true,
            ..Default::default()
        };
        order.push(
            e.add_request(ids(&c["prompt_token_ids"]), params, i as f64)
                .unwrap()[0],
        );
    }
    let mut got: HashMap<RequestId, Vec<u32>> = HashMap::new();
    let mut t = 100.0;
    while e.has_work() {
        t += 0.01;
        for ev in e.step(t).unwrap() {
            got.entry(ev.id).or_default().extend(ev.token);
            if let Some(f) = ev.finished {
                assert_eq!(f, FinishReason::Length);
            }
        }
    }
    order
        .iter()
        .map(|id| got.remove(id).unwrap_or_default())
        .collect()
}

/// The engine with graphs (replaying most decode steps) gives transformers' greedy
/// tokens on fixtures of different layouts: two dense, and two mixture-of-experts
/// (softmax top-1 with dense layers between, and sigmoid top-3 with a selection bias)
/// whose long prompts' prefills group on the host. (The engine without graphs is held
/// to the same tokens by `sim_golden.rs`.)
#[test]
fn the_engine_with_graphs_equals_transformers_on_golden_fixtures() {
    for name in [
        "llama-f32",
        "qwen2-f32-tied",
        "qwen3-moe-f32-top1",
        "minimax-m2-bf16",
    ] {
        let dir = fixture(name);
        let with = sim_model(&dir, true);
        let got = engine_tokens(&with, &dir);
        let want: Vec<Vec<u32>> = golden(&dir)["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| ids(&c["greedy_token_ids"]))
            .collect();
        assert_eq!(got, want, "{name}: not transformers' tokens");
        let stats = with.model.backend().device().stats();
        eprintln!("{name}: {stats:?}");
        assert!(stats.replays > 0, "{name}: no decode step was replayed");
    }
}
