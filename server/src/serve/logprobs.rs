//! Logprobs in OpenAI's two shapes: chat (`content[].{token, logprob, bytes,
//! top_logprobs}`) and completions (`tokens`, `token_logprobs`, `top_logprobs`,
//! `text_offset`).

use super::ModelEntry;
use novastack_engine::TokenLogprobs;
use serde_json::{json, Value};

fn token_str(m: &ModelEntry, id: u32, as_ids: bool) -> String {
    if as_ids {
        format!("token_id:{id}")
    } else {
        m.tokenizer.decode(&[id], false).unwrap_or_default()
    }
}

pub(crate) fn chat_logprobs(m: &ModelEntry, lps: &[TokenLogprobs]) -> Value {
    let entry = |id: u32, lp: f32| {
        let s = token_str(m, id, false);
        json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})
    };
    let content: Vec<Value> = lps
        .iter()
        .map(|(t, lp, top)| {
            let mut e = entry(*t, *lp);
            e["top_logprobs"] = top.iter().map(|(i, l)| entry(*i, *l)).collect();
            e
        })
        .collect();
    json!({"content": content})
}

/// OpenAI's completion logprobs; `text_offset` counts bytes from the start of the choice's
/// text (`base` is where these tokens begin).
pub(crate) fn completion_logprobs(
    m: &ModelEntry,
    lps: &[TokenLogprobs],
    as_ids: bool,
    base: usize,
) -> Value {
    let tokens: Vec<String> = lps
        .iter()
        .map(|(t, _, _)| token_str(m, *t, as_ids))
        .collect();
    let mut offsets = Vec::with_capacity(lps.len());
    let mut at = base;
    for (t, _, _) in lps {
        offsets.push(at);
        at += m.tokenizer.decode(&[*t], true).map_or(0, |s| s.len());
    }
    let top: Vec<serde_json::Map<String, Value>> = lps
        .iter()
        .map(|(_, _, top)| {
            top.iter()
                .map(|(i, l)| (token_str(m, *i, as_ids), json!(l)))
                .collect()
        })
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": lps.iter().map(|(_, l, _)| *l).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}
