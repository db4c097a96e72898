//! The OpenAPI 3.1 document `/openapi.json` serves, generated from the handlers'
//! annotations and the protocol types.

use super::routes::{chat, completions, health, metrics, models, tokenize};
use axum::response::{IntoResponse, Response};
use novastack_openai::protocol::*;

pub(crate) async fn openapi_json() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_document(),
    )
        .into_response()
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI 3.1 document for `/openapi.json`, generated from the handler
/// annotations and the protocol types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "novastack", description = "OpenAI-compatible LLM inference API. With --api-key or --api-key-file, /v1/* and the tokenize routes need `Authorization: Bearer KEY`."),
    paths(chat::chat_completions, completions::completions, models::models, models::model_by_id, tokenize::tokenize, tokenize::detokenize, health::health, health::ready, metrics::metrics),
    components(schemas(ChatCompletionRequest, CompletionBody, ChatCompletion, ChatCompletionChunk, Completion, ErrorResponse, ModelList, ModelCard, TokenizeRequest, TokenizeResponse, DetokenizeRequest, DetokenizeResponse, Usage)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

pub fn openapi_document() -> String {
    use utoipa::OpenApi;
    ApiDoc::openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}
