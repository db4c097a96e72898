//! Tool calling on local models. `tools` go to the chat template as transformers passes
//! them; the answer is then read for calls:
//! - `tool_choice: "auto"` (the default with tools): the model's own format, parsed by a
//!   [`ToolParser`] (Hermes/Qwen `<tool_call>` JSON, Llama-3 JSON, Mistral
//!   `[TOOL_CALLS]`), chosen by `--tool-call-parser` or from the chat template;
//! - `"required"` or a named function: constrained decoding over the tools' parameter
//!   schemas ([`forced_schema`]), so the call always parses and validates;
//! - `"none"`: no calls are read.
//!
//! Streaming is `tool_call_stream.rs`.

use super::validation_error::ValidationError;
use novastack_openai::protocol::{FunctionCall, ToolCall};
use serde_json::{json, Map, Value};

/// The model's own tool-call format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolParser {
    /// `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Hermes, Qwen 2.5/3).
    Hermes,
    /// A JSON object `{"name": ..., "parameters": {...}}`, optionally after
    /// `<|python_tag|>`, several joined by `;` (Llama 3.1+).
    Llama3Json,
    /// `[TOOL_CALLS][{"name": ..., "arguments": {...}}]`, or `[TOOL_CALLS]name[ARGS]{...}`.
    Mistral,
}

impl std::str::FromStr for ToolParser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hermes" | "qwen" => Ok(ToolParser::Hermes),
            "llama3_json" | "llama3" => Ok(ToolParser::Llama3Json),
            "mistral" => Ok(ToolParser::Mistral),
            _ => Err(format!(
                "unknown tool-call parser {s:?}: use hermes, llama3_json or mistral"
            )),
        }
    }
}

impl ToolParser {
    /// The format a chat template renders tool calls in, if it says.
    pub fn from_template(source: &str) -> Option<ToolParser> {
        if source.contains("<tool_call>") {
            Some(ToolParser::Hermes)
        } else if source.contains("[TOOL_CALLS]") {
            Some(ToolParser::Mistral)
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            Some(ToolParser::Llama3Json)
        } else {
            None
        }
    }

    /// Where in `text` a call starts (or may start, if the text is cut there), so the
    /// text before it can be streamed as content.
    pub(crate) fn call_start(self, text: &str) -> Option<usize> {
        let markers: &[&str] = match self {
            ToolParser::Hermes => &["<tool_call>"],
            ToolParser::Mistral => &["[TOOL_CALLS]"],
            ToolParser::Llama3Json => {
                // A JSON call is the whole answer: it starts with `{` (after blanks).
                let lead = text.len() - text.trim_start().len();
                if text[lead..].starts_with('{') || text[lead..].starts_with("<|python_tag|>") {
                    return Some(0);
                }
                if text.trim().is_empty() {
                    return Some(0);
                }
                &["<|python_tag|>"]
            }
        };
        let mut best: Option<usize> = None;
        for m in markers {
            if let Some(i) = text.find(m) {
                best = Some(best.map_or(i, |b| b.min(i)));
            }
            // A marker cut at the end of the text so far: hold that tail back.
            for k in (1..m.len()).rev() {
                if text.ends_with(&m[..k]) {
                    let i = text.len() - k;
                    best = Some(best.map_or(i, |b| b.min(i)));
                    break;
                }
            }
        }
        best
    }

    /// The content before any call and the calls, or `None` when the text holds no
    /// well-formed call (it is then all content).
    fn parse(self, text: &str) -> Option<(String, Vec<(String, String)>)> {
        match self {
            ToolParser::Hermes => {
                let start = text.find("<tool_call>")?;
                let mut calls = Vec::new();
                let mut rest = &text[start..];
                while let Some(i) = rest.find("<tool_call>") {
                    let body = &rest[i + "<tool_call>".len()..];
                    let (inner, next) = match body.find("</tool_call>") {
                        Some(j) => (&body[..j], &body[j + "</tool_call>".len()..]),
                        None => (body, ""),
                    };
                    calls.push(call_from_json(&serde_json::from_str(inner.trim()).ok()?)?);
                    rest = next;
                }
                Some((text[..start].to_string(), calls))
            }
            ToolParser::Llama3Json => {
                let t = text.trim_start();
                let t = t.strip_prefix("<|python_tag|>").unwrap_or(t).trim();
                if !t.starts_with('{') {
                    return None;
                }
                let mut calls = Vec::new();
                let mut rest = t;
                loop {
                    let mut de = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                    let v = de.next()?.ok()?;
                    calls.push(call_from_json(&v)?);
                    let after = rest[de.byte_offset()..].trim_start();
                    if after.is_empty() {
                        break;
                    }
                    // `;` between calls; anything else is not a call.
                    rest = after.strip_prefix(';')?.trim_start();
                }
                Some((String::new(), calls))
            }
            ToolParser::Mistral => {
                let start = text.find("[TOOL_CALLS]")?;
                let body = text[start + "[TOOL_CALLS]".len()..].trim();
                let calls = if body.starts_with('[') {
                    let v: Value = serde_json::from_str(body).ok()?;
                    v.as_array()?
                        .iter()
                        .map(call_from_json)
                        .collect::<Option<Vec<_>>>()?
                } else {
                    // `name[ARGS]{...}`, repeated with `[TOOL_CALLS]` between.
                    body.split("[TOOL_CALLS]")
                        .map(|c| {
                            let (name, args) = c.split_once("[ARGS]")?;
                            let args: Value = serde_json::from_str(args.trim()).ok()?;
                            Some((name.trim().to_string(), args.to_string()))
                        })
                        .collect::<Option<Vec<_>>>()?
                };
                Some((text[..start].to_string(), calls))
            }
        }
    }
}

