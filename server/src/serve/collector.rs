//! Engine events into per-choice output: incremental detokenization, stop strings
//! (matched across token boundaries; the engine is told to abort the sequence), and
//! logprobs, for every choice of a request. [`submit`] starts the sequences.

use super::admission::Waiting;
use super::stop::StopMatcher;
use super::validate::ValidGeneration;
use super::{AppState, ModelEntry};
use novastack_engine::{FinishReason, Submission, TokenEvent, TokenLogprobs};
use novastack_models::IncrementalDecoder;
use novastack_openai::protocol::Usage;
use novastack_openai::ApiError;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One choice's progress: decoding, stop strings, logprobs.
pub(crate) struct ChoiceState {
    pub(crate) decoder: IncrementalDecoder,
    pub(crate) stop: StopMatcher,
    pub(crate) text: String,
    pub(crate) logprobs: Vec<TokenLogprobs>,
    pub(crate) finish: Option<FinishReason>,
    /// Its first event arrived: it no longer counts as waiting.
    started: bool,
}

/// A piece of output for one choice.
pub(crate) struct Delta {
    pub(crate) choice: usize,
    pub(crate) text: String,
    pub(crate) logprobs: Vec<TokenLogprobs>,
    pub(crate) finish: Option<FinishReason>,
}

/// Turns engine events into per-choice deltas; aborts sequences whose stop string matched.
pub(crate) struct Collector {
    pub(crate) m: Arc<ModelEntry>,
    pub(crate) choices: Vec<ChoiceState>,
    pub(crate) index_of: HashMap<novastack_engine::RequestId, usize>,
    pub(crate) prompt_tokens: usize,
    pub(crate) completion_tokens: usize,
    pub(crate) error: Option<String>,
    /// Streaming: logprobs go out with each delta; otherwise they are kept per choice.
    pub(crate) stream: bool,
    /// The choices still counted as waiting for `--max-waiting`.
    waiting: Waiting,
}

impl Collector {
    pub(crate) fn on_event(&mut self, ev: TokenEvent) -> Option<Delta> {
        let &ci = self.index_of.get(&ev.id)?;
        let tok = &*self.m.tokenizer;
        let c = &mut self.choices[ci];
        if !c.started {
            c.started = true;
            self.waiting.started_one();
        }
        if c.finish.is_some() {
            return None;
        }
        let mut text = String::new();
        let mut lps = Vec::new();
        if let Some(t) = ev.token {
            self.completion_tokens += 1;
            if let Some((lp, top)) = ev.logprobs {
                lps.push((t, lp, top));
            }
            let piece = c.decoder.push(tok, t).unwrap_or_default();
            let (emit, stopped) = c.stop.push(&piece);
            text.push_str(&emit);
            if stopped {
                c.finish = Some(FinishReason::Stop);
                self.m.engine.abort(ev.id);
            }
        }
        if let Some(f) = ev.finished {
            if c.finish.is_none() {
                let tail = c.decoder.flush(tok).unwrap_or_default();
                let (emit, stopped) = c.stop.push(&tail);
                text.push_str(&emit);
                if !stopped {
                    text.push_str(&c.stop.finish());
                }
                if f == FinishReason::Error {
                    self.error = ev.error.clone();
                }
                c.finish = Some(f);
            }
        }
        c.text.push_str(&text);
        if !self.stream {
            c.logprobs.append(&mut lps);
        }
        if let Some(f) = c.finish {
            // Finished just now (events for finished choices return early above).
            self.m.metrics.finished(f.as_str());
        }
        Some(Delta {
            choice: ci,
            text,
            logprobs: lps,
            finish: c.finish,
        })
    }

    pub(crate) fn done(&self) -> bool {
        self.choices.iter().all(|c| c.finish.is_some())
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
            total_tokens: self.prompt_tokens + self.completion_tokens,
        }
    }
}

/// Submits every prompt to the engine; all events arrive on one stream.
pub(crate) async fn submit(
    state: &AppState,
    m: &Arc<ModelEntry>,
    spec: &ValidGeneration,
) -> Result<(Collector, mpsc::UnboundedReceiver<TokenEvent>), ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    if !m.engine.is_alive() {
        return Err(ApiError::unavailable(format!(
            "the engine of `{}` has stopped",
            m.id()
        )));
    }
    let n = spec.params.n;
    let waiting = m
        .admission
        .try_admit(spec.prompts.len() * n, state.max_waiting)
        .map_err(|waiting| {
            ApiError::too_many(format!(
                "the server is busy: {waiting} sequences are waiting (limit {}); retry later",
                state.max_waiting
            ))
        })?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut index_of = HashMap::new();
    for (p, prompt) in spec.prompts.iter().enumerate() {
        let engine = m.engine.clone();
        let sub = Submission {
            prompt: prompt.clone(),
            params: spec.params.clone(),
        };
        let tx = tx.clone();
        let ids = tokio::task::spawn_blocking(move || engine.submit_to(sub, tx))
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?
            .map_err(super::error::engine_error)?;
        for (i, id) in ids.into_iter().enumerate() {
            index_of.insert(id, p * n + i);
        }
    }
    // A tool-call parser's markers are decoded even when they are special tokens.
    let kept: Vec<(u32, String)> = spec
        .tools
        .as_ref()
        .map(|p| p.markers())
        .unwrap_or_default()
        .iter()
        .filter_map(|t| Some((m.tokenizer.token_to_id(t)?, t.to_string())))
        .collect();
    let choices = (0..spec.prompts.len() * n)
        .map(|_| ChoiceState {
            decoder: IncrementalDecoder::new(true).keeping(kept.clone()),
            stop: StopMatcher::new(spec.stops.clone()),
            text: String::new(),
            logprobs: Vec::new(),
            finish: None,
            started: false,
        })
        .collect();
    let prompt_tokens = spec.prompts.iter().map(Vec::len).sum::<usize>() * n;
    Ok((
        Collector {
            stream: spec.stream,
            m: m.clone(),
            choices,
            index_of,
            prompt_tokens,
            completion_tokens: 0,
            error: None,
            waiting,
        },
        rx,
    ))
}
