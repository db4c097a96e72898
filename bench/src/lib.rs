//! `novastack bench ...`: the benchmarks, each in its own module. Performance targets
//! live here as ratios against a peer or a physical bound measured in the same run,
//! never as timed tests.

pub mod decode;
pub mod gateway;
pub mod kv_cache;
pub mod offline;
pub mod plot;
pub mod replicas;
pub mod serve;
pub mod sim;
pub mod structured;
pub mod trace;
pub mod workload;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Decode tokens/s at several batch sizes vs the memory-bandwidth bound.
    Decode(decode::DecodeArgs),
    /// Offline throughput of the batching engine on a dataset, buckets on and off.
    Offline(offline::OfflineArgs),
    /// Gateway overhead (p50/p99 added latency, max request rate) against an instant
    /// mock upstream, optionally beside another gateway such as LiteLLM.
    Gateway(gateway::GatewayBenchArgs),
    /// Replay a workload against any OpenAI-compatible server: TTFT, TPOT, ITL, E2E,
    /// throughput, goodput (vLLM's flags).
    Serve(serve::ServeBenchArgs),
    /// Ratios of two `bench serve --result-json` files.
    Compare(serve::CompareArgs),
    /// Replay a workload through the scheduler in virtual time, per scheduling policy,
    /// on a device given by its step cost: TTFT, TPOT, goodput in seconds of CPU.
    Sim(sim::SimArgs),
    /// What constrained decoding costs: tokens/s free and under a JSON schema per batch
    /// size, and the mask time per step beside the step time.
    Structured(structured::StructuredArgs),
    /// KV cache bytes per token and the tokens that fit in a memory: for a latent-attention
    /// model (DeepSeek-V3 by default), the latent cache beside per-head keys and values.
    KvCache(kv_cache::KvCacheArgs),
    /// Engine replicas behind the gateway per balance policy (prefix, least_loaded,
    /// round_robin): multi-turn conversations with shared prefixes, the replicas'
    /// prefix-cache hit rates, TTFT p50/p99 and the spread of load.
    Replicas(replicas::ReplicasArgs),
}

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Decode(args) => decode::run(args),
        BenchCommand::Offline(args) => offline::run(args),
        BenchCommand::Gateway(args) => gateway::run(args),
        BenchCommand::Serve(args) => serve::run(args),
        BenchCommand::Compare(args) => serve::compare(args),
        BenchCommand::Sim(args) => sim::run(args),
        BenchCommand::Structured(args) => structured::run(args),
        BenchCommand::KvCache(args) => kv_cache::run(args),
        BenchCommand::Replicas(args) => replicas::run(args),
    }
}
