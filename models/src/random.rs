//! A tensor source of deterministic random weights, for benchmarks and tests of shapes
//! for which no checkpoint is at hand.

use crate::error::Result;
use crate::loader::TensorSource;
use rayon::prelude::*;

pub struct RandomSource {
    seed: u64,
    std: f32,
}

impl RandomSource {
    pub fn new(seed: u64, std: f32) -> Self {
        RandomSource { seed, std }
    }
}

/// SplitMix64: cheap, stateless per index, so tensors fill in parallel.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl TensorSource for RandomSource {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let key = name.bytes().fold(self.seed, |h, b| splitmix(h ^ b as u64));
        // Norm weights near 1 keep activations in range; everything else uniform with `std`.
        let is_norm = name.ends_with("norm.weight");
        let amp = self.std * 3f32.sqrt();
        let mut v = vec![0.0f32; n];
        v.par_iter_mut().enumerate().for_each(|(i, x)| {
            let u = (splitmix(key ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            *x = if is_norm { 1.0 + 0.1 * u } else { amp * u };
        });
        Ok(v)
    }

    fn contains(&self, _name: &str) -> bool {
        true
    }

    fn describe(&self) -> String {
        format!("random weights (seed {})", self.seed)
    }
}
