//! Building blocks shared by the model families: each layer owns its weights, loads
//! them by Hugging Face name from a [`TensorSource`], and runs as a fixed sequence of
//! [`Backend`] ops. An architecture file (`crate::arch`) wires them into a decoder.
//!
//! Layers allocate nothing per call: the model keeps each layer kind's scratch buffers
//! in its workspace (`crate::workspace`, grown for larger batches, reused otherwise)
//! and hands them to every layer of that kind.

pub mod attention;
pub mod latent_attention;
pub mod mlp;
pub mod moe;
pub mod norm;
pub mod rope;

use crate::error::{Error, Result};
use crate::input::ForwardInput;
use crate::loader::TensorSource;
use novastack_kernels::Backend;

/// One forward pass's shared inputs, handed to every layer.
pub struct Pass<'a, B: Backend> {
    pub backend: &'a B,
    pub input: &'a ForwardInput,
    /// Rows (tokens) in the batch.
    pub rows: usize,
}

/// Reads weights of one model: tensors by name and shape, uploaded to the backend.
pub struct Weights<'a, B: Backend> {
    pub source: &'a dyn TensorSource,
    pub backend: &'a B,
    /// Bytes of the matrices uploaded so far (routed experts apart), as the backend
    /// stores them ([`Backend::weight_bytes`]).
    bytes: std::cell::Cell<u64>,
}

impl<'a, B: Backend> Weights<'a, B> {
    pub fn new(source: &'a dyn TensorSource, backend: &'a B) -> Self {
        Weights {
            source,
            backend,
            bytes: Default::default(),
        }
    }

    /// Bytes of every matrix uploaded so far but the routed experts, as stored: what a
    /// dense forward pass reads (0 where the backend does not say).
    pub fn matrix_bytes(&self) -> u64 {
        self.bytes.get()
    }

    fn counted(&self, w: B::Weight) -> B::Weight {
        self.bytes
            .set(self.bytes.get() + self.backend.weight_bytes(&w) as u64);
        w
    }

    /// The host values of tensor `name` with exactly `shape`.
    pub fn host(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        self.source.tensor(name, shape)
    }

    /// Tensor `name` with exactly `shape`, on the backend.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<B::Buf> {
        let v = self.host(name, shape)?;
        self.upload(&v)
    }

    /// Several tensors stacked row-wise into one buffer (fused projections).
    pub fn stacked(&self, parts: &[(String, Vec<usize>)]) -> Result<B::Buf> {
        let mut all = Vec::with_capacity(parts.len());
        for (name, shape) in parts {
            all.push(self.host(name, shape)?);
        }
        self.upload(&all.concat())
    }

    pub fn upload(&self, values: &[f32]) -> Result<B::Buf> {
        self.backend.upload(values).map_err(Error::from)
    }

    /// Weight matrix `name` (`[n, k]`), uploaded for the matmul ops: kept as the file
    /// stores it where the backend computes on that format, else widened to f32.
    pub fn matrix(&self, name: &str, n: usize, k: usize) -> Result<B::Weight> {
        self.stacked_matrix(&[(name.to_string(), n)], k)
    }

    /// Weight matrix `name` (`[n, k]`) widened to f32 whatever the file stores: for
    /// what must be exact beyond the weights' own rounding (a MoE router's scores).
    pub fn matrix_f32(&self, name: &str, n: usize, k: usize) -> Result<B::Weight> {
        let v = self.host(name, &[n, k])?;
        self.upload_matrix(&v, 1, n, k)
    }

    /// Weight matrices stacked row-wise into one (fused projections): `[Σ n_i, k]`,
    /// each part kept as stored (formats may differ between parts) where the backend
    /// computes on every part's format, else all widened to f32.
    pub fn stacked_matrix(&self, names: &[(String, usize)], k: usize) -> Result<B::Weight> {
        if self.backend.keeps_stored_weights() {
            let mut parts = Vec::with_capacity(names.len());
            for (name, n) in names {
                match self.source.stored(name, *n, k)? {
                    Some(p) => parts.push(p),
                    None => break,
                }
            }
            if parts.len() == names.len() {
                if let Some(w) = self.backend.upload_stored_weight(&parts, k)? {
                    return Ok(self.counted(w));
                }
            }
        }
        let mut all = Vec::with_capacity(names.len());
        for (name, n) in names {
            all.push(self.host(name, &[*n, k])?);
        }
        let n = names.iter().map(|(_, n)| n).sum();
        self.upload_matrix(&all.concat(), 1, n, k)
    }

    /// `groups` row-major `[n, k]` matrices back to back, uploaded for the matmul ops.
    pub fn upload_matrix(
        &self,
        values: &[f32],
        groups: usize,
        n: usize,
        k: usize,
    ) -> Result<B::Weight> {
        let w = self.upload_experts(values, groups, n, k)?;
        Ok(self.counted(w))
    }

    /// A MoE layer's routed experts (`groups` of `[n, k]`): as [`Weights::upload_matrix`],
    /// left out of [`Weights::matrix_bytes`] (a pass reads only the experts it routes to).
    pub fn upload_experts(
        &self,
        values: &[f32],
        groups: usize,
        n: usize,
        k: usize,
    ) -> Result<B::Weight> {
        self.backend
            .upload_weight(values, groups, n, k)
            .map_err(Error::from)
    }
}
