//! What an answer amounted to, kept while its events go by: each choice's finish reason
//! and tool calls, and the upstream's usage (or what to estimate it from).

use crate::providers::UpEvent;
use novastack_openai::protocol::{FinishReason, ToolCall};
use std::collections::BTreeMap;

#[derive(Default)]
pub(crate) struct Tally {
    /// Characters of text and tool-call arguments, all choices together (for a
    /// completion-token estimate when the upstream reports no usage).
    text_chars: usize,
    usage: Option<(usize, usize)>,
    /// The choices seen, by index.
    pub choices: BTreeMap<usize, ChoiceTally>,
}

#[derive(Default)]
pub(crate) struct ChoiceTally {
    pub finish: Option<FinishReason>,
    /// The stop string that ended it, where the upstream said.
    pub stop: Option<String>,
    /// Tool calls seen, by their index.
    pub calls: BTreeMap<usize, ToolCall>,
}

impl ChoiceTally {
    /// The finish reason: the upstream's, else `tool_calls` after calls, else `stop`.
    pub fn finish_reason(&self) -> FinishReason {
        self.finish.unwrap_or(if self.calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        })
    }

    /// The tool calls seen, in order (ids made up where the upstream gave none).
    pub fn tool_calls(&self) -> Option<Vec<ToolCall>> {
        (!self.calls.is_empty()).then(|| {
            self.calls
                .values()
                .cloned()
                .map(|mut c| {
                    if c.id.is_empty() {
                        c.id = novastack_openai::protocol::new_call_id();
                    }
                    if c.kind.is_empty() {
                        c.kind = "function".into();
                    }
                    c
                })
                .collect()
        })
    }
}

impl Tally {
    pub fn see(&mut self, ev: &UpEvent) {
        match ev {
            UpEvent::Text { index, text } => {
                self.text_chars += text.chars().count();
                self.choices.entry(*index).or_default();
            }
            UpEvent::ToolCall { index, call } => {
                let c = self
                    .choices
                    .entry(*index)
                    .or_default()
                    .calls
                    .entry(call.index)
                    .or_default();
                if let Some(id) = &call.id {
                    c.id.clone_from(id);
                }
                if let Some(k) = &call.kind {
                    c.kind.clone_from(k);
                }
                if let Some(n) = &call.function.name {
                    c.function.name.push_str(n);
                }
                if let Some(a) = &call.function.arguments {
                    self.text_chars += a.chars().count();
                    c.function.arguments.push_str(a);
                }
            }
            UpEvent::Finish {
                index,
                reason,
                stop,
            } => {
                let c = self.choices.entry(*index).or_default();
                c.finish = Some(*reason);
                c.stop.clone_from(stop);
            }
            UpEvent::Usage { prompt, completion } => {
                // Some servers send zeros in early chunks; keep the largest seen.
                let (p, c) = self.usage.unwrap_or((0, 0));
                self.usage = Some((p.max(*prompt), c.max(*completion)));
            }
            UpEvent::Embeddings { .. } => {}
        }
    }

    /// Whether call `call` of choice `index` has been seen.
    pub fn has_call(&self, index: usize, call: usize) -> bool {
        self.choices
            .get(&index)
            .is_some_and(|c| c.calls.contains_key(&call))
    }

    /// Whether choice `index` has finished.
    pub fn finished(&self, index: usize) -> bool {
        self.choices.get(&index).is_some_and(|c| c.finish.is_some())
    }

    /// Upstream usage, or an estimate (prompt from the request, completion from text).
    pub fn usage(&self, prompt_est: usize) -> (usize, usize) {
        match self.usage {
            Some((p, c)) if p + c > 0 => (if p == 0 { prompt_est } else { p }, c),
            _ => (prompt_est, self.text_chars.div_ceil(4)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use novastack_openai::protocol::{FunctionCallDelta, ToolCallDelta};

    #[test]
    fn tally_prefers_upstream_usage_and_estimates_otherwise() {
        let mut t = Tally::default();
        t.see(&UpEvent::Text {
            index: 0,
            text: "abcdefgh".into(),
        });
        assert_eq!(t.usage(10), (10, 2));
        t.see(&UpEvent::Usage {
            prompt: 0,
            completion: 0,
        });
        assert_eq!(t.usage(10), (10, 2));
        t.see(&UpEvent::Usage {
            prompt: 7,
            completion: 3,
        });
        assert_eq!(t.usage(10), (7, 3));
    }

    /// Choices are kept apart: calls and finish reasons belong to their own choice.
    #[test]
    fn choices_are_tallied_apart() {
        let mut t = Tally::default();
        let call = |index, name: Option<&str>, args: &str| UpEvent::ToolCall {
            index,
            call: ToolCallDelta {
                index: 0,
                id: name.map(|_| "c".to_string()),
                kind: None,
                function: FunctionCallDelta {
                    name: name.map(str::to_string),
                    arguments: Some(args.into()),
                },
            },
        };
        t.see(&call(1, Some("f"), "{\"a\":"));
        t.see(&UpEvent::Text {
            index: 0,
            text: "hi".into(),
        });
        t.see(&call(1, None, "1}"));
        t.see(&UpEvent::Finish {
            index: 0,
            reason: FinishReason::Length,
            stop: None,
        });
        assert!(t.has_call(1, 0) && !t.has_call(0, 0));
        assert!(t.finished(0) && !t.finished(1));
        assert_eq!(t.choices[&0].finish_reason(), FinishReason::Length);
        assert_eq!(t.choices[&1].finish_reason(), FinishReason::ToolCalls);
        let calls = t.choices[&1].tool_calls().unwrap();
        assert_eq!(
            (calls[0].function.arguments.as_str(), calls[0].kind.as_str()),
            ("{\"a\":1}", "function")
        );
    }
}
