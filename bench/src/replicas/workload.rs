//! The workload of `bench replicas`: deterministic system prompts and user messages from
//! a seed, sized to fit the model's context window, and the model's tokenizer to count
//! them.

use super::ReplicasArgs;
use anyhow::{bail, Result};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::path::Path;

const WORDS: &[&str] = &[
    "the",
    "a",
    "system",
    "request",
    "answer",
    "customer",
    "order",
    "account",
    "please",
    "always",
    "never",
    "carefully",
    "check",
    "record",
    "policy",
    "refund",
    "delivery",
    "invoice",
    "warehouse",
    "schedule",
    "billing",
    "support",
    "ticket",
    "priority",
    "team",
    "manager",
    "report",
    "weekly",
    "monthly",
    "number",
    "address",
    "parcel",
    "shipping",
    "return",
    "product",
    "service",
    "contract",
    "renewal",
    "discount",
    "payment",
    "card",
    "bank",
    "transfer",
    "balance",
    "statement",
    "error",
    "issue",
    "problem",
    "solution",
    "explain",
    "describe",
    "confirm",
    "verify",
    "update",
    "change",
    "cancel",
    "open",
    "close",
    "escalate",
    "forward",
    "reply",
    "politely",
    "briefly",
    "clearly",
    "in",
    "on",
    "for",
    "with",
    "about",
    "before",
    "after",
    "when",
    "if",
    "and",
    "or",
    "but",
    "because",
    "each",
    "every",
    "some",
    "many",
    "few",
    "new",
    "old",
    "late",
    "early",
    "fast",
    "slow",
    "large",
    "small",
    "green",
    "blue",
    "red",
    "north",
    "south",
    "east",
    "west",
    "city",
    "store",
    "office",
    "morning",
    "evening",
    "today",
    "tomorrow",
    "question",
    "note",
    "detail",
    "summary",
    "list",
    "table",
    "price",
    "cost",
    "tax",
    "fee",
    "limit",
    "rule",
    "step",
    "process",
    "form",
    "field",
    "name",
    "date",
    "time",
];

/// `n` words of sentences from `rng`.
fn sentences(rng: &mut impl Rng, n: usize) -> String {
    let mut out = String::new();
    let mut in_sentence = 0;
    let mut sentence_len = rng.random_range(6..14);
    for _ in 0..n {
        let w = WORDS[rng.random_range(0..WORDS.len())];
        if in_sentence == 0 {
            if !out.is_empty() {
                out.push(' ');
            }
            let mut c = w.chars();
            if let Some(f) = c.next() {
                out.extend(f.to_uppercase());
                out.push_str(c.as_str());
            }
        } else {
            out.push(' ');
            out.push_str(w);
        }
        in_sentence += 1;
        if in_sentence == sentence_len {
            out.push('.');
            in_sentence = 0;
            sentence_len = rng.random_range(6..14);
        }
    }
    if in_sentence > 0 {
        out.push('.');
    }
    out
}

/// The same for every policy: K system prompts and each conversation's user messages.
pub(super) struct Workload {
    pub systems: Vec<String>,
    /// Per conversation: its system prompt and its user messages in order.
    pub conversations: Vec<(usize, Vec<String>)>,
}

fn system_text(seed: u64, k: usize, words: usize) -> String {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ 0x5359_5354_454d ^ k as u64);
    format!(
        "You are assistant number {k} of the help desk. Follow these instructions. {}",
        sentences(&mut rng, words)
    )
}

/// Builds the workload for a model with `max_context` tokens: system prompts are cut
/// (by words) until each renders within `--system-share` of it, then user messages
/// until every whole conversation fits (answers counted at twice `--max-tokens`, as
/// their text may tokenize longer than it was generated).
pub(super) fn workload(
    a: &ReplicasArgs,
    count: &dyn Fn(&[Value]) -> Result<usize>,
    max_context: usize,
) -> Result<Workload> {
    let budget = ((max_context as f64) * a.system_share.clamp(0.0, 1.0)) as usize;
    let mut systems = Vec::new();
    for k in 0..a.system_prompts {
        let mut words = a.system_words;
        let mut text = system_text(a.seed, k, words);
        while count(&[json!({"role": "system", "content": text})])? > budget {
            if words == 0 {
                bail!("the context window ({budget} tokens for the system prompt) is too small");
            }
            words = words * 9 / 10;
            text = system_text(a.seed, k, words);
        }
        if words < a.system_words {
            tracing::info!(
                "system prompt {k}: {words} words (of --system-words {}) to fit {budget} tokens",
                a.system_words
            );
        }
        systems.push(text);
    }
    let build = |words: usize| -> Vec<(usize, Vec<String>)> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(a.seed ^ 0x5553_4552);
        (0..a.conversations)
            .map(|c| {
                let turns = (0..a.turns)
                    .map(|t| {
                        format!(
                            "Question {} of customer {c}: {}",
                            t + 1,
                            sentences(&mut rng, words)
                        )
                    })
                    .collect();
                (c % a.system_prompts, turns)
            })
            .collect()
    };
    let answer_room = (a.turns - 1) * 2 * a.max_tokens + a.max_tokens;
    let longest = |convs: &[(usize, Vec<String>)]| -> Result<usize> {
        let mut most = 0;
        for (sys, users) in convs {
            let mut msgs = vec![json!({"role": "system", "content": systems[*sys]})];
            for (t, u) in users.iter().enumerate() {
                if t > 0 {
                    msgs.push(json!({"role": "assistant", "content": ""}));
                }
                msgs.push(json!({"role": "user", "content": u}));
            }
            most = most.max(count(&msgs)? + answer_room);
        }
        Ok(most)
    };
    let mut words = a.user_words;
    let mut conversations = build(words);
    while words > 1 && longest(&conversations)? > max_context {
        words = words * 9 / 10;
        conversations = build(words);
    }
    if words < a.user_words {
        tracing::info!(
            "user messages: {words} words (of --user-words {}) so that {} turns fit {max_context} tokens",
            a.user_words,
            a.turns
        );
    }
    Ok(Workload {
        systems,
        conversations,
    })
}

pub(super) fn load_tokenizer(model: &Path) -> Result<novastack_models::Tokenizer> {
    let p = novastack_server::default_model::resolve(Some(model))?;
    if p.is_dir() {
        return Ok(novastack_models::Tokenizer::from_dir(&p)?);
    }
    let file = novastack_models::gguf::GgufFile::open(&p)?;
    Ok(novastack_models::gguf::tokenizer_from_gguf(&file)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_deterministic_and_sized() {
        let s = system_text(7, 1, 50);
        assert_eq!(s, system_text(7, 1, 50));
        assert_ne!(s, system_text(8, 1, 50));
        let body = s.split_once("instructions. ").unwrap().1;
        assert_eq!(body.split_whitespace().count(), 50);
    }
}
