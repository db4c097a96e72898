//! Engine errors as HTTP: the one place the server maps an engine failure to a status.
//! (Every other rejection is built at the edge, in `validate`, as a 400 naming the
//! field; `ApiError` turns any of them into OpenAI's error JSON.)

use novastack_engine::Error;
use novastack_openai::ApiError;

/// A request the engine refused is the client's fault (400, without the engine's
/// "invalid request: " prefix); a model failure is the server's (500).
pub(crate) fn engine_error(e: Error) -> ApiError {
    match e {
        Error::Invalid(msg) => ApiError::bad_request(msg, None),
        Error::Model(e) => ApiError::new(
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            e.to_string(),
            None,
        ),
    }
}
