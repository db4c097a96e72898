//! The engine: scheduler + model + samplers. `Engine::step` is the whole loop body:
//! schedule, run the model, sample, update. `EngineHandle` runs it on its own thread
//! with an inbox of requests and a stream of events per request.

use crate::error::Result;
use crate::grammar::{Constraint, GrammarError};
use crate::request::{FinishReason, Request, RequestId, RequestParams};
use crate::sampler::{logprobs, Sampler};
use crate::scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
use crate::validate;
use novastack_kernels::{Backend, KvCache};
pub use novastack_metrics::Histogram;
use novastack_models::{BoxedModel, CausalLm, ForwardInput};
use std::collections::HashMap;

/// What a step's forward pass returns: every sampled row's logits, or (a greedy-only
/// step) just the argmax of each.
enum StepOutput {
    Logits(Vec<f32>),
    Tokens(Vec<u32>),
}

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
#[derive(Debug, Clone, PartialEq)]
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
    /// Sequences ended because their client went away ([`Engine::cancel`]): finished
    /// with reason `abort`. (Stops, lengths and errors are reported in their events.)
    pub num_cancelled: u64,
    /// Seconds from arrival (submission) to the end of the step that produced the
    /// first token, i.e. when it is handed out.
    pub ttft: Histogram,
    /// Seconds between consecutive tokens of a sequence (step ends).
    pub itl: Histogram,
    /// Seconds from arrival to the last token of a sequence that finished normally
    /// (cancelled ones are counted in `num_cancelled`, not timed).
    pub e2e: Histogram,
    /// Per step: seconds from scheduling to tokens handed out, prompt tokens computed
    /// in chunks, and one-token decodes.
    pub step_seconds: Histogram,
    pub step_prefill_tokens: Histogram,
    pub step_decode_tokens: Histogram,
    /// The scheduler's learned step cost (seconds per step, per prefill token, per
    /// decode token, per attention pair) and its mean relative prediction error.
    pub step_cost: [f64; 4],
    pub step_cost_error: Option<f64>,
    /// Per step with constrained sequences: seconds spent computing their token masks
    /// (alongside the forward pass), and seconds the sampler then still waited for
    /// them (the part the forward pass did not hide).
    pub mask_seconds: Histogram,
    pub mask_wait_seconds: Histogram,
    /// The model's parameters: all of them, and those one token runs through (fewer
    /// for a mixture-of-experts model).
    pub model_parameters: u64,
    pub model_active_parameters: u64,
    /// KV cache bytes per token over all layers, in the cache's storage type (a
    /// latent-attention model caches one latent slot per layer).
    pub kv_bytes_per_token: u64,
}

/// Bucket bounds (seconds) for per-step times: steps and inter-token gaps, and the
/// structured-output masks computed beside them. A GPU decode step takes a few
/// milliseconds or less, where the request latency buckets start at 5 ms.
pub const STEP_SECONDS_BOUNDS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Bucket bounds for per-step token counts.
pub const STEP_TOKEN_BOUNDS: &[f64] = &[
    0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats {
            num_waiting: 0,
            num_running: 0,
            num_preempted: 0,
            kv_blocks_total: 0,
            kv_blocks_free: 0,
            prefix_queried_blocks: 0,
            prefix_hit_blocks: 0,
            num_preemptions: 0,
            num_steps: 0,
            num_prompt_tokens_computed: 0,
            num_generated_tokens: 0,
            wasted_kv_slots: 0,
            wasted_query_slots: 0,
            used_kv_slots: 0,
            used_query_slots: 0,
            num_scheduled_seqs: 0,
            num_cancelled: 0,
            ttft: Histogram::default(),
            itl: Histogram::with_bounds(STEP_SECONDS_BOUNDS),
            e2e: Histogram::default(),
            step_seconds: Histogram::with_bounds(STEP_SECONDS_BOUNDS),
            step_prefill_tokens: Histogram::with_bounds(STEP_TOKEN_BOUNDS),
            step_decode_tokens: Histogram::with_bounds(STEP_TOKEN_BOUNDS),
            step_cost: [0.0; 4],
            step_cost_error: None,
            mask_seconds: Histogram::with_bounds(STEP_SECONDS_BOUNDS),
            mask_wait_seconds: Histogram::with_bounds(STEP_SECONDS_BOUNDS),
            model_parameters: 0,
            model_active_parameters: 0,
            kv_bytes_per_token: 0,
        }
    }
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

