//! Chat templates rendered with minijinja the way transformers renders them with Jinja2:
//! `trim_blocks`, `lstrip_blocks`, loop controls, Python string methods, and the
//! globals/filters transformers adds (`raise_exception`, `strftime_now`, a `tojson` that
//! is Python's `json.dumps`), so that prompts match byte for byte.

use crate::error::{Error, Result};
use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde_json::Value as Json;

pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
}

const NAME: &str = "chat";

impl ChatTemplate {
    pub fn new(source: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| {
            chrono::Local::now().format(&fmt).to_string()
        });
        env.add_filter("tojson", tojson);
        env.add_filter("trim", py_strip);
        env.add_template_owned(NAME.to_string(), source.to_string())
            .map_err(|e| Error::Template(format!("cannot parse: {e}")))?;
        Ok(ChatTemplate {
            env,
            source: source.to_string(),
        })
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Renders `messages` (OpenAI-style objects). `vars` carries the special tokens and any
    /// extra keyword arguments (e.g. `enable_thinking`); they override earlier values.
    pub fn render(
        &self,
        messages: &[Json],
        add_generation_prompt: bool,
        tools: Option<&Json>,
        vars: &serde_json::Map<String, Json>,
    ) -> Result<String> {
        let messages: Vec<Json> = messages.iter().map(normalize_message).collect();
        let mut ctx = serde_json::Map::new();
        ctx.insert("messages".into(), Json::Array(messages));
        ctx.insert("tools".into(), tools.cloned().unwrap_or(Json::Null));
        ctx.insert("documents".into(), Json::Null);
        ctx.insert(
            "add_generation_prompt".into(),
            Json::Bool(add_generation_prompt),
        );
        for (k, v) in vars {
            ctx.insert(k.clone(), v.clone());
        }
        let tmpl = self
            .env
            .get_template(NAME)
            .map_err(|e| Error::Template(e.to_string()))?;
        tmpl.render(Value::from_serialize(&ctx)).map_err(|e| {
            let mut msg = e.to_string();
            if let Some(detail) = e.detail() {
                if !msg.contains(detail) {
                    msg = format!("{msg}: {detail}");
                }
            }
            Error::Template(msg)
        })
    }
}

/// What transformers does to each message before rendering: drop keys whose value is
/// null, and expose `reasoning` / `thinking` / `reasoning_content` under the names
/// templates read.
fn normalize_message(m: &Json) -> Json {
    let Json::Object(obj) = m else {
        return m.clone();
    };
    let mut out: serde_json::Map<String, Json> = obj
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let reasoning = ["reasoning_content", "thinking", "reasoning"]
        .iter()
        .find_map(|k| out.get(*k).cloned());
    if let Some(r) = reasoning {
        out.insert("reasoning_content".into(), r.clone());
        out.entry("thinking").or_insert(r);
    }
    Json::Object(out)
}

/// Python's `str.isspace` set, which `str.strip()` removes (wider than Rust's: it
/// includes the separators U+001C..U+001F).
fn py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Jinja2's `trim`, i.e. Python's `str.strip(chars=None)`.
fn py_strip(s: String, chars: Option<String>) -> String {
    match chars {
        Some(cs) => s.trim_matches(|c| cs.contains(c)).to_string(),
        None => s.trim_matches(py_space).to_string(),
    }
}

/// transformers' `tojson`: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let (item_sep, key_sep) = match separators.as_deref() {
        Some([a, b]) => (a.clone(), b.clone()),
        // Python's defaults: ", " without indent, "," with it.
        _ => (
            if indent.is_some() {
                ",".into()
            } else {
                ", ".into()
            },
            ": ".into(),
        ),
    };
    let opts = PyJson {
        indent,
        ensure_ascii: ensure_ascii.unwrap_or(false),
        sort_keys: sort_keys.unwrap_or(false),
        item_sep,
        key_sep,
    };
    let mut out = String::new();
    opts.write(&json, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

struct PyJson {
    indent: Option<usize>,
    ensure_ascii: bool,
    sort_keys: bool,
    item_sep: String,
    key_sep: String,
}

impl PyJson {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(n) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * level));
        }
    }

    fn write(&self, v: &Json, level: usize, out: &mut String) {
        match v {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => out.push_str(&i.to_string()),
                (_, Some(u), _) => out.push_str(&u.to_string()),
                (_, _, Some(f)) => out.push_str(&py_float(f)),
                _ => out.push_str(&n.to_string()),
            },
            Json::String(s) => self.write_str(s, out),
            Json::Array(items) => {
                if items.is_empty() {
                    out.push_str("[]");
                    return;
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out);
                }
                self.newline(level, out);
                out.push(']');
            }
            Json::Object(map) => {
                if map.is_empty() {
                    out.push_str("{}");
                    return;
                }
                let mut entries: Vec<(&String, &Json)> = map.iter().collect();
                if self.sort_keys {
                    entries.sort_by(|a, b| a.0.cmp(b.0));
                }
                out.push('{');
                for (i, (k, val)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item_sep);
                    }
                    self.newline(level + 1, out);
                    self.write_str(k, out);
                    out.push_str(&self.key_sep);
                    self.write(val, level + 1, out);
                }
                self.newline(level, out);
                out.push('}');
            }
        }
    }

    fn write_str(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{08}' => out.push_str("\\b"),
                '\u{0c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && (c as u32) > 0x7e) => {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{:04x}", unit));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }
}

/// Python's `repr(float)`: shortest round-trip digits, positional for exponents in
/// -4..16, otherwise `1e-07` style.
fn py_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..16).contains(&exp) {
        let s = format!("{f}");
        if s.contains('.') {
            s
        } else {
            format!("{s}.0")
        }
    } else {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn python_float_repr() {
        assert_eq!(py_float(1.0), "1.0");
        assert_eq!(py_float(0.5), "0.5");
        assert_eq!(py_float(1e-7), "1e-07");
        assert_eq!(py_float(1.5e16), "1.5e+16");
        assert_eq!(py_float(0.0001), "0.0001");
        assert_eq!(py_float(-2.5e-5), "-2.5e-05");
    }

    #[test]
    fn tojson_is_json_dumps() {
        let t = ChatTemplate::new("{{ x | tojson }}|{{ x | tojson(indent=2) }}").unwrap();
        let mut vars = serde_json::Map::new();
        vars.insert("x".into(), json!({"b": [1, 2.0, "é<&>'\n"], "a": {}}));
        let out = t.render(&[], false, None, &vars).unwrap();
        assert_eq!(
            out,
            "{\"b\": [1, 2.0, \"é<&>'\\n\"], \"a\": {}}|{\n  \"b\": [\n    1,\n    2.0,\n    \"é<&>'\\n\"\n  ],\n  \"a\": {}\n}"
        );
    }

    #[test]
    fn helpers_and_errors() {
        let t = ChatTemplate::new("{{ raise_exception('bad role') }}").unwrap();
        let e = t
            .render(&[], false, None, &Default::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad role"), "{e}");
        let t = ChatTemplate::new(
            "{{ ' \x1c a \n' | trim }}|{{ 'xxaxx'.strip('x') }}|{{ strftime_now('%Y') | length }}",
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false, None, &Default::default()).unwrap(),
            "a|a|4"
        );
        assert!(ChatTemplate::new("{% if %}").is_err());
    }
}
