//! Request-length traces on disk (`--dataset trace:PATH`): the Azure LLM inference CSVs
//! (`ContextTokens`, `GeneratedTokens`) and the ShareGPT / arXiv length CSVs
//! (`num_prefill_tokens`, `num_decode_tokens`), told apart by their header.
//! `scripts/fetch_traces.sh` fetches the public ones.

use anyhow::{bail, Context, Result};

/// (input, output) lengths from a trace CSV, by its header.
pub fn read_trace(path: &str) -> Result<Vec<(usize, usize)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read trace {path}"))?;
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap_or("")
        .split(',')
        .map(|h| h.trim().to_string())
        .collect();
    let col = |names: &[&str]| header.iter().position(|h| names.contains(&h.as_str()));
    let (Some(ci), Some(co)) = (
        col(&["ContextTokens", "num_prefill_tokens"]),
        col(&["GeneratedTokens", "num_decode_tokens"]),
    ) else {
        bail!("{path}: expected columns ContextTokens/GeneratedTokens or num_prefill_tokens/num_decode_tokens, found {header:?}");
    };
    let mut out = Vec::new();
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let parse = |i: usize| -> Result<usize> {
            let v: f64 = f
                .get(i)
                .map(|s| s.trim())
                .unwrap_or("")
                .parse()
                .with_context(|| format!("{path}:{}: bad number", n + 2))?;
            Ok(v.max(0.0) as usize)
        };
        out.push((parse(ci)?, parse(co)?));
    }
    Ok(out)
}
