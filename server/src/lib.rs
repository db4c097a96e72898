//! `novastack serve`: the OpenAI-compatible HTTP API over the continuous-batching engine,
//! plus what every command that runs a model shares: the engine flags
//! ([`engine_args`]), the device switch ([`device`]) and the embedded default model
//! ([`default_model`]).
//!
//! The gateway and the benchmarks are separate crates; the `novastack` binary (`cli/`)
//! wires them together.

pub mod default_model;
pub mod device;
pub mod engine_args;
pub mod host_memory;
pub mod serve;

pub use engine_args::EngineArgs;
