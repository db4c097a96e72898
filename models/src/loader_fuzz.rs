//! Property-based fuzzing of the safetensors reader: headers with random JSON (sizes,
//! dtypes, shapes whose products overflow, offsets past the data, wrong header lengths),
//! and shard indexes naming missing or hostile files. Every input is read or refused with
//! an error naming the file; none panics or reads outside the mapping.

use crate::loader::{SafetensorsSource, TensorSource};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::PathBuf;

fn dim() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..8).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1u64 << 33)),
        Just(Value::from(-1)),
        Just(Value::from(1.5)),
        Just(Value::from("4")),
    ]
}

fn dtype() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("F32")),
        Just(json!("F16")),
        Just(json!("BF16")),
        Just(json!("F64")),
        Just(json!("I32")),
        Just(json!("U8")),
        Just(json!("F8_E4M3")),
        Just(json!("BOOL")),
        Just(json!("Q4")),
        Just(json!(7)),
    ]
}

fn offset() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u64..96).prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(usize::MAX as u64 - 3)),
    ]
}

fn entry() -> impl Strategy<Value = Value> {
    (
        dtype(),
        proptest::collection::vec(dim(), 0..5),
        offset(),
        offset(),
        any::<bool>(),
    )
        .prop_map(|(dtype, shape, a, b, well_formed)| {
            if well_formed {
                json!({"dtype": dtype, "shape": shape, "data_offsets": [a, b]})
            } else {
                json!({"dtype": dtype, "shape": shape, "data_offsets": [a]})
            }
        })
}

fn header() -> impl Strategy<Value = Value> {
    (
        proptest::collection::btree_map("[a-z_.]{1,10}", entry(), 0..5),
        proptest::option::of(proptest::collection::btree_map(
            "[a-z]{1,6}",
            "[a-z]{0,6}",
            0..3,
        )),
    )
        .prop_map(|(tensors, meta)| {
            let mut h: serde_json::Map<String, Value> = tensors.into_iter().collect();
            if let Some(m) = meta {
                h.insert("__metadata__".into(), json!(m));
            }
            Value::Object(h)
        })
}

/// How the 8-byte header length relates to the JSON that follows it.
#[derive(Debug, Clone)]
enum Length {
    Exact,
    Off(i64),
    Value(u64),
}

fn length() -> impl Strategy<Value = Length> {
    prop_oneof![
        4 => Just(Length::Exact),
        1 => (-16i64..16).prop_map(Length::Off),
        1 => prop_oneof![Just(u64::MAX), Just(1u64 << 40), any::<u64>()].prop_map(Length::Value),
    ]
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ns-st-fuzz-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn check(dir: &std::path::Path) {
    match SafetensorsSource::open_dir(dir) {
        Ok(src) => {
            // Read every tensor at the shape the file claims and at a wrong one.
            let text = std::fs::read(dir.join("model.safetensors")).unwrap_or_default();
            let n = u64::from_le_bytes(text.get(..8).map_or([0; 8], |b| b.try_into().unwrap()));
            let json: Value = text
                .get(8..8 + n as usize)
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            for (name, info) in json.as_object().into_iter().flatten() {
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .map(|s| {
                        s.iter()
                            .filter_map(Value::as_u64)
                            .map(|d| d as usize)
                            .collect()
                    })
                    .unwrap_or_default();
                let _ = src.tensor(name, &shape);
                let _ = src.tensor(name, &[3, 5]);
                assert!(src.contains(name) || name == "__metadata__");
            }
        }
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains(&dir.display().to_string()), "{msg}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_headers_are_read_or_refused_never_a_panic(
        h in header(),
        len in length(),
        data in 0usize..128,
        junk in proptest::collection::vec(any::<u8>(), 0..4),
    ) {
        let dir = scratch();
        let mut json = serde_json::to_vec(&h).unwrap();
        json.extend(junk);
        let n = match len {
            Length::Exact => json.len() as u64,
            Length::Off(d) => (json.len() as i64 + d).max(0) as u64,
            Length::Value(v) => v,
        };
        let mut b = n.to_le_bytes().to_vec();
        b.extend(json);
        b.extend(std::iter::repeat_n(0x3fu8, data));
        std::fs::write(dir.join("model.safetensors"), b).unwrap();
        check(&dir);
    }

    #[test]
    fn hostile_shard_indexes_are_refused_never_a_panic(
        map in proptest::collection::btree_map(
            "[a-z]{1,6}",
            prop_oneof![
                Just(json!("../../../etc/passwd")),
                Just(json!("missing.safetensors")),
                Just(json!(3)),
                Just(json!("")),
            ],
            0..4,
        ),
        wrap in any::<bool>(),
    ) {
        let dir = scratch();
        let index = if wrap { json!({"weight_map": map}) } else { json!(map) };
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
        match SafetensorsSource::open_dir(&dir) {
            // Only an empty map names no file to open.
            Ok(_) => prop_assert!(map.values().all(|v| !v.is_string()) || map.is_empty()),
            Err(e) => prop_assert!(e.to_string().contains(&dir.display().to_string()), "{e}"),
        }
    }
}
