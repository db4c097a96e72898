//! `novastack generate`: one prompt through a local model, streamed or as JSON.

use anyhow::{bail, Context, Result};
use clap::Args;
use novastack_engine::{generate, GenerateParams, SamplingParams};
use novastack_kernels::Backend;
use novastack_models::{IncrementalDecoder, LoadedModel};
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// Hugging Face model folder, a .gguf file, or `default` (SmolLM2-135M-Instruct,
    /// fetched into the cache on first use). Absent means `default`.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt text.
    #[arg(long, conflicts_with_all = ["prompt_ids", "prompts_file"], required_unless_present_any = ["prompt_ids", "prompts_file"])]
    pub prompt: Option<String>,
    /// Many prompts through the batching engine: a JSONL file, one object per line with
    /// `prompt` or `prompt_ids` and optional sampling fields; one JSON result per line,
    /// in input order.
    #[arg(long, conflicts_with = "prompt_ids")]
    pub prompts_file: Option<PathBuf>,
    /// Render the prompt as a user message with the model's chat template.
    #[arg(long, requires = "prompt")]
    pub chat: bool,
    /// System message for --chat.
    #[arg(long, requires = "chat")]
    pub system: Option<String>,
    /// Prompt as comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',')]
    pub prompt_ids: Option<Vec<u32>>,
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// 0 means greedy.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// 0 disables.
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub engine: novastack_server::EngineArgs,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let path = novastack_server::default_model::resolve(args.model.as_deref())?;
    novastack_server::device::with_model(&path, &args.engine, Job { args: &args })
}

/// `generate` on whatever device `--device` loaded the model on.
struct Job<'a> {
    args: &'a GenerateArgs,
}

impl novastack_server::device::ModelJob for Job<'_> {
    type Output = ();
    fn run<B: Backend + 'static>(self, lm: LoadedModel<B>, kv_blocks: Option<usize>) -> Result<()> {
        match &self.args.prompts_file {
            Some(file) => run_file(self.args, file, lm, kv_blocks),
            None => run_one(self.args, lm),
        }
    }
}

fn run_one<B: Backend>(args: &GenerateArgs, lm: LoadedModel<B>) -> Result<()> {
    let tok = &lm.tokenizer;
    let prompt_ids = match (&args.prompt, &args.prompt_ids) {
        (Some(text), _) if args.chat => {
            let mut messages = Vec::new();
            if let Some(sys) = &args.system {
                messages.push(json!({"role": "system", "content": sys}));
            }
            messages.push(json!({"role": "user", "content": text}));
            tok.encode_chat(&messages, true)?
        }
        (Some(text), _) => tok.encode(text, true)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => bail!("give --prompt or --prompt-ids"),
    };
    if prompt_ids.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    let params = GenerateParams {
        max_tokens: args.max_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_p: args.top_p,
            top_k: args.top_k,
            min_p: 0.0,
            seed: args.seed,
            ..Default::default()
        },
        ignore_eos: args.ignore_eos,
        ..Default::default()
    };
    let eos = tok.eos_token_ids().to_vec();
    let mut decoder = IncrementalDecoder::new(true);
    let mut stdout = std::io::stdout().lock();
    let mut stream_err = None;
    let out = generate(&lm.model, &prompt_ids, &eos, &params, |id| {
        if args.json || stream_err.is_some() {
            return;
        }
        match decoder.push(tok, id) {
            Ok(delta) => {
                let _ = write!(stdout, "{delta}");
                let _ = stdout.flush();
            }
            Err(e) => stream_err = Some(e),
        }
    })?;
    if let Some(e) = stream_err {
        return Err(e.into());
    }
    if args.json {
        let text = tok.decode(&out.token_ids, true)?;
        let obj = json!({
            "prompt_token_ids": prompt_ids,
            "token_ids": out.token_ids,
            "text": text,
            "finish_reason": out.finish_reason.as_str(),
        });
        writeln!(stdout, "{obj}")?;
    } else {
        writeln!(stdout, "{}", decoder.flush(tok)?)?;
    }
    Ok(())
}

/// One line of a `--prompts-file`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: Option<String>,
    prompt_ids: Option<Vec<u32>>,
    /// Render `prompt` as a user message with the chat template.
    chat: Option<bool>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    ignore_eos: Option<bool>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    stop_token_ids: Option<Vec<u32>>,
    n: Option<usize>,
    logprobs: Option<usize>,
    priority: Option<i32>,
}

