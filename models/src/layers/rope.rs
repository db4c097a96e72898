//! Rotary position embedding: the frequency tables, computed in f32 exactly as
//! transformers does, and the layer that rotates q and k heads with them.

use super::{Pass, Weights};
use crate::config::RopeScaling;
use crate::error::Result;
use novastack_kernels::Backend;

/// The `[max_positions, rotary_dim]` cos/sin table on the backend, shared by all layers.
/// `rotary_dim` is the head size unless the family rotates only part of each head
/// (MiniMax-M2's `rotary_dim` / `partial_rotary_factor`).
pub struct RotaryEmbedding<B: Backend> {
    cos_sin: B::Buf,
    head_dim: usize,
    rotary_dim: usize,
}

impl<B: Backend> RotaryEmbedding<B> {
    /// Builds and uploads the table for positions `0..max_positions`.
    pub fn new(
        w: &Weights<'_, B>,
        head_dim: usize,
        rotary_dim: usize,
        theta: f32,
        scaling: &RopeScaling,
        max_positions: usize,
    ) -> Result<Self> {
        let inv = inv_freq(rotary_dim, theta, scaling);
        let table = cos_sin_table(max_positions, rotary_dim, &inv, attention_factor(scaling));
        Ok(RotaryEmbedding {
            cos_sin: w.upload(&table)?,
            head_dim,
            rotary_dim,
        })
    }

    /// Rotates, in place, `num_heads` heads starting at column `col_offset` of each row
    /// of `row_stride` values, each row at its position in `pass.input`.
    pub fn apply(
        &self,
        pass: &Pass<'_, B>,
        x: &mut B::Buf,
        row_stride: usize,
        col_offset: usize,
        num_heads: usize,
    ) -> Result<()> {
        Ok(pass.backend.rope(
            x,
            row_stride,
            col_offset,
            num_heads,
            self.head_dim,
            self.rotary_dim,
            &pass.input.positions,
            &self.cos_sin,
        )?)
    }
}

/// What cos and sin are multiplied by: YaRN's attention factor, 1 otherwise.
pub fn attention_factor(scaling: &RopeScaling) -> f32 {
    match *scaling {
        RopeScaling::Yarn {
            attention_factor, ..
        } => attention_factor,
        _ => 1.0,
    }
}

/// YaRN's ramp between interpolated and original frequencies, as transformers builds
/// it: the dimension where `rotations` full turns fit the original context (f64), the
/// two ends rounded outwards when `truncate`, then `clamp((i - low) / (high - low), 0,
/// 1)` in f32 per frequency.
fn yarn_ramp(
    dim: usize,
    theta: f32,
    original: f32,
    fast: f32,
    slow: f32,
    truncate: bool,
) -> Vec<f32> {
    let correction_dim = |rotations: f64| {
        dim as f64 * (original as f64 / (rotations * 2.0 * std::f64::consts::PI)).ln()
            / (2.0 * (theta as f64).ln())
    };
    let (mut low, mut high) = (correction_dim(fast as f64), correction_dim(slow as f64));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let (low, mut high) = (low.max(0.0), high.min(dim as f64 - 1.0));
    if low == high {
        high += 0.001;
    }
    let span = (high - low) as f32;
    (0..dim / 2)
        .map(|i| ((i as f32 - low as f32) / span).clamp(0.0, 1.0))
        .collect()
}

