//! The scheduler: pure state in, plain-data `SchedulerOutput` out. No I/O, no clock
//! reads (time comes in as `now`, step durations as [`Scheduler::observe_step`]), no
//! device.
//!
//! Each step, every running decode gets its next token (unless preempted). Prefills
//! (new prompts, part-way prompts, preempted requests recomputing) fill the rest:
//! - up to the token budget (`max_num_batched_tokens`), and, with a time budget
//!   ([`StepTime`]), up to the step time the [`CostModel`] predicts, a model of the
//!   device learned from the measured step times (so nothing here assumes a CPU's or a
//!   GPU's costs); a step always computes at least `min_prefill_chunk` prompt tokens, so
//!   prefills progress;
//! - in the policy's order ([`PrefillOrder`]: first come first served, or shortest
//!   remaining prefill first), except that requests not served for more than
//!   `max_wait_steps` steps go first, the longest-waiting first (every request is
//!   served within a bounded number of steps), and then requests that arrived more than
//!   the policy's `prefill_aging` seconds ago, oldest first (shortest-first delays a long
//!   prompt's first token by a bounded time);
//! - several prompts' chunks per step; with context-length buckets on, all from the
//!   bucket of the first prefill in that order, so a step's prefills have like lengths.
//!
//! Out of KV blocks, the lowest-priority newest running request is preempted (its
//! blocks freed, recomputed later).
//!
//! Blocks, block tables and the prefix cache belong to the [`KvCacheManager`]: the
//! scheduler asks it to admit, grow and free, and never hashes anything itself.

use crate::bucket::Buckets;
use crate::cost_model::{CostModel, StepShape};
use crate::error::{Error, Result};
use crate::kv_cache_manager::KvCacheManager;
use crate::request::{FinishReason, Request, RequestId, RequestState};
pub use crate::scheduling_policy::{PrefillOrder, SchedulingPolicy, StepTime};
use crate::validate::{self, RequestError};
use std::collections::HashMap;

