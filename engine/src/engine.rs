//! The engine: scheduler + model + samplers. `Engine::step` is the whole loop body:
//! schedule, run the model, sample, update. `EngineHandle` runs it on its own thread
//! with an inbox of requests and a stream of events per request.

use crate::error::{Error, Result};
use crate::request::{FinishReason, Request, RequestId, RequestParams};
use crate::sampler::{logprobs, Sampler};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use novastack_kernels::{AttentionMetadata, Backend, KvCache, SeqAttention};
use novastack_models::{ForwardInput, Llama};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scheduler: SchedulerConfig,
    pub num_blocks: usize,
    pub block_size: usize,
}

/// One generated token (or the end) of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    pub id: RequestId,
    /// Index of this sequence among the `n` of its prompt.
    pub index: usize,
    pub token: Option<u32>,
    /// Log-probability of `token` and the top alternatives, when asked for.
    pub logprobs: Option<(f32, Vec<(u32, f32)>)>,
    pub finished: Option<FinishReason>,
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    pub num_cached_tokens: usize,
    /// Error text when `finished` is `Error`.
    pub error: Option<String>,
}

/// Running totals for metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineStats {
    pub num_waiting: usize,
    pub num_running: usize,
    pub num_preempted: usize,
    pub kv_blocks_total: usize,
    pub kv_blocks_free: usize,
    pub prefix_queried_blocks: u64,
    pub prefix_hit_blocks: u64,
    pub num_preemptions: u64,
    pub num_steps: u64,
    pub num_prompt_tokens_computed: u64,
    pub num_generated_tokens: u64,
    pub wasted_kv_slots: u64,
    pub wasted_query_slots: u64,
    pub used_kv_slots: u64,
    pub used_query_slots: u64,
    /// Sequences over all steps (mean batch size = this / num_steps).
    pub num_scheduled_seqs: u64,
    /// Seconds from arrival to first token, of finished requests (most recent 1024).
    pub ttft: Vec<f64>,
    /// Seconds between tokens, of finished requests (most recent 4096).
    pub itl: Vec<f64>,
}

impl EngineStats {
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queried_blocks == 0 {
            0.0
        } else {
            self.prefix_hit_blocks as f64 / self.prefix_queried_blocks as f64
        }
    }
}

struct Timing {
    arrival: f64,
    last: Option<f64>,
}

pub struct Engine<B: Backend> {
    model: Llama<B>,
    kv: KvCache<B>,
    sched: Scheduler,
    samplers: HashMap<RequestId, Sampler>,
    index_of: HashMap<RequestId, usize>,
    timing: HashMap<RequestId, Timing>,
    eos: Vec<u32>,
    next_id: u64,
    pub stats: EngineStats,
}

impl<B: Backend> Engine<B> {
    pub fn new(model: Llama<B>, eos_token_ids: Vec<u32>, config: EngineConfig) -> Result<Self> {
        let mut sc = config.scheduler;
        sc.max_model_len = sc.max_model_len.min(model.max_positions());
        let kv = model.new_kv_cache(config.num_blocks, config.block_size)?;
        let sched = Scheduler::new(sc, config.num_blocks, config.block_size);
        let stats = EngineStats {
            kv_blocks_total: config.num_blocks,
            kv_blocks_free: config.num_blocks,
            ..Default::default()
        };
        Ok(Engine {
            model,
            kv,
            sched,
            samplers: HashMap::new(),
            index_of: HashMap::new(),
            timing: HashMap::new(),
            eos: eos_token_ids,
            next_id: 0,
            stats,
        })
    }

