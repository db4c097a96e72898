//! Running a fixed set of prompts through the engine to completion, without a server:
//! `generate --prompts-file` and `bench offline` share this loop.

use crate::{Engine, FinishReason, RequestId, RequestParams};
use novastack_kernels::Backend;
use std::collections::HashMap;

/// A sampled token's log-probability and the top alternatives `(token, logprob)`.
pub type TokenLogprobs = (u32, f32, Vec<(u32, f32)>);

/// One finished sequence.
#[derive(Debug, Clone)]
pub struct SeqResult {
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    pub logprobs: Vec<TokenLogprobs>,
    pub error: Option<String>,
    pub arrival: f64,
    pub first_token: Option<f64>,
    pub finished_at: f64,
}

/// Runs every prompt through the engine (all submitted at `t = 0` unless `arrivals` is
/// given, in seconds from the start) until all finish; results per input in order.
pub fn run_batch<B: Backend>(
    engine: &mut Engine<B>,
    jobs: Vec<(Vec<u32>, RequestParams)>,
    arrivals: Option<Vec<f64>>,
) -> Vec<std::result::Result<Vec<SeqResult>, String>> {
    let start = std::time::Instant::now();
    let n = jobs.len();
    let mut pending: Vec<(usize, Vec<u32>, RequestParams, f64)> = jobs
        .into_iter()
        .enumerate()
        .map(|(i, (p, params))| (i, p, params, arrivals.as_ref().map_or(0.0, |a| a[i])))
        .collect();
    pending.sort_by(|a, b| b.3.total_cmp(&a.3)); // pop from the back in arrival order
    let mut results: Vec<std::result::Result<Vec<SeqResult>, String>> =
        (0..n).map(|_| Ok(Vec::new())).collect();
    let mut owner: HashMap<RequestId, (usize, usize)> = HashMap::new();
    let mut seqs: HashMap<RequestId, SeqResult> = HashMap::new();
    let mut live = 0usize;
    while !pending.is_empty() || engine.has_work() {
        let now = start.elapsed().as_secs_f64();
        while pending
            .last()
            .is_some_and(|p| p.3 <= now || !engine.has_work())
        {
            let (i, prompt, params, arrival) = pending.pop().expect("non-empty");
            match engine.add_request(prompt, params, now) {
                Ok(ids) => {
                    results[i] = Ok(Vec::new());
                    for (k, id) in ids.iter().enumerate() {
                        owner.insert(*id, (i, k));
                        seqs.insert(
                            *id,
                            SeqResult {
                                token_ids: Vec::new(),
                                finish_reason: FinishReason::Error,
                                logprobs: Vec::new(),
                                error: None,
                                arrival: arrival.max(0.0),
                                first_token: None,
                                finished_at: 0.0,
                            },
                        );
                        live += 1;
                    }
                }
                Err(e) => results[i] = Err(e.to_string()),
            }
        }
        if !engine.has_work() {
            continue;
        }
        let events = match engine.step_clocked(&|| start.elapsed().as_secs_f64()) {
            Ok(ev) => ev,
            Err(e) => {
                for r in results.iter_mut() {
                    *r = Err(e.to_string());
                }
                return results;
            }
        };
        let now = start.elapsed().as_secs_f64();
        for ev in events {
            let Some(s) = seqs.get_mut(&ev.id) else {
                continue;
            };
            if let Some(t) = ev.token {
                s.token_ids.push(t);
                s.first_token.get_or_insert(now);
                if let Some((lp, top)) = ev.logprobs {
                    s.logprobs.push((t, lp, top));
                }
            }
            if let Some(f) = ev.finished {
                s.finish_reason = f;
                s.error = ev.error;
                s.finished_at = now;
                live -= 1;
            }
        }
    }
    debug_assert_eq!(live, 0);
    let mut by_input: Vec<Vec<(usize, SeqResult)>> = (0..n).map(|_| Vec::new()).collect();
    for (id, s) in seqs {
        let (i, k) = owner[&id];
        by_input[i].push((k, s));
    }
    for (i, mut v) in by_input.into_iter().enumerate() {
        if results[i].is_ok() {
            v.sort_by_key(|x| x.0);
            results[i] = Ok(v.into_iter().map(|x| x.1).collect());
        }
    }
    results
}
