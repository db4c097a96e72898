//! Models for novastack: Hugging Face config and weights into a runnable decoder, plus
//! the tokenizer and chat template that go with it.

pub mod chat_template;
pub mod config;
mod error;
pub mod gguf;
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

/// Loads a GGUF file (llama architecture): weights dequantized to f32, the tokenizer and
/// chat template from its metadata.
pub fn load_gguf<B: Backend>(path: &Path, backend: B) -> Result<LoadedModel<B>> {
    let file = gguf::GgufFile::open(path)?;
    let config = gguf::config_from_gguf(&file)?;
    let source = gguf::GgufLlamaSource::new(&file, &config);
    let model = Llama::load(config, &source, backend)?;
    let tokenizer = gguf::tokenizer_from_gguf(&file)?;
    Ok(LoadedModel { model, tokenizer })
}

/// Loads a model from a Hugging Face folder or a `.gguf` file.
pub fn load_model<B: Backend>(path: &Path, backend: B) -> Result<LoadedModel<B>> {
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

/// Loads a Hugging Face model folder (config.json, safetensors, tokenizer files).
pub fn load_hf_dir<B: Backend>(dir: &Path, backend: B) -> Result<LoadedModel<B>> {
    let config = ModelConfig::from_dir(dir)?;
    let source = SafetensorsSource::open_dir(dir)?;
    let model = Llama::load(config, &source, backend)?;
    let tokenizer = Tokenizer::from_dir(dir)?;
    Ok(LoadedModel { model, tokenizer })
}
