//! A prompt's leading blocks, hashed the way the engine's prefix cache hashes token
//! blocks: each block's hash covers every byte before it, so two prompts share a block
//! hash exactly when they share everything up to that block's end. The gateway has no
//! tokenizer, so blocks are bytes of a canonical rendering of the prompt (chat messages
//! with their roles, the completion prompt's text or token ids, the embedding input).

use crate::request::ClientRequest;
use serde_json::Value;

/// Bytes per block (about 64 tokens of English).
pub const BLOCK_BYTES: usize = 256;
/// Blocks looked at, at most (the first 32 KiB of a prompt).
pub const MAX_BLOCKS: usize = 128;

/// FNV-1a over `bytes`, continuing from `h`.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A final mix (splitmix64), so nearby inputs spread over the ring.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A string's hash (ring points).
pub fn hash_str(s: &str) -> u64 {
    mix(fnv(0xcbf2_9ce4_8422_2325, s.as_bytes()))
}

/// The chained hashes of the full blocks of `bytes` (at most `MAX_BLOCKS`), then one
/// for the partial tail, if any: a prompt shorter than a block still has a key.
pub fn block_hashes(bytes: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for chunk in bytes.chunks(BLOCK_BYTES).take(MAX_BLOCKS) {
        h = fnv(h, chunk);
        out.push(mix(h));
    }
    out
}

/// The canonical rendering of what a request's prompt is made of.
pub fn render(req: &ClientRequest) -> Vec<u8> {
    render_upto(req, false)
}

/// The ring key of a request: the hash of what stays the same across a conversation's
/// turns, its rendering up to the end of the first user message (at most 1 KiB); for a
/// prompt without messages, its first KiB.
pub fn ring_key(req: &ClientRequest) -> u64 {
    let mut r = render_upto(req, true);
    r.truncate(1024);
    mix(fnv(0xcbf2_9ce4_8422_2325, &r))
}

/// `render`, or (`first_turn`) only up to the end of the first user message.
fn render_upto(req: &ClientRequest, first_turn: bool) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(tools) = req.body.get("tools") {
        out.extend_from_slice(tools.to_string().as_bytes());
        out.push(0);
    }
    for m in &req.messages {
        out.extend_from_slice(
            m.get("role")
                .and_then(Value::as_str)
                .unwrap_or("")
                .as_bytes(),
        );
        out.push(b'\n');
        match m.get("content") {
            Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("text").and_then(Value::as_str) {
                        Some(t) => out.extend_from_slice(t.as_bytes()),
                        None => out.extend_from_slice(p.to_string().as_bytes()),
                    }
                }
            }
            Some(other) => out.extend_from_slice(other.to_string().as_bytes()),
            None => {}
        }
        if let Some(calls) = m.get("tool_calls") {
            out.extend_from_slice(calls.to_string().as_bytes());
        }
        out.push(0);
        if first_turn && m.get("role").and_then(Value::as_str) == Some("user") {
            return out;
        }
    }
    for field in ["prompt", "input"] {
        match req.body.get(field) {
            Some(Value::String(s)) => out.extend_from_slice(s.as_bytes()),
            Some(Value::Array(items)) => {
                for it in items {
                    match it {
                        Value::Number(n) => {
                            let id = n.as_u64().unwrap_or(0) as u32;
                            out.extend_from_slice(&id.to_le_bytes());
                        }
                        Value::String(s) => out.extend_from_slice(s.as_bytes()),
                        other => out.extend_from_slice(other.to_string().as_bytes()),
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_leading_bytes_share_block_hashes() {
        let a = vec![b'a'; BLOCK_BYTES * 3];
        let mut b = a[..BLOCK_BYTES * 2].to_vec();
        b.extend(vec![b'b'; BLOCK_BYTES * 2]);
        let (ha, hb) = (block_hashes(&a), block_hashes(&b));
        assert_eq!(ha.len(), 3);
        assert_eq!(hb.len(), 4);
        assert_eq!(ha[..2], hb[..2]);
        assert_ne!(ha[2], hb[2]);
        // A short prompt has one (partial) block; the cap holds.
        assert_eq!(block_hashes(b"hi").len(), 1);
        assert!(block_hashes(&[]).is_empty());
        assert_eq!(
            block_hashes(&vec![0; BLOCK_BYTES * (MAX_BLOCKS + 5)]).len(),
            MAX_BLOCKS
        );
    }

    #[test]
    fn a_later_turn_renders_its_earlier_turn_as_a_prefix() {
        let turn1 = crate::request::parse_request(
            crate::Api::Chat,
            br#"{"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]}"#,
        )
        .unwrap();
        let turn2 = crate::request::parse_request(
            crate::Api::Chat,
            br#"{"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "hi"}, {"role": "user", "content": [{"type": "text", "text": "more"}]}]}"#,
        )
        .unwrap();
        let (r1, r2) = (render(&turn1), render(&turn2));
        assert!(r2.starts_with(&r1), "{r1:?} {r2:?}");
        // Both turns of a conversation have one ring key; another first message, another.
        assert_eq!(ring_key(&turn1), ring_key(&turn2));
        let other = crate::request::parse_request(
            crate::Api::Chat,
            br#"{"model": "m", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "bye"}]}"#,
        )
        .unwrap();
        assert_ne!(ring_key(&turn1), ring_key(&other));
        let ids = crate::request::parse_request(
            crate::Api::Completions,
            br#"{"model": "m", "prompt": [1, 2, 3]}"#,
        )
        .unwrap();
        assert_eq!(render(&ids), [1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]);
    }
}
