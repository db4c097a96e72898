//! Property-based fuzzing of the GGUF reader, the bytes most likely to come from a
//! stranger: well-formed files with random metadata and tensor tables, then truncated,
//! bit-flipped or spliced. Every input is either read or refused with an error naming the
//! file; none panics, overflows or allocates without bound. What is read is also handed
//! to the config and tokenizer readers, which must refuse bad metadata the same way.

use super::{config_from_gguf, tokenizer_from_gguf, GgufFile};
use proptest::prelude::*;
use std::path::PathBuf;

/// A metadata value as the generator writes it: the GGUF type id and its encoding.
#[derive(Debug, Clone)]
struct Meta {
    ty: u32,
    bytes: Vec<u8>,
}

fn gguf_string(s: &[u8]) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s);
    b
}

fn scalar() -> impl Strategy<Value = Meta> {
    prop_oneof![
        any::<u8>().prop_map(|v| Meta {
            ty: 0,
            bytes: vec![v]
        }),
        any::<u32>().prop_map(|v| Meta {
            ty: 4,
            bytes: v.to_le_bytes().to_vec()
        }),
        any::<i32>().prop_map(|v| Meta {
            ty: 5,
            bytes: v.to_le_bytes().to_vec()
        }),
        any::<f32>().prop_map(|v| Meta {
            ty: 6,
            bytes: v.to_le_bytes().to_vec()
        }),
        (0u8..3).prop_map(|v| Meta {
            ty: 7,
            bytes: vec![v]
        }),
        proptest::collection::vec(any::<u8>(), 0..24).prop_map(|s| Meta {
            ty: 8,
            bytes: gguf_string(&s)
        }),
        "[a-z<|>]{0,12}".prop_map(|s| Meta {
            ty: 8,
            bytes: gguf_string(s.as_bytes())
        }),
        any::<u64>().prop_map(|v| Meta {
            ty: 10,
            bytes: v.to_le_bytes().to_vec()
        }),
        any::<i64>().prop_map(|v| Meta {
            ty: 11,
            bytes: v.to_le_bytes().to_vec()
        }),
        any::<f64>().prop_map(|v| Meta {
            ty: 12,
            bytes: v.to_le_bytes().to_vec()
        }),
        // An unknown type id.
        (13u32..40).prop_map(|ty| Meta { ty, bytes: vec![] }),
    ]
}

fn meta() -> impl Strategy<Value = Meta> {
    scalar().prop_recursive(2, 16, 6, |inner| {
        proptest::collection::vec(inner, 0..6).prop_map(|items| {
            // An array of the first item's type; mixed types are a corrupt file.
            let elem = items.first().map_or(4, |m| m.ty);
            let mut bytes = elem.to_le_bytes().to_vec();
            bytes.extend((items.len() as u64).to_le_bytes());
            for m in &items {
                bytes.extend_from_slice(&m.bytes);
            }
            Meta { ty: 9, bytes }
        })
    })
}

/// Keys the readers look up, so random values reach their checks.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("general.architecture".to_string()),
        Just("general.alignment".to_string()),
        Just("llama.block_count".to_string()),
        Just("llama.context_length".to_string()),
        Just("llama.embedding_length".to_string()),
        Just("llama.feed_forward_length".to_string()),
        Just("llama.attention.head_count".to_string()),
        Just("llama.attention.head_count_kv".to_string()),
        Just("llama.rope.freq_base".to_string()),
        Just("llama.attention.layer_norm_rms_epsilon".to_string()),
        Just("llama.vocab_size".to_string()),
        Just("tokenizer.ggml.model".to_string()),
        Just("tokenizer.ggml.tokens".to_string()),
        Just("tokenizer.ggml.merges".to_string()),
        Just("tokenizer.ggml.token_type".to_string()),
        Just("tokenizer.ggml.bos_token_id".to_string()),
        Just("tokenizer.ggml.eos_token_id".to_string()),
        Just("tokenizer.chat_template".to_string()),
        "[a-z.]{1,16}",
    ]
}

