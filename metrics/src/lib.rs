//! Prometheus metric primitives shared by the engine (which records), the server and
//! the gateway (which render): a fixed-bucket [`Histogram`] and writers for the text
//! exposition format (version 0.0.4). No dependencies, so the engine can record
//! latencies without pulling in any HTTP stack.

mod histogram;
mod percentile;
mod text;

pub use histogram::{Histogram, LATENCY_BOUNDS};
pub use percentile::{finite_percentile, percentile};
pub use text::{escape, write_head, write_histogram, write_sample, CONTENT_TYPE};
