//! HTTP plumbing shared by `serve` and the gateway: the accept loop (connection limits,
//! deadlines, drain), authentication, body limits and JSON parsing, request ids,
//! response counting and the shutdown signal.

pub mod auth;
pub mod body;
pub mod body_deadline;
mod connection;
pub mod connection_limits;
mod drain;
pub mod listener;
pub mod metrics;
pub mod request_id;
pub mod shutdown;

pub use auth::find_key;
pub use body::{body_bytes, from_value, json_object};
pub use body_deadline::RequestBodyTimeout;
pub use connection_limits::ConnectionLimits;
pub use listener::{serve, DrainOutcome};
pub use metrics::{count_response, render_http, HttpMetrics, Refusal, LISTENER_ROUTE};
pub use request_id::request_id;
pub use shutdown::shutdown_signal;
