//! `novastack generate`: one prompt through a local model, streamed or as JSON.

use anyhow::{bail, Context, Result};
use clap::Args;
use novastack_engine::{generate, GenerateParams, SamplingParams};
use novastack_kernels::CpuBackend;
use novastack_models::{load_model, IncrementalDecoder};
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
    #[arg(
        long,
        conflicts_with = "prompt_ids",
        required_unless_present = "prompt_ids"
    )]
    pub prompt: Option<String>,
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
}

pub fn run(args: GenerateArgs) -> Result<()> {
    let path = crate::default_model::resolve(args.model.as_deref())?;
    let lm = load_model(&path, CpuBackend::new())
        .with_context(|| format!("cannot load model from {}", path.display()))?;
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
