//! The novastack engine: sampling and generation over a model and its paged KV cache.

pub mod block_manager;
pub mod bucket;
pub mod cost_model;
pub mod engine;
mod error;
pub mod gbnf;
pub mod generate;
pub mod grammar;
pub mod handle;
pub mod kv_cache_manager;
pub mod offline;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod scheduling_policy;
pub mod simulator;
pub mod validate;

pub use block_manager::BlockId;
pub use bucket::Buckets;
pub use cost_model::{CostModel, StepShape};
pub use engine::{Engine, EngineConfig, EngineStats, Histogram, TokenEvent};
pub use error::{Error, Result};
pub use generate::{generate, GenerateOutput, GenerateParams};
pub use grammar::{Constraint, Grammar, GrammarError, GrammarSpec, GrammarVocab};
pub use handle::{EngineHandle, Submission};
pub use kv_cache_manager::KvCacheManager;
pub use offline::{run_batch, SeqResult, TokenLogprobs};
pub use request::{FinishReason, RequestId, RequestParams};
pub use sampler::{Sampler, SamplingParams};
pub use scheduler::{Scheduler, SchedulerConfig, SchedulerOutput};
pub use scheduling_policy::{PrefillOrder, SchedulingPolicy, StepTime};
pub use validate::RequestError;