#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub max_model_len: usize,
    pub buckets: Buckets,
    /// A request not served for more than this many steps goes first.
    pub max_wait_steps: u64,
    pub policy: SchedulingPolicy,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_batched_tokens: 2048,
            max_num_seqs: 64,
            max_model_len: 4096,
            buckets: Buckets::new(Buckets::default_boundaries()),
            max_wait_steps: 8,
            policy: SchedulingPolicy::default(),
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
    /// The bucket of the step's prefill chunks (0 when it has none).
    pub bucket: usize,
    pub num_batched_tokens: usize,
    /// What the step computes, as the cost model sees it.
    pub shape: StepShape,
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
    /// Step times learned from [`Scheduler::observe_step`].
    pub cost: CostModel,
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
            cost: CostModel::default(),
        }
    }

    /// Learns how long a step of this shape took (the caller's clock, seconds).
    pub fn observe_step(&mut self, shape: &StepShape, seconds: f64) {
        self.cost.observe(shape, seconds);
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

    pub fn schedule(&mut self, now: f64) -> SchedulerOutput {
        self.step += 1;
        let mut out = SchedulerOutput {
            step: self.step,
            ..Default::default()
        };
        let mut budget = self.config.max_num_batched_tokens;
        let mut scheduled: Vec<RequestId> = Vec::new();
        // 1. Every running decode, most important first (a decode short of a block
        //    preempts the least important running request not yet scheduled).
        let mut decodes: Vec<RequestId> = self
            .running
            .iter()
            .copied()
            .filter(|id| self.remaining(id) == 1 && !self.blocked(&self.requests[id]))
            .collect();
        decodes.sort_by_key(|id| {
            let r = &self.requests[id];
            (r.params.priority, r.seq_no)
        });
        for id in decodes {
            if budget == 0 {
                break;
            }
            if !out.preempted.contains(&id) {
                self.try_schedule(id, &mut |_, _| 1, &mut scheduled, &mut out, &mut budget);
            }
        }
        // 2. Prefills, in the policy's order, within the token and time budgets.
        let order = self.prefill_order(&out, now);
        let allowed = self.step_time_allowed(&out.shape, &order, now);
        let buckets = &self.config.buckets;
        let mut tried: Vec<usize> = Vec::new();
        let first_bucket_of = |ids: &[RequestId], tried: &[usize], s: &Self| {
            ids.iter()
                .map(|id| s.bucket_of(&s.requests[id]))
                .find(|b| !tried.contains(b))
        };
        let bucketed = buckets.num_buckets() > 1;
        let (cost, min_chunk) = (self.cost.clone(), self.config.policy.min_prefill_chunk);
        while budget > 0 {
            // With buckets, one bucket's prefills per step: the first candidate's, else
            // (none of it could be admitted) the next bucket in the order.
            let bucket = if bucketed {
                match first_bucket_of(&order, &tried, self) {
                    Some(b) => b,
                    None => break,
                }
            } else {
                0
            };
            tried.push(bucket);
            let mut got = false;
            for &id in &order {
                if budget == 0 {
                    break;
                }
                if out.preempted.contains(&id) {
                    continue; // preempted earlier in this step: not re-admitted at once
                }
                if bucketed && self.bucket_of(&self.requests[&id]) != bucket {
                    continue;
                }
                let any_prefill = out.shape.prefill_tokens > 0;
                let shape = out.shape;
                let mut chunk = |start: usize, cap: usize| match allowed {
                    None => cap,
                    Some(t) => match largest_fitting(&cost, &shape, start, cap, t) {
                        0 if !any_prefill => min_chunk.max(1).min(cap),
                        n => n,
                    },
                };
                match self.try_schedule(id, &mut chunk, &mut scheduled, &mut out, &mut budget) {
                    Scheduled::Yes => got = true,
                    Scheduled::NoRoom => break, // the time budget is spent
                    Scheduled::NoBlocks => {}
                }
            }
            if got {
                out.bucket = bucket;
            }
            if got || !bucketed {
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

    /// Tokens `id` still has to compute (1 for a decode).
    fn remaining(&self, id: &RequestId) -> usize {
        let r = &self.requests[id];
        r.num_tokens() - r.num_computed_tokens
    }

    /// The step time the prefills may fill up to, given the decodes already in
    /// `shape` and the prefills waiting (`order`); `None`: only the token budget limits
    /// them (no time budget, no decodes to protect, or no trusted cost model yet).
    ///
    /// The policy's bound holds while the prefills can still meet their time-to-first-
    /// token target (`ttft_target` after arrival) at that pace. A step of `T` seconds
    /// spends `T - t_decodes` on prompts, so finishing `W` seconds of prompt work (at
    /// full speed) within `S` seconds needs `T >= t_decodes / (1 - W / S)`; the step is
    /// stretched to the most demanding prefix of the prefills in arrival order, and
    /// unbounded once a target cannot be met anyway. Short steps when prefills are few
    /// (the streams' latency), long ones when they pile up (time to first token and
    /// throughput: each step pays the device's fixed cost once).
    fn step_time_allowed(&self, decodes: &StepShape, order: &[RequestId], now: f64) -> Option<f64> {
        if decodes.decode_tokens == 0 {
            return None;
        }
        let t = self.cost.predict(decodes)?;
        let base = match self.config.policy.step_time {
            StepTime::Off => return None,
            StepTime::DecodeRatio(r) => t * r,
            StepTime::Seconds(s) => s.max(t),
        };
        let target = self.config.policy.ttft_target;
        if !target.is_finite() {
            return Some(base);
        }
        let per_token = self.cost.coefficients()[1];
        let mut by_arrival: Vec<&Request> = order.iter().map(|id| &self.requests[id]).collect();
        by_arrival.sort_by(|a, b| {
            a.arrival
                .total_cmp(&b.arrival)
                .then(a.seq_no.cmp(&b.seq_no))
        });
        let mut work = 0.0;
        let mut share: f64 = 0.0;
        for r in by_arrival {
            work += per_token * (r.num_tokens() - r.num_computed_tokens) as f64;
            let slack = r.arrival + target - now;
            if slack <= 0.0 {
                return None;
            }
            share = share.max(work / slack);
        }
        if share >= 0.95 {
            return None;
        }
        Some(base.max(t / (1.0 - share)))
    }

    /// Prefill candidates in the order they get the step's room:
    /// 1. starved: not scheduled for `max_wait_steps` steps, longest waiting first (every
    ///    live request gets a chunk within a bounded number of steps);
    /// 2. overdue: arrived more than the policy's `prefill_aging` seconds ago, oldest
    ///    first (a long prompt that shortest-first keeps passing over gets every step's
    ///    room once it is overdue, not one chunk per `max_wait_steps`, so the wait
    ///    shortest-first adds to its first token is bounded);
    /// 3. the rest by the policy (priority first).
    fn prefill_order(&self, out: &SchedulerOutput, now: f64) -> Vec<RequestId> {
        let room = self.running.len() < self.config.max_num_seqs;
        let (step, max_wait) = (self.step, self.config.max_wait_steps);
        let shortest = self.config.policy.prefill_order == PrefillOrder::ShortestFirst;
        let aging = self.config.policy.prefill_aging;
        let mut order: Vec<RequestId> = self
            .running
            .iter()
            .filter(|id| self.remaining(id) > 1)
            .chain(self.waiting.iter().filter(|_| room))
            .copied()
            .filter(|id| !self.blocked(&self.requests[id]) && !out.preempted.contains(id))
            .collect();
        order.sort_by_key(|id| {
            let r = &self.requests[id];
            if step - r.last_scheduled_step > max_wait {
                (0, r.last_scheduled_step as i64, 0, 0, r.seq_no)
            } else if now - r.arrival > aging {
                (1, 0, r.params.priority as i64, 0, r.seq_no)
            } else {
                let len = if shortest { self.remaining(id) } else { 0 };
                (2, 0, r.params.priority as i64, len, r.seq_no)
            }
        });
        order
    }

    /// Schedules up to `chunk(start, cap)` tokens of `id` (cap: what it has left, within
    /// `budget`), admitting it first if it is new; allocates its blocks, preempting
    /// others for a running request short of them.
    fn try_schedule(
        &mut self,
        id: RequestId,
        chunk: &mut dyn FnMut(usize, usize) -> usize,
        scheduled: &mut Vec<RequestId>,
        out: &mut SchedulerOutput,
        budget: &mut usize,
    ) -> Scheduled {
        let Some(r) = self.requests.get(&id) else {
            return Scheduled::NoBlocks;
        };
        let is_new = r.state != RequestState::Running;
        if is_new && self.running.len() >= self.config.max_num_seqs {
            return Scheduled::NoBlocks;
        }
        if is_new {
            self.admit_prefix(id);
        }
        let r = &self.requests[&id];
        let remaining = r.num_tokens() - r.num_computed_tokens;
        let n = chunk(r.num_computed_tokens, remaining.min(*budget)).min(remaining);
        let undo_admission = |s: &mut Self| {
            s.blocks.free(id);
            s.requests.get_mut(&id).expect("live").num_computed_tokens = 0;
        };
        if n == 0 {
            if is_new {
                undo_admission(self);
            }
            return Scheduled::NoRoom;
        }
        let upto = r.num_computed_tokens + n;
        let mut ok = self.blocks.allocate_slots(id, upto);
        while !ok && !is_new {
            // A running request needs a block: preempt someone else (or itself).
            match self.preempt_one(scheduled, out) {
                Some(v) if v == id => break,
                Some(_) => ok = self.blocks.allocate_slots(id, upto),
                None => break,
            }
        }
        if !ok {
            if is_new {
                // Not enough free blocks to admit: undo the prefix hit.
                undo_admission(self);
            }
            return Scheduled::NoBlocks;
        }
        if is_new {
            let r = self.requests.get_mut(&id).expect("live");
            let _ = r.transition(RequestState::Running);
            self.waiting.retain(|&w| w != id);
            self.running.push(id);
        }
        let r = self.requests.get_mut(&id).expect("live");
        r.last_scheduled_step = self.step;
        let start = r.num_computed_tokens;
        let sample = start + n == r.num_tokens();
        out.seqs.push(ScheduledSeq {
            id,
            start,
            token_ids: (start..start + n).map(|i| r.token(i)).collect(),
            block_table: self.blocks.block_table(id).iter().map(|b| b.0).collect(),
            sample,
        });
        out.shape.add(start, n, n == 1 && sample);
        *budget -= n;
        scheduled.push(id);
        Scheduled::Yes
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

/// What [`Scheduler::try_schedule`] did.
enum Scheduled {
    Yes,
    /// The step has no room left for this chunk (the time budget is spent).
    NoRoom,
    /// Not admitted or not grown: no sequence slot or KV blocks.
    NoBlocks,
}

/// The most tokens (at most `cap`) a chunk from position `start` can add to `shape`
/// with the predicted step time staying within `seconds`.
fn largest_fitting(
    cost: &CostModel,
    shape: &StepShape,
    start: usize,
    cap: usize,
    seconds: f64,
) -> usize {
    let fits = |n: usize| {
        let mut s = *shape;
        s.add(start, n, false);
        cost.predict(&s).is_some_and(|t| t <= seconds)
    };
    let (mut lo, mut hi) = (0, cap);
    if fits(hi) {
        return hi;
    }
    // Invariant: fits(lo) (or lo == 0), !fits(hi).
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