/// `{"name", "arguments" | "parameters"}` into a name and compact JSON arguments.
fn call_from_json(v: &Value) -> Option<(String, String)> {
    let name = v.get("name")?.as_str()?.to_string();
    let args = v
        .get("arguments")
        .or_else(|| v.get("parameters"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let args = match args {
        // Some models write the arguments as a JSON string.
        Value::String(s) => serde_json::from_str::<Value>(&s).ok()?.to_string(),
        Value::Object(_) => args.to_string(),
        _ => return None,
    };
    Some((name, args))
}

/// One function of `tools`: its name and parameter schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Tool {
    pub(crate) name: String,
    pub(crate) parameters: Value,
}

/// How an answer is read for calls.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ToolPlan {
    /// The model's own format.
    Auto(ToolParser),
    /// The answer is a JSON array of `{"name", "parameters"}` (constrained).
    Required,
    /// The answer is the named function's arguments (constrained).
    Named(String),
}

impl ToolPlan {
    /// The tokens the answer must be decoded with even if the tokenizer calls them
    /// special (Mistral's `[TOOL_CALLS]` is a control token, skipped otherwise).
    pub(crate) fn markers(&self) -> &'static [&'static str] {
        match self {
            ToolPlan::Auto(ToolParser::Hermes) => &["<tool_call>", "</tool_call>"],
            ToolPlan::Auto(ToolParser::Mistral) => &["[TOOL_CALLS]", "[ARGS]"],
            ToolPlan::Auto(ToolParser::Llama3Json) => &["<|python_tag|>"],
            ToolPlan::Required | ToolPlan::Named(_) => &[],
        }
    }
}

fn bad(message: impl Into<String>, param: &'static str) -> ValidationError {
    ValidationError::Grammar {
        message: message.into(),
        param,
    }
}

/// Checks `tools` (OpenAI's shape) and returns each function.
pub(crate) fn parse_tools(tools: &Value) -> Result<Vec<Tool>, ValidationError> {
    let list = tools
        .as_array()
        .ok_or_else(|| bad("tools must be an array", "tools"))?;
    let mut out: Vec<Tool> = Vec::new();
    for (i, t) in list.iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                format!("tools[{i}].type must be \"function\""),
                "tools",
            ));
        }
        let f = t
            .get("function")
            .and_then(Value::as_object)
            .ok_or_else(|| bad(format!("tools[{i}].function must be an object"), "tools"))?;
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let valid_name = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_name {
            return Err(bad(
                format!("tools[{i}].function.name must be 1 to 64 of a-z, A-Z, 0-9, _ and -"),
                "tools",
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(bad(format!("two tools are named {name:?}"), "tools"));
        }
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => {
                return Err(bad(
                    format!("tools[{i}].function.parameters must be a JSON schema object"),
                    "tools",
                ))
            }
        };
        out.push(Tool {
            name: name.to_string(),
            parameters,
        });
    }
    Ok(out)
}

