//! The one attempt loop: for each model of the chain, skip it while it cools down or
//! its own RPM/TPM is spent; otherwise wait for a slot under its adaptive concurrency
//! limit and send, retrying retryable failures with backoff, then fall back to the next
//! model. An attempt commits once the upstream's first event is in: nothing has reached
//! the client before that, so everything before it can be retried.
//!
//! One deadline bounds the whole loop (`retry.deadline_s`, by default twice the
//! largest `timeout_s` in the chain): slot waits, backoff and the wait for an answer to
//! start all end there, so hanging upstreams cost one deadline, not attempts × timeout.

use crate::limiter::Gate;
use crate::limits::retry_after_secs;
use crate::metrics::UpstreamMetrics;
use crate::model_state::{ModelState, Permit};
use crate::policy::{self, FailureKind};
use crate::providers::{UpError, UpEvent};
use crate::replica_pool::ReplicaSlot;
use crate::request::ClientRequest;
use crate::state::{ConfigEpoch, Gateway};
use crate::upstream::{self, AnswerStream};
use axum::http::StatusCode;
use novastack_openai::ApiError;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant as TokioInstant;

/// What the attempt loop hands back once an upstream has started answering.
pub(crate) struct Committed {
    /// The model that answers.
    pub name: String,
    pub state: Arc<ModelState>,
    /// The slot under the model's concurrency limit, held until the answer is done.
    pub _permit: Permit,
    /// The replica answering, for a model served by a pool (its in-flight slot).
    pub replica: Option<ReplicaSlot>,
    /// The model's RPM/TPM reservation is in Redis (else in this process).
    pub shared: bool,
    pub stream: AnswerStream,
    /// Streaming: the first event. Non-streaming: every event.
    pub events: Vec<UpEvent>,
    pub attempts: u32,
}

/// The longest wait for a slot under a model's concurrency limit.
const MAX_SLOT_WAIT_S: f64 = 30.0;

