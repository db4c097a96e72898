//! GGUF v2/v3 files: metadata, tensor index and dequantization (memory-mapped), the
//! llama-family tensor mapping to Hugging Face names, and the tokenizer in the metadata.

mod dequant;
mod file;
#[cfg(test)]
mod fuzz;
mod llama;
mod tokenizer;

pub use dequant::{dequantize, GgmlType};
pub use file::{GgufFile, MetaValue, TensorInfo};
pub use llama::{config_from_gguf, GgufLlamaSource};
pub use tokenizer::tokenizer_from_gguf;
