//! The CPU backend against transformers: all-position logits within 1e-4 and 32 greedy
//! tokens exactly, for every golden fixture, also with chunked prefill and in a batch.

use novastack_engine::{generate, GenerateParams, SamplingParams};
use novastack_kernels::{AttentionMetadata, CpuBackend};
use novastack_models::{load_hf_dir, CausalLm, ForwardInput, LoadedModel};
use novastack_tests::model_fixtures;
use safetensors::SafeTensors;
use serde::Deserialize;
use std::path::Path;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    prompt: Option<String>,
    prompt_token_ids: Vec<u32>,
    greedy_token_ids: Vec<u32>,
    logits_tensor: String,
}

const BLOCK: usize = 16;
const TOL: f32 = 1e-4;

fn load(dir: &Path) -> (LoadedModel<CpuBackend>, Golden, Vec<u8>) {
    let lm =
        load_hf_dir(dir, CpuBackend::new()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let golden: Golden =
        serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    let logits = std::fs::read(dir.join("golden_logits.safetensors")).unwrap();
    (lm, golden, logits)
}

fn expected_logits(bytes: &[u8], name: &str) -> (Vec<f32>, Vec<usize>) {
    let st = SafeTensors::deserialize(bytes).unwrap();
    let t = st.tensor(name).unwrap();
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (v, t.shape().to_vec())
}

/// Runs `seqs` together in one step each chunk, `chunk` tokens per sequence per step,
/// returning every position's logits per sequence.
fn batched_prefill(lm: &LoadedModel<CpuBackend>, seqs: &[&[u32]], chunk: usize) -> Vec<Vec<f32>> {
    let model = &lm.model;
    let tables: Vec<Vec<u32>> = {
        let mut next = 0u32;
        seqs.iter()
            .map(|s| {
                let n = s.len().div_ceil(BLOCK) as u32;
                // Interleave block ids across sequences so tables are not contiguous.
                let t = (0..n).map(|i| next + i * seqs.len() as u32).collect();
                next += 1;
                t
            })
            .collect()
    };
    let num_blocks = tables.iter().flatten().max().map_or(1, |&m| m as usize + 1);
    let mut kv = model.new_kv_cache(num_blocks, BLOCK).unwrap();
    let vocab = model.vocab_size();
    let mut out: Vec<Vec<f32>> = seqs
        .iter()
        .map(|s| Vec::with_capacity(s.len() * vocab))
        .collect();
    let mut done = 0;
    while seqs.iter().any(|s| s.len() > done) {
        let mut input = ForwardInput::default();
        let mut owners = Vec::new();
        for (i, s) in seqs.iter().enumerate() {
            if s.len() <= done {
                continue;
            }
            let end = (done + chunk).min(s.len());
            // Logits for every position, not just the last.
            let first_row = input.token_ids.len();
            input.push_seq(&s[done..end], done, tables[i].clone(), BLOCK, false);
            input
                .logits_indices
                .extend(first_row..input.token_ids.len());
            owners.extend(std::iter::repeat_n(i, end - done));
        }
        let logits = model.forward(&input, &mut kv).unwrap();
        for (row, &i) in owners.iter().enumerate() {
            out[i].extend_from_slice(&logits[row * vocab..(row + 1) * vocab]);
        }
        done += chunk;
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fixtures_exist() {
    assert!(model_fixtures().len() >= 9, "golden fixtures missing");
}

#[test]
fn all_position_logits_match_transformers() {
    for dir in model_fixtures() {
        let (lm, golden, logits_file) = load(&dir);
        for case in &golden.cases {
            let (want, shape) = expected_logits(&logits_file, &case.logits_tensor);
            assert_eq!(
                shape,
                vec![case.prompt_token_ids.len(), lm.model.vocab_size()]
            );
            let got = batched_prefill(&lm, &[&case.prompt_token_ids], usize::MAX);
            let d = max_abs_diff(&got[0], &want);
            assert!(
                d <= TOL,
                "{} / {}: max |Δlogit| = {d}",
                dir.display(),
                case.name
            );
        }
    }
}

#[test]
fn tokenizer_reproduces_prompt_ids() {
    for dir in model_fixtures() {
        let (lm, golden, _) = load(&dir);
        for case in &golden.cases {
            if let Some(text) = &case.prompt {
                let ids = lm.tokenizer.encode(text, true).unwrap();
                assert_eq!(
                    ids,
                    case.prompt_token_ids,
                    "{} / {}",
                    dir.display(),
                    case.name
                );
            }
        }
    }
}

#[test]
fn greedy_tokens_match_transformers_exactly() {
    for dir in model_fixtures() {
        let (lm, golden, _) = load(&dir);
        for case in &golden.cases {
            let params = GenerateParams {
                max_tokens: case.greedy_token_ids.len(),
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                prefill_chunk: 13,
                ..Default::default()
            };
            let out = generate(
                &lm.model,
                &case.prompt_token_ids,
                lm.tokenizer.eos_token_ids(),
                &params,
                |_| {},
            )
            .unwrap();
            assert_eq!(
                out.token_ids,
                case.greedy_token_ids,
                "{} / {}",
                dir.display(),
                case.name
            );
        }
    }
}

#[test]
fn chunked_and_batched_prefill_are_bit_identical_to_solo() {
    // Batch invariance: a sequence's logits do not depend on chunking or batch mates.
    for dir in model_fixtures() {
        let (lm, golden, _) = load(&dir);
        let prompts: Vec<&[u32]> = golden
            .cases
            .iter()
            .map(|c| c.prompt_token_ids.as_slice())
            .collect();
        let batched = batched_prefill(&lm, &prompts, 7);
        for (i, p) in prompts.iter().enumerate() {
            let solo = batched_prefill(&lm, &[p], usize::MAX);
            assert_eq!(
                solo[0],
                batched[i],
                "{} / {}",
                dir.display(),
                golden.cases[i].name
            );
        }
    }
}

#[test]
fn forward_rejects_inconsistent_input() {
    let dir = &model_fixtures()[0];
    let (lm, _, _) = load(dir);
    let mut kv = lm.model.new_kv_cache(1, BLOCK).unwrap();
    let input = ForwardInput {
        token_ids: vec![1, 2],
        positions: vec![0],
        slot_mapping: vec![0, 1],
        attention: AttentionMetadata::default(),
        logits_indices: vec![0],
    };
    assert!(lm.model.forward(&input, &mut kv).is_err());
    // A token id outside the vocabulary is an error, not a panic.
    let params = GenerateParams {
        max_tokens: 2,
        ..Default::default()
    };
    assert!(generate(&lm.model, &[1_000_000], &[], &params, |_| {}).is_err());
}

/// The KV cache spec read from config.json alone (what `bench kv-cache` sizes) is the one
/// the loaded decoder declares, for every fixture: latent slots for DeepSeek-V3, keys
/// and values per kv head for the rest.
#[test]
fn the_cache_spec_from_the_config_is_the_models() {
    for dir in model_fixtures() {
        let (lm, _, _) = load(&dir);
        let config = novastack_models::ModelConfig::from_dir(&dir).unwrap();
        assert_eq!(
            novastack_models::KvCacheSpec::from_config(&config),
            lm.model.kv_cache_spec(),
            "{}",
            dir.display()
        );
    }
}

/// `--cpu-weights native` keeps the bf16 / f16 fixtures' weights as stored and widens
/// them in registers: every position's logits are the f32 path's, bit for bit, so every
/// golden above holds for it too.
#[test]
fn weights_kept_as_stored_give_the_f32_paths_bits() {
    for dir in model_fixtures() {
        let (lm, golden, _) = load(&dir);
        let native = load_hf_dir(&dir, CpuBackend::new().with_native_weights(true)).unwrap();
        for case in &golden.cases {
            let seq = [case.prompt_token_ids.as_slice()];
            let (a, b) = (
                batched_prefill(&lm, &seq, usize::MAX),
                batched_prefill(&native, &seq, 5),
            );
            assert!(
                a[0].iter()
                    .zip(&b[0])
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{} / {}: max |Δlogit| = {}",
                dir.display(),
                case.name,
                max_abs_diff(&a[0], &b[0])
            );
        }
    }
}
