//! Structured output: `response_format` (`json_object`, `json_schema`) and vLLM's
//! `guided_json`, `guided_regex`, `guided_choice` and `guided_grammar` into one
//! grammar, compiled against the model's vocabulary (built on first use) and cached, so
//! the engine enforces it token by token. A grammar that cannot be enforced is a 400
//! naming the field and the feature.

use super::validation_error::ValidationError;
use novastack_engine::{Grammar, GrammarSpec, GrammarVocab};
use novastack_models::Tokenizer;
use novastack_openai::protocol::GenerationParams;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Compiled grammars kept per model; past this many the cache starts over.
const CACHED_GRAMMARS: usize = 128;

/// What a request constrains its output to, and the field that said so.
pub(crate) struct GrammarRequest {
    pub(crate) spec: GrammarSpec,
    pub(crate) param: &'static str,
}

fn invalid(param: &'static str, message: impl Into<String>) -> ValidationError {
    ValidationError::Grammar {
        message: message.into(),
        param,
    }
}

/// A JSON schema given as an object, a boolean, or (vLLM) a string holding one.
fn schema_value(v: &Value, param: &'static str) -> Result<Value, ValidationError> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| invalid(param, format!("{param} is not a JSON schema: {e}"))),
        _ => Err(invalid(
            param,
            format!("{param} must be a JSON schema (an object)"),
        )),
    }
}

fn response_format(v: &Value) -> Result<Option<GrammarSpec>, ValidationError> {
    const P: &str = "response_format";
    let kind = v.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(GrammarSpec::JsonObject)),
        Some("json_schema") => {
            let js = v.get("json_schema").ok_or_else(|| {
                invalid(
                    P,
                    "response_format of type json_schema needs a `json_schema` object",
                )
            })?;
            match js.get("schema") {
                // OpenAI makes the schema optional: any JSON value.
                None | Some(Value::Null) => Ok(Some(GrammarSpec::JsonSchema(Value::Bool(true)))),
                Some(s) => Ok(Some(GrammarSpec::JsonSchema(schema_value(
                    s,
                    "response_format",
                )?))),
            }
        }
        Some(other) => Err(invalid(
            P,
            format!("response_format type {other:?} is not supported; use text, json_object or json_schema"),
        )),
        None => Err(invalid(
            P,
            "response_format must be an object with a `type` (text, json_object or json_schema)",
        )),
    }
}

/// The grammar a request asks for, if any; more than one is an error.
pub(crate) fn requested_grammar(
    c: &GenerationParams,
) -> Result<Option<GrammarRequest>, ValidationError> {
    let mut found: Vec<GrammarRequest> = Vec::new();
    let mut add = |param, spec: Option<GrammarSpec>| {
        if let Some(spec) = spec {
            found.push(GrammarRequest { spec, param });
        }
    };
    if let Some(v) = c.response_format.as_ref().filter(|v| !v.is_null()) {
        add("response_format", response_format(v)?);
    }
    if let Some(v) = c.guided_json.as_ref().filter(|v| !v.is_null()) {
        let s = schema_value(v, "guided_json")?;
        add("guided_json", Some(GrammarSpec::JsonSchema(s)));
    }
    if let Some(rx) = &c.guided_regex {
        add("guided_regex", Some(GrammarSpec::Regex(rx.clone())));
    }
    if let Some(choices) = &c.guided_choice {
        if choices.is_empty() {
            return Err(invalid("guided_choice", "guided_choice must not be empty"));
        }
        add("guided_choice", Some(GrammarSpec::Choice(choices.clone())));
    }
    if let Some(g) = &c.guided_grammar {
        let spec = if novastack_engine::gbnf::looks_like_gbnf(g) {
            GrammarSpec::Lark(
                novastack_engine::gbnf::to_lark(g)
                    .map_err(|e| invalid("guided_grammar", format!("guided_grammar: {e}")))?,
            )
        } else {
            GrammarSpec::Lark(g.clone())
        };
        add("guided_grammar", Some(spec));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|g| g.param).collect();
        return Err(invalid(
            found[1].param,
            format!("give one output constraint, not {}", names.join(" and ")),
        ));
    }
    Ok(found.pop())
}

