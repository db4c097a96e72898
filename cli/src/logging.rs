//! Logs: `tracing` to stderr, filtered by `RUST_LOG` (e.g. `RUST_LOG=debug`,
//! `RUST_LOG=novastack_gateway=debug,info`); `info` when unset. Request handlers run in a
//! `request{id=...}` span (the `x-request-id`), so every line of a request names it.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A second init (never in the binary) is not an error worth failing over.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, never into a log file or pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}
