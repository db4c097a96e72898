//! The route table and its middleware: request ids, response counting, the body limit,
//! bearer-key authentication on the API routes, and JSON 404/405 fallbacks.

use super::routes::{chat, completions, health, messages, metrics, models, tokenize};
use super::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use novastack_openai::http::{find_key, request_id};
use novastack_openai::ApiError;
use std::sync::Arc;

pub fn app(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/models", get(models::models))
        .route("/v1/models/{id}", get(models::model_by_id))
        .route("/tokenize", post(tokenize::tokenize))
        .route("/detokenize", post(tokenize::detokenize))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .merge(protected)
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(super::openapi::openapi_json))
        .fallback(|| async { ApiError::not_found("no such route; the API is under /v1", None) })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
                None,
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_responses,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn(request_id))
        .with_state(state)
}

/// Counts responses by route template and status for `/metrics`.
async fn count_responses(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    novastack_openai::http::count_response(&state.http, req, next).await
}

/// Bearer-key check for the API routes.
async fn auth(
    State(state): State<Arc<AppState>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if state.api_keys.is_empty() || find_key(&state.api_keys, req.headers()).is_some() {
        next.run(req).await
    } else if req.uri().path() == "/v1/messages" {
        novastack_openai::anthropic_messages::error_response(ApiError::unauthorized())
    } else {
        ApiError::unauthorized().into_response()
    }
}
