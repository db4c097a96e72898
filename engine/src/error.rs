//! The engine's errors. Request validation failures are typed ([`RequestError`]);
//! their `Display` keeps the `invalid request: ` prefix callers have always seen.

use crate::validate::RequestError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] novastack_models::Error),
    #[error("invalid request: {0}")]
    Invalid(#[from] RequestError),
    /// The engine thread is gone. (Worded as before, so the HTTP layer's text is too.)
    #[error("invalid request: the engine has stopped")]
    Stopped,
    /// A step failed for the request (a model error, as text).
    #[error("{0}")]
    Step(String),
}

pub type Result<T> = std::result::Result<T, Error>;
