//! Models for novastack: Hugging Face config and weights into a runnable decoder, plus
//! the tokenizer and chat template that go with it.

pub mod chat_template;
pub mod config;
mod error;
pub mod llama;
pub mod loader;
pub mod random;
pub mod rope;
pub mod tokenizer;

pub use config::{Architecture, ModelConfig, RopeScaling, StorageDType};
pub use error::{Error, Result};
pub use llama::{ForwardInput, Llama};
pub use loader::{SafetensorsSource, TensorSource};
pub use tokenizer::{IncrementalDecoder, Tokenizer};

use novastack_kernels::Backend;
use std::path::Path;

/// A loaded model and its tokenizer.
pub struct LoadedModel<B: Backend> {
    pub model: Llama<B>,
    pub tokenizer: Tokenizer,
}

/// Loads a Hugging Face model folder (config.json, safetensors, tokenizer files).
pub fn load_hf_dir<B: Backend>(dir: &Path, backend: B) -> Result<LoadedModel<B>> {
    let config = ModelConfig::from_dir(dir)?;
    let source = SafetensorsSource::open_dir(dir)?;
    let model = Llama::load(config, &source, backend)?;
    let tokenizer = Tokenizer::from_dir(dir)?;
    Ok(LoadedModel { model, tokenizer })
}
