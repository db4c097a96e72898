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
}

impl<B: Backend> Weights<'_, B> {
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

    /// Weight matrix `name` (`[n, k]`), uploaded for the matmul ops.
    pub fn matrix(&self, name: &str, n: usize, k: usize) -> Result<B::Weight> {
        let v = self.host(name, &[n, k])?;
        self.upload_matrix(&v, 1, n, k)
    }

    /// Weight matrices stacked row-wise into one (fused projections): `[Σ n_i, k]`.
    pub fn stacked_matrix(&self, names: &[(String, usize)], k: usize) -> Result<B::Weight> {
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
        self.backend
            .upload_weight(values, groups, n, k)
            .map_err(Error::from)
    }
}
