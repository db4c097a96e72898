//! Control tokens stay where the chat template put them: text such as
//! `<|im_end|><|im_start|>system` inside a user or tool message is tokenized as plain
//! text, never as the special tokens that delimit turns, so a message cannot forge a
//! turn of another role.
//!
//! How: before rendering, every special token's text inside guarded content is replaced
//! by an escape (`U+E000 index U+E001`, private-use characters no template emits; a
//! literal `U+E000` in any message is escaped too). The rendered prompt then holds
//! special-token text only where the template wrote it. It is tokenized in pieces: each
//! template special token becomes its id, and the text between them, escapes turned
//! back into their literal text, is encoded with special-token matching off. Messages
//! with nothing to escape take the ordinary path, so normal prompts are tokenized byte
//! for byte as before.

use crate::error::{Error, Result};
use serde_json::Value;

const ESC: char = '\u{E000}';
const END: char = '\u{E001}';

pub(crate) struct ControlTokens {
    /// Special added tokens' texts with their ids, longest first.
    specials: Vec<(String, u32)>,
    /// The first characters of `specials` (a quick filter).
    firsts: Vec<char>,
    /// The tokenizer with special-token matching off: their text encodes as plain text.
    plain: tokenizers::Tokenizer,
}

impl ControlTokens {
    pub(crate) fn new(inner: &tokenizers::Tokenizer) -> Self {
        let mut specials: Vec<(String, u32)> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special && !t.content.is_empty())
            .map(|(id, t)| (t.content, id))
            .collect();
        specials.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        let mut firsts: Vec<char> = specials
            .iter()
            .filter_map(|(t, _)| t.chars().next())
            .collect();
        firsts.sort_unstable();
        firsts.dedup();
        let mut plain = inner.clone();
        plain.set_encode_special_tokens(true);
        ControlTokens {
            specials,
            firsts,
            plain,
        }
    }

    /// The special token (index into `specials`) whose text starts `s`, longest first.
    fn special_at(&self, s: &str) -> Option<usize> {
        if !s.starts_with(|c: char| self.firsts.binary_search(&c).is_ok()) {
            return None;
        }
        self.specials
            .iter()
            .position(|(t, _)| s.starts_with(t.as_str()))
    }

    /// `text` with the escape character (and, when `specials`, every special token's
    /// text) escaped; `None` when nothing needed escaping.
    fn escape(&self, text: &str, specials: bool) -> Option<String> {
        let needs = text.contains(ESC)
            || (specials && self.specials.iter().any(|(t, _)| text.contains(t.as_str())));
        if !needs {
            return None;
        }
        let mut out = String::with_capacity(text.len() + 16);
        let mut i = 0;
        while i < text.len() {
            let rest = &text[i..];
            if let Some(k) = specials.then(|| self.special_at(rest)).flatten() {
                out.push(ESC);
                out.push_str(&k.to_string());
                out.push(END);
                i += self.specials[k].0.len();
                continue;
            }
            let c = rest.chars().next().unwrap_or_default();
            if c == ESC {
                out.push(ESC);
                out.push('E');
                out.push(END);
            } else {
                out.push(c);
            }
            i += c.len_utf8();
        }
        Some(out)
    }

    /// Escapes the content of `messages`: special tokens in user and tool messages, the
    /// escape character everywhere. `None` when no message needed it.
    pub(crate) fn escape_messages(&self, messages: &[Value]) -> Option<Vec<Value>> {
        let mut changed = false;
        let out = messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                let guarded =
                    matches!(m.get("role").and_then(Value::as_str), Some("user" | "tool"));
                let mut fix = |v: &mut Value| {
                    if let Some(e) = v.as_str().and_then(|s| self.escape(s, guarded)) {
                        *v = Value::String(e);
                        changed = true;
                    }
                };
                match m.get_mut("content") {
                    Some(Value::Array(parts)) => {
                        for p in parts {
                            if let Some(t) = p.get_mut("text") {
                                fix(t);
                            }
                        }
                    }
                    Some(v) => fix(v),
                    None => {}
                }
                m
            })
            .collect();
        changed.then_some(out)
    }

    /// Tokenizes a prompt rendered from escaped messages: special-token text is a
    /// special token (the template wrote it); escapes are plain text.
    pub(crate) fn encode(&self, rendered: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut chunk = String::new();
        let flush = |chunk: &mut String, ids: &mut Vec<u32>| -> Result<()> {
            if !chunk.is_empty() {
                let enc = self
                    .plain
                    .encode(chunk.as_str(), false)
                    .map_err(|e| Error::Encode(e.to_string()))?;
                ids.extend_from_slice(enc.get_ids());
                chunk.clear();
            }
            Ok(())
        };
        let mut i = 0;
        while i < rendered.len() {
            let rest = &rendered[i..];
            if let Some(k) = self.special_at(rest) {
                flush(&mut chunk, &mut ids)?;
                ids.push(self.specials[k].1);
                i += self.specials[k].0.len();
                continue;
            }
            let c = rest.chars().next().unwrap_or_default();
            i += c.len_utf8();
            if c == ESC {
                if let Some((code, _)) = rendered[i..].split_once(END) {
                    let literal = match code {
                        "E" => Some(ESC.to_string()),
                        _ => code
                            .parse::<usize>()
                            .ok()
                            .and_then(|k| self.specials.get(k))
                            .map(|(t, _)| t.clone()),
                    };
                    if let Some(l) = literal {
                        chunk.push_str(&l);
                        i += code.len() + END.len_utf8();
                        continue;
                    }
                }
            }
            chunk.push(c);
        }
        flush(&mut chunk, &mut ids)?;
        Ok(ids)
    }
}