/// The plan for `tool_choice` over `tools`; `None`: no calls are read (`"none"`).
pub(crate) fn plan(
    tools: &[Tool],
    tool_choice: Option<&Value>,
    parser: Option<ToolParser>,
) -> Result<Option<ToolPlan>, ValidationError> {
    const P: &str = "tool_choice";
    let choice = match tool_choice {
        None | Some(Value::Null) => "auto",
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    bad(
                        "tool_choice must be none, auto, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                        P,
                    )
                })?;
            if !tools.iter().any(|t| t.name == name) {
                return Err(bad(
                    format!("tool_choice names {name:?}, which is not in tools"),
                    P,
                ));
            }
            return Ok(Some(ToolPlan::Named(name.to_string())));
        }
        Some(_) => return Err(bad("tool_choice must be a string or an object", P)),
    };
    match choice {
        "none" => Ok(None),
        "required" => Ok(Some(ToolPlan::Required)),
        "auto" => match parser {
            Some(p) => Ok(Some(ToolPlan::Auto(p))),
            None => Err(bad(
                "this model's chat template does not say how it writes tool calls: start the server with --tool-call-parser (hermes, llama3_json or mistral), or use tool_choice \"required\" or a named function",
                P,
            )),
        },
        other => Err(bad(
            format!("tool_choice {other:?} is not one of none, auto, required"),
            P,
        )),
    }
}

/// Most calls in one `required` answer: a model that repeats itself must still close
/// the list well within a normal `max_tokens`.
pub(crate) const MAX_PARALLEL_CALLS: usize = 8;

/// The JSON schema a forced plan constrains the answer to: for `required`, an array of
/// calls (one only without `parallel`); for a named function, its arguments.
pub(crate) fn forced_schema(plan: &ToolPlan, tools: &[Tool], parallel: bool) -> Option<Value> {
    match plan {
        ToolPlan::Auto(_) => None,
        ToolPlan::Named(name) => tools
            .iter()
            .find(|t| &t.name == name)
            .map(|t| t.parameters.clone()),
        ToolPlan::Required => {
            let one: Vec<Value> = tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "object",
                        "properties": {"name": {"const": t.name}, "parameters": t.parameters},
                        "required": ["name", "parameters"],
                        "additionalProperties": false
                    })
                })
                .collect();
            let mut schema = Map::new();
            schema.insert("type".into(), json!("array"));
            schema.insert("items".into(), json!({"anyOf": one}));
            schema.insert("minItems".into(), json!(1));
            schema.insert(
                "maxItems".into(),
                json!(if parallel { MAX_PARALLEL_CALLS } else { 1 }),
            );
            Some(Value::Object(schema))
        }
    }
}

/// Assistant `tool_calls` whose `arguments` are JSON text get them as objects, which
/// chat templates expect (they write them with `tojson`).
pub(crate) fn arguments_as_objects(messages: &mut [Value]) {
    for m in messages {
        let Some(calls) = m.get_mut("tool_calls").and_then(Value::as_array_mut) else {
            continue;
        };
        for c in calls {
            if let Some(args) = c.get_mut("function").and_then(|f| f.get_mut("arguments")) {
                if let Some(v) = args
                    .as_str()
                    .and_then(|s| serde_json::from_str::<Value>(s).ok())
                    .filter(Value::is_object)
                {
                    *args = v;
                }
            }
        }
    }
}