/// Tries `chain` for `req`, which reserves `est_tokens` of each upstream's TPM.
/// `collect`: read the whole answer inside the loop (non-streaming clients), so a
/// failure anywhere in it can still be retried. `first_gate`: the first model's gate,
/// already taken with the client key's limits (one round trip to shared state).
pub(crate) async fn attempt_chain(
    gw: &Gateway,
    epoch: &ConfigEpoch,
    chain: &[String],
    req: &ClientRequest,
    est_tokens: f64,
    collect: bool,
    mut first_gate: Option<Gate>,
) -> Result<Committed, ApiError> {
    let retry = &epoch.cfg.retry;
    let deadline_d = deadline(epoch, chain);
    let deadline = TokioInstant::now() + deadline_d;
    let past_deadline = |attempts: u32, last: Option<UpError>| {
        let last = last.map_or(String::new(), |e| format!("; last: {}", e.message));
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "no answer within the {deadline_d:?} deadline (retry.deadline_s) after {attempts} attempt(s){last}"
            ),
            None,
        )
        .with_header("x-novastack-attempts", attempts.to_string())
    };
    let mut attempts = 0u32;
    let mut last: Option<UpError> = None;
    let mut min_cooling: Option<Duration> = None;
    let mut rate_wait: Option<Duration> = None;
    for (ci, name) in chain.iter().enumerate() {
        let prefetched = if ci == 0 { first_gate.take() } else { None };
        let (Some(m), Some(state)) = (epoch.model(name), gw.model_state(name)) else {
            continue;
        };
        let pool = epoch.pools.get(name);
        let single = epoch.endpoints.get(name);
        if pool.is_none() && single.is_none() {
            continue;
        }
        // A pool tries each replica once (the balance's choice first) before the
        // model's fallbacks; retries beyond that go round the replicas again.
        let route = pool.map(|p| p.route(req));
        let order = route.as_ref().map_or(&[][..], |r| &r.order[..]);
        let tries = retry.max_attempts.max(order.len() as u32);
        let mut prefetched = prefetched;
        for try_i in 0..tries {
            let gate = match prefetched.take() {
                Some(g) => g,
                None => gw.gate(epoch, name, &state, est_tokens).await?,
            };
            let shared = match gate {
                Gate::Open(shared) => shared,
                Gate::Cooling(rem) => {
                    min_cooling = Some(min_cooling.map_or(rem, |c| c.min(rem)));
                    break;
                }
                Gate::Spent(w) => {
                    rate_wait = Some(rate_wait.map_or(w, |r| r.min(w)));
                    break; // this upstream's own RPM/TPM is spent: next in the chain
                }
            };
            let mine = Some((name.as_str(), state.as_ref(), shared));
            if try_i == 0 && ci > 0 && attempts > 0 {
                UpstreamMetrics::inc(&state.metrics.fallbacks);
            }
            let left = deadline.saturating_duration_since(TokioInstant::now());
            if left.is_zero() {
                gw.settle(epoch, None, mine, est_tokens, 0.0);
                return Err(past_deadline(attempts, last));
            }
            let wait = upstream::idle_timeout(m)
                .min(Duration::from_secs_f64(MAX_SLOT_WAIT_S))
                .min(left);
            let Some(permit) = state.acquire(wait).await else {
                gw.settle(epoch, None, mine, est_tokens, 0.0);
                last = Some(UpError::new(
                    FailureKind::Timeout,
                    format!("no free slot for {name} within {wait:?}"),
                ));
                break;
            };
            let slot = pool.map(|p| p.take(order[try_i as usize % order.len()]));
            let Some(endpoint) = slot.as_ref().map(|s| &s.replica().endpoint).or(single) else {
                break;
            };
            attempts += 1;
            UpstreamMetrics::inc(&state.metrics.requests);
            if try_i > 0 {
                UpstreamMetrics::inc(&state.metrics.retries);
            }
            let result = match open_by(deadline, deadline_d, endpoint.open(m, req)).await {
                Err(e) => Err(e),
                Ok(mut stream) => first_events(&mut stream, collect, deadline, deadline_d)
                    .await
                    .map(|events| (stream, events)),
            };
            let e = match result {
                Ok((stream, events)) => {
                    if let (Some(p), Some(s), Some(r)) = (pool, &slot, &route) {
                        p.succeeded(s.index, r);
                    }
                    return Ok(Committed {
                        name: name.clone(),
                        state: state.clone(),
                        _permit: permit,
                        replica: slot,
                        shared,
                        stream,
                        events,
                        attempts,
                    });
                }
                Err(e) => e,
            };
            gw.settle(epoch, None, mine, est_tokens, 0.0);
            // A pool's replica faults eject the replica and cool the model down only once
            // no replica is left; other failures (429, 4xx) count as for any model.
            let fault = replica_fault(&e.kind);
            let count = match (pool, &slot) {
                (Some(p), Some(s)) => {
                    if fault {
                        p.attempt_failed(s.index, e.kind == FailureKind::Connect);
                    }
                    !fault || p.all_ejected()
                }
                _ => true,
            };
            // A replica fault moves on to the pool's next replica whatever `retry_on` says.
            let next_replica = fault && (try_i as usize + 1) < order.len();
            drop(slot);
            let cooled = gw.model_failed(epoch, name, &state, &e.kind, count).await;
            if let FailureKind::Status(s) = e.kind {
                if (400..500).contains(&s) && ![401, 403, 404, 408, 409, 429].contains(&s) {
                    // The request itself is bad: the next model would refuse it too.
                    let status = StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_REQUEST);
                    return Err(ApiError::new(status, e.message, None)
                        .with_header("x-novastack-attempts", attempts.to_string()));
                }
            }
            let retryable = policy::is_retryable(&e.kind, retry) || next_replica;
            let too_long = e
                .retry_after
                .is_some_and(|ra| ra.as_secs_f64() > retry.max_retry_after_s);
            let give_up_here = !retryable || cooled || too_long || try_i + 1 == tries;
            let retry_after = e.retry_after;
            last = Some(e);
            if give_up_here {
                break;
            }
            // The next replica of a pool is tried at once; the same upstream again
            // after a backoff.
            if (try_i as usize + 1) < order.len() {
                continue;
            }
            let pause = policy::backoff(retry, try_i, retry_after, rand::random::<f64>());
            if TokioInstant::now() + pause >= deadline {
                return Err(past_deadline(attempts, last));
            }
            tokio::time::sleep(pause).await;
        }
    }
    Err(give_up(chain, attempts, last, min_cooling, rate_wait))
}

