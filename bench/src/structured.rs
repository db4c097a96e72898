//! `novastack bench structured`: what constrained decoding costs. The same requests run
//! free and under a JSON schema at each batch size; the table gives output tokens/s of
//! each, their ratio, and per step the step time beside the mask time (computed on a
//! second thread during the forward pass) and the part of it the forward pass did not
//! hide (the sampler's wait).

use anyhow::{bail, Result};
use clap::Args;
use novastack_engine::{
    run_batch, EngineStats, GrammarSpec, GrammarVocab, Histogram, RequestParams, SamplingParams,
};
use novastack_kernels::Backend;
use novastack_models::{CausalLm, LoadedModel};
use novastack_server::device::{with_model, ModelJob};
use novastack_server::EngineArgs;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

#[derive(Args, Debug)]
pub struct StructuredArgs {
    /// Model folder, .gguf file or `default`.
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Concurrent sequences of each run.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batch: Vec<usize>,
    /// Requests per run, as a multiple of the batch size.
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    #[arg(long, default_value_t = 64)]
    pub input_len: usize,
    /// Tokens generated per request (the schema cannot end sooner).
    #[arg(long, default_value_t = 128)]
    pub output_len: usize,
    /// A JSON schema file (default: an array of at least 64 records, which no request
    /// finishes within --output-len, so both runs generate the same tokens).
    #[arg(long)]
    pub schema: Option<std::path::PathBuf>,
    /// Sampling temperature of both runs (0: greedy; the free run then takes the
    /// argmax-only path, the constrained one needs every logit).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub result_json: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// A schema whose shortest answer is far beyond a few hundred tokens: records with an
/// integer, a bounded string, an enum and a boolean (keys, numbers, strings, literals:
/// the lexer's usual work).
fn default_schema() -> Value {
    json!({
        "type": "array",
        "minItems": 64,
        "items": {
            "type": "object",
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": 99999},
                "name": {"type": "string", "maxLength": 16},
                "kind": {"enum": ["alpha", "beta", "gamma"]},
                "ok": {"type": "boolean"}
            },
            "required": ["id", "name", "kind", "ok"],
            "additionalProperties": false
        }
    })
}

/// Count and sum a histogram gained between two snapshots.
fn gained(after: &Histogram, before: &Histogram) -> (u64, f64) {
    (after.count - before.count, after.sum - before.sum)
}

struct Bench<'a> {
    a: &'a StructuredArgs,
    schema: Value,
}

