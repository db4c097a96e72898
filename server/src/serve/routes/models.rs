//! `/v1/models` and `/v1/models/{id}`: every served name, aliases included.

use super::now;
use crate::serve::{AppState, ModelEntry};
use axum::extract::State;
use axum::Json;
use novastack_openai::protocol::{ErrorResponse, ModelCard, ModelList};
use novastack_openai::ApiError;
use std::sync::Arc;

fn model_card(m: &ModelEntry, id: &str) -> ModelCard {
    ModelCard {
        id: id.to_string(),
        object: "model".into(),
        created: now(),
        owned_by: "novastack".into(),
        max_model_len: m.max_context,
    }
}

#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "A served model name or alias")),
    responses((status = 200, body = ModelCard),
        (status = 401, description = "A missing or wrong API key", body = ErrorResponse),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 503, description = "The model is still loading", body = ErrorResponse)))]
pub(crate) async fn model_by_id(
    State(state): State<Arc<AppState>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<Json<ModelCard>, ApiError> {
    let m = state.model(Some(&id))?;
    Ok(Json(model_card(&m, &id)))
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, body = ModelList),
    (status = 401, description = "A missing or wrong API key", body = ErrorResponse),
    (status = 503, description = "The model is still loading", body = ErrorResponse)))]
pub(crate) async fn models(
    State(state): State<Arc<AppState>>,
) -> Result<Json<ModelList>, ApiError> {
    let Some(reg) = state.registry() else {
        return Err(ApiError::unavailable(
            "the model is still loading; retry shortly",
        ));
    };
    // Every name, aliases included, so clients can check any name they use.
    let data = reg
        .models
        .iter()
        .flat_map(|m| m.names.iter().map(move |n| model_card(m, n)))
        .collect();
    Ok(Json(ModelList {
        object: "list".into(),
        data,
    }))
}
