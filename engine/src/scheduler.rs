//! The scheduler: pure state in, plain-data `SchedulerOutput` out. No I/O, no clock
//! reads (time comes in as `now`), no device.
//!
//! Each step hands a token budget to requests: a prefill chunk and a decode are the
//! same thing (tokens to compute for a sequence). The step's batch comes from one
//! context-length bucket; requests that have waited more than `max_wait_steps` steps
//! pull their bucket forward (aging), so every bucket is served within a bounded number
//! of steps. Within a bucket: aged first, then running before waiting, then priority,
//! then arrival (FCFS). Out of KV blocks, the lowest-priority newest running request is
//! preempted (its blocks freed, recomputed later).
//!
//! Blocks, block tables and the prefix cache belong to the [`KvCacheManager`]: the
//! scheduler asks it to admit, grow and free, and never hashes anything itself.

use crate::bucket::Buckets;
use crate::error::{Error, Result};
use crate::kv_cache_manager::KvCacheManager;
use crate::request::{FinishReason, Request, RequestId, RequestState};
use crate::validate::{self, RequestError};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
    pub buckets: Buckets,
    /// A request not served for more than this many steps pulls its bucket forward.
    pub max_wait_steps: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_batched_tokens: 2048,
            max_num_seqs: 64,
            max_model_len: 4096,
            buckets: Buckets::new(Buckets::default_boundaries()),
            max_wait_steps: 8,
        }
    }
}

/// One sequence's work in a step: compute `token_ids` at positions `start..`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledSeq {
    pub id: RequestId,
    pub start: usize,
    pub token_ids: Vec<u32>,
    pub block_table: Vec<u32>,
    /// The chunk ends at the last known token: sample the next one.
    pub sample: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchedulerOutput {
    pub step: u64,
    pub seqs: Vec<ScheduledSeq>,
    pub preempted: Vec<RequestId>,
    pub bucket: usize,
    pub num_batched_tokens: usize,
    /// Slots a padded batch would waste this step: KV positions (`Σ max_ctx - ctx`) and
    /// query positions (`Σ max_len - len`).
    pub wasted_kv_slots: usize,
    pub wasted_query_slots: usize,
    /// Slots actually used: `Σ ctx` and `Σ len`.
    pub used_kv_slots: usize,
    pub used_query_slots: usize,
}

impl SchedulerOutput {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }
}

/// What `update` reports per request.
#[derive(Debug, Clone, PartialEq)]
pub struct SeqUpdate {
    pub id: RequestId,
    pub new_token: Option<u32>,
    pub finished: Option<FinishReason>,
    pub num_prompt_tokens: usize,
    pub num_output_tokens: usize,
    pub num_cached_tokens: usize,
}

