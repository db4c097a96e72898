//! The gateway's background task: health checks of replica pools (and the queue depth
//! of `least_loaded` pools' replicas), and probing Redis while it is unreachable, so
//! shared state comes back as soon as Redis does. It reads the config epoch in force at
//! each tick, so reloads need nothing more.

use crate::state::Gateway;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the task wakes.
const TICK: Duration = Duration::from_millis(200);
/// How often an unreachable Redis is tried again.
const REDIS_RETRY: Duration = Duration::from_secs(1);

impl Gateway {
    /// Connects to Redis once (bounded by its timeout) before serving.
    pub(crate) async fn connect_shared_state(&self) {
        if let Some(r) = self.epoch().shared.clone() {
            r.probe().await;
        }
    }

    /// Runs until the process ends.
    pub(crate) async fn supervise(self: Arc<Self>) {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let mut last_probe = Instant::now();
        loop {
            tokio::time::sleep(TICK).await;
            let epoch = self.epoch();
            if let Some(r) = epoch.shared.clone() {
                if !r.is_up() && last_probe.elapsed() >= REDIS_RETRY {
                    last_probe = Instant::now();
                    tokio::spawn(async move { r.probe().await });
                }
            }
            for pool in epoch.pools.values() {
                let (pool, client) = (pool.clone(), client.clone());
                tokio::spawn(async move { pool.check_due(&client).await });
            }
        }
    }
}
