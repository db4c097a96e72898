//! The engine's errors. Request validation failures are typed ([`RequestError`]);
//! their `Display` keeps the `invalid request: ` prefix callers have always seen.

use crate::validate::RequestError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Model(#[from] novastack_models::Error),
    /// Not `#[from]`: the request error is this error's text, not its cause, so an
    /// error chain prints it once.
    #[error("invalid request: {0}")]
    Invalid(RequestError),
    /// The engine thread is gone. (Worded as before, so the HTTP layer's text is too.)
    #[error("invalid request: the engine has stopped")]
    Stopped,
    /// A step failed for the request (a model error, as text).
    #[error("{0}")]
    Step(String),
}

impl From<RequestError> for Error {
    fn from(e: RequestError) -> Self {
        Error::Invalid(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_request_prints_once_in_an_error_chain() {
        let e = Error::from(RequestError::EmptyPrompt);
        assert_eq!(e.to_string(), "invalid request: the prompt is empty");
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(
            Error::Stopped.to_string(),
            "invalid request: the engine has stopped"
        );
    }
}