pub struct Scheduler {
    pub config: SchedulerConfig,
    /// The KV cache's blocks and who holds them.
    pub blocks: KvCacheManager,
    requests: HashMap<RequestId, Request>,
    /// Waiting and preempted requests.
    waiting: Vec<RequestId>,
    running: Vec<RequestId>,
    step: u64,
    next_seq_no: u64,
    pub num_preemptions: u64,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig, num_blocks: usize, block_size: usize) -> Self {
        Scheduler {
            config,
            blocks: KvCacheManager::new(num_blocks, block_size),
            requests: HashMap::new(),
            waiting: Vec::new(),
            running: Vec::new(),
            step: 0,
            next_seq_no: 0,
            num_preemptions: 0,
        }
    }

    pub fn request(&self, id: RequestId) -> Option<&Request> {
        self.requests.get(&id)
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting
            .iter()
            .filter(|id| self.requests[id].state == RequestState::Waiting)
            .count()
    }

    pub fn num_preempted(&self) -> usize {
        self.waiting.len() - self.num_waiting()
    }

    pub fn num_running(&self) -> usize {
        self.running.len()
    }

    pub fn has_work(&self) -> bool {
        !self.waiting.is_empty() || !self.running.is_empty()
    }

    /// Admits a request, or rejects it with a clear error if it can never fit.
    pub fn add(&mut self, mut req: Request) -> Result<()> {
        let (prompt, max_tokens) = (req.prompt.len(), req.params.max_tokens);
        validate::prompt_not_empty(&req.prompt)?;
        validate::fits_context(prompt, max_tokens, self.config.max_model_len)?;
        validate::fits_kv_cache(
            prompt + max_tokens,
            self.blocks.block_size(),
            self.blocks.num_blocks(),
        )?;
        if self.requests.contains_key(&req.id) {
            return Err(Error::Invalid(RequestError::DuplicateId(req.id)));
        }
        req.seq_no = self.next_seq_no;
        self.next_seq_no += 1;
        req.last_scheduled_step = self.step;
        self.waiting.push(req.id);
        self.requests.insert(req.id, req);
        Ok(())
    }

    /// Aborts a request in any live state, freeing its blocks; returns it.
    pub fn abort(&mut self, id: RequestId, reason: FinishReason) -> Option<Request> {
        let mut req = self.requests.remove(&id)?;
        self.blocks.free(id);
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
        let _ = req.transition(RequestState::Finished(reason));
        Some(req)
    }

    fn bucket_of(&self, r: &Request) -> usize {
        self.config.buckets.of(r.num_tokens())
    }

    fn blocked(&self, r: &Request) -> bool {
        r.wait_for
            .and_then(|p| self.requests.get(&p))
            .is_some_and(|p| p.num_computed_tokens < p.prompt.len())
    }

    /// Picks the step's bucket: the most-waited aged request's, else the bucket with
    /// the most schedulable requests (lowest bucket on ties).
    /// Buckets in the order to try them: the most-waited aged request's bucket first,
    /// then by number of candidates (lowest bucket on ties); empty buckets left out.
    fn bucket_order(&self, candidates: &[RequestId]) -> Vec<usize> {
        let mut counts = vec![0usize; self.config.buckets.num_buckets()];
        for id in candidates {
            counts[self.bucket_of(&self.requests[id])] += 1;
        }
        let mut order: Vec<usize> = (0..counts.len()).filter(|&b| counts[b] > 0).collect();
        order.sort_by_key(|&b| (std::cmp::Reverse(counts[b]), b));
        let aged = candidates
            .iter()
            .map(|id| &self.requests[id])
            .filter(|r| self.step - r.last_scheduled_step > self.config.max_wait_steps)
            .min_by_key(|r| (r.last_scheduled_step, r.seq_no));
        if let Some(r) = aged {
            let b = self.bucket_of(r);
            order.retain(|&x| x != b);
            order.insert(0, b);
        }
        order
    }

    /// Preempts the lowest-priority, newest running request not in `protect`.
    fn preempt_one(
        &mut self,
        protect: &[RequestId],
        out: &mut SchedulerOutput,
    ) -> Option<RequestId> {
        let victim = self
            .running
            .iter()
            .filter(|id| !protect.contains(id))
            .max_by_key(|id| {
                let r = &self.requests[id];
                (r.params.priority, r.seq_no)
            })
            .copied()?;
        self.running.retain(|&r| r != victim);
        let r = self.requests.get_mut(&victim).expect("running request");
        self.blocks.free(victim);
        r.num_computed_tokens = 0;
        r.num_preemptions += 1;
        let _ = r.transition(RequestState::Preempted);
        self.waiting.push(victim);
        self.num_preemptions += 1;
        out.preempted.push(victim);
        Some(victim)
    }

    pub fn schedule(&mut self, _now: f64) -> SchedulerOutput {
        self.step += 1;
        let mut out = SchedulerOutput {
            step: self.step,
            ..Default::default()
        };
        // Waiting requests are candidates only while a sequence slot is free: a bucket
        // must never be chosen for work that cannot start.
        let room = self.running.len() < self.config.max_num_seqs;
        let candidates: Vec<RequestId> = self
            .running
            .iter()
            .chain(self.waiting.iter().filter(|_| room))
            .copied()
            .filter(|id| !self.blocked(&self.requests[id]))
            .collect();
        let mut budget = self.config.max_num_batched_tokens;
        // The chosen bucket first; if nothing in it can run (say, no free blocks to admit
        // its waiting requests), the next ones, so that a step never idles with work.
        for bucket in self.bucket_order(&candidates) {
            out.bucket = bucket;
            self.schedule_bucket(bucket, &candidates, &mut budget, &mut out);
            if !out.seqs.is_empty() {
                break;
            }
        }
        out.num_batched_tokens = self.config.max_num_batched_tokens - budget;
        let max_ctx = out
            .seqs
            .iter()
            .map(|s| s.start + s.token_ids.len())
            .max()
            .unwrap_or(0);
        let max_len = out
            .seqs
            .iter()
            .map(|s| s.token_ids.len())
            .max()
            .unwrap_or(0);
        for s in &out.seqs {
            out.wasted_kv_slots += max_ctx - (s.start + s.token_ids.len());
            out.wasted_query_slots += max_len - s.token_ids.len();
            out.used_kv_slots += s.start + s.token_ids.len();
            out.used_query_slots += s.token_ids.len();
        }
        out
    }

    /// Schedules requests of one bucket into `out` within `budget`.
    fn schedule_bucket(
        &mut self,
        bucket: usize,
        candidates: &[RequestId],
        budget: &mut usize,
        out: &mut SchedulerOutput,
    ) {
        let step = self.step;
        let max_wait = self.config.max_wait_steps;
        let mut order: Vec<RequestId> = candidates
            .iter()
            .copied()
            .filter(|id| self.bucket_of(&self.requests[id]) == bucket)
            .collect();
        order.sort_by_key(|id| {
            let r = &self.requests[id];
            let aged = step - r.last_scheduled_step > max_wait;
            let waiting = r.state != RequestState::Running;
            (!aged, waiting, r.params.priority, r.seq_no)
        });
        let mut scheduled: Vec<RequestId> = Vec::new();
        for id in order {
            if *budget == 0 {
                break;
            }
            if out.preempted.contains(&id) {
                continue; // preempted earlier in this step: not re-admitted at once
            }
            let Some(r) = self.requests.get(&id) else {
                continue;
            };
            let is_new = r.state != RequestState::Running;
            if is_new && self.running.len() >= self.config.max_num_seqs {
                continue;
            }
            if is_new {
                self.admit_prefix(id);
            }
            let r = &self.requests[&id];
            let remaining = r.num_tokens() - r.num_computed_tokens;
            let n = remaining.min(*budget);
            let upto = r.num_computed_tokens + n;
            let mut ok = self.blocks.allocate_slots(id, upto);
            while !ok && !is_new {
                // A running request needs a block: preempt someone else (or itself).
                match self.preempt_one(&scheduled, out) {
                    Some(v) if v == id => break,
                    Some(_) => ok = self.blocks.allocate_slots(id, upto),
                    None => break,
                }
            }
            if !ok {
                if is_new {
                    // Not enough free blocks to admit: undo the prefix hit and stop admitting.
                    self.blocks.free(id);
                    self.requests
                        .get_mut(&id)
                        .expect("live")
                        .num_computed_tokens = 0;
                }
                continue;
            }
            if is_new {
                let r = self.requests.get_mut(&id).expect("live");
                let _ = r.transition(RequestState::Running);
                self.waiting.retain(|&w| w != id);
                self.running.push(id);
            }
            let r = self.requests.get_mut(&id).expect("live");
            r.last_scheduled_step = step;
            let start = r.num_computed_tokens;
            out.seqs.push(ScheduledSeq {
                id,
                start,
                token_ids: (start..start + n).map(|i| r.token(i)).collect(),
                block_table: self.blocks.block_table(id).iter().map(|b| b.0).collect(),
                sample: start + n == r.num_tokens(),
            });
            *budget -= n;
            scheduled.push(id);
        }
    }

    /// On (re)admission: start from the tokens the prefix cache already holds.
    fn admit_prefix(&mut self, id: RequestId) {
        let r = self.requests.get_mut(&id).expect("live");
        r.num_computed_tokens = self.blocks.admit(id, &r.all_tokens());
        r.num_cached_tokens = r.num_computed_tokens.min(r.prompt.len());
    }

    /// Applies a step's results: advances computed tokens, registers full blocks in the
    /// prefix cache, appends sampled tokens, finishes requests (freeing their blocks).
    pub fn update(
        &mut self,
        out: &SchedulerOutput,
        sampled: &HashMap<RequestId, u32>,
        eos: &[u32],
    ) -> Vec<SeqUpdate> {
        let mut updates = Vec::new();
        for s in &out.seqs {
            let Some(r) = self.requests.get_mut(&s.id) else {
                continue;
            };
            if r.state != RequestState::Running || r.num_computed_tokens != s.start {
                continue; // aborted or preempted since scheduling
            }
            r.num_computed_tokens += s.token_ids.len();
            self.blocks.cache_full_blocks(r);
            if !s.sample {
                continue;
            }
            let Some(&tok) = sampled.get(&s.id) else {
                continue;
            };
            r.output.push(tok);
            let p = &r.params;
            let stop = p.stop_token_ids.contains(&tok) || (!p.ignore_eos && eos.contains(&tok));
            let finished = if stop {
                Some(FinishReason::Stop)
            } else if r.output.len() >= p.max_tokens || r.num_tokens() >= self.config.max_model_len
            {
                Some(FinishReason::Length)
            } else {
                None
            };
            updates.push(SeqUpdate {
                id: s.id,
                new_token: Some(tok),
                finished,
                num_prompt_tokens: r.prompt.len(),
                num_output_tokens: r.output.len(),
                num_cached_tokens: r.num_cached_tokens,
            });
        }
        for u in &updates {
            if let Some(reason) = u.finished {
                self.finish(u.id, reason);
            }
        }
        updates
    }

    fn finish(&mut self, id: RequestId, reason: FinishReason) {
        if let Some(mut r) = self.requests.remove(&id) {
            let _ = r.transition(RequestState::Finished(reason));
        }
        self.blocks.free(id);
        self.running.retain(|&x| x != id);
        self.waiting.retain(|&x| x != id);
    }

    /// Checks block bookkeeping: ref counts match the tables held, and only live
    /// requests hold blocks.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.blocks.check_invariants()?;
        match self
            .blocks
            .requests()
            .find(|id| !self.requests.contains_key(id))
        {
            Some(id) => Err(format!("{id} holds blocks but is not live")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