/// A failure that says something about the replica rather than the request: no
/// connection, a broken or hanging answer, or a 5xx.
pub(crate) fn replica_fault(kind: &FailureKind) -> bool {
    match kind {
        FailureKind::Connect | FailureKind::Protocol | FailureKind::Timeout => true,
        FailureKind::Status(s) => *s >= 500,
    }
}

/// The loop's deadline: `retry.deadline_s`, or twice the largest `timeout_s` of the
/// chain's models.
fn deadline(epoch: &ConfigEpoch, chain: &[String]) -> Duration {
    if let Some(d) = epoch.cfg.retry.deadline_s {
        return Duration::from_secs_f64(d);
    }
    let longest = chain
        .iter()
        .filter_map(|n| epoch.model(n))
        .map(upstream::idle_timeout)
        .max()
        .unwrap_or(Duration::from_secs_f64(upstream::DEFAULT_TIMEOUT_S));
    longest * 2
}

/// The failure of an attempt cut by the loop's deadline.
fn deadline_error(d: Duration) -> UpError {
    UpError::new(
        FailureKind::Timeout,
        format!("the {d:?} deadline across attempts (retry.deadline_s) passed"),
    )
}

/// `fut`, unless `deadline` comes first.
async fn open_by<T>(
    deadline: TokioInstant,
    d: Duration,
    fut: impl std::future::Future<Output = Result<T, UpError>>,
) -> Result<T, UpError> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .unwrap_or_else(|_| Err(deadline_error(d)))
}

/// Reads the answer's first content event (`collect`: every event); usage may come
/// before it. An answer with no event at all is a failure. The first content event
/// must come before `deadline`; the rest of a collected answer is bounded by the
/// upstream's own timeout.
async fn first_events(
    stream: &mut AnswerStream,
    collect: bool,
    deadline: TokioInstant,
    d: Duration,
) -> Result<Vec<UpEvent>, UpError> {
    let mut events = Vec::new();
    let mut started = false;
    loop {
        let next = if started {
            stream.next().await
        } else {
            open_by(deadline, d, async { Ok(stream.next().await) }).await?
        };
        let Some(ev) = next else { break };
        let ev = ev?;
        let content = !matches!(ev, UpEvent::Usage { .. });
        started |= content;
        events.push(ev);
        if content && !collect {
            break;
        }
    }
    if events.is_empty() {
        return Err(UpError::new(
            FailureKind::Protocol,
            "the upstream sent an empty answer",
        ));
    }
    Ok(events)
}

/// The error once no model of the chain answered: 503 while every one cools down, 429
/// when their rate limits are spent, otherwise the last failure (502, 504 or 429).
fn give_up(
    chain: &[String],
    attempts: u32,
    last: Option<UpError>,
    min_cooling: Option<Duration>,
    rate_wait: Option<Duration>,
) -> ApiError {
    let attempts_h = ("x-novastack-attempts", attempts.to_string());
    if attempts == 0 {
        if let Some(c) = min_cooling.filter(|_| rate_wait.is_none()) {
            return ApiError::unavailable(format!(
                "every candidate model ({}) is cooling down after repeated failures",
                chain.join(", ")
            ))
            .with_header("retry-after", retry_after_secs(c))
            .with_headers([attempts_h]);
        }
        if let Some(w) = rate_wait {
            return ApiError::too_many(format!(
                "the upstream rate limits of {} are spent",
                chain.join(", ")
            ))
            .with_header("retry-after", retry_after_secs(w))
            .with_headers([attempts_h]);
        }
    }
    let Some(e) = last else {
        return ApiError::unavailable("no model could take the request").with_headers([attempts_h]);
    };
    let (status, extra) = match e.kind {
        FailureKind::Status(429) => (
            StatusCode::TOO_MANY_REQUESTS,
            e.retry_after.map(|r| ("retry-after", retry_after_secs(r))),
        ),
        FailureKind::Timeout => (StatusCode::GATEWAY_TIMEOUT, None),
        _ => (StatusCode::BAD_GATEWAY, None),
    };
    ApiError::new(
        status,
        format!("all attempts failed ({attempts}); last: {}", e.message),
        None,
    )
    .with_headers([attempts_h])
    .with_headers(extra)
}
