//! `/health` (liveness) and `/ready` (readiness).

use crate::serve::AppState;
use axum::extract::State;
use novastack_openai::protocol::ErrorResponse;
use novastack_openai::ApiError;
use std::sync::Arc;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "`ok`", body = String)))]
pub(crate) async fn health() -> &'static str {
    "ok"
}

/// Readiness: every model loaded, every engine alive, not shutting down.
#[utoipa::path(get, path = "/ready", responses((status = 200, description = "`ready`", body = String),
    (status = 503, description = "loading, shutting down, or an engine stopped", body = ErrorResponse)))]
pub(crate) async fn ready(State(state): State<Arc<AppState>>) -> Result<&'static str, ApiError> {
    if state.is_draining() {
        return Err(ApiError::unavailable("the server is shutting down"));
    }
    let Some(reg) = state.registry() else {
        return Err(ApiError::unavailable("the model is still loading"));
    };
    if let Some(dead) = reg.models.iter().find(|m| !m.engine.is_alive()) {
        return Err(ApiError::unavailable(format!(
            "the engine of `{}` has stopped",
            dead.id()
        )));
    }
    Ok("ready")
}