/// Inverse frequencies `[head_dim / 2]`.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f32> {
    let powers: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| theta.powf(i as f32 / head_dim as f32))
        .collect();
    let base: Vec<f32> = powers.iter().map(|p| 1.0f32 / p).collect();
    match *scaling {
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            truncate,
            ..
        } => {
            let ramp = yarn_ramp(
                head_dim,
                theta,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                truncate,
            );
            powers
                .iter()
                .zip(&base)
                .zip(&ramp)
                .map(|((&p, &extrapolated), &r)| {
                    let interpolated = 1.0f32 / (factor * p);
                    let keep = 1.0f32 - r;
                    interpolated * (1.0 - keep) + extrapolated * keep
                })
                .collect()
        }
        RopeScaling::None => base,
        RopeScaling::Linear { factor } => base.iter().map(|f| f / factor).collect(),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old_ctx,
        } => {
            let low_freq_wavelen = old_ctx / low_freq_factor;
            let high_freq_wavelen = old_ctx / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    if wavelen < high_freq_wavelen {
                        f
                    } else if wavelen > low_freq_wavelen {
                        f / factor
                    } else {
                        let smooth = (old_ctx / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

/// The `[max_positions, head_dim]` table the backend's rope op reads: for each position,
/// `cos(pos * inv_freq)` in the first half and `sin(pos * inv_freq)` in the second, each
/// times `scale` (YaRN's attention factor; 1 otherwise).
pub fn cos_sin_table(
    max_positions: usize,
    head_dim: usize,
    inv_freq: &[f32],
    scale: f32,
) -> Vec<f32> {
    let half = head_dim / 2;
    let mut table = vec![0.0f32; max_positions * head_dim];
    for (pos, row) in table.chunks_exact_mut(head_dim).enumerate() {
        for (i, &f) in inv_freq.iter().enumerate().take(half) {
            let angle = pos as f32 * f;
            row[i] = angle.cos() * scale;
            row[half + i] = angle.sin() * scale;
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies() {
        let f = inv_freq(4, 10000.0, &RopeScaling::None);
        assert_eq!(f, vec![1.0, 0.01]);
    }

    /// YaRN frequencies bit for bit as transformers 5.24's `_compute_yarn_parameters`
    /// gives them for a 32-wide head: a ramp inside the head (theta 1e4, original
    /// context 128, factor 4), DeepSeek-like (factor 40 over 4096), and Qwen's long
    /// context without truncation (theta 1e6, 32768, factor 4).
    #[test]
    fn yarn_frequencies_match_transformers() {
        let yarn = |factor, original, truncate| RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: original,
            beta_fast: 32.0,
            beta_slow: 1.0,
            truncate,
            attention_factor: 1.0,
        };
        let cases: [(f32, RopeScaling, [u32; 16]); 3] = [
            (
                10000.0,
                yarn(4.0, 128.0, true),
                [
                    0x3f800000, 0x3efbedcd, 0x3e72dce8, 0x3de39ea9, 0x3d4ccccc, 0x3cacc052,
                    0x3c0186e3, 0x3b91ad39, 0x3b23d70a, 0x3ab8449c, 0x3a4f3e38, 0x39e91528,
                    0x3983126f, 0x39136a16, 0x38a5cb60, 0x383a7753,
                ],
            ),
            (
                10000.0,
                yarn(40.0, 4096.0, true),
                [
                    0x3f800000, 0x3f0ff59a, 0x3ea1e89b, 0x3e361887, 0x3dcccccd, 0x3d6655c2,
                    0x3cdef8a7, 0x3c5230cc, 0x3bbec1ae, 0x3b233574, 0x3a7ba6fa, 0x39992b29,
                    0x37d1b717, 0x376bdcf0, 0x3704a2b3, 0x36952c42,
                ],
            ),
            (
                1000000.0,
                yarn(4.0, 32768.0, false),
                [
                    0x3f800000, 0x3ed7e89b, 0x3e361887, 0x3d99940d, 0x3d0186e3, 0x3c5a7bf2,
                    0x3bb4ca38, 0x3af6dfdc, 0x3a1f3a76, 0x3939f57b, 0x383a7753, 0x379d43a4,
                    0x3704a2b2, 0x365fba4f, 0x35bcb0c1, 0x351f23e4,
                ],
            ),
        ];
        for (theta, scaling, want) in cases {
            let got: Vec<u32> = inv_freq(32, theta, &scaling)
                .iter()
                .map(|f| f.to_bits())
                .collect();
            assert_eq!(got, want, "{scaling:?}");
        }
        let table = cos_sin_table(3, 4, &[1.0, 0.5], 1.5);
        assert_eq!(table[4 + 1], 0.5f32.cos() * 1.5);
        assert_eq!(table[8 + 3], 1.0f32.sin() * 1.5);
    }

    #[test]
    fn llama3_keeps_high_and_scales_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192.0,
        };
        let base = inv_freq(128, 500000.0, &RopeScaling::None);
        let scaled = inv_freq(128, 500000.0, &s);
        assert_eq!(scaled[0], base[0]);
        assert_eq!(scaled[63], base[63] / 8.0);
        assert!(scaled.iter().zip(&base).all(|(s, b)| s <= b));
    }
}
