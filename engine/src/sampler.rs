//! Token sampling: greedy, temperature, top-k, top-p and min-p, seeded per request so
//! that the same seed gives the same tokens however the batch is composed.

use crate::error::Result;
use crate::validate::RequestError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
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

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
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
    pub fn process(&self, logits: &mut [f32], prompt: &[u32], output: &[u32]) {
        let p = &self.params;
        for &(t, b) in &p.logit_bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b;
            }
        }
        if p.repetition_penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in prompt.iter().chain(output) {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = if *l > 0.0 {
                            *l / p.repetition_penalty
                        } else {
                            *l * p.repetition_penalty
                        };
                    }
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            let mut counts = std::collections::HashMap::new();
            for &t in output {
                *counts.entry(t).or_insert(0u32) += 1;
            }
            for (t, c) in counts {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l -= p.presence_penalty + p.frequency_penalty * c as f32;
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

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        if p.is_greedy() {
            return novastack_kernels::argmax(logits).unwrap_or(0) as u32;
        }
        // Candidates sorted by logit, highest first; ties keep the lower id first.
        let mut cand: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| !v.is_nan())
            .map(|(i, &v)| (i as u32, v / p.temperature))
            .collect();
        if cand.is_empty() {
            return 0;
        }
        cand.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        let mut probs: Vec<f32> = cand.iter().map(|(_, v)| (v - max).exp()).collect();
        let sum: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= sum);
        let mut keep = probs.len();
        if p.min_p > 0.0 {
            let floor = p.min_p * probs[0];
            keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
        }
        if p.top_p < 1.0 {
            let mut acc = 0.0f32;
            let mut n = 0;
            for &x in &probs[..keep] {
                n += 1;
                acc += x;
                if acc >= p.top_p {
                    break;
                }
            }
            keep = n.max(1);
        }
        let total: f32 = probs[..keep].iter().sum();
        let mut r = self.rng.random::<f32>() * total;
        for (i, &x) in probs[..keep].iter().enumerate() {
            if r < x {
                return cand[i].0;
            }
            r -= x;
        }
        cand[keep - 1].0
    }
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
