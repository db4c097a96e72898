//! `tokenizer.json` through the `tokenizers` crate, special tokens and the chat template
//! from `tokenizer_config.json` (or `chat_template.jinja`), eos ids from
//! `generation_config.json`.

use crate::chat_template::ChatTemplate;
use crate::config::token_ids;
use crate::control_tokens::ControlTokens;
use crate::error::{read_json, Error, Result};
use serde_json::{Map, Value};
use std::path::Path;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
    /// Special tokens as transformers passes them to templates (`bos_token`, ...).
    special_tokens: Map<String, Value>,
    eos_token_ids: Vec<u32>,
    bos_token_id: Option<u32>,
    /// Keeps special tokens out of user and tool content in chat prompts.
    control: ControlTokens,
}

const SPECIAL_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A special token is a string or an `AddedToken` object with `content`.
fn token_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// Loads from a Hugging Face model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            msg: e.to_string(),
        })?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: Map<String, Value> = if cfg_path.exists() {
            read_json(&cfg_path)?
        } else {
            Map::new()
        };
        let mut template_src = match cfg.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            // A list of named templates: take "default".
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Value::as_str)
                .map(str::to_string),
            _ => None,
        };
        let jinja = dir.join("chat_template.jinja");
        if template_src.is_none() && jinja.exists() {
            let bytes = crate::error::read_file(&jinja)?;
            template_src = Some(String::from_utf8(bytes).map_err(|e| Error::Tokenizer {
                path: jinja.clone(),
                msg: e.to_string(),
            })?);
        }
        let mut special_tokens = Map::new();
        for name in SPECIAL_NAMES {
            if let Some(text) = cfg.get(name).and_then(token_text) {
                special_tokens.insert(name.into(), Value::String(text));
            }
        }
        let mut tok = Self::new(inner, template_src.as_deref(), special_tokens)?;
        // eos ids: generation_config.json, then config.json, then the eos token itself.
        let mut eos = Vec::new();
        for file in ["generation_config.json", "config.json"] {
            let p = dir.join(file);
            if p.exists() {
                let v: Value = read_json(&p)?;
                if let Some(ids) = v.get("eos_token_id") {
                    eos.extend(token_ids(ids));
                }
                if tok.bos_token_id.is_none() {
                    tok.bos_token_id = v
                        .get("bos_token_id")
                        .and_then(|b| token_ids(b).first().copied());
                }
                if !eos.is_empty() {
                    break;
                }
            }
        }
        for id in eos {
            if !tok.eos_token_ids.contains(&id) {
                tok.eos_token_ids.push(id);
            }
        }
        Ok(tok)
    }

    /// Builds from parts (used by other model formats, such as GGUF).
    pub fn new(
        inner: tokenizers::Tokenizer,
        template: Option<&str>,
        special_tokens: Map<String, Value>,
    ) -> Result<Self> {
        let template = template.map(ChatTemplate::new).transpose()?;
        let id_of = |name: &str| {
            special_tokens
                .get(name)
                .and_then(Value::as_str)
                .and_then(|t| inner.token_to_id(t))
        };
        let eos_token_ids = id_of("eos_token").into_iter().collect();
        let bos_token_id = id_of("bos_token");
        Ok(Tokenizer {
            control: ControlTokens::new(&inner),
            inner,
            template,
            special_tokens,
            eos_token_ids,
            bos_token_id,
        })
    }

    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Encode(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Encode(e.to_string()))
    }

    /// Every id below `vocab_size` as the bytes it stands for (for grammar engines).
    pub fn token_bytes(&self, vocab_size: usize) -> Result<Vec<crate::TokenBytes>> {
        crate::token_bytes::token_bytes(&self.inner, vocab_size)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Token ids that end generation (may be several).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    /// The chat template's Jinja source, if the model has one.
    pub fn chat_template_source(&self) -> Option<&str> {
        self.template.as_ref().map(|t| t.source())
    }

    pub fn has_chat_template(&self) -> bool {
        self.template.is_some()
    }

    pub fn special_tokens(&self) -> &Map<String, Value> {
        &self.special_tokens
    }

    /// Renders a conversation to the prompt text, as transformers'
    /// `apply_chat_template(tokenize=False)` does. `extra` holds template keyword
    /// arguments such as `enable_thinking`.
    pub fn apply_chat_template(
        &self,
        messages: &[Value],
        add_generation_prompt: bool,
        tools: Option<&Value>,
        extra: &Map<String, Value>,
    ) -> Result<String> {
        let template = self
            .template
            .as_ref()
            .ok_or_else(|| Error::Template("this model has no chat template".into()))?;
        let mut vars = self.special_tokens.clone();
        for (k, v) in extra {
            vars.insert(k.clone(), v.clone());
        }
        template.render(messages, add_generation_prompt, tools, &vars)
    }

    /// A chat prompt as token ids (the template adds any bos itself). Special-token
    /// text inside user and tool content is tokenized as plain text, so it cannot
    /// forge a turn; the template's own special tokens are special tokens.
    pub fn encode_chat(&self, messages: &[Value], add_generation_prompt: bool) -> Result<Vec<u32>> {
        self.encode_chat_with(messages, add_generation_prompt, false, None)
    }

    /// Like [`Tokenizer::encode_chat`]; with `allow_special_in_content`, special-token
    /// text anywhere in the rendered prompt becomes special tokens (the operator's
    /// choice: content is trusted). `tools` go to the template as transformers passes
    /// them (a list of `{"type": "function", "function": {...}}`).
    pub fn encode_chat_with(
        &self,
        messages: &[Value],
        add_generation_prompt: bool,
        allow_special_in_content: bool,
        tools: Option<&Value>,
    ) -> Result<Vec<u32>> {
        let escaped = if allow_special_in_content {
            None
        } else {
            self.control.escape_messages(messages)
        };
        match escaped {
            None => {
                let text =
                    self.apply_chat_template(messages, add_generation_prompt, tools, &Map::new())?;
                self.encode(&text, false)
            }
            Some(messages) => {
                let text =
                    self.apply_chat_template(&messages, add_generation_prompt, tools, &Map::new())?;
                self.control.encode(&text)
            }
        }
    }
}

