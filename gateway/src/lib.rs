//! The gateway: one OpenAI-compatible endpoint in front of many models, local (our
//! engine, in-process) and remote (OpenAI-compatible or Anthropic upstreams).
//!
//! `novastack serve --config FILE.yaml`. For each request (chat, text completion or
//! embeddings): authenticate the client
//! key and apply its RPM/TPM limits and allowed models; route (rules → a chain of
//! models); then one attempt loop retries retryable failures with backoff, falls back
//! along the chain, skips models cooling down, and waits for a slot under each
//! upstream's adaptive concurrency limit. Nothing reaches the client before the first
//! upstream event, so everything before it can be retried; after it, a failure ends the
//! stream with an explicit error chunk. SIGHUP reloads the config; requests in flight
//! keep the config epoch they started with.
//!
//! | module | what it holds |
//! | --- | --- |
//! | `config` | the YAML language, `when:` conditions included, parsed and checked once |
//! | `rules` | routing: rule evaluation, cheapest capable, cost estimates |
//! | `policy` | retryability, backoff, cooldown, token buckets, AIMD (pure, clock passed in) |
//! | `limits` | RPM/TPM reservations, for client keys and upstreams alike |
//! | `limiter` | where those decisions are made: shared state in Redis, or this process |
//! | `redis_state` | the Redis side: Lua scripts for buckets, cooldowns, adaptive limits |
//! | `replica_pool` | a model served by several replicas: balance, order, health |
//! | `prefix_blocks` | a prompt's leading blocks, hashed for prefix-aware routing |
//! | `model_state` | per-model runtime state: concurrency, cooldown, limits, metrics |
//! | `state` | the `Gateway`: the config epoch in force, reloads, local models |
//! | `routes` | the router, readiness, `/metrics`, `/v1/models`, authentication |
//! | `api` | which OpenAI API a request is for, and which models serve it |
//! | `request` | the client's request, checked, and what routing looks at |
//! | `attempt` | the one attempt loop (retry, fallback, cooldown, concurrency) |
//! | `handler` | `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` |
//! | `answer` | an answer in the client's API shape, and its bookkeeping |
//! | `relay` | a streamed answer, relayed chunk by chunk |
//! | `tally` | per-choice finish reasons and tool calls, usage |
//! | `providers` | how each kind of upstream is spoken to (one file each) |
//! | `upstream` | sending an attempt and reading its answer, for every provider |
//! | `redact` | keeping upstream keys out of errors, logs and completion text |
//! | `server` | the serve loop, SIGHUP reloads, `run` |

mod answer;
pub mod api;
mod attempt;
pub mod config;
mod handler;
mod limiter;
mod limits;
mod metrics;
mod model_state;
pub mod policy;
mod prefix_blocks;
pub mod providers;
pub mod redact;
mod redis_state;
mod relay;
mod replica_pool;
mod request;
mod routes;
pub mod rules;
mod server;
mod state;
mod supervise;
mod sync;
mod tally;
pub mod upstream;

pub use api::Api;
pub use limits::RateLimits;
pub use model_state::ModelState;
pub use request::ClientRequest;
pub use routes::app;
pub use server::{run, serve, serve_with_limits};
pub use state::{no_local_models, ConfigEpoch, Env, Gateway, GatewayArgs, LocalLoader};
