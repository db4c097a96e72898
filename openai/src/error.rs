//! The single place errors become HTTP: OpenAI's error JSON.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
    /// OpenAI's machine-readable `code` (null when absent).
    pub code: Option<&'static str>,
    /// Extra response headers (e.g. `Retry-After`, `x-ratelimit-*`).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status,
            message: message.into(),
            param: param.map(str::to_string),
            code: None,
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds these response headers after the ones already set.
    pub fn with_headers(
        mut self,
        headers: impl IntoIterator<Item = (&'static str, String)>,
    ) -> Self {
        self.headers.extend(headers);
        self
    }

    /// Sets the error's `code` field.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message, param)
    }

    pub fn not_found(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message, param)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "missing or invalid API key (send Authorization: Bearer KEY)",
            None,
        )
    }

    pub fn too_many(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message, None)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, message, None)
    }

    pub fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            400 | 405 | 408 | 413 => "invalid_request_error",
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            429 => "rate_limit_error",
            503 => "service_unavailable",
            502 | 504 => "upstream_error",
            _ => "server_error",
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({"error": {"message": self.message, "type": self.kind(), "param": self.param, "code": self.code}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // 503 is the server saying "not now" (loading, draining): expected, not a fault.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            tracing::debug!(status = %self.status, "{}", self.message);
        } else if self.status.is_server_error() {
            tracing::error!(status = %self.status, "{}", self.message);
        }
        let mut resp = (self.status, Json(self.body())).into_response();
        for (k, v) in &self.headers {
            if let Ok(v) = axum::http::HeaderValue::from_str(v) {
                resp.headers_mut().insert(*k, v);
            }
        }
        if self.status == StatusCode::TOO_MANY_REQUESTS
            && !resp.headers().contains_key("retry-after")
        {
            resp.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        resp
    }
}