/// Turns a growing list of token ids into text deltas without splitting a multi-byte
/// character: text is released only once it no longer ends in a partial character.
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    skip_special_tokens: bool,
    /// Special tokens that come out as their text even when special tokens are
    /// skipped (a tool-call marker such as Mistral's `[TOOL_CALLS]`).
    kept: Vec<(u32, String)>,
}

impl IncrementalDecoder {
    pub fn new(skip_special_tokens: bool) -> Self {
        IncrementalDecoder {
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
            skip_special_tokens,
            kept: Vec::new(),
        }
    }

    /// Also decodes these tokens (id and text) while skipping the other special ones.
    pub fn keeping(mut self, kept: Vec<(u32, String)>) -> Self {
        self.kept = kept;
        self
    }

    /// Adds one token; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> Result<String> {
        if let Some((_, text)) = self.kept.iter().find(|(k, _)| *k == id) {
            let text = text.clone();
            let mut out = self.flush(tok)?;
            out.push_str(&text);
            self.ids.push(id);
            self.prefix_offset = self.ids.len();
            self.read_offset = self.ids.len();
            return Ok(out);
        }
        self.ids.push(id);
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        if full.len() > prefix.len()
            && !full.ends_with('\u{FFFD}')
            && full.is_char_boundary(prefix.len())
        {
            let delta = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            Ok(delta)
        } else {
            Ok(String::new())
        }
    }

    /// Whatever is still held back at the end (e.g. a trailing partial character).
    pub fn flush(&mut self, tok: &Tokenizer) -> Result<String> {
        let prefix = tok.decode(
            &self.ids[self.prefix_offset..self.read_offset],
            self.skip_special_tokens,
        )?;
        let full = tok.decode(&self.ids[self.prefix_offset..], self.skip_special_tokens)?;
        self.prefix_offset = self.ids.len();
        self.read_offset = self.ids.len();
        Ok(full.get(prefix.len()..).unwrap_or_default().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kept special tokens come out as their text, in place, while the others are
    /// still skipped; the text around them is unchanged.
    #[test]
    fn kept_special_tokens_are_decoded_in_place() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/models/qwen3-f32");
        let tok = Tokenizer::from_dir(&dir).unwrap();
        let hi = tok.encode("Hello there", false).unwrap();
        let end = tok.token_to_id("<|im_end|>").unwrap();
        let start = tok.token_to_id("<|im_start|>").unwrap();
        let ids: Vec<u32> = hi
            .iter()
            .copied()
            .chain([end, start])
            .chain(hi.iter().copied())
            .collect();
        let run = |mut d: IncrementalDecoder| {
            let mut out = String::new();
            for &id in &ids {
                out += &d.push(&tok, id).unwrap();
            }
            out + &d.flush(&tok).unwrap()
        };
        let plain = tok.decode(&hi, true).unwrap();
        assert_eq!(
            run(IncrementalDecoder::new(true)),
            format!("{plain}{plain}")
        );
        let kept = IncrementalDecoder::new(true).keeping(vec![(end, "<|im_end|>".into())]);
        assert_eq!(run(kept), format!("{plain}<|im_end|>{plain}"));
    }
}