#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    dims: Vec<u64>,
    ty: u32,
    offset: u64,
}

fn tensor() -> impl Strategy<Value = Tensor> {
    let dim = prop_oneof![1u64..64, Just(32u64), Just(256u64), any::<u64>()];
    (
        "[a-z_.]{1,12}",
        proptest::collection::vec(dim, 0..10),
        prop_oneof![Just(0u32), Just(1), Just(8), Just(12), Just(14), 0u32..64],
        prop_oneof![Just(0u64), 0u64..4096, any::<u64>()],
    )
        .prop_map(|(name, dims, ty, offset)| Tensor {
            name,
            dims,
            ty,
            offset,
        })
}

/// A GGUF file as bytes: header, metadata, tensor infos, padding, `data` bytes.
fn encode(version: u32, kvs: &[(String, Meta)], tensors: &[Tensor], data: usize) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(version.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, m) in kvs {
        b.extend(gguf_string(k.as_bytes()));
        b.extend(m.ty.to_le_bytes());
        b.extend_from_slice(&m.bytes);
    }
    for t in tensors {
        b.extend(gguf_string(t.name.as_bytes()));
        b.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            b.extend(d.to_le_bytes());
        }
        b.extend(t.ty.to_le_bytes());
        b.extend(t.offset.to_le_bytes());
    }
    b.resize(b.len().div_ceil(32) * 32 + data, 0x3c);
    b
}

/// How a well-formed file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    None,
    Truncate(usize),
    Flip(Vec<(usize, u8)>),
    /// A u64 written over the file at this byte (counts and lengths become huge).
    BigNumber(usize, u64),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::None),
        any::<usize>().prop_map(Damage::Truncate),
        proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8).prop_map(Damage::Flip),
        (
            any::<usize>(),
            prop_oneof![
                Just(u64::MAX),
                Just(1u64 << 62),
                Just(1u64 << 32),
                any::<u64>()
            ]
        )
            .prop_map(|(at, v)| Damage::BigNumber(at, v)),
    ]
}

fn apply(mut b: Vec<u8>, d: &Damage) -> Vec<u8> {
    match d {
        Damage::None => {}
        Damage::Truncate(n) => b.truncate(n % (b.len() + 1)),
        Damage::Flip(flips) => {
            for (at, x) in flips {
                let i = at % b.len();
                b[i] ^= x;
            }
        }
        Damage::BigNumber(at, v) => {
            if b.len() >= 8 {
                let i = at % (b.len() - 7);
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
    }
    b
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ns-gguf-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{tag}-{:?}.gguf", std::thread::current().id()))
}

/// Opens `bytes` as a GGUF file and runs every reader over what it holds. An error is
/// fine; it must name the file.
fn read_all(bytes: &[u8]) {
    let path = scratch("case");
    std::fs::write(&path, bytes).unwrap();
    match GgufFile::open(&path) {
        Ok(f) => {
            for t in &f.tensors {
                let _ = t.num_elements();
                // Only dequantize what is small: the bounds check is what is under test.
                if let Ok(b) = f.tensor_bytes(t) {
                    if b.len() <= 1 << 16 {
                        let _ = f.dequantize(t);
                    }
                }
            }
            let _ = config_from_gguf(&f);
            let _ = tokenizer_from_gguf(&f);
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_files_are_read_or_refused_never_a_panic(
        version in prop_oneof![Just(3u32), Just(2), any::<u32>()],
        kvs in proptest::collection::vec((key(), meta()), 0..10),
        tensors in proptest::collection::vec(tensor(), 0..5),
        data in 0usize..2048,
        d in damage(),
    ) {
        read_all(&apply(encode(version, &kvs, &tensors, data), &d));
    }

    #[test]
    fn arbitrary_bytes_after_the_magic_are_refused_or_read(
        version in prop_oneof![Just(3u32), Just(2)],
        tail in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut b = b"GGUF".to_vec();
        b.extend(version.to_le_bytes());
        b.extend(tail);
        read_all(&b);
    }
}
