//! `GET /metrics`: the Prometheus page.

use crate::serve::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            novastack_metrics::CONTENT_TYPE,
        )],
        crate::serve::metrics::render(&state),
    )
        .into_response()
}
