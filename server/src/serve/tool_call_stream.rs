//! Tool calls in a streamed answer: what of the model's text may go out now, as content
//! or as OpenAI's tool-call deltas (id, type and name first, then argument fragments).
//!
//! - A forced plan (`tool_choice` `required` or a named function) is constrained to
//!   well-formed JSON, so its calls stream as they are written: a call's id and name as
//!   soon as its name is complete, then its arguments piece by piece, the model's own
//!   text (the fragments joined are exactly the arguments).
//! - `auto`: text streams as content until a call may be starting; whatever follows is
//!   held, and at the end the calls the parser finds go out whole (a model's own format
//!   may turn out not to be a call, and then it is content).

use super::tool_calls::{extract, ToolPlan};
use novastack_openai::protocol::{FunctionCallDelta, ToolCall, ToolCallDelta};

/// What may go out after a piece of text.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct GateOut {
    pub content: String,
    pub calls: Vec<ToolCallDelta>,
}

/// A streamed answer's text under a plan.
pub(crate) struct StreamGate {
    plan: ToolPlan,
    text: String,
    /// Bytes of `text` sent as content (`auto`).
    sent: usize,
    /// Forced plans: per call, its id once its head went out, and the bytes of its
    /// arguments sent.
    heads: Vec<Option<String>>,
    args_sent: Vec<usize>,
}

impl StreamGate {
    pub(crate) fn new(plan: ToolPlan) -> Self {
        StreamGate {
            plan,
            text: String::new(),
            sent: 0,
            heads: Vec::new(),
            args_sent: Vec::new(),
        }
    }

    /// Adds text; returns what can be sent now.
    pub(crate) fn push(&mut self, piece: &str) -> GateOut {
        self.text.push_str(piece);
        match &self.plan {
            ToolPlan::Auto(p) => {
                let limit = p.call_start(&self.text).unwrap_or(self.text.len());
                if limit <= self.sent {
                    return GateOut::default();
                }
                let content = self.text[self.sent..limit].to_string();
                self.sent = limit;
                GateOut {
                    content,
                    calls: Vec::new(),
                }
            }
            ToolPlan::Named(name) => {
                // The whole answer is the arguments of the one call.
                let span = CallSpan {
                    name: Some(name.clone()),
                    args: Some((0, None)),
                };
                let calls = self.stream_calls(&[span]);
                GateOut {
                    content: String::new(),
                    calls,
                }
            }
            ToolPlan::Required => {
                let spans = scan_required(&self.text);
                GateOut {
                    content: String::new(),
                    calls: self.stream_calls(&spans),
                }
            }
        }
    }

    /// The deltas for what is new in `spans` (heads once a name is known, then the
    /// arguments written since the last push).
    fn stream_calls(&mut self, spans: &[CallSpan]) -> Vec<ToolCallDelta> {
        let mut out = Vec::new();
        for (i, span) in spans.iter().enumerate() {
            let Some(name) = &span.name else { break };
            if self.text.trim().is_empty() {
                break;
            }
            if i == self.heads.len() {
                let id = novastack_openai::protocol::new_call_id();
                out.push(ToolCallDelta {
                    index: i,
                    id: Some(id.clone()),
                    kind: Some("function".into()),
                    function: FunctionCallDelta {
                        name: Some(name.clone()),
                        arguments: Some(String::new()),
                    },
                });
                self.heads.push(Some(id));
                self.args_sent.push(0);
            }
            if let Some((start, end)) = span.args {
                let upto = end.unwrap_or(self.text.len());
                let from = start + self.args_sent[i];
                if upto > from {
                    out.push(ToolCallDelta {
                        index: i,
                        id: None,
                        kind: None,
                        function: FunctionCallDelta {
                            name: None,
                            arguments: Some(self.text[from..upto].to_string()),
                        },
                    });
                    self.args_sent[i] = upto - start;
                }
            }
        }
        out
    }

    /// At the end: what is still to send, and whether the answer was calls (for the
    /// finish reason).
    pub(crate) fn finish(mut self) -> (GateOut, bool) {
        if !matches!(self.plan, ToolPlan::Auto(_)) {
            let streamed = !self.heads.is_empty();
            return (self.push(""), streamed);
        }
        let (content, calls) = extract(&self.plan, &self.text);
        if calls.is_empty() {
            let content = self.text[self.sent..].to_string();
            return (
                GateOut {
                    content,
                    calls: Vec::new(),
                },
                false,
            );
        }
        let content = content.unwrap_or_default();
        let rest = content.get(self.sent..).unwrap_or_default().to_string();
        let calls = calls.into_iter().enumerate().flat_map(whole).collect();
        (
            GateOut {
                content: rest,
                calls,
            },
            true,
        )
    }
}

