//! Every token of a vocabulary as the bytes it stands for, which grammar engines need to
//! know which tokens can continue a partial output. Byte-level BPE vocabularies (GPT-2,
//! Llama 3, Qwen) spell bytes with a printable stand-in alphabet; SentencePiece-style
//! ones spell a space as `▁` (or what the decoder's `Replace` names) and raw bytes as
//! `<0xAB>` (byte fallback). Special tokens are reported separately, by their text.

use crate::error::{Error, Result};
use tokenizers::DecoderWrapper;

/// How a vocabulary spells bytes, from its decoder.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Spelling {
    /// GPT-2's byte-to-printable-character map.
    ByteLevel,
    /// Pieces are text with `space` for a space; `<0xAB>` is a raw byte.
    Pieces { space: char },
}

/// One token's bytes, or its text if it is a special (control) token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenBytes {
    Text(Vec<u8>),
    Special(String),
    /// An id with no token (a hole in the vocabulary).
    Missing,
}

/// GPT-2's stand-in alphabet: printable Latin-1 bytes stand for themselves, the other
/// 68 bytes are spelled, in byte order, with the characters from U+0100 up.
fn byte_level_alphabet() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (b as char, b)
            } else {
                next += 1;
                (char::from_u32(next - 1).expect("below the surrogates"), b)
            }
        })
        .collect()
}

fn spelling(d: &DecoderWrapper, found: &mut Option<Spelling>, space: &mut char) {
    match d {
        DecoderWrapper::ByteLevel(_) => *found = Some(Spelling::ByteLevel),
        DecoderWrapper::ByteFallback(_) | DecoderWrapper::Fuse(_) => {
            found.get_or_insert(Spelling::Pieces { space: '▁' });
        }
        DecoderWrapper::Metaspace(m) => {
            *space = m.get_replacement();
            found.get_or_insert(Spelling::Pieces { space: '▁' });
        }
        DecoderWrapper::Replace(r) => {
            // The pattern is private; its serialized form says which character it is.
            let v = serde_json::to_value(r).unwrap_or_default();
            let content = v.get("content").and_then(|c| c.as_str());
            let pattern = v
                .get("pattern")
                .and_then(|p| p.get("String"))
                .and_then(|s| s.as_str());
            if let (Some(" "), Some(p)) = (content, pattern) {
                let mut chars = p.chars();
                if let (Some(c), None) = (chars.next(), chars.next()) {
                    *space = c;
                }
            }
        }
        DecoderWrapper::Sequence(seq) => {
            for d in seq.get_decoders() {
                spelling(d, found, space);
            }
        }
        _ => {}
    }
}

/// `<0xAB>` as the byte 0xAB.
fn fallback_byte(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    (hex.len() == 2).then(|| u8::from_str_radix(hex, 16).ok())?
}

/// The bytes of every id below `vocab_size` (the model's; ids past the tokenizer's are
/// [`TokenBytes::Missing`]). An error names the decoder when it spells bytes in a way
/// this does not know.
pub fn token_bytes(tok: &tokenizers::Tokenizer, vocab_size: usize) -> Result<Vec<TokenBytes>> {
    let mut found = None;
    let mut space = '▁';
    if let Some(d) = tok.get_decoder() {
        spelling(d, &mut found, &mut space);
    }
    let found = match found {
        Some(Spelling::Pieces { .. }) => Spelling::Pieces { space },
        Some(s) => s,
        None => {
            return Err(Error::Encode(format!(
                "cannot tell how the tokenizer's decoder ({:?}) spells bytes: \
                 constrained decoding needs a ByteLevel or ByteFallback decoder",
                tok.get_decoder()
                    .map(|d| serde_json::to_string(d).unwrap_or_default())
            )))
        }
    };
    let alphabet = byte_level_alphabet();
    let added = tok.get_added_tokens_decoder();
    let mut out = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size as u32 {
        if let Some(a) = added.get(&id) {
            // Added tokens are matched on their text; `<...>` ones are control tokens
            // even when not flagged special (as llguidance's HF bridge treats them).
            let control = a.special || (a.content.starts_with('<') && a.content.ends_with('>'));
            out.push(if control {
                TokenBytes::Special(a.content.clone())
            } else {
                TokenBytes::Text(a.content.clone().into_bytes())
            });
            continue;
        }
        let Some(piece) = tok.id_to_token(id) else {
            out.push(TokenBytes::Missing);
            continue;
        };
        let bytes = match found {
            Spelling::ByteLevel => piece
                .chars()
                .map(|c| alphabet.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .ok_or_else(|| {
                    Error::Encode(format!(
                        "token {id} ({piece:?}) has a character outside the byte-level alphabet"
                    ))
                })?,
            Spelling::Pieces { space } => match fallback_byte(&piece) {
                Some(b) => vec![b],
                None => piece.replace(space, " ").into_bytes(),
            },
        };
        out.push(TokenBytes::Text(bytes));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_level_alphabet_is_a_bijection() {
        let a = byte_level_alphabet();
        assert_eq!(a.len(), 256);
        let mut bytes: Vec<u8> = a.values().copied().collect();
        bytes.sort();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        assert_eq!(a[&'Ġ'], b' ');
        assert_eq!(a[&'Ċ'], b'\n');
        assert_eq!(a[&'a'], b'a');
    }

    #[test]
    fn fallback_bytes_parse_only_their_own_shape() {
        assert_eq!(fallback_byte("<0x0A>"), Some(b'\n'));
        assert_eq!(fallback_byte("<0xFF>"), Some(0xFF));
        assert_eq!(fallback_byte("<0x0A"), None);
        assert_eq!(fallback_byte("<0xZZ>"), None);
        assert_eq!(fallback_byte("<0x123>"), None);
    }

    /// On a golden fixture every ordinary token's bytes, concatenated, are what the
    /// tokenizer decodes (so a grammar engine sees exactly the text the client gets).
    #[test]
    fn fixture_tokens_spell_what_the_tokenizer_decodes() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/qwen2-f32-tied");
        let tok = crate::Tokenizer::from_dir(&dir).unwrap();
        let bytes = tok.token_bytes(tok.vocab_size() + 3).unwrap();
        assert_eq!(bytes.len(), tok.vocab_size() + 3);
        assert_eq!(bytes[tok.vocab_size()], TokenBytes::Missing);
        let eos = tok.eos_token_ids()[0];
        assert!(matches!(&bytes[eos as usize], TokenBytes::Special(_)));
        let text = "{\"name\": \"Zoë\", \"n\": [1, 2.5e3]}\n\twith ünïcode ✓";
        let ids = tok.encode(text, false).unwrap();
        let mut joined = Vec::new();
        for id in &ids {
            match &bytes[*id as usize] {
                TokenBytes::Text(b) => joined.extend_from_slice(b),
                other => panic!("token {id}: {other:?}"),
            }
        }
        assert_eq!(String::from_utf8(joined).unwrap(), text);
    }
}
