//! `POST /v1/messages`: Anthropic's Messages API over the chat route. The request is
//! translated into a chat completion request, answered by [`chat::chat_completions`],
//! and the answer (JSON or SSE) translated back; errors take Anthropic's shape.

use super::chat;
use crate::serve::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::response::Response;
use novastack_openai::anthropic_messages::{chat_body, error_response, respond};
use std::sync::Arc;

pub(crate) async fn messages(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat_body(body) {
        Ok(b) => respond(chat::chat_completions(State(state), Ok(b)).await).await,
        Err(e) => error_response(e),
    }
}