impl ModelJob for Bench<'_> {
    type Output = Vec<Value>;
    fn run<B: Backend + 'static>(
        self,
        lm: LoadedModel<B>,
        kv_blocks: Option<usize>,
    ) -> Result<Vec<Value>> {
        let a = self.a;
        let (max_len, vocab) = (lm.model.max_positions(), lm.model.vocab_size());
        if a.input_len + a.output_len > max_len {
            bail!(
                "--input-len {} + --output-len {} is over the model's context of {max_len}",
                a.input_len,
                a.output_len
            );
        }
        let eos = lm.tokenizer.eos_token_ids().to_vec();
        let t = std::time::Instant::now();
        let grammar_vocab = GrammarVocab::new(&lm.tokenizer, vocab, &eos)?;
        let vocab_secs = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        let grammar = grammar_vocab.compile(&GrammarSpec::JsonSchema(self.schema.clone()))?;
        let compile_secs = t.elapsed().as_secs_f64();
        let mut ea = a.engine.clone();
        ea.max_num_seqs = a.batch.iter().copied().max().unwrap_or(1);
        let mut engine = ea.build_for(lm.model, eos, kv_blocks)?;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed);
        let mut rows = Vec::new();
        for &batch in &a.batch {
            let n = batch * a.rounds.max(1);
            let prompts: Vec<Vec<u32>> = (0..n)
                .map(|_| {
                    (0..a.input_len)
                        .map(|_| rng.random_range(0..vocab as u32))
                        .collect()
                })
                .collect();
            let mut row = json!({"batch": batch, "requests": n, "temperature": a.temperature,
                "vocab_build_s": vocab_secs, "schema_compile_s": compile_secs});
            for constrained in [false, true] {
                engine.set_max_num_seqs(batch);
                let jobs = prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        let params = RequestParams {
                            max_tokens: a.output_len,
                            ignore_eos: true,
                            sampling: SamplingParams {
                                temperature: a.temperature,
                                seed: Some(a.seed + i as u64),
                                ..Default::default()
                            },
                            grammar: constrained.then(|| grammar.clone()),
                            ..Default::default()
                        };
                        (p.clone(), params)
                    })
                    .collect();
                let before: EngineStats = engine.stats.clone();
                let t = std::time::Instant::now();
                let results = run_batch(&mut engine, jobs, None);
                let secs = t.elapsed().as_secs_f64();
                let mut tokens = 0;
                for r in &results {
                    match r {
                        Err(e) => bail!("a request failed: {e}"),
                        Ok(seqs) => {
                            for s in seqs {
                                if let Some(e) = &s.error {
                                    bail!("a sequence failed: {e}");
                                }
                                tokens += s.token_ids.len();
                            }
                        }
                    }
                }
                let after = &engine.stats;
                let (steps, step_s) = gained(&after.step_seconds, &before.step_seconds);
                let (mask_steps, mask_s) = gained(&after.mask_seconds, &before.mask_seconds);
                let (_, wait_s) = gained(&after.mask_wait_seconds, &before.mask_wait_seconds);
                let per = |s: f64, n: u64| if n == 0 { 0.0 } else { s / n as f64 * 1e3 };
                row[if constrained { "schema" } else { "free" }] = json!({
                    "output_tokens": tokens,
                    "seconds": secs,
                    "output_tokens_per_s": tokens as f64 / secs,
                    "steps": steps,
                    "step_ms": per(step_s, steps),
                    "mask_ms_per_step": per(mask_s, mask_steps),
                    "mask_wait_ms_per_step": per(wait_s, mask_steps),
                });
            }
            let tps = |k: &str| row[k]["output_tokens_per_s"].as_f64().unwrap_or(0.0);
            row["schema_vs_free"] = json!(tps("schema") / tps("free").max(1e-9));
            rows.push(row);
        }
        Ok(rows)
    }
}

pub fn run(a: StructuredArgs) -> Result<()> {
    let path = novastack_server::default_model::resolve(a.model.as_deref())?;
    let schema = match &a.schema {
        Some(p) => serde_json::from_slice(&std::fs::read(p)?)
            .map_err(|e| anyhow::anyhow!("{}: not JSON: {e}", p.display()))?,
        None => default_schema(),
    };
    let rows = with_model(&path, &a.engine, Bench { a: &a, schema })?;
    println!(
        "{:>5} {:>12} {:>12} {:>7} {:>9} {:>9} {:>10} {:>10}",
        "batch",
        "free tok/s",
        "schema tok/s",
        "ratio",
        "free step",
        "sch. step",
        "mask/step",
        "mask wait"
    );
    for r in &rows {
        let f = |k: &str, m: &str| r[k][m].as_f64().unwrap_or(0.0);
        println!(
            "{:>5} {:>12.1} {:>12.1} {:>7.3} {:>7.2}ms {:>7.2}ms {:>8.3}ms {:>8.3}ms",
            r["batch"],
            f("free", "output_tokens_per_s"),
            f("schema", "output_tokens_per_s"),
            r["schema_vs_free"].as_f64().unwrap_or(0.0),
            f("free", "step_ms"),
            f("schema", "step_ms"),
            f("schema", "mask_ms_per_step"),
            f("schema", "mask_wait_ms_per_step"),
        );
    }
    if let Some(first) = rows.first() {
        println!(
            "vocabulary built in {:.1} ms, schema compiled in {:.1} ms (once per model / per schema)",
            first["vocab_build_s"].as_f64().unwrap_or(0.0) * 1e3,
            first["schema_compile_s"].as_f64().unwrap_or(0.0) * 1e3
        );
    }
    if let Some(p) = &a.result_json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&json!({"model": path, "runs": rows}))?,
        )?;
    }
    Ok(())
}
