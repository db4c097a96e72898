//! `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings`, one handler:
//! authenticate, check the request, route (to models that serve the API), take the
//! key's limits, run the attempt loop, then answer: one JSON answer (`answer.rs`), or
//! a relay of the upstream's events as chunks (`relay.rs`).

use crate::answer::{Answer, Shape};
use crate::api::Api;
use crate::attempt::attempt_chain;
use crate::relay::Relay;
use crate::request::{parse_request, request_info};
use crate::rules::{self, PlanError};
use crate::state::Gateway;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use novastack_openai::http::body_bytes;
use novastack_openai::ApiError;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

pub(crate) async fn chat_completions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    handle(gw, headers, body, Api::Chat).await
}

pub(crate) async fn completions(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    handle(gw, headers, body, Api::Completions).await
}

pub(crate) async fn embeddings(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    handle(gw, headers, body, Api::Embeddings).await
}

async fn handle(
    gw: Arc<Gateway>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    api: Api,
) -> Result<Response, ApiError> {
    let epoch = gw.epoch();
    let key = epoch.authenticate(&headers)?;
    let body = body_bytes(body)?;
    if gw.draining.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("the gateway is shutting down"));
    }
    let req = parse_request(api, &body)?;
    let info = request_info(&req, &headers, &epoch.rule_headers)?;
    let key_cfg = key.map(|i| &epoch.cfg.api_keys[i]);
    if let Some(k) = key_cfg {
        if let Some(allowed) = k.models.as_ref().filter(|a| !a.contains(&req.model)) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!(
                    "API key {:?} may not use model {:?} (allowed: {allowed:?})",
                    k.name, req.model
                ),
                Some("model"),
            ));
        }
    }
    let key_name = key_cfg.map(|k| k.name.clone());
    let mut plan = rules::plan(&epoch.cfg, &info).map_err(|e| match e {
        PlanError::UnknownModel(m) => ApiError::not_found(
            format!(
                "the model `{m}` does not exist; the gateway has {:?} and `auto`",
                epoch.cfg.models.iter().map(|m| &m.name).collect::<Vec<_>>()
            ),
            Some("model"),
        ),
        PlanError::NothingFits(why) => ApiError::bad_request(why, Some("model")),
    })?;
    // Only models that serve the API: a rule's model that does not is an error naming
    // it; fallbacks that do not are left out.
    if let Some(first) = plan.chain.first().and_then(|n| epoch.model(n)) {
        if !first.serves(api) {
            return Err(ApiError::bad_request(
                format!(
                    "model `{}` does not serve {} (its provider is {:?}; `apis` in the gateway config says what a model serves)",
                    first.name,
                    api.route(),
                    first.provider
                ),
                Some("model"),
            ));
        }
    }
    plan.chain
        .retain(|n| epoch.model(n).is_some_and(|m| m.serves(api)));
    // Tools pass through to OpenAI-compatible upstreams unchanged and are translated for
    // Anthropic ones; what Anthropic has no equivalent for is refused before any attempt.
    if let Some(field) = req.field_anthropic_lacks() {
        let anthropic = plan.chain.iter().find(|n| {
            epoch
                .model(n)
                .is_some_and(|m| m.provider == crate::config::Provider::Anthropic)
        });
        if let Some(name) = anthropic {
            return Err(ApiError::bad_request(
                match field {
                    "messages" => format!("a content part in `messages` is neither text nor `image_url`, which Anthropic's Messages API does not take, and model `{name}` is an Anthropic upstream"),
                    _ => format!("`{field}` has no equivalent in Anthropic's Messages API, and model `{name}` is an Anthropic upstream"),
                },
                Some(field),
            ));
        }
    }
    let est = req.estimated_tokens();
    // The key's limits and the first model's gate: one round trip when state is shared.
    let (rl_headers, first_gate, key_shared) = gw
        .admit(&epoch, key_cfg, est, plan.chain.first().map(String::as_str))
        .await?;
    let started = Instant::now();
    let chain = &plan.chain;
    let committed =
        match attempt_chain(&gw, &epoch, chain, &req, est, !req.stream, first_gate).await {
            Ok(c) => c,
            Err(e) => {
                let key = key_name.as_deref().map(|k| (k, key_shared));
                gw.settle(&epoch, key, None, est, 0.0);
                return Err(e.with_headers(rl_headers));
            }
        };
    let mut hdrs: Vec<(&'static str, String)> = vec![
        ("x-novastack-model", committed.name.clone()),
        ("x-novastack-attempts", committed.attempts.to_string()),
    ];
    if let Some(slot) = &committed.replica {
        hdrs.push(("x-novastack-replica", slot.replica().url.clone()));
    }
    hdrs.extend(rl_headers);
    let answer = Answer {
        gw: gw.clone(),
        shape: Shape {
            api,
            id: format!("{}-{:032x}", Shape::id_prefix(api), rand::random::<u128>()),
            created: now_s(),
            model: req.model.clone(),
        },
        model_cfg: epoch.model(&committed.name).cloned(),
        key_name,
        key_shared,
        est,
        prompt_est: info.context_length,
        started,
    };
    if !req.stream {
        let (body, cost) = answer.complete(committed);
        hdrs.push(("x-novastack-cost-usd", format!("{cost:.8}")));
        let json = [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )];
        let mut resp = (json, body).into_response();
        set_headers(&mut resp, &hdrs);
        return Ok(resp);
    }
    // Streaming: the response body itself pulls upstream events (`relay.rs`).
    let relay = Relay::new(answer, committed, req.include_usage, req.choices);
    let stream = futures_util::stream::unfold(relay, |mut r| async move {
        let span = r.span.clone();
        let ev = r.next().instrument(span).await;
        ev.map(|e| (Ok::<_, Infallible>(e), r))
    });
    let mut resp = Sse::new(stream).into_response();
    set_headers(&mut resp, &hdrs);
    Ok(resp)
}

pub(crate) use novastack_openai::protocol::unix_now as now_s;

fn set_headers(resp: &mut Response, hdrs: &[(&'static str, String)]) {
    for (k, v) in hdrs {
        if let Ok(v) = axum::http::HeaderValue::from_str(v) {
            resp.headers_mut().insert(*k, v);
        }
    }
}
