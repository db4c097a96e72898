//! A request's data and its lifecycle: one state enum, every transition in one place.

use crate::sampler::SamplingParams;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "req-{}", self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An eos or stop token.
    Stop,
    /// `max_tokens` or the context window.
    Length,
    /// The client went away or asked to stop.
    Abort,
    /// The request could not be served.
    Error,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
            FinishReason::Error => "error",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    Waiting,
    Running,
    /// Evicted from the KV cache; waits to recompute its tokens.
    Preempted,
    Finished(FinishReason),
}

impl RequestState {
    /// The one place that says which transitions are legal.
    pub fn can_become(self, next: RequestState) -> bool {
        use RequestState::*;
        matches!(
            (self, next),
            (Waiting, Running)
                | (Waiting, Finished(FinishReason::Abort | FinishReason::Error))
                | (Running, Preempted)
                | (Running, Finished(_))
                | (Preempted, Running)
                | (
                    Preempted,
                    Finished(FinishReason::Abort | FinishReason::Error)
                )
        )
    }

    pub fn is_finished(self) -> bool {
        matches!(self, RequestState::Finished(_))
    }
}

/// What a request asks for besides its prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Lower values are served first (vLLM's convention); 0 by default.
    pub priority: i32,
    /// Number of top alternatives to report per token (`None`: no logprobs).
    pub logprobs: Option<usize>,
    /// Completions sampled from the one prompt.
    pub n: usize,
    /// A grammar the output must follow (constrained decoding).
    pub grammar: Option<crate::grammar::Grammar>,
}

impl Default for RequestParams {
    fn default() -> Self {
        RequestParams {
            max_tokens: 16,
            sampling: SamplingParams::default(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
            priority: 0,
            logprobs: None,
            n: 1,
            grammar: None,
        }
    }
}

/// One sequence the scheduler tracks.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: RequestId,
    pub prompt: Vec<u32>,
    pub output: Vec<u32>,
    pub params: RequestParams,
    pub state: RequestState,
    /// Arrival time (seconds, caller's clock) and arrival order.
    pub arrival: f64,
    pub seq_no: u64,
    /// Tokens whose KV is in the cache.
    pub num_computed_tokens: usize,
    /// Prompt tokens that came from the prefix cache at the last admission.
    pub num_cached_tokens: usize,
    /// Step at which the request was last given work (for aging).
    pub last_scheduled_step: u64,
    pub num_preemptions: u32,
    /// A sibling (for `n` > 1) whose prompt must be computed first so this one can
    /// reuse its blocks.
    pub wait_for: Option<RequestId>,
}

impl Request {
    pub fn new(
        id: RequestId,
        prompt: Vec<u32>,
        params: RequestParams,
        arrival: f64,
        seq_no: u64,
    ) -> Self {
        Request {
            id,
            prompt,
            output: Vec::new(),
            params,
            state: RequestState::Waiting,
            arrival,
            seq_no,
            num_computed_tokens: 0,
            num_cached_tokens: 0,
            last_scheduled_step: 0,
            num_preemptions: 0,
            wait_for: None,
        }
    }

    pub fn num_tokens(&self) -> usize {
        self.prompt.len() + self.output.len()
    }

    /// Token at absolute position `i` (prompt, then output).
    pub fn token(&self, i: usize) -> u32 {
        if i < self.prompt.len() {
            self.prompt[i]
        } else {
            self.output[i - self.prompt.len()]
        }
    }

    pub fn all_tokens(&self) -> Vec<u32> {
        let mut v = self.prompt.clone();
        v.extend_from_slice(&self.output);
        v
    }

    /// Moves to `next` if legal; an illegal transition is a bug and is refused.
    pub fn transition(&mut self, next: RequestState) -> Result<(), String> {
        if self.state.can_become(next) {
            self.state = next;
            Ok(())
        } else {
            Err(format!(
                "{}: illegal transition {:?} -> {:?}",
                self.id, self.state, next
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FinishReason::*;
    use RequestState::*;

    #[test]
    fn legal_and_illegal_transitions() {
        let all = [
            Waiting,
            Running,
            Preempted,
            Finished(Stop),
            Finished(Length),
            Finished(Abort),
            Finished(Error),
        ];
        let legal = [
            (Waiting, Running),
            (Waiting, Finished(Abort)),
            (Waiting, Finished(Error)),
            (Running, Preempted),
            (Running, Finished(Stop)),
            (Running, Finished(Length)),
            (Running, Finished(Abort)),
            (Running, Finished(Error)),
            (Preempted, Running),
            (Preempted, Finished(Abort)),
            (Preempted, Finished(Error)),
        ];
        for a in all {
            for b in all {
                assert_eq!(a.can_become(b), legal.contains(&(a, b)), "{a:?} -> {b:?}");
            }
        }
        let mut r = Request::new(RequestId(1), vec![1], RequestParams::default(), 0.0, 0);
        assert!(r.transition(Finished(Stop)).is_err());
        r.transition(Running).unwrap();
        r.transition(Preempted).unwrap();
        r.transition(Running).unwrap();
        r.transition(Finished(Length)).unwrap();
        assert!(r.transition(Running).is_err());
    }
}