    pub fn model(&self) -> &Llama<B> {
        &self.model
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    pub fn max_model_len(&self) -> usize {
        self.sched.config.max_model_len
    }

    /// Adds a prompt; `params.n` sequences are created (siblings wait for the first's
    /// prompt so they share its cached blocks). Returns their ids in order.
    pub fn add_request(
        &mut self,
        prompt: Vec<u32>,
        params: RequestParams,
        now: f64,
    ) -> Result<Vec<RequestId>> {
        let vocab = self.model.config.vocab_size;
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::Invalid(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        if params.n == 0 {
            return Err(Error::Invalid("n must be at least 1".into()));
        }
        params.sampling.validate()?;
        let mut ids = Vec::new();
        for i in 0..params.n {
            let id = RequestId(self.next_id);
            self.next_id += 1;
            let mut p = params.clone();
            p.n = 1;
            // Sibling i gets seed + i, so each sequence is reproducible on its own.
            p.sampling.seed = params.sampling.seed.map(|s| s.wrapping_add(i as u64));
            let sampler = Sampler::new(p.sampling.clone())?;
            let mut req = Request::new(id, prompt.clone(), p, now, 0);
            req.wait_for = ids.first().copied();
            if let Err(e) = self.sched.add(req) {
                for id in &ids {
                    self.abort(*id);
                }
                return Err(e);
            }
            self.samplers.insert(id, sampler);
            self.index_of.insert(id, i);
            self.timing.insert(
                id,
                Timing {
                    arrival: now,
                    last: None,
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    /// Aborts a request and frees its blocks.
    pub fn abort(&mut self, id: RequestId) -> bool {
        self.samplers.remove(&id);
        self.index_of.remove(&id);
        self.timing.remove(&id);
        self.sched.abort(id, FinishReason::Abort).is_some()
    }

    pub fn has_work(&self) -> bool {
        self.sched.has_work()
    }

    fn forward_input(&self, out: &SchedulerOutput) -> ForwardInput {
        let bs = self.sched.blocks.block_size() as u32;
        let mut input = ForwardInput {
            attention: AttentionMetadata {
                seqs: Vec::with_capacity(out.seqs.len()),
            },
            ..Default::default()
        };
        for s in &out.seqs {
            let n = s.token_ids.len();
            input.attention.seqs.push(SeqAttention {
                query_start: input.token_ids.len(),
                num_queries: n,
                context_len: s.start + n,
                block_table: s.block_table.clone(),
            });
            for (i, &t) in s.token_ids.iter().enumerate() {
                let pos = (s.start + i) as u32;
                input.token_ids.push(t);
                input.positions.push(pos);
                input
                    .slot_mapping
                    .push(s.block_table[(pos / bs) as usize] * bs + pos % bs);
            }
            if s.sample {
                input.logits_indices.push(input.token_ids.len() - 1);
            }
        }
        input
    }

    /// One step: schedule, forward, sample, update. Returns the events it produced.
    pub fn step(&mut self, now: f64) -> Result<Vec<TokenEvent>> {
        let out = self.sched.schedule(now);
        let mut events = Vec::new();
        if out.is_empty() {
            self.refresh_stats();
            return Ok(events);
        }
        let input = self.forward_input(&out);
        let logits = match self.model.forward(&input, &mut self.kv) {
            Ok(l) => l,
            Err(e) => {
                // A failed step fails its requests, not the engine.
                for s in &out.seqs {
                    events.push(self.fail(s.id, e.to_string()));
                }
                self.refresh_stats();
                return Ok(events);
            }
        };
        let vocab = self.model.config.vocab_size;
        let mut sampled = HashMap::new();
        let mut lps = HashMap::new();
        for (row, s) in out.seqs.iter().filter(|s| s.sample).enumerate() {
            let l = &logits[row * vocab..(row + 1) * vocab];
            let Some(req) = self.sched.request(s.id) else {
                continue;
            };
            let Some(sampler) = self.samplers.get_mut(&s.id) else {
                continue;
            };
            let tok = sampler.sample_for(l, &req.prompt, &req.output);
            if let Some(k) = req.params.logprobs {
                lps.insert(s.id, logprobs(l, tok, k));
            }
            sampled.insert(s.id, tok);
        }
        let prompt_lens: HashMap<RequestId, usize> = out
            .seqs
            .iter()
            .filter_map(|s| self.sched.request(s.id).map(|r| (s.id, r.prompt.len())))
            .collect();
        let updates = self.sched.update(&out, &sampled, &self.eos);
        self.stats.num_steps += 1;
        self.stats.wasted_kv_slots += out.wasted_kv_slots as u64;
        self.stats.wasted_query_slots += out.wasted_query_slots as u64;
        self.stats.used_kv_slots += out.used_kv_slots as u64;
        self.stats.used_query_slots += out.used_query_slots as u64;
        self.stats.num_scheduled_seqs += out.seqs.len() as u64;
        for s in &out.seqs {
            let prompt_len = prompt_lens.get(&s.id).copied().unwrap_or(0);
            let computed_prompt = prompt_len.saturating_sub(s.start).min(s.token_ids.len());
            self.stats.num_prompt_tokens_computed += computed_prompt as u64;
        }
        for u in updates {
            if let Some(t) = self.timing.get_mut(&u.id) {
                match t.last {
                    None => push_bounded(&mut self.stats.ttft, now - t.arrival, 1024),
                    Some(last) => push_bounded(&mut self.stats.itl, now - last, 4096),
                }
                t.last = Some(now);
            }
            self.stats.num_generated_tokens += 1;
            let ev = TokenEvent {
                id: u.id,
                index: self.index_of.get(&u.id).copied().unwrap_or(0),
                token: u.new_token,
                logprobs: lps.remove(&u.id),
                finished: u.finished,
                num_prompt_tokens: u.num_prompt_tokens,
                num_output_tokens: u.num_output_tokens,
                num_cached_tokens: u.num_cached_tokens,
                error: None,
            };
            if u.finished.is_some() {
                self.samplers.remove(&u.id);
                self.index_of.remove(&u.id);
                self.timing.remove(&u.id);
            }
            events.push(ev);
        }
        self.refresh_stats();
        debug_assert_eq!(self.sched.check_invariants(), Ok(()));
        Ok(events)
    }

    fn fail(&mut self, id: RequestId, msg: String) -> TokenEvent {
        let index = self.index_of.get(&id).copied().unwrap_or(0);
        let r = self.sched.abort(id, FinishReason::Error);
        self.samplers.remove(&id);
        self.index_of.remove(&id);
        self.timing.remove(&id);
        TokenEvent {
            id,
            index,
            token: None,
            logprobs: None,
            finished: Some(FinishReason::Error),
            num_prompt_tokens: r.as_ref().map_or(0, |r| r.prompt.len()),
            num_output_tokens: r.as_ref().map_or(0, |r| r.output.len()),
            num_cached_tokens: r.as_ref().map_or(0, |r| r.num_cached_tokens),
            error: Some(msg),
        }
    }

    fn refresh_stats(&mut self) {
        let s = &mut self.stats;
        s.num_waiting = self.sched.num_waiting();
        s.num_running = self.sched.num_running();
        s.num_preempted = self.sched.num_preempted();
        s.kv_blocks_free = self.sched.blocks.num_free_blocks();
        s.prefix_queried_blocks = self.sched.blocks.num_queried_blocks;
        s.prefix_hit_blocks = self.sched.blocks.num_hit_blocks;
        s.num_preemptions = self.sched.num_preemptions;
    }
}

fn push_bounded(v: &mut Vec<f64>, x: f64, cap: usize) {
    if v.len() >= cap {
        v.remove(0);
    }
    v.push(x);
}
