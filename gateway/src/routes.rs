//! The HTTP surface: the router and middleware, and the small routes (readiness, the
//! metrics page, `/v1/models`). Completions and embeddings are `handler.rs`; client keys are checked
//! by `ConfigEpoch::authenticate`.

use crate::handler::{chat_completions, completions, embeddings, now_s};
use crate::metrics;
use crate::state::Gateway;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use novastack_openai::http::{count_response, render_http};
use novastack_openai::{http, ApiError};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// `POST /v1/messages`: Anthropic's Messages API over the chat route (translated in
/// and out by `novastack_openai::anthropic_messages`), so Anthropic SDK clients reach
/// any model the gateway routes to.
async fn messages(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Response {
    use novastack_openai::anthropic_messages::{chat_body, error_response, respond};
    match chat_body(body) {
        Ok(b) => respond(chat_completions(State(gw), headers, Ok(b)).await).await,
        Err(e) => error_response(e),
    }
}

pub fn app(gw: Arc<Gateway>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/messages", post(messages))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_page))
        .fallback(|| async {
            ApiError::not_found(
                "no such route; the gateway serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages and /v1/models",
                None,
            )
        })
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            count_responses,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(gw.max_body_bytes))
        .layer(axum::middleware::from_fn(http::request_id))
        .with_state(gw)
}

async fn count_responses(
    State(gw): State<Arc<Gateway>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    count_response(&gw.http, req, next).await
}

async fn ready(State(gw): State<Arc<Gateway>>) -> Result<&'static str, ApiError> {
    if gw.draining.load(Ordering::SeqCst) {
        Err(ApiError::unavailable("the gateway is shutting down"))
    } else {
        Ok("ready")
    }
}

async fn metrics_page(State(gw): State<Arc<Gateway>>) -> Response {
    let mut out = String::new();
    render_http(&mut out, &gw.http);
    let epoch = gw.epoch();
    let now = Instant::now();
    let states: Vec<_> = epoch
        .cfg
        .models
        .iter()
        .filter_map(|m| gw.model_state(&m.name).map(|s| (m.name.as_str(), s)))
        .collect();
    let rows: Vec<metrics::Row> = states
        .iter()
        .map(|(name, s)| metrics::Row {
            name,
            m: &s.metrics,
            limit: s.adaptive_limit(),
            in_flight: s.in_flight(),
            cooling: s.cooling(now).is_some(),
        })
        .collect();
    metrics::render(&mut out, &rows);
    if let Some(r) = &epoch.shared {
        metrics::render_state(&mut out, r);
    }
    let mut pools: Vec<_> = epoch.pools.values().map(|p| p.as_ref()).collect();
    if !pools.is_empty() {
        pools.sort_by(|a, b| a.model.cmp(&b.model));
        metrics::render_pools(&mut out, &pools);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

async fn models(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let epoch = gw.epoch();
    let key = epoch.authenticate(&headers)?;
    let allowed = key.and_then(|i| epoch.cfg.api_keys[i].models.clone());
    let now = now_s();
    // OpenAI's model objects (no `max_model_len`: the gateway does not know them all).
    let data: Vec<Value> = std::iter::once("auto".to_string())
        .chain(epoch.cfg.models.iter().map(|m| m.name.clone()))
        .filter(|n| allowed.as_ref().is_none_or(|a| a.contains(n)))
        .map(|id| json!({"id": id, "object": "model", "created": now, "owned_by": "novastack-gateway"}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
