//! A `tokenizers::Tokenizer` built from GGUF `tokenizer.ggml.*` metadata (GPT-2 style
//! byte-level BPE), by writing the equivalent `tokenizer.json` document.

use super::file::{GgufFile, MetaValue};
use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use serde_json::{json, Map, Value};

/// llama.cpp token types.
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(regex: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false})
}

/// The pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name.
fn pre_tokenizer(pre: &str) -> Option<Value> {
    Some(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        // Digits one by one, then GPT-2's regex (SmolLM, StarCoder).
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_REGEX), byte_level(false)]})
        }
        "qwen2" => {
            json!({"type": "Sequence", "pretokenizers": [split(QWEN2_REGEX), byte_level(false)]})
        }
        _ => return None,
    })
}

fn err(file: &GgufFile, key: &str, msg: String) -> Error {
    Error::Tokenizer {
        path: file.path.clone(),
        msg: format!("{key}: {msg}"),
    }
}

fn strings<'a>(file: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    file.get(key)
        .and_then(MetaValue::as_array)
        .ok_or_else(|| err(file, key, "missing or not an array".into()))?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| err(file, key, "holds a non-string".into()))
        })
        .collect()
}

/// Builds the tokenizer (and chat template, special tokens) from GGUF metadata.
pub fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let model = file
        .get("tokenizer.ggml.model")
        .and_then(MetaValue::as_str)
        .unwrap_or("");
    if model != "gpt2" {
        return Err(err(
            file,
            "tokenizer.ggml.model",
            format!("{model:?} is not supported (only gpt2 byte-level BPE)"),
        ));
    }
    let pre_name = file
        .get("tokenizer.ggml.pre")
        .and_then(MetaValue::as_str)
        .unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        err(
            file,
            "tokenizer.ggml.pre",
            format!("pre-tokenizer {pre_name:?} is not supported"),
        )
    })?;
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match file
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
    {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    let id = |key: &str| file.get(key).and_then(MetaValue::as_u64).map(|v| v as u32);
    let (bos, eos, pad, unk) = (
        id("tokenizer.ggml.bos_token_id"),
        id("tokenizer.ggml.eos_token_id"),
        id("tokenizer.ggml.padding_token_id"),
        id("tokenizer.ggml.unknown_token_id"),
    );
    let add_bos = file
        .get("tokenizer.ggml.add_bos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(false);
    let add_eos = file
        .get("tokenizer.ggml.add_eos_token")
        .and_then(MetaValue::as_bool)
        .unwrap_or(false);

    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (i, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.to_string(), json!(i));
        let ty = types.get(i).copied().unwrap_or(1);
        let is_named = [bos, eos, pad, unk].contains(&Some(i as u32));
        if ty == TOKEN_CONTROL || ty == TOKEN_USER_DEFINED || is_named {
            added.push(
                json!({"id": i, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}),
            );
        }
    }
    let token_text = |id: Option<u32>| {
        id.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let post = match (add_bos, add_eos) {
        (false, false) => byte_level(true),
        _ => {
            let mut single = Vec::new();
            let mut specials = Map::new();
            let mut push_special = |id: Option<u32>, out: &mut Vec<Value>| {
                if let (Some(i), Some(t)) = (id, token_text(id)) {
                    out.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
                    specials.insert(t.clone(), json!({"id": t, "ids": [i], "tokens": [t]}));
                }
            };
            if add_bos {
                push_special(bos, &mut single);
            }
            single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
            if add_eos {
                push_special(eos, &mut single);
            }
            let mut pair = single.clone();
            pair.push(json!({"Sequence": {"id": "B", "type_id": 1}}));
            json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": specials})
        }
    };
    let doc = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": post,
        "decoder": byte_level(true),
        "model": {"type": "BPE", "dropout": null, "unk_token": token_text(unk), "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    });
    let inner: tokenizers::Tokenizer = doc
        .to_string()
        .parse()
        .map_err(|e: tokenizers::Error| err(file, "tokenizer.ggml.*", e.to_string()))?;
    let mut special = Map::new();
    for (name, id) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("pad_token", pad),
        ("unk_token", unk),
    ] {
        if let Some(t) = token_text(id) {
            special.insert(name.into(), Value::String(t));
        }
    }
    let template = file
        .get("tokenizer.chat_template")
        .and_then(MetaValue::as_str);
    Tokenizer::new(inner, template, special)
}