/// Per-sequence state the scheduler does not keep: sampler, index among `n`, timing.
struct SeqState {
    sampler: Sampler,
    /// The grammar's matcher, for a constrained sequence.
    constraint: Option<Constraint>,
    index: usize,
    arrival: f64,
    last_token_at: Option<f64>,
}

/// The engine over a model `M`: by default any family behind the model seam; a
/// borrowed model (`&dyn CausalLm<B>`) serves a one-off run such as [`crate::generate`].
pub struct Engine<B: Backend, M = BoxedModel<B>> {
    model: M,
    kv: KvCache<B>,
    sched: Scheduler,
    seqs: HashMap<RequestId, SeqState>,
    eos: Vec<u32>,
    next_id: u64,
    pub stats: EngineStats,
}

impl<B: Backend, M: CausalLm<B>> Engine<B, M> {
    /// An engine whose KV cache (`config.num_blocks` blocks of `config.block_size`
    /// tokens) is laid out from the model's own KV cache spec.
    pub fn new(model: M, eos_token_ids: Vec<u32>, config: EngineConfig) -> Result<Self> {
        let mut sc = config.scheduler;
        sc.max_model_len = sc.max_model_len.min(model.max_positions());
        let kv = model.new_kv_cache(config.num_blocks, config.block_size)?;
        let sched = Scheduler::new(sc, config.num_blocks, config.block_size);
        let params = model.parameters();
        let kv_dtype = match kv.layers.first() {
            Some((k, _)) => model.backend().dtype(k),
            None => novastack_kernels::Dtype::F32,
        };
        let kv_bytes_per_token = model.kv_bytes_per_token(kv_dtype) as u64;
        tracing::info!(
            blocks = config.num_blocks,
            block_size = config.block_size,
            kv_bytes_per_token,
            "KV cache: {} tokens of {kv_bytes_per_token} bytes ({kv_dtype})",
            config.num_blocks * config.block_size
        );
        let stats = EngineStats {
            kv_bytes_per_token,
            kv_blocks_total: config.num_blocks,
            kv_blocks_free: config.num_blocks,
            model_parameters: params.total,
            model_active_parameters: params.active_per_token,
            ..Default::default()
        };
        Ok(Engine {
            model,
            kv,
            sched,
            seqs: HashMap::new(),
            eos: eos_token_ids,
            next_id: 0,
            stats,
        })
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.sched
    }

