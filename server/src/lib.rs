//! The novastack server: CLI commands, the embedded default model, and the
//! OpenAI-compatible HTTP API.

pub mod batch;
pub mod bench;
pub mod bench_gateway;
pub mod bench_plot;
pub mod bench_serve;
pub mod default_model;
pub mod device;
pub mod gateway;
pub mod generate;
#[cfg(any(feature = "cuda", feature = "hip"))]
pub mod gpu_check;
pub mod offline;
pub mod serve;
