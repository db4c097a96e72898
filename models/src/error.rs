use std::path::PathBuf;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: invalid JSON: {error}")]
    Json {
        path: PathBuf,
        error: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {msg}")]
    Config {
        path: PathBuf,
        field: String,
        msg: String,
    },
    #[error("{path}: unsupported architecture {found:?} (supported: {supported})")]
    UnknownArchitecture {
        path: PathBuf,
        found: String,
        supported: String,
    },
    #[error("{path}: bad GGUF file: {msg}")]
    Gguf { path: PathBuf, msg: String },
    #[error("{path}: corrupt safetensors file: {msg}")]
    Safetensors { path: PathBuf, msg: String },
    #[error("missing tensor `{name}` (looked in {looked_in})")]
    MissingTensor { name: String, looked_in: String },
    #[error("tensor `{name}` in {path}: shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("tensor `{name}` in {path}: unsupported dtype {dtype}")]
    DType {
        name: String,
        path: PathBuf,
        dtype: String,
    },
    #[error("{path}: {msg}")]
    Tokenizer { path: PathBuf, msg: String },
    #[error("chat template: {0}")]
    Template(String),
    #[error("tokenizer: {0}")]
    Encode(String),
    #[error("forward: {0}")]
    Backend(#[from] novastack_kernels::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|error| Error::Io {
        path: path.to_path_buf(),
        error,
    })
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let bytes = read_file(path)?;
    serde_json::from_slice(&bytes).map_err(|error| Error::Json {
        path: path.to_path_buf(),
        error,
    })
}
