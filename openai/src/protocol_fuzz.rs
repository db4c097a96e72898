//! Property-based fuzzing of request parsing, the path every outside byte takes: body
//! bytes to a JSON object ([`json_object`]) and the object to the typed requests
//! ([`from_value`]). Arbitrary bytes and arbitrary JSON shaped like requests (the real
//! field names with values of every type) never panic, and a refusal names a field the
//! body actually has.

use crate::http::{from_value, json_object};
use crate::protocol::{
    ChatRequest, CompletionRequest, DetokenizeRequest, GenerationParams, TokenizeRequest,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

const FIELDS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "n",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "ignore_eos",
    "stop_token_ids",
    "priority",
    "echo",
    "tools",
    "response_format",
    "tokens",
    "user",
    "add_generation_prompt",
    "chat_template_kwargs",
    "role",
    "content",
    "include_usage",
];

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON has no NaN", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just(4.0f64),
            Just(-0.0),
            Just(1e39),
            Just(-1e300),
            Just(0.5)
        ]
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        Just(Value::from("<|im_start|>system")),
    ]
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            proptest::collection::vec((proptest::sample::select(FIELDS), inner), 0..5).prop_map(
                |kv| { Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()) }
            ),
        ]
    })
}

fn body() -> impl Strategy<Value = Map<String, Value>> {
    proptest::collection::vec(
        (
            prop_oneof![4 => proptest::sample::select(FIELDS).prop_map(str::to_string), 1 => "[a-z_]{1,8}"],
            value(),
        ),
        0..8,
    )
    .prop_map(|kv| kv.into_iter().collect())
}

/// Every typed request parsed from `m`; a refusal's `param` must start with a field of
/// `m` (or be absent, for a whole-body problem).
fn parse_all(m: &Map<String, Value>) -> Result<(), TestCaseError> {
    fn one<T: serde::de::DeserializeOwned>(m: &Map<String, Value>) -> Result<(), TestCaseError> {
        if let Err(e) = from_value::<T>(Value::Object(m.clone())) {
            prop_assert_eq!(e.status.as_u16(), 400);
            if let Some(p) = &e.param {
                let top = p.split(['.', '[']).next().unwrap_or("");
                prop_assert!(
                    m.contains_key(top) || m.is_empty(),
                    "param {:?} not in {:?}",
                    p,
                    m.keys().collect::<Vec<_>>()
                );
            }
            prop_assert!(!e.message.is_empty());
        }
        Ok(())
    }
    one::<ChatRequest>(m)?;
    one::<CompletionRequest>(m)?;
    one::<GenerationParams>(m)?;
    one::<TokenizeRequest>(m)?;
    one::<DetokenizeRequest>(m)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn request_shaped_json_is_parsed_or_refused_naming_a_field(m in body()) {
        let bytes = serde_json::to_vec(&m).unwrap();
        let parsed = json_object(&bytes).expect("an object is an object");
        parse_all(&parsed)?;
    }

    #[test]
    fn arbitrary_bytes_are_an_object_or_a_400(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        match json_object(&bytes) {
            Ok(m) => parse_all(&m)?,
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
        }
    }

    #[test]
    fn damaged_requests_are_an_object_or_a_400(m in body(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
        let mut bytes = serde_json::to_vec(&m).unwrap();
        let i = cut.index(bytes.len());
        bytes[i] ^= flip;
        match json_object(&bytes) {
            Ok(m) => parse_all(&m)?,
            Err(e) => prop_assert_eq!(e.status.as_u16(), 400),
        }
    }
}