    /// Caps the sequences a step runs from now on (benchmarks sweep it on one engine).
    pub fn set_max_num_seqs(&mut self, n: usize) {
        self.sched.config.max_num_seqs = n.max(1);
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
        validate::tokens_in_vocabulary(&prompt, self.model.vocab_size())?;
        validate::num_sequences(params.n)?;
        validate::sampling(&params.sampling)?;
        if let Some(g) = &params.grammar {
            validate::grammar_vocabulary(g.vocab_size(), self.model.vocab_size())?;
        }
        let p_grammar = params.grammar.clone();
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
            self.seqs.insert(
                id,
                SeqState {
                    sampler,
                    constraint: p_grammar.as_ref().map(|g| g.constraint()),
                    index: i,
                    arrival: now,
                    last_token_at: None,
                },
            );
            ids.push(id);
        }
        Ok(ids)
    }

    /// Aborts a request and frees its blocks.
    pub fn abort(&mut self, id: RequestId) -> bool {
        self.seqs.remove(&id);
        self.sched.abort(id, FinishReason::Abort).is_some()
    }

    /// Aborts a request whose client went away, counting it as finished with reason
    /// `abort` ([`EngineStats::num_cancelled`]) if it was still live.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let live = self.abort(id);
        if live {
            self.stats.num_cancelled += 1;
        }
        live
    }

    pub fn has_work(&self) -> bool {
        self.sched.has_work()
    }

    /// The model's input for a step; takes the block tables out of `out` (not needed
    /// after) instead of copying them again.
    fn forward_input(&self, out: &mut SchedulerOutput) -> ForwardInput {
        let bs = self.sched.blocks.block_size();
        let mut input = ForwardInput::default();
        for s in &mut out.seqs {
            input.push_seq(
                &s.token_ids,
                s.start,
                std::mem::take(&mut s.block_table),
                bs,
                s.sample,
            );
        }
        input
    }

    /// One step at time `now` (seconds, the caller's clock; the same clock as the
    /// arrivals): schedule, forward, sample, update. Returns the events it produced.
    /// Its tokens are timed at `now` too; a caller with a real clock wants
    /// [`Engine::step_clocked`], which times them when the step is done.
    pub fn step(&mut self, now: f64) -> Result<Vec<TokenEvent>> {
        self.step_clocked(&|| now)
    }

    /// One step, reading `clock` (seconds, the arrivals' clock) when it starts, to
    /// schedule, and when its tokens are ready, to time them: time to first token and
    /// inter-token latency include the step that produced the token.
    pub fn step_clocked(&mut self, clock: &dyn Fn() -> f64) -> Result<Vec<TokenEvent>> {
        let started = clock();
        let mut out = self.sched.schedule(started);
        let mut events = Vec::new();
        if out.is_empty() {
            self.refresh_stats();
            return Ok(events);
        }
        let input = self.forward_input(&mut out);
        // A step whose sampled rows are all plain greedy without logprobs needs only the
        // argmax of each row: on a GPU that stays on the device and only ids come back.
        let greedy_only = out.seqs.iter().filter(|s| s.sample).all(|s| {
            self.seqs
                .get(&s.id)
                .is_some_and(|st| st.sampler.is_plain_greedy() && st.constraint.is_none())
                && self
                    .sched
                    .request(s.id)
                    .is_some_and(|r| r.params.logprobs.is_none())
        });
        // Constrained sequences that sample this step: their masks are computed on
        // another thread while the forward pass runs.
        let constrained: Vec<RequestId> = out
            .seqs
            .iter()
            .filter(|s| {
                s.sample
                    && self
                        .seqs
                        .get(&s.id)
                        .is_some_and(|st| st.constraint.is_some())
            })
            .map(|s| s.id)
            .collect();
        let (result, mask_errors) = if greedy_only {
            let r = self
                .model
                .forward_greedy(&input, &mut self.kv)
                .map(StepOutput::Tokens);
            (r, Vec::new())
        } else if constrained.is_empty() {
            let r = self
                .model
                .forward(&input, &mut self.kv)
                .map(StepOutput::Logits);
            (r, Vec::new())
        } else {
            self.forward_with_masks(&input, &constrained)
        };
        let logits = match result {
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
        let mut failed: Vec<(RequestId, String)> = mask_errors
            .into_iter()
            .map(|(id, e)| (id, format!("constrained decoding: {e}")))
            .collect();
        let mut grammar_done = Vec::new();
        let vocab = self.model.vocab_size();
        let mut sampled = HashMap::new();
        let mut lps = HashMap::new();
        let mut next_row = 0;
        for s in &out.seqs {
            // Logits rows follow the sampled sequences in batch order.
            let row = s.sample.then(|| {
                next_row += 1;
                next_row - 1
            });
            let Some(req) = self.sched.request(s.id) else {
                continue;
            };
            let computed_prompt = req
                .prompt
                .len()
                .saturating_sub(s.start)
                .min(s.token_ids.len());
            self.stats.num_prompt_tokens_computed += computed_prompt as u64;
            let Some(row) = row else { continue };
            let Some(st) = self.seqs.get_mut(&s.id) else {
                continue;
            };
            if failed.iter().any(|(id, _)| *id == s.id) {
                continue;
            }
            let tok = match &logits {
                StepOutput::Tokens(ids) => ids[row],
                StepOutput::Logits(all) => {
                    let l = &all[row * vocab..(row + 1) * vocab];
                    let tok = match &st.constraint {
                        Some(c) => st
                            .sampler
                            .sample_masked(l, &req.prompt, &req.output, |l| c.apply(l)),
                        None => st.sampler.sample_for(l, &req.prompt, &req.output),
                    };
                    if let Some(k) = req.params.logprobs {
                        lps.insert(s.id, logprobs(l, tok, k));
                    }
                    tok
                }
            };
            if let Some(c) = &mut st.constraint {
                if let Err(e) = c.commit(tok) {
                    failed.push((s.id, format!("constrained decoding: {e}")));
                    continue;
                }
                if c.is_finished() {
                    grammar_done.push(s.id);
                }
            }
            sampled.insert(s.id, tok);
        }
        let mut updates = self.sched.update(&out, &sampled, &self.eos);
        // A grammar that took its end finishes its sequence even where the end token
        // alone would not (`ignore_eos`).
        for u in &mut updates {
            if u.finished.is_none() && grammar_done.contains(&u.id) {
                self.sched.abort(u.id, FinishReason::Stop);
                u.finished = Some(FinishReason::Stop);
            }
        }
        // The tokens exist from here on: the time they are handed out.
        let now = clock();
        if now > started {
            // A caller's fixed clock (`Engine::step`) times nothing: nothing to learn.
            self.sched.observe_step(&out.shape, now - started);
        }
        self.stats.step_seconds.observe(now - started);
        self.stats
            .step_prefill_tokens
            .observe(out.shape.prefill_tokens as f64);
        self.stats
            .step_decode_tokens
            .observe(out.shape.decode_tokens as f64);
        self.stats.num_steps += 1;
        self.stats.wasted_kv_slots += out.wasted_kv_slots as u64;
        self.stats.wasted_query_slots += out.wasted_query_slots as u64;
        self.stats.used_kv_slots += out.used_kv_slots as u64;
        self.stats.used_query_slots += out.used_query_slots as u64;
        self.stats.num_scheduled_seqs += out.seqs.len() as u64;
        for u in updates {
            let index = match self.seqs.get_mut(&u.id) {
                Some(st) => {
                    match st.last_token_at {
                        None => self.stats.ttft.observe(now - st.arrival),
                        Some(last) => self.stats.itl.observe(now - last),
                    }
                    st.last_token_at = Some(now);
                    st.index
                }
                None => 0,
            };
            self.stats.num_generated_tokens += 1;
            let ev = TokenEvent {
                id: u.id,
                index,
                token: u.new_token,
                logprobs: lps.remove(&u.id),
                finished: u.finished,
                num_prompt_tokens: u.num_prompt_tokens,
                num_output_tokens: u.num_output_tokens,
                num_cached_tokens: u.num_cached_tokens,
                error: None,
            };
            if u.finished.is_some() {
                if let Some(st) = self.seqs.remove(&u.id) {
                    self.stats.e2e.observe(now - st.arrival);
                }
            }
            events.push(ev);
        }
        for (id, msg) in failed {
            events.push(self.fail(id, msg));
        }
        self.refresh_stats();
        debug_assert_eq!(self.sched.check_invariants(), Ok(()));
        Ok(events)
    }

    /// The forward pass, with the token masks of the `constrained` sequences computed
    /// on a second thread meanwhile; a mask that fails fails its sequence.
    #[allow(clippy::type_complexity)]
    fn forward_with_masks(
        &mut self,
        input: &ForwardInput,
        constrained: &[RequestId],
    ) -> (
        novastack_models::Result<StepOutput>,
        Vec<(RequestId, GrammarError)>,
    ) {
        let Engine {
            model, kv, seqs, ..
        } = self;
        let (result, (mask_time, errors), waited) = std::thread::scope(|scope| {
            let masks = scope.spawn(|| {
                let started = std::time::Instant::now();
                let mut errors = Vec::new();
                for (id, st) in seqs.iter_mut() {
                    if !constrained.contains(id) {
                        continue;
                    }
                    if let Some(c) = &mut st.constraint {
                        if let Err(e) = c.compute_mask() {
                            errors.push((*id, e));
                        }
                    }
                }
                (started.elapsed().as_secs_f64(), errors)
            });
            let result = model.forward(input, kv).map(StepOutput::Logits);
            let forward_done = std::time::Instant::now();
            let masks = masks.join().unwrap_or_else(|_| {
                let e = GrammarError("the mask computation panicked".into());
                (0.0, constrained.iter().map(|id| (*id, e.clone())).collect())
            });
            (result, masks, forward_done.elapsed().as_secs_f64())
        });
        self.stats.mask_seconds.observe(mask_time);
        self.stats.mask_wait_seconds.observe(waited);
        (result, errors)
    }

    fn fail(&mut self, id: RequestId, msg: String) -> TokenEvent {
        let index = self.seqs.remove(&id).map_or(0, |st| st.index);
        let r = self.sched.abort(id, FinishReason::Error);
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
        s.prefix_queried_blocks = self.sched.blocks.num_queried_blocks();
        s.prefix_hit_blocks = self.sched.blocks.num_hit_blocks();
        s.num_preemptions = self.sched.num_preemptions;
        s.step_cost = self.sched.cost.coefficients();
        s.step_cost_error = self.sched.cost.mean_relative_error();
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sampler::SamplingParams;
    use novastack_kernels::CpuBackend;
    use novastack_models::{load_model, LoadedModel};

    /// Step-time histograms tell a 0.8 ms GPU step from a 3 ms one (the request
    /// latency buckets put both under 5 ms), and still bound a 4 s CPU prefill step.
    #[test]
    fn step_histograms_resolve_millisecond_steps() {
        let mut s = EngineStats::default();
        for v in [0.0008, 0.003, 4.0] {
            s.step_seconds.observe(v);
            s.itl.observe(v);
        }
        for h in [&s.step_seconds, &s.itl] {
            let used: Vec<usize> = (0..h.counts.len()).filter(|&i| h.counts[i] > 0).collect();
            assert_eq!(used.len(), 3, "{:?}", h.counts);
            assert!(*used.last().unwrap() < h.bounds.len(), "4 s in +Inf");
        }
    }

    /// The smallest golden fixture model, on the CPU.
    pub(crate) fn fixture_engine() -> Engine<CpuBackend> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/llama-f32");
        let lm: LoadedModel<CpuBackend> = load_model(&dir, CpuBackend::new()).unwrap();
        let eos = lm.tokenizer.eos_token_ids().to_vec();
        let scheduler = SchedulerConfig {
            max_num_batched_tokens: 512,
            max_num_seqs: 8,
            max_model_len: usize::MAX,
            buckets: crate::Buckets::off(),
            max_wait_steps: 8,
            policy: Default::default(),
        };
        let config = EngineConfig {
            scheduler,
            num_blocks: 64,
            block_size: 16,
        };
        Engine::new(lm.model, eos, config).unwrap()
    }

    pub(crate) fn greedy(max_tokens: usize) -> RequestParams {
        RequestParams {
            max_tokens,
            ignore_eos: true,
            sampling: SamplingParams::greedy(),
            ..Default::default()
        }
    }

    /// Constrained sequences, greedy and sampled, batched with an unconstrained one:
    /// every constrained output is valid JSON for the schema (the fixture model is
    /// random, so only the mask makes it so), masks were timed, and a grammar that
    /// ends stops its sequence even with `ignore_eos`.
    #[test]
    fn constrained_sequences_follow_their_grammar_in_a_mixed_batch() {
        use crate::grammar::{GrammarSpec, GrammarVocab};
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures/models/llama-f32");
        let tok = novastack_models::Tokenizer::from_dir(&dir).unwrap();
        let mut e = fixture_engine();
        let vocab = GrammarVocab::new(&tok, e.model().vocab_size(), tok.eos_token_ids()).unwrap();
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "ok": {"type": "boolean"},
                "n": {"type": "integer", "minimum": -5, "maximum": 1000}
            },
            "required": ["ok", "n"],
            "additionalProperties": false
        });
        let g = vocab.compile(&GrammarSpec::JsonSchema(schema)).unwrap();
        let mut ids = Vec::new();
        for (seed, ignore_eos) in [(None, true), (Some(1), false), (Some(2), true)] {
            let mut p = greedy(60);
            p.ignore_eos = ignore_eos;
            if let Some(seed) = seed {
                p.sampling = SamplingParams {
                    temperature: 1.0,
                    seed: Some(seed),
                    ..Default::default()
                };
            }
            p.grammar = Some(g.clone());
            ids.push(e.add_request((1..30).collect(), p, 0.0).unwrap()[0]);
        }
        let free = e.add_request((5..25).collect(), greedy(10), 0.0).unwrap()[0];
        let mut outputs: HashMap<RequestId, Vec<u32>> = HashMap::new();
        let mut reasons = HashMap::new();
        while e.has_work() {
            for ev in e.step(0.0).unwrap() {
                assert_eq!(ev.error, None);
                if let Some(t) = ev.token {
                    outputs.entry(ev.id).or_default().push(t);
                }
                if let Some(r) = ev.finished {
                    reasons.insert(ev.id, r);
                }
            }
        }
        for id in ids {
            let out = &outputs[&id];
            let text = tok.decode(out, true).unwrap();
            let v: serde_json::Value =
                serde_json::from_str(&text).unwrap_or_else(|err| panic!("{text:?}: {err}"));
            let n = v["n"].as_i64().unwrap_or(i64::MAX);
            assert!(v["ok"].is_boolean() && (-5..=1000).contains(&n), "{text}");
            assert_eq!(reasons[&id], FinishReason::Stop, "{text}");
            assert!(tok.eos_token_ids().contains(out.last().unwrap()));
        }
        assert_eq!(outputs[&free].len(), 10);
        assert!(e.stats.mask_seconds.count > 0);
        assert_eq!(e.stats.kv_blocks_free, e.stats.kv_blocks_total);
    }

    /// A step reads the clock when it starts and again when its tokens are ready; the
    /// latencies use the second reading, so they include the step that produced the
    /// token (it used to be timed at the step's start: a first token in 0 s).
    #[test]
    fn latencies_include_the_step_that_produced_the_token() {
        let mut e = fixture_engine();
        e.add_request((1..40).collect(), greedy(2), 1.0).unwrap();
        // Every reading is 0.25 s after the previous one: a step "takes" 0.25 s.
        let t = std::cell::Cell::new(1.0);
        let clock = || {
            t.set(t.get() + 0.25);
            t.get()
        };
        let first = e.step_clocked(&clock).unwrap();
        assert_eq!(first.len(), 1);
        // Started at 1.25, token ready at 1.5: 0.5 s after the arrival at 1.0.
        assert_eq!((e.stats.ttft.count, e.stats.ttft.sum), (1, 0.5));
        let last = e.step_clocked(&clock).unwrap();
        assert!(last[0].finished.is_some());
        // Second token ready at 2.0, 0.5 s after the first.
        assert_eq!((e.stats.itl.count, e.stats.itl.sum), (1, 0.5));
        assert_eq!((e.stats.e2e.count, e.stats.e2e.sum), (1, 1.0));
    }

    /// A cancelled sequence (its client went away) counts once as finished; aborting
    /// one that already ended counts nothing.
    #[test]
    fn cancelling_a_live_request_counts_it_once() {
        let mut e = fixture_engine();
        let id = e.add_request((1..20).collect(), greedy(50), 0.0).unwrap()[0];
        e.step(0.1).unwrap();
        assert!(e.cancel(id));
        assert!(!e.cancel(id));
        assert_eq!(e.stats.num_cancelled, 1);
        assert!(!e.has_work());
        let id = e.add_request((1..20).collect(), greedy(50), 0.2).unwrap()[0];
        assert!(e.abort(id));
        assert_eq!(
            e.stats.num_cancelled, 1,
            "an abort asked for is not a cancel"
        );
    }
}
