//! The OpenAPI 3.1 document `/openapi.json` serves, generated from the handlers'
//! annotations and the protocol types.

use super::routes::{chat, completions, health, metrics, models, tokenize};
use axum::response::{IntoResponse, Response};
use novastack_openai::protocol::*;
use serde_json::{Map, Value};

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
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(d) => d,
        Err(e) => return format!("{{\"error\": \"{e}\"}}"),
    };
    if let Some(schemas) = doc
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for schema in schemas.values_mut() {
            merge_all_of(schema);
        }
    }
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for op in paths.values_mut().filter_map(Value::as_object_mut) {
            for method in op.values_mut() {
                describe_events(method);
            }
        }
    }
    serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// A streamed answer (`text/event-stream`) is a sequence of server-sent events, and
/// its schema describes one event, as SSE-aware tools read it: a `data` string holding
/// a JSON chunk of the type the annotation names, an `{"error": ...}` object, or
/// `[DONE]` last.
fn describe_events(method: &mut Value) {
    let Some(responses) = method.get_mut("responses").and_then(Value::as_object_mut) else {
        return;
    };
    for response in responses.values_mut() {
        let Some(sse) = response.pointer_mut("/content/text~1event-stream") else {
            continue;
        };
        let chunk = sse
            .pointer("/schema/$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.rsplit('/').next())
            .unwrap_or("chunk")
            .to_string();
        sse["schema"] = serde_json::json!({
            "type": "object",
            "description": format!("One server-sent event. Its `data` is a JSON `{chunk}`, or an `{{\"error\": ...}}` object if the request fails mid-stream; the last event's `data` is `[DONE]`."),
            "required": ["data"],
            "properties": {
                "data": {"type": "string"},
                "event": {"type": "string"},
                "id": {"type": "string"},
            },
        });
    }
}

/// A body type made of flattened parts is generated as `allOf` of inline objects; the
/// server reads it as one object, so the document shows one object: the parts'
/// properties and required fields side by side.
fn merge_all_of(schema: &mut Value) {
    let Some(parts) = schema.get("allOf").and_then(Value::as_array) else {
        return;
    };
    let inline_objects = parts
        .iter()
        .all(|p| p.get("type") == Some(&Value::from("object")) && p.get("$ref").is_none());
    if !inline_objects {
        return;
    }
    let mut properties = Map::new();
    let mut required = Vec::new();
    for p in parts {
        if let Some(props) = p.get("properties").and_then(Value::as_object) {
            properties.extend(props.clone());
        }
        if let Some(r) = p.get("required").and_then(Value::as_array) {
            required.extend(r.iter().cloned());
        }
    }
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    obj.remove("allOf");
    obj.insert("type".into(), Value::from("object"));
    obj.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        obj.insert("required".into(), Value::Array(required));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Value {
        serde_json::from_str(&openapi_document()).unwrap()
    }

    /// The request bodies are the flat objects the server accepts.
    #[test]
    fn request_bodies_are_flat_objects_the_server_accepts() {
        let d = doc();
        let chat = &d["components"]["schemas"]["ChatCompletionRequest"];
        assert_eq!(chat["type"], "object", "{chat}");
        let props = chat["properties"].as_object().unwrap();
        for field in [
            "messages",
            "model",
            "max_tokens",
            "temperature",
            "top_logprobs",
        ] {
            assert!(props.contains_key(field), "{field} missing: {chat}");
        }
        assert!(!props.contains_key("chat") && !props.contains_key("common"));
        assert!(chat["required"]
            .as_array()
            .unwrap()
            .contains(&"messages".into()));
        let comp = &d["components"]["schemas"]["CompletionBody"];
        let props = comp["properties"].as_object().unwrap();
        assert!(
            props.contains_key("prompt") && props.contains_key("model"),
            "{comp}"
        );
        assert!(
            props["max_tokens"].to_string().contains("integer"),
            "{comp}"
        );
    }

    /// Every status a route answers is documented.
    #[test]
    fn every_status_the_routes_answer_is_documented() {
        let d = doc();
        let statuses = |path: &str, method: &str| -> Vec<String> {
            d["paths"][path][method]["responses"]
                .as_object()
                .unwrap_or_else(|| panic!("{method} {path}"))
                .keys()
                .cloned()
                .collect()
        };
        for path in ["/v1/chat/completions", "/v1/completions"] {
            for s in ["200", "400", "401", "404", "413", "429", "503"] {
                assert!(
                    statuses(path, "post").contains(&s.to_string()),
                    "{path} {s}"
                );
            }
        }
        for path in ["/tokenize", "/detokenize"] {
            for s in ["200", "400", "401", "404", "413", "503"] {
                assert!(
                    statuses(path, "post").contains(&s.to_string()),
                    "{path} {s}"
                );
            }
        }
        for s in ["200", "401", "404", "503"] {
            assert!(
                statuses("/v1/models/{id}", "get").contains(&s.to_string()),
                "{s}"
            );
        }
        for s in ["200", "401", "503"] {
            assert!(
                statuses("/v1/models", "get").contains(&s.to_string()),
                "{s}"
            );
        }
    }
}
