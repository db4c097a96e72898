//! GGUF mixture-of-experts files, as llama.cpp's own `convert_hf_to_gguf.py` writes them
//! (`scripts/make_gguf_moe_fixtures.sh`): `qwen3moe`, `llama` with experts (Mixtral) and
//! `minimax-m2`, converted from three golden fixtures without changing a weight (f16 and
//! bf16 stored as they were). Through the GGUF path (3-D `ffn_*_exps` tensors, the router
//! `ffn_gate_inp`, `exp_probs_b`, llama.cpp's q/k permutation for `llama`, the config from
//! `{arch}.*` metadata) every position's logits are transformers' within 1e-4 and the
//! greedy tokens are transformers' exactly.

use novastack_engine::{generate, GenerateParams, SamplingParams};
use novastack_kernels::CpuBackend;
use novastack_models::{load_gguf, load_hf_dir, ForwardInput};
use novastack_tests::fixtures_dir;
use safetensors::SafeTensors;
use serde_json::Value;

const PAIRS: [(&str, &str); 3] = [
    ("qwen3-moe-f16.gguf", "qwen3-moe-f16"),
    ("mixtral-f16.gguf", "mixtral-f16"),
    ("minimax-m2-bf16.gguf", "minimax-m2-bf16"),
];

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn gguf_moe_files_match_transformers() {
    for (file, fixture) in PAIRS {
        let path = fixtures_dir().join("gguf/moe").join(file);
        let dir = fixtures_dir().join("models").join(fixture);
        let lm = load_gguf(&path, CpuBackend::new()).unwrap_or_else(|e| panic!("{file}: {e}"));
        let golden: Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
        let logits_file = std::fs::read(dir.join("golden_logits.safetensors")).unwrap();
        let st = SafeTensors::deserialize(&logits_file).unwrap();
        for case in golden["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let prompt = ids(&case["prompt_token_ids"]);
            // Every position's logits in one prefill.
            let blocks = prompt.len().div_ceil(16);
            let mut kv = lm.model.new_kv_cache(blocks, 16).unwrap();
            let mut input = ForwardInput::default();
            input.push_seq(&prompt, 0, (0..blocks as u32).collect(), 16, false);
            input.logits_indices = (0..prompt.len()).collect();
            let got = lm.model.forward(&input, &mut kv).unwrap();
            let want: Vec<f32> = st
                .tensor(case["logits_tensor"].as_str().unwrap())
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            assert_eq!(got.len(), want.len(), "{file} {name}");
            let worst = got
                .iter()
                .zip(&want)
                .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            assert!(worst < 1e-4, "{file} {name}: logits differ by {worst}");
            let params = GenerateParams {
                max_tokens: 32,
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            };
            let out = generate(&lm.model, &prompt, &[], &params, |_| {}).unwrap();
            assert_eq!(
                out.token_ids,
                ids(&case["greedy_token_ids"]),
                "{file} {name}"
            );
        }
    }
}

/// The GGUF and the Hugging Face folder give the same model: the same config where both
/// say it, and bit-identical logits.
#[test]
fn gguf_and_safetensors_load_the_same_experts() {
    for (file, fixture) in PAIRS {
        let gguf = load_gguf(
            &fixtures_dir().join("gguf/moe").join(file),
            CpuBackend::new(),
        )
        .unwrap();
        let hf = load_hf_dir(
            &fixtures_dir().join("models").join(fixture),
            CpuBackend::new(),
        )
        .unwrap();
        let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % 300) as u32).collect();
        let run = |m: &dyn novastack_models::CausalLm<CpuBackend>| {
            let mut kv = m.new_kv_cache(3, 16).unwrap();
            let mut input = ForwardInput::default();
            input.push_seq(&prompt, 0, vec![0, 1, 2], 16, false);
            input.logits_indices = (0..prompt.len()).collect();
            m.forward(&input, &mut kv).unwrap()
        };
        assert_eq!(run(&*gguf.model), run(&*hf.model), "{file}");
    }
}

/// Weights kept as stored (`--cpu-weights native`: the f16 / bf16 attention and
/// embedding matrices; experts and routers stay f32) give the f32 path's logits bit for
/// bit at every position.
#[test]
fn gguf_moe_native_weights_give_the_f32_bits() {
    for (file, fixture) in PAIRS {
        let path = fixtures_dir().join("gguf/moe").join(file);
        let dir = fixtures_dir().join("models").join(fixture);
        let golden: Value =
            serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
        let prompt = ids(&golden["cases"][0]["prompt_token_ids"]);
        let run = |native: bool| {
            let lm = load_gguf(&path, CpuBackend::new().with_native_weights(native)).unwrap();
            let blocks = prompt.len().div_ceil(16);
            let mut kv = lm.model.new_kv_cache(blocks, 16).unwrap();
            let mut input = ForwardInput::default();
            input.push_seq(&prompt, 0, (0..blocks as u32).collect(), 16, false);
            input.logits_indices = (0..prompt.len()).collect();
            lm.model.forward(&input, &mut kv).unwrap()
        };
        let (a, b) = (run(false), run(true));
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{file}"
        );
    }
}