/// A whole call as two deltas: its head, then its arguments.
fn whole((index, call): (usize, ToolCall)) -> [ToolCallDelta; 2] {
    [
        ToolCallDelta {
            index,
            id: Some(call.id),
            kind: Some("function".into()),
            function: FunctionCallDelta {
                name: Some(call.function.name),
                arguments: Some(String::new()),
            },
        },
        ToolCallDelta {
            index,
            id: None,
            kind: None,
            function: FunctionCallDelta {
                name: None,
                arguments: Some(call.function.arguments),
            },
        },
    ]
}

/// One call of a `required` answer as far as it is written: its name once complete,
/// and where its arguments start and (once complete) end.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct CallSpan {
    pub name: Option<String>,
    pub args: Option<(usize, Option<usize>)>,
}

/// The calls of a (possibly unfinished) `required` answer:
/// `[{"name": ..., "parameters": {...}}, ...]`, keys in any order.
pub(crate) fn scan_required(t: &str) -> Vec<CallSpan> {
    let b = t.as_bytes();
    let mut calls = Vec::new();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'[') {
        return calls;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(b'{') => i += 1,
            _ => return calls,
        }
        let mut span = CallSpan::default();
        loop {
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => {
                    i += 1;
                    continue;
                }
                Some(b'}') => {
                    i += 1;
                    break;
                }
                Some(b'"') => {}
                _ => {
                    calls.push(span);
                    return calls;
                }
            }
            let Some(key_end) = value_end(b, i) else {
                calls.push(span);
                return calls;
            };
            let key: Option<String> = serde_json::from_str(&t[i..key_end]).ok();
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                calls.push(span);
                return calls;
            }
            let v = skip_ws(b, i + 1);
            if v >= b.len() {
                calls.push(span);
                return calls;
            }
            let end = value_end(b, v);
            match key.as_deref() {
                Some("name") => span.name = end.and_then(|e| serde_json::from_str(&t[v..e]).ok()),
                Some("parameters" | "arguments") => span.args = Some((v, end)),
                _ => {}
            }
            match end {
                Some(e) => i = e,
                None => {
                    calls.push(span);
                    return calls;
                }
            }
        }
        calls.push(span);
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// Where the JSON value starting at `i` ends (one past it), or `None` if the text ends
/// first (a number or literal at the very end counts as unfinished).
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let (mut depth, mut j, mut in_str) = (0usize, i, false);
            while j < b.len() {
                let c = b[j];
                if in_str {
                    match c {
                        b'\\' => j += 1,
                        b'"' => in_str = false,
                        _ => {}
                    }
                } else {
                    match c {
                        b'"' => in_str = true,
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return Some(j + 1);
                            }
                        }
                        _ => {}
                    }
                }
                j += 1;
            }
            None
        }
        _ => {
            let j = i + b[i..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())?;
            Some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::tool_calls::ToolParser;
    use serde_json::{json, Value};

    /// Joins streamed deltas into `[(id, name, arguments)]`, checking the head comes
    /// first and once.
    fn join(deltas: &[ToolCallDelta]) -> Vec<(String, String, String)> {
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for d in deltas {
            if d.index == calls.len() {
                let (Some(id), Some(name)) = (&d.id, &d.function.name) else {
                    panic!(
                        "the first piece of call {} has no id and name: {d:?}",
                        d.index
                    );
                };
                calls.push((id.clone(), name.clone(), String::new()));
            } else {
                assert!(d.id.is_none() && d.function.name.is_none(), "{d:?}");
            }
            calls[d.index].2 += d.function.arguments.as_deref().unwrap_or("");
        }
        calls
    }

    fn pieces(text: &str, n: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(n).map(|c| c.iter().collect()).collect()
    }

    /// A `required` answer streams call by call as it is written, whatever the cut of
    /// the pieces: names as soon as they are complete, arguments in fragments that join
    /// to the model's text exactly.
    #[test]
    fn required_calls_stream_as_they_are_written() {
        let text = r#"[{"name":"get_weather","parameters":{"city":"Paris \"centre\" {1}","days":[1,2]}},{"parameters":{"tz":"CET"},"name":"time"}]"#;
        for n in [1, 2, 3, 7, 50, 500] {
            let mut g = StreamGate::new(ToolPlan::Required);
            let mut deltas = Vec::new();
            let mut first_args_at = None;
            for (k, p) in pieces(text, n).iter().enumerate() {
                let out = g.push(p);
                assert_eq!(out.content, "");
                if first_args_at.is_none()
                    && out.calls.iter().any(|d| {
                        d.function
                            .arguments
                            .as_deref()
                            .is_some_and(|a| !a.is_empty())
                    })
                {
                    first_args_at = Some(k);
                }
                deltas.extend(out.calls);
            }
            let (rest, calls) = g.finish();
            assert!(calls);
            deltas.extend(rest.calls);
            let joined = join(&deltas);
            let got: Vec<(&str, Value)> = joined
                .iter()
                .map(|(_, n, a)| (n.as_str(), serde_json::from_str(a).unwrap()))
                .collect();
            assert_eq!(
                got,
                vec![
                    (
                        "get_weather",
                        json!({"city": "Paris \"centre\" {1}", "days": [1, 2]})
                    ),
                    ("time", json!({"tz": "CET"}))
                ],
                "pieces of {n}"
            );
            assert_eq!(
                joined[0].2,
                r#"{"city":"Paris \"centre\" {1}","days":[1,2]}"#
            );
            if n < 10 {
                // Streamed before the answer was complete.
                assert!(first_args_at.unwrap() < text.len() / n / 2, "pieces of {n}");
            }
        }
    }

    /// A named function's answer is its arguments: the head, then every piece.
    #[test]
    fn a_named_call_streams_its_arguments() {
        let mut g = StreamGate::new(ToolPlan::Named("f".into()));
        let mut deltas = g.push("").calls;
        assert!(deltas.is_empty(), "no head before any text");
        deltas.extend(g.push("{\"a\":").calls);
        assert_eq!(deltas.len(), 2, "{deltas:?}");
        deltas.extend(g.push("1}").calls);
        let (rest, calls) = g.finish();
        assert!(calls && rest.calls.is_empty());
        assert_eq!(join(&deltas)[0].1, "f");
        assert_eq!(join(&deltas)[0].2, "{\"a\":1}");
    }

    #[test]
    fn auto_text_stops_where_a_call_may_start() {
        let content = |o: GateOut| o.content;
        let mut g = StreamGate::new(ToolPlan::Auto(ToolParser::Hermes));
        assert_eq!(content(g.push("Sure, ")), "Sure, ");
        assert_eq!(content(g.push("checking <tool")), "checking ");
        assert_eq!(g.push("_call>{\"name\": \"f\", "), GateOut::default());
        assert_eq!(g.push("\"arguments\": {}}</tool_call>"), GateOut::default());
        let (rest, calls) = g.finish();
        assert!(calls);
        assert_eq!(rest.content, "");
        let joined = join(&rest.calls);
        assert_eq!((joined[0].1.as_str(), joined[0].2.as_str()), ("f", "{}"));
        // A held-back `<` that was not a call comes out at the end.
        let mut g = StreamGate::new(ToolPlan::Auto(ToolParser::Hermes));
        assert_eq!(content(g.push("a <")), "a ");
        assert_eq!(content(g.push("b")), "<b");
        assert_eq!(content(g.push(" <tool_c")), " ");
        let (rest, calls) = g.finish();
        assert!(!calls && rest.calls.is_empty());
        assert_eq!(rest.content, "<tool_c");
    }

    #[test]
    fn the_scanner_stops_where_the_text_does() {
        assert_eq!(scan_required(""), vec![]);
        assert_eq!(scan_required("[{\"na"), vec![CallSpan::default()]);
        let t = "[{\"name\":\"f\",\"parameters\":{\"x\":12";
        assert_eq!(
            scan_required(t),
            vec![CallSpan {
                name: Some("f".into()),
                args: Some((t.find("{\"x").unwrap(), None))
            }]
        );
        let t = "[{\"name\":\"f\",\"parameters\":{}},{\"name\":\"g\"";
        let spans = scan_required(t);
        assert_eq!(spans.len(), 2);
        // The arguments `{}` end where the call object closes.
        assert_eq!(spans[0].args.unwrap().1, Some(t.find("},{").unwrap()));
        assert_eq!(spans[1].name.as_deref(), Some("g"));
    }
}
