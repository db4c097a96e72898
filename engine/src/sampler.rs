//! Token sampling: greedy, temperature, top-k, top-p and min-p, seeded per request so
//! that the same seed gives the same tokens however the batch is composed.

use crate::error::Result;
use crate::validate::RequestError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Temperatures below this sample greedily (the argmax): dividing logits by a smaller
/// one leaves only the top token with any weight anyway, and a subnormal one overflows
/// every logit to infinity (vLLM uses the same threshold).
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 (or anything below [`GREEDY_TEMPERATURE`]) means greedy.
    pub temperature: f32,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 0.0 disables.
    pub min_p: f32,
    pub seed: Option<u64>,
    /// Subtracted once from the logit of every token already generated (OpenAI).
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the generated tokens (OpenAI).
    pub frequency_penalty: f32,
    /// Divides positive / multiplies negative logits of prompt and generated tokens
    /// (1.0 disables; as in transformers and vLLM).
    pub repetition_penalty: f32,
    /// Added to the logits of these tokens before sampling.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// Temperature, top-p and min-p are in range ([`crate::validate::sampling`]).
    pub fn validate(&self) -> std::result::Result<(), RequestError> {
        crate::validate::sampling(self)
    }

    /// Temperature below [`GREEDY_TEMPERATURE`] (0 included): the argmax.
    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE || self.temperature.is_nan()
    }
}