/// One model's grammar compiler: its vocabulary (built on first use) and a cache of
/// compiled grammars by their specification.
pub struct GrammarCompiler {
    vocab_size: usize,
    eos: Vec<u32>,
    vocab: OnceLock<Result<Arc<GrammarVocab>, String>>,
    cache: Mutex<HashMap<String, Grammar>>,
}

impl GrammarCompiler {
    /// For a model with `vocab_size` logits ending on `eos`.
    pub fn new(vocab_size: usize, eos: Vec<u32>) -> Self {
        GrammarCompiler {
            vocab_size,
            eos,
            vocab: OnceLock::new(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The compiled grammar for `req`, from the cache when the same one was asked
    /// for before.
    pub(crate) fn compile(
        &self,
        tokenizer: &Tokenizer,
        req: &GrammarRequest,
    ) -> Result<Grammar, ValidationError> {
        let vocab = self
            .vocab
            .get_or_init(|| {
                GrammarVocab::new(tokenizer, self.vocab_size, &self.eos)
                    .map(Arc::new)
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| {
                invalid(
                    req.param,
                    format!("this model cannot constrain its output: {e}"),
                )
            })?;
        let key = format!("{:?}", req.spec);
        if let Some(g) = self.cache.lock().expect("not poisoned").get(&key) {
            return Ok(g.clone());
        }
        let g = vocab.compile(&req.spec).map_err(|e| {
            invalid(
                req.param,
                format!("{} cannot be enforced: {}", req.param, first_lines(&e.0)),
            )
        })?;
        let mut cache = self.cache.lock().expect("not poisoned");
        if cache.len() >= CACHED_GRAMMARS {
            cache.clear();
        }
        cache.insert(key, g.clone());
        Ok(g)
    }
}

/// llguidance's errors can carry a dump of the grammar; the client needs the reason.
fn first_lines(e: &str) -> String {
    let head: Vec<&str> = e.lines().take(3).collect();
    let mut s = head.join(" ");
    if s.len() > 600 {
        let cut = (0..=600)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn params(v: Value) -> GenerationParams {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_way_of_asking_maps_to_one_grammar() {
        let g = |v| {
            requested_grammar(&params(v))
                .unwrap()
                .map(|g| (g.spec, g.param))
        };
        assert_eq!(g(json!({})), None);
        assert_eq!(g(json!({"response_format": {"type": "text"}})), None);
        assert_eq!(
            g(json!({"response_format": {"type": "json_object"}})),
            Some((GrammarSpec::JsonObject, "response_format"))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            g(json!({"response_format": {"type": "json_schema",
                "json_schema": {"name": "x", "schema": schema, "strict": true}}})),
            Some((GrammarSpec::JsonSchema(schema.clone()), "response_format"))
        );
        assert_eq!(
            g(json!({"guided_json": schema.to_string()})),
            Some((GrammarSpec::JsonSchema(schema), "guided_json"))
        );
        assert_eq!(
            g(json!({"guided_choice": ["a", "b"]})),
            Some((
                GrammarSpec::Choice(vec!["a".into(), "b".into()]),
                "guided_choice"
            ))
        );
        assert_eq!(
            g(json!({"guided_grammar": "root ::= \"x\" [0-9]"})),
            Some((
                GrammarSpec::Lark(novastack_engine::gbnf::to_lark("root ::= \"x\" [0-9]").unwrap()),
                "guided_grammar"
            ))
        );
    }

    #[test]
    fn bad_or_conflicting_constraints_are_400s_naming_the_field() {
        let e = |v| requested_grammar(&params(v)).err().unwrap();
        let err = e(json!({"response_format": {"type": "yaml"}}));
        assert_eq!(err.param(), Some("response_format"));
        assert!(err.to_string().contains("\"yaml\""), "{err}");
        let err = e(json!({"response_format": {"type": "json_schema"}}));
        assert!(err.to_string().contains("json_schema"), "{err}");
        let err = e(json!({"guided_json": "{not json"}));
        assert_eq!(err.param(), Some("guided_json"));
        let err = e(json!({"guided_choice": []}));
        assert_eq!(err.param(), Some("guided_choice"));
        let err = e(json!({"guided_regex": "a+", "response_format": {"type": "json_object"}}));
        assert_eq!(err.param(), Some("guided_regex"));
        assert!(
            err.to_string().contains("response_format and guided_regex"),
            "{err}"
        );
    }
}
