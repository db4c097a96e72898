//! Engine errors as HTTP: the one place the server maps an engine failure to a status.
//! (Every other rejection is a [`ValidationError`](super::validation_error) built at the
//! edge; `ApiError` turns any of them into OpenAI's error JSON.)

use super::validation_error::ValidationError;
use axum::http::StatusCode;
use novastack_engine::{Error, RequestError};
use novastack_openai::ApiError;

/// A request the engine refused is the client's fault (400, as the edge would have
/// said it); a stopped engine is 503; a duplicate id or a model failure is the
/// server's (500).
pub(crate) fn engine_error(e: Error) -> ApiError {
    match e {
        Error::Invalid(RequestError::DuplicateId(id)) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("duplicate request id {id}"),
            None,
        ),
        Error::Invalid(r) => ValidationError::engine(r, None).into(),
        Error::Stopped => ApiError::unavailable("the engine has stopped"),
        Error::Model(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string(), None),
        Error::Step(msg) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, msg, None),
    }
}