/// A request's sampler: its parameters and its own random stream.
pub struct Sampler {
    params: SamplingParams,
    rng: ChaCha8Rng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = match params.seed {
            Some(s) => ChaCha8Rng::seed_from_u64(s),
            None => ChaCha8Rng::from_os_rng(),
        };
        Ok(Sampler { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Applies logit bias and the repetition, presence and frequency penalties in place.
    ///
    /// Any parameter value is safe here, in range or not: a NaN parameter counts as
    /// off, the arithmetic runs in f64, and a live token's result is clamped to the
    /// finite f32 range, so no logit becomes NaN, a masked token (-inf) stays masked
    /// and a live one stays live. One exception: a bias of +inf (what 1e39 parses to in
    /// f32) forces the token, whose logit becomes +inf, and the sampler then picks only
    /// among forced tokens, at any temperature; a bias of -inf is the lowest finite one.
    pub fn process(&self, logits: &mut [f32], prompt: &[u32], output: &[u32]) {
        let p = &self.params;
        let adjust = |l: &mut f32, f: &dyn Fn(f64) -> f64| {
            if l.is_finite() {
                *l = clamp_finite(f(*l as f64));
            }
        };
        for &(t, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                if b == f32::INFINITY && l.is_finite() {
                    // Forced: [`Sampler::sample`] picks among the +inf tokens only.
                    *l = f32::INFINITY;
                } else {
                    let b = finite_or_zero(b);
                    adjust(l, &|l| l + b);
                }
            }
        }
        // Not positive (or NaN): off; infinite: the largest finite penalty.
        let rp = finite_or_zero(p.repetition_penalty);
        if rp > 0.0 && rp != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in prompt.iter().chain(output) {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        adjust(l, &|l| if l > 0.0 { l / rp } else { l * rp });
                    }
                }
            }
        }
        let (presence, frequency) = (
            finite_or_zero(p.presence_penalty),
            finite_or_zero(p.frequency_penalty),
        );
        if presence != 0.0 || frequency != 0.0 {
            let mut counts = std::collections::HashMap::new();
            for &t in output {
                *counts.entry(t).or_insert(0u32) += 1;
            }
            for (t, c) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    adjust(l, &|l| l - (presence + frequency * c as f64));
                }
            }
        }
    }

    /// Whether logits need bias or penalties before sampling.
    fn needs_processing(&self) -> bool {
        let p = &self.params;
        !p.logit_bias.is_empty()
            || p.repetition_penalty != 1.0
            || p.presence_penalty != 0.0
            || p.frequency_penalty != 0.0
    }

    /// Greedy with nothing applied to the logits first: the token is the plain argmax,
    /// which the backend can compute where the logits are.
    pub fn is_plain_greedy(&self) -> bool {
        self.params.is_greedy() && !self.needs_processing()
    }

    /// Picks the next token for a sequence: penalties, then [`Sampler::sample`].
    pub fn sample_for(&mut self, logits: &[f32], prompt: &[u32], output: &[u32]) -> u32 {
        if self.needs_processing() {
            let mut l = logits.to_vec();
            self.process(&mut l, prompt, output);
            self.sample(&l)
        } else {
            self.sample(logits)
        }
    }

    /// Like [`Sampler::sample_for`], with `mask` applied last (after penalties and
    /// bias): it sets the tokens a grammar forbids to -inf.
    pub fn sample_masked(
        &mut self,
        logits: &[f32],
        prompt: &[u32],
        output: &[u32],
        mask: impl FnOnce(&mut [f32]),
    ) -> u32 {
        let mut l = logits.to_vec();
        if self.needs_processing() {
            self.process(&mut l, prompt, output);
        }
        mask(&mut l);
        self.sample(&l)
    }

    /// Picks the next token from one row of logits.
    ///
    /// Safe for any row: NaN entries are never picked; if some entries are +inf, only
    /// they are candidates (equally likely); a row with every entry -inf (or NaN) gives
    /// the lowest such id. The softmax runs in f64 over `(logit - max) / temperature`,
    /// which is at most 0, so no temperature can overflow it: a huge one flattens the
    /// distribution, one below [`GREEDY_TEMPERATURE`] is the argmax.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.is_greedy() {
            return novastack_kernels::argmax(logits).unwrap_or(0) as u32;
        }
        let max = logits
            .iter()
            .copied()
            .filter(|v| !v.is_nan())
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            // Everything masked (or NaN, or nothing at all): any id, the lowest.
            return 0;
        }
        let temperature = (p.temperature as f64).min(f32::MAX as f64);
        let live = |v: f32| v > f32::NEG_INFINITY && (max < f32::INFINITY || v == max);
        // Weights exp((logit - max) / temperature): the top one 1, none NaN or above 1.
        let weight = |v: f32| {
            if max == f32::INFINITY {
                1.0
            } else {
                ((v as f64 - max as f64) / temperature).exp()
            }
        };
        if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
            // Plain temperature sampling: one pass for the weights, one for the draw,
            // in id order; nothing ranked, nothing allocated per step beyond them.
            let weights: Vec<f64> = logits
                .iter()
                .map(|&v| if live(v) { weight(v) } else { 0.0 })
                .collect();
            let total: f64 = weights.iter().sum();
            let mut r = self.rng.random::<f32>() as f64 * total;
            let mut last = 0;
            for (i, &w) in weights.iter().enumerate() {
                if w > 0.0 {
                    if r < w {
                        return i as u32;
                    }
                    r -= w;
                    last = i;
                }
            }
            return last as u32;
        }
        // Candidates: live tokens (only the +inf ones if any), ranked by logit, highest
        // first (ties: lower id first); top-k ranks only the k best.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|&(_, &v)| live(v))
            .map(|(i, &v)| (i as u32, v))
            .collect();
        let by_rank = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, by_rank);
            cand.truncate(p.top_k);
        }
        cand.sort_by(by_rank);
        let weights: Vec<f64> = cand.iter().map(|c| weight(c.1)).collect();
        let sum: f64 = weights.iter().sum();
        let probs: Vec<f64> = weights.iter().map(|w| w / sum).collect();
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            // Ranked: the first is the most likely.
            let floor = p.min_p as f64 * probs[0];
            keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0f64;
            let mut n = 0;
            for &x in &probs[..keep] {
                n += 1;
                acc += x;
                if acc >= p.top_p as f64 {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f64 = probs[..keep].iter().sum();
        // One f32 draw per token, as before: a seed gives the same stream of draws.
        let mut r = self.rng.random::<f32>() as f64 * total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            if r < x {
                return cand[i].0;
            }
            r -= x;
        }
        cand[keep - 1].0
    }
}

/// A sampling parameter as f64, NaN as 0 (off) and infinities as the largest f32.
fn finite_or_zero(v: f32) -> f64 {
    if v.is_nan() {
        0.0
    } else {
        (v as f64).clamp(f32::MIN as f64, f32::MAX as f64)
    }
}