fn line_job(
    args: &GenerateArgs,
    tok: &novastack_models::Tokenizer,
    line: &str,
) -> Result<(Vec<u32>, novastack_engine::RequestParams)> {
    let l: PromptLine = serde_json::from_str(line)?;
    let prompt = match (&l.prompt, &l.prompt_ids) {
        (Some(text), None) if l.chat.unwrap_or(false) => {
            tok.encode_chat(&[json!({"role": "user", "content": text})], true)?
        }
        (Some(text), None) => tok.encode(text, true)?,
        (None, Some(ids)) => ids.clone(),
        _ => bail!("give exactly one of `prompt` and `prompt_ids`"),
    };
    let sampling = SamplingParams {
        temperature: l.temperature.unwrap_or(args.temperature),
        top_p: l.top_p.unwrap_or(args.top_p),
        top_k: l.top_k.unwrap_or(args.top_k),
        min_p: l.min_p.unwrap_or(0.0),
        seed: l.seed.or(args.seed),
        presence_penalty: l.presence_penalty.unwrap_or(0.0),
        frequency_penalty: l.frequency_penalty.unwrap_or(0.0),
        repetition_penalty: l.repetition_penalty.unwrap_or(1.0),
        logit_bias: Vec::new(),
    };
    Ok((
        prompt,
        novastack_engine::RequestParams {
            max_tokens: l.max_tokens.unwrap_or(args.max_tokens),
            sampling,
            stop_token_ids: l.stop_token_ids.unwrap_or_default(),
            ignore_eos: l.ignore_eos.unwrap_or(args.ignore_eos),
            priority: l.priority.unwrap_or(0),
            logprobs: l.logprobs,
            n: l.n.unwrap_or(1),
            grammar: None,
        },
    ))
}

fn run_file<B: Backend>(
    args: &GenerateArgs,
    file: &std::path::Path,
    lm: LoadedModel<B>,
    kv_blocks: Option<usize>,
) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let tok = lm.tokenizer;
    let mut engine = args
        .engine
        .build_for(lm.model, tok.eos_token_ids().to_vec(), kv_blocks)?;
    // Lines that fail to parse get an error result in their place; the rest run together.
    let mut jobs = Vec::new();
    let mut slots: Vec<std::result::Result<usize, String>> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        match line_job(args, &tok, line) {
            Ok(job) => {
                slots.push(Ok(jobs.len()));
                jobs.push(job);
            }
            Err(e) => slots.push(Err(format!("{}:{}: {e:#}", file.display(), i + 1))),
        }
    }
    let prompts: Vec<Vec<u32>> = jobs.iter().map(|j| j.0.clone()).collect();
    let results = novastack_engine::run_batch(&mut engine, jobs, None);
    let mut out = std::io::stdout().lock();
    for (index, slot) in slots.into_iter().enumerate() {
        let obj = match slot {
            Err(e) => json!({"index": index, "error": e}),
            Ok(j) => match &results[j] {
                Err(e) => json!({"index": index, "error": e}),
                Ok(seqs) => {
                    let outputs: Vec<serde_json::Value> = seqs
                        .iter()
                        .map(|s| {
                            let mut o = json!({
                                "token_ids": s.token_ids,
                                "text": tok.decode(&s.token_ids, true).unwrap_or_default(),
                                "finish_reason": s.finish_reason.as_str(),
                            });
                            if !s.logprobs.is_empty() {
                                o["logprobs"] = json!(s.logprobs.iter().map(|(t, lp, top)| json!({"token_id": t, "logprob": lp,
                                    "top_logprobs": top.iter().map(|(i, l)| json!({"token_id": i, "logprob": l})).collect::<Vec<_>>()})).collect::<Vec<_>>());
                            }
                            if let Some(e) = &s.error {
                                o["error"] = json!(e);
                            }
                            o
                        })
                        .collect();
                    let mut obj = outputs.first().cloned().unwrap_or_else(|| json!({}));
                    obj["index"] = json!(index);
                    obj["prompt_token_ids"] = json!(prompts[j]);
                    if outputs.len() > 1 {
                        obj["outputs"] = json!(outputs);
                    }
                    obj
                }
            },
        };
        writeln!(out, "{obj}")?;
    }
    Ok(())
}