/// The content and the calls of a finished answer. With no well-formed call the text is
/// all content.
pub(crate) fn extract(plan: &ToolPlan, text: &str) -> (Option<String>, Vec<ToolCall>) {
    let parsed: Option<(String, Vec<(String, String)>)> = match plan {
        ToolPlan::Auto(p) => p.parse(text),
        // Forced answers are well-formed by construction: the arguments are the
        // model's own text, as a stream of the same answer sends them.
        ToolPlan::Named(name) => serde_json::from_str::<Value>(text)
            .ok()
            .filter(Value::is_object)
            .map(|_| (String::new(), vec![(name.clone(), text.trim().to_string())])),
        ToolPlan::Required => serde_json::from_str::<Value>(text).ok().and_then(|v| {
            let calls = v
                .as_array()?
                .iter()
                .map(call_from_json)
                .collect::<Option<Vec<_>>>()?;
            let spans = super::tool_call_stream::scan_required(text);
            let raw = calls
                .into_iter()
                .zip(&spans)
                .map(|((name, args), span)| match span.args {
                    Some((s, Some(e))) => (name, text[s..e].to_string()),
                    _ => (name, args),
                })
                .collect();
            Some((String::new(), raw))
        }),
    };
    match parsed {
        Some((content, calls)) if !calls.is_empty() => {
            let content = (!content.trim().is_empty()).then(|| content.trim_end().to_string());
            let calls = calls
                .into_iter()
                .map(|(name, arguments)| ToolCall {
                    id: novastack_openai::protocol::new_call_id(),
                    kind: "function".into(),
                    function: FunctionCall { name, arguments },
                })
                .collect();
            (content, calls)
        }
        _ => (Some(text.to_string()), Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_args(calls: &[ToolCall]) -> Vec<(&str, Value)> {
        calls
            .iter()
            .map(|c| {
                (
                    c.function.name.as_str(),
                    serde_json::from_str(&c.function.arguments).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn each_parser_reads_its_models_format() {
        let (content, calls) = extract(
            &ToolPlan::Auto(ToolParser::Hermes),
            "Let me look.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": \"{}\"}\n</tool_call>",
        );
        assert_eq!(content.as_deref(), Some("Let me look."));
        assert_eq!(
            names_args(&calls),
            vec![
                ("get_weather", json!({"city": "Paris"})),
                ("time", json!({}))
            ]
        );
        assert!(calls[0].id.starts_with("call_") && calls[0].id != calls[1].id);
        let (content, calls) = extract(
            &ToolPlan::Auto(ToolParser::Llama3Json),
            "<|python_tag|>{\"name\": \"a\", \"parameters\": {\"x\": 1}}; {\"name\": \"b\", \"parameters\": {}}",
        );
        assert_eq!(content, None);
        assert_eq!(
            names_args(&calls),
            vec![("a", json!({"x": 1})), ("b", json!({}))]
        );
        let (_, calls) = extract(
            &ToolPlan::Auto(ToolParser::Mistral),
            "[TOOL_CALLS][{\"name\": \"a\", \"arguments\": {\"q\": \"x\"}}]",
        );
        assert_eq!(names_args(&calls), vec![("a", json!({"q": "x"}))]);
        let (_, calls) = extract(
            &ToolPlan::Auto(ToolParser::Mistral),
            "[TOOL_CALLS]a[ARGS]{\"q\": 1}[TOOL_CALLS]b[ARGS]{}",
        );
        assert_eq!(
            names_args(&calls),
            vec![("a", json!({"q": 1})), ("b", json!({}))]
        );
        // Not a call: all content.
        for (p, text) in [
            (ToolParser::Hermes, "Just text <tool_call>{broken"),
            (ToolParser::Llama3Json, "The answer is {1, 2}"),
            (ToolParser::Mistral, "No calls here."),
        ] {
            let (content, calls) = extract(&ToolPlan::Auto(p), text);
            assert!(calls.is_empty());
            assert_eq!(content.as_deref(), Some(text));
        }
    }

    #[test]
    fn forced_plans_read_their_constrained_json() {
        let (c, calls) = extract(&ToolPlan::Named("f".into()), "{\"a\":1}");
        assert_eq!(
            (c, names_args(&calls)),
            (None, vec![("f", json!({"a": 1}))])
        );
        let (_, calls) = extract(
            &ToolPlan::Required,
            "[{\"name\":\"f\",\"parameters\":{\"a\":1}},{\"name\":\"g\",\"parameters\":{}}]",
        );
        assert_eq!(
            names_args(&calls),
            vec![("f", json!({"a": 1})), ("g", json!({}))]
        );
        let tools = parse_tools(&json!([
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}},
            {"type": "function", "function": {"name": "g"}}
        ]))
        .unwrap();
        let s = forced_schema(&ToolPlan::Required, &tools, false).unwrap();
        assert_eq!(s["maxItems"], 1);
        assert_eq!(s["items"]["anyOf"][1]["properties"]["name"]["const"], "g");
        let s = forced_schema(&ToolPlan::Required, &tools, true).unwrap();
        assert_eq!(s["maxItems"], MAX_PARALLEL_CALLS);
    }

    #[test]
    fn bad_tools_and_choices_are_400s() {
        assert!(parse_tools(&json!({})).is_err());
        assert!(
            parse_tools(&json!([{"type": "function", "function": {"name": "bad name"}}])).is_err()
        );
        assert!(
            parse_tools(&json!([{"type": "function", "function": {"name": "f"}},
            {"type": "function", "function": {"name": "f"}}]))
            .is_err()
        );
        let tools = parse_tools(&json!([{"type": "function", "function": {"name": "f"}}])).unwrap();
        let e = plan(
            &tools,
            Some(&json!({"type": "function", "function": {"name": "g"}})),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("\"g\""), "{e}");
        assert!(plan(&tools, Some(&json!("sometimes")), None).is_err());
        assert!(plan(&tools, None, None)
            .unwrap_err()
            .to_string()
            .contains("--tool-call-parser"));
        assert_eq!(plan(&tools, Some(&json!("none")), None).unwrap(), None);
        assert_eq!(
            plan(&tools, None, Some(ToolParser::Hermes)).unwrap(),
            Some(ToolPlan::Auto(ToolParser::Hermes))
        );
    }
}