/// A processed logit back in f32, kept finite (a live token stays live).
fn clamp_finite(v: f64) -> f32 {
    v.clamp(f32::MIN as f64, f32::MAX as f64) as f32
}

/// The log-probability of `token` and the `k` most likely tokens, from raw logits.
pub fn logprobs(logits: &[f32], token: u32, k: usize) -> (f32, Vec<(u32, f32)>) {
    let mut lp = logits.to_vec();
    novastack_kernels::log_softmax_inplace(&mut lp);
    let chosen = lp.get(token as usize).copied().unwrap_or(f32::NEG_INFINITY);
    let mut top = Vec::new();
    if k > 0 {
        let mut idx: Vec<u32> = (0..lp.len() as u32).collect();
        let k = k.min(idx.len());
        idx.select_nth_unstable_by(k.saturating_sub(1), |&a, &b| {
            lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b))
        });
        idx.truncate(k);
        idx.sort_by(|&a, &b| lp[b as usize].total_cmp(&lp[a as usize]).then(a.cmp(&b)));
        top = idx.into_iter().map(|i| (i, lp[i as usize])).collect();
    }
    (chosen, top)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax() {
        let mut s = Sampler::new(SamplingParams::greedy()).unwrap();
        assert_eq!(s.sample(&[0.1, 2.0, -1.0, 2.0]), 1);
    }

    /// Plain temperature sampling (the one-pass path) draws each token with its
    /// softmax probability and never a masked one.
    #[test]
    fn plain_temperature_sampling_follows_the_softmax() {
        let logits = [0.0, 3f32.ln(), f32::NEG_INFINITY, 2f32.ln()];
        let mut s = Sampler::new(SamplingParams {
            temperature: 1.0,
            seed: Some(3),
            ..Default::default()
        })
        .unwrap();
        let mut counts = [0usize; 4];
        for _ in 0..6000 {
            counts[s.sample(&logits) as usize] += 1;
        }
        assert_eq!(counts[2], 0);
        for (i, p) in [(0, 1.0 / 6.0), (1, 0.5), (3, 1.0 / 3.0)] {
            let f = counts[i] as f64 / 6000.0;
            assert!((f - p).abs() < 0.03, "token {i}: {f} vs {p} ({counts:?})");
        }
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let params = SamplingParams {
            temperature: 0.9,
            seed: Some(7),
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(params.clone()).unwrap();
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn top_k_and_top_p_restrict_the_support() {
        let logits = vec![5.0, 4.0, 0.0, -1.0, -2.0];
        for seed in 0..50 {
            let mut s = Sampler::new(SamplingParams {
                top_k: 2,
                seed: Some(seed),
                ..Default::default()
            })
            .unwrap();
            assert!(s.sample(&logits) < 2);
            let mut s = Sampler::new(SamplingParams {
                top_p: 0.5,
                seed: Some(seed),
                ..Default::default()
            })
            .unwrap();
            assert_eq!(s.sample(&logits), 0);
            let mut s = Sampler::new(SamplingParams {
                min_p: 0.5,
                seed: Some(seed),
                ..Default::default()
            })
            .unwrap();
            assert!(s.sample(&logits) < 2);
        }
    }

    #[test]
    fn penalties_and_bias() {
        let s = Sampler::new(SamplingParams {
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            repetition_penalty: 2.0,
            logit_bias: vec![(3, 10.0)],
            ..SamplingParams::greedy()
        })
        .unwrap();
        let mut l = vec![4.0, -4.0, 1.0, 0.0];
        s.process(&mut l, &[1], &[0, 0, 2]);
        // token 0: 4/2 - 0.5 - 2*0.25; token 1 (prompt only): -4*2; token 2: 1/2 - 0.75
        assert_eq!(l, vec![1.0, -8.0, -0.25, 10.0]);
        let mut s = s;
        assert_eq!(s.sample_for(&[4.0, -4.0, 1.0, 0.0], &[1], &[0, 0, 2]), 3);
    }

    #[test]
    fn logprobs_top_k_sorted() {
        let (c, top) = logprobs(&[0.0, 2.0, 1.0], 2, 2);
        let z = (1.0f32 + 2f32.exp() + 1f32.exp()).ln();
        assert!((c - (1.0 - z)).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
    }

    /// A sampler without the admission checks: the engine API can be called with any
    /// parameters, and the sampling math must hold for all of them.
    fn unchecked(params: SamplingParams) -> Sampler {
        let rng = ChaCha8Rng::seed_from_u64(params.seed.unwrap_or(0));
        Sampler { params, rng }
    }

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37) % 23) as f32 * 0.4 - 3.0).collect()
    }

    /// A bias of 1e39 (infinite in f32) or 3e38 on two tokens forces one of them, at
    /// every temperature and with greedy decoding; the rest of the vocabulary is never
    /// picked (inf - inf used to make the softmax NaN and pick anything).
    #[test]
    fn a_huge_logit_bias_samples_only_the_biased_tokens() {
        let logits = ramp(64);
        let huge: f32 = "1e39".parse().unwrap();
        assert!(huge.is_infinite());
        // An infinite bias forces at any temperature; a finite one at any but absurd ones.
        for (bias, hottest) in [(huge, f32::MAX), (3e38, 1e30), (f32::MAX, 1e30)] {
            for temperature in [0.0, 1e-45, 0.7, 1.0, 1000.0, hottest] {
                for seed in 0..40 {
                    let mut s = unchecked(SamplingParams {
                        temperature,
                        seed: Some(seed),
                        logit_bias: vec![(7, bias), (19, bias)],
                        ..Default::default()
                    });
                    let t = s.sample_for(&logits, &[1, 2], &[3]);
                    assert!(
                        t == 7 || t == 19,
                        "bias {bias}, temperature {temperature}, seed {seed}: got {t}"
                    );
                }
            }
        }
    }

    /// A subnormal temperature is greedy: the argmax, not whatever NaN arithmetic picks.
    #[test]
    fn a_subnormal_temperature_is_greedy() {
        let logits = ramp(64);
        let best = novastack_kernels::argmax(&logits).unwrap() as u32;
        for temperature in [1e-45f32, f32::MIN_POSITIVE, 1e-30, 1e-6] {
            let p = SamplingParams {
                temperature,
                ..Default::default()
            };
            assert!(p.is_greedy(), "{temperature}");
            for seed in 0..20 {
                let mut s = unchecked(SamplingParams {
                    seed: Some(seed),
                    ..p.clone()
                });
                assert_eq!(s.sample(&logits), best, "temperature {temperature}");
            }
        }
        assert!(!SamplingParams {
            temperature: GREEDY_TEMPERATURE,
            ..Default::default()
        }
        .is_greedy());
    }

    /// A huge temperature flattens the distribution (every token gets picked) without
    /// producing NaN; masked tokens stay masked.
    #[test]
    fn a_huge_temperature_is_near_uniform() {
        let mut logits = ramp(16);
        logits[5] = f32::NEG_INFINITY;
        for temperature in [1000.0, 1e30, f32::MAX] {
            let mut s = unchecked(SamplingParams {
                temperature,
                seed: Some(3),
                ..Default::default()
            });
            let mut seen = [0usize; 16];
            for _ in 0..3000 {
                seen[s.sample(&logits) as usize] += 1;
            }
            assert_eq!(
                seen[5], 0,
                "temperature {temperature}: masked token sampled"
            );
            for (t, &c) in seen.iter().enumerate() {
                if t != 5 {
                    assert!(
                        c > 50,
                        "temperature {temperature}: token {t} seen {c} times"
                    );
                }
            }
        }
    }

    /// Penalties and biases at any value, finite or not, never make a logit NaN, never
    /// unmask a masked (-inf) token and never mask a live one (+inf bias forces it).
    #[test]
    fn extreme_penalties_never_produce_nan() {
        let extremes = [
            0.0,
            -1.0,
            1e-38,
            1e38,
            -1e38,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut logits = ramp(12);
        logits[2] = f32::NEG_INFINITY;
        logits[4] = 0.0;
        for &rp in &extremes {
            for &pp in &extremes {
                for &fp in &extremes {
                    let mut s = unchecked(SamplingParams {
                        temperature: 0.8,
                        seed: Some(1),
                        repetition_penalty: rp,
                        presence_penalty: pp,
                        frequency_penalty: fp,
                        logit_bias: vec![(2, f32::INFINITY), (3, pp), (4, fp)],
                        ..Default::default()
                    });
                    let mut l = logits.clone();
                    s.process(&mut l, &[0, 2, 4], &[1, 2, 3, 4, 4]);
                    let ctx = format!("rp {rp}, presence {pp}, frequency {fp}: {l:?}");
                    assert!(l.iter().all(|v| !v.is_nan()), "{ctx}");
                    assert_eq!(l[2], f32::NEG_INFINITY, "{ctx}");
                    assert!(
                        l.iter()
                            .enumerate()
                            .all(|(i, &v)| i == 2 || v > f32::NEG_INFINITY),
                        "{ctx}"
                    );
                    let t = s.sample_for(&logits, &[0, 2, 4], &[1, 2, 3, 4, 4]);
                    assert!(t < 12 && t != 2, "{ctx}: got {t}");
                }
            }
        }
    }

    /// Non-finite logits handed to the engine API: NaN is never picked, +inf tokens
    /// are the only candidates, and a fully masked row still gives a token id.
    #[test]
    fn non_finite_logits_are_handled() {
        let mut s = unchecked(SamplingParams {
            seed: Some(9),
            ..Default::default()
        });
        let row = [f32::NAN, 1.0, f32::INFINITY, 2.0, f32::INFINITY, f32::NAN];
        for _ in 0..50 {
            let t = s.sample(&row);
            assert!(t == 2 || t == 4, "{t}");
        }
        assert_eq!(s.sample(&[f32::NAN, 1.0]), 1);
        assert!(s.sample(&[f32::NEG_INFINITY; 4]) < 4);
        assert!(s.sample(&[f32::NAN; 3]) < 3);
        assert_eq!(s.sample(&[]), 0);
    }

    fn extreme_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -3.0f32..3.0,
            1 => prop::num::f32::ANY,
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(f32::MAX),
            1 => Just(1e-45f32),
        ]
    }

    fn params() -> impl Strategy<Value = SamplingParams> {
        (
            prop_oneof![3 => 0.0f32..2.0, 1 => extreme_f32().prop_map(f32::abs)],
            prop_oneof![3 => 0.01f32..=1.0, 1 => extreme_f32()],
            0usize..6,
            prop_oneof![3 => 0.0f32..=1.0, 1 => extreme_f32()],
            (extreme_f32(), extreme_f32(), extreme_f32()),
            proptest::collection::vec((0u32..40, extreme_f32()), 0..4),
            any::<u64>(),
        )
            .prop_map(
                |(temperature, top_p, top_k, min_p, (pp, fp, rp), bias, seed)| SamplingParams {
                    temperature,
                    top_p,
                    top_k,
                    min_p,
                    seed: Some(seed),
                    presence_penalty: pp,
                    frequency_penalty: fp,
                    repetition_penalty: rp,
                    logit_bias: bias,
                },
            )
    }

    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// For any finite logits (some masked with -inf) and any parameters, in range
        /// or not, the sampler returns an id in the vocabulary, and a masked one only
        /// when every token is masked.
        #[test]
        fn any_params_give_an_unmasked_token_in_vocabulary(
            row in proptest::collection::vec(
                prop_oneof![6 => -1e30f32..1e30, 2 => -5.0f32..5.0, 1 => Just(f32::NEG_INFINITY)],
                1..40,
            ),
            p in params(),
            prompt in proptest::collection::vec(0u32..48, 0..6),
            output in proptest::collection::vec(0u32..48, 0..6),
        ) {
            let mut s = unchecked(p);
            let t = s.sample_for(&row, &prompt, &output) as usize;
            prop_assert!(t < row.len(), "token {} outside a vocabulary of {}", t, row.len());
            let all_masked = row.iter().all(|v| *v == f32::NEG_INFINITY);
            prop_assert!(all_masked || row[t] != f32::NEG_INFINITY, "masked token {} picked", t);
        }
    }

    #[test]
    fn invalid_params_are_rejected() {
        assert!(Sampler::new(SamplingParams {
            temperature: -1.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            top_p: 0.0,
            ..Default::default()
        })
        .is_err());
        assert!(Sampler::new(SamplingParams {
            min_p: 2.0,
            ..Default::default()
        })
        .is_err());
    }
}
