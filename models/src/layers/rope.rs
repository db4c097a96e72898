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
        Ok(RotaryEmbedding {
            cos_sin: w.upload(&cos_sin_table(max_positions, rotary_dim, &inv))?,
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

/// Inverse frequencies `[head_dim / 2]`.
pub fn inv_freq(head_dim: usize, theta: f32, scaling: &RopeScaling) -> Vec<f32> {
    let base: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0f32 / theta.powf(i as f32 / head_dim as f32))
        .collect();
    match *scaling {
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
/// `cos(pos * inv_freq)` in the first half and `sin(pos * inv_freq)` in the second.
pub fn cos_sin_table(max_positions: usize, head_dim: usize, inv_freq: &[f32]) -> Vec<f32> {
    let half = head_dim / 2;
    let mut table = vec![0.0f32; max_positions * head_dim];
    for (pos, row) in table.chunks_exact_mut(head_dim).enumerate() {
        for (i, &f) in inv_freq.iter().enumerate().take(half) {
            let angle = pos as f32 * f;
            row[i] = angle.cos();
            row[half + i] = angle.sin();
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
