//! Models for novastack: Hugging Face config and weights into a runnable decoder, plus
//! the tokenizer and chat template that go with it.
//!
//! Layout: [`causal_lm`] is the seam the engine runs (`CausalLm`), [`registry`] maps a
//! checkpoint's architecture to a family in [`arch`], families are built from the
//! shared [`layers`], and [`input`] is the per-step batch every family consumes.

pub mod arch;
pub mod causal_lm;
pub mod chat_template;
#[cfg(test)]
mod chat_template_fuzz;
pub mod config;
mod control_tokens;
mod error;
pub mod gguf;
pub mod graph;
pub mod input;
pub mod kv_spec;
pub mod layers;
pub mod loader;
#[cfg(test)]
mod loader_fuzz;
pub mod random;
pub mod registry;
pub mod token_bytes;
pub mod tokenizer;
pub mod workspace;

pub use arch::llama::Llama;
pub use causal_lm::{CausalLm, Parameters};
pub use config::{Architecture, MlaConfig, ModelConfig, MoeConfig, MoeNaming, QkNorm, RopeScaling};
pub use error::{Error, Result};
pub use graph::GraphOptions;
pub use input::ForwardInput;
pub use kv_spec::{KvCacheSpec, LayerKvSpec};
pub use layers::rope;
pub use loader::{SafetensorsSource, TensorSource};
/// The storage dtype (one enum for weights, buffers and the KV cache: the kernels').
pub use novastack_kernels::Dtype;
pub use registry::BoxedModel;
pub use token_bytes::TokenBytes;
pub use tokenizer::{IncrementalDecoder, Tokenizer};

use novastack_kernels::Backend;
use std::path::Path;

/// A loaded model and its tokenizer.
pub struct LoadedModel<B: Backend> {
    pub model: BoxedModel<B>,
    pub tokenizer: Tokenizer,
}

/// Loads a GGUF file: the family named by `general.architecture` (weights dequantized
/// to f32), the tokenizer and chat template from its metadata.
pub fn load_gguf<B: Backend + 'static>(path: &Path, backend: B) -> Result<LoadedModel<B>> {
    let file = gguf::GgufFile::open(path)?;
    let model = registry::load_gguf_model(&file, backend)?;
    let tokenizer = gguf::tokenizer_from_gguf(&file)?;
    Ok(LoadedModel { model, tokenizer })
}

/// Loads a model from a Hugging Face folder or a `.gguf` file.
pub fn load_model<B: Backend + 'static>(path: &Path, backend: B) -> Result<LoadedModel<B>> {
    if path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        load_gguf(path, backend)
    } else {
        load_hf_dir(path, backend)
    }
}

/// Loads a Hugging Face model folder (config.json, safetensors, tokenizer files): the
/// family named by `architectures` in config.json.
pub fn load_hf_dir<B: Backend + 'static>(dir: &Path, backend: B) -> Result<LoadedModel<B>> {
    let model = registry::load_hf_model(dir, backend)?;
    let tokenizer = Tokenizer::from_dir(dir)?;
    Ok(LoadedModel { model, tokenizer })
}
