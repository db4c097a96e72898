//! The novastack engine: sampling and generation over a model and its paged KV cache.

pub mod block_manager;
mod error;
pub mod generate;
pub mod request;
pub mod sampler;

pub use error::{Error, Result};
pub use generate::{generate, FinishReason, GenerateOutput, GenerateParams};
pub use sampler::{Sampler, SamplingParams};
