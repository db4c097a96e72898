//! The storage type of a buffer: what its bytes mean. One enum for the whole crate, so
//! a buffer, a kernel variant and a GEMM agree on it by type rather than by convention.
//! Math is f32 inside every op whatever the storage; the host always sees f32.
//!
//! Public for the other crates: `models` reads a checkpoint's `torch_dtype` into it and
//! sizes KV caches with it. Quantized block formats (GGUF Q8_0, Q4_K, ...) will be new
//! variants: hence `#[non_exhaustive]`, and [`Dtype::bytes`] sizes a whole buffer rather
//! than assuming a fixed size per value.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// Bytes per value (for the scalar types every variant is today).
    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    /// Bytes that `n` values occupy: the one size rule allocations use, so that a block
    /// format (bytes per block of values) changes this function and nothing else.
    pub fn bytes(self, n: usize) -> usize {
        n * self.size()
    }

    /// The suffix of this dtype's kernel variants (`rms_norm_bf16`), and its name.
    pub fn suffix(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
            Dtype::Bf16 => "bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Dtype> {
        match s {
            "f32" | "float32" => Some(Dtype::F32),
            "f16" | "float16" | "half" => Some(Dtype::F16),
            "bf16" | "bfloat16" => Some(Dtype::Bf16),
            _ => None,
        }
    }

    /// `data` in this storage type, little-endian (f16/bf16 round to nearest).
    pub fn to_bytes(self, data: &[f32]) -> Vec<u8> {
        match self {
            Dtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Dtype::F16 => data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
            Dtype::Bf16 => data
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect(),
        }
    }

    /// The first `n` values of `bytes`, widened to f32 (exact).
    pub fn from_bytes(self, bytes: &[u8], n: usize) -> Vec<f32> {
        match self {
            Dtype::F32 => bytes[..n * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes[..n * 2]
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::Bf16 => bytes[..n * 2]
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
        }
    }

    /// `data` as a buffer of this type stores it: what a device holds after an upload,
    /// so that an oracle can be fed exactly the same values.
    pub fn round(self, data: &[f32]) -> Vec<f32> {
        data.iter().map(|&v| self.round_one(v)).collect()
    }

    /// One value as this type stores it (the rounding of [`Dtype::to_bytes`]).
    pub fn round_one(self, v: f32) -> f32 {
        match self {
            Dtype::F32 => v,
            Dtype::F16 => half::f16::from_f32(v).to_f32(),
            Dtype::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.suffix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_round_trips() {
        let v = [1.0f32, -2.5, 0.125, 1024.0];
        for d in [Dtype::F32, Dtype::F16, Dtype::Bf16] {
            let back = d.from_bytes(&d.to_bytes(&v), v.len());
            assert_eq!(back, v, "{d:?}");
            assert_eq!(d.bytes(v.len()), d.to_bytes(&v).len());
        }
        assert_eq!(Dtype::parse("bfloat16"), Some(Dtype::Bf16));
        assert_eq!(Dtype::parse("f8"), None);
    }

    #[test]
    fn round_is_what_storage_keeps() {
        let v = [1.0f32 + 1.0 / 1024.0, 0.1, 3.0e-8];
        assert_eq!(Dtype::F32.round(&v), v);
        for d in [Dtype::F16, Dtype::Bf16] {
            let r = d.round(&v);
            assert_ne!(r, v, "{d}");
            assert_eq!(d.round(&r), r, "{d}: rounding twice changes nothing");
            assert_eq!(r, d.from_bytes(&d.to_bytes(&v), v.len()), "{d}: as stored");
        }
        assert_eq!(Dtype::Bf16.to_string(), "bf16");
    }
}
