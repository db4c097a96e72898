//! What the OpenAI-compatible server and the gateway share: the error type and its one
//! mapping to OpenAI error JSON and HTTP status, the HTTP plumbing (auth, bodies,
//! request ids, response counts, shutdown), and the SSE wire format.
//!
//! Neither `novastack-server` nor `novastack-gateway` depends on the other; both depend
//! on this crate.

pub mod anthropic_messages;
pub mod error;
pub mod http;
pub mod protocol;
#[cfg(test)]
mod protocol_fuzz;
pub mod sse_json;
pub mod sse_parser;

pub use error::ApiError;
