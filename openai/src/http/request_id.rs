//! The `x-request-id` middleware: echoes the client's id (up to 200 bytes) or makes a
//! random one, and runs the request inside a `request` tracing span carrying it, so every
//! log line of a request names it.

use axum::response::Response;
use tracing::Instrument;

/// Echoes the client's `x-request-id`, or makes one.
pub async fn request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let span = tracing::info_span!("request", id = %id);
    let mut resp = next.run(req).instrument(span).await;
    if let Ok(v) = axum::http::HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}
