//! `POST /v1/messages`: Anthropic's Messages API over the chat route. The request is
//! translated into a chat completion request, answered by [`chat::chat_completions`],
//! and the answer (JSON or SSE) translated back; errors take Anthropic's shape.

use super::chat;
use crate::serve::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use novastack_openai::anthropic_messages::{chat_request, error_response, respond};
use novastack_openai::http::body_bytes;
use novastack_openai::ApiError;
use std::sync::Arc;

pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let translated = body_bytes(body).and_then(|b| {
        let v: serde_json::Value = serde_json::from_slice(&b)
            .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}"), None))?;
        let chat = chat_request(&v)?;
        Ok(Bytes::from(
            serde_json::to_vec(&chat).expect("JSON serializes"),
        ))
    });
    match translated {
        Ok(b) => respond(chat::chat_completions(State(state), Ok(b)).await).await,
        Err(e) => error_response(e),
    }
}
