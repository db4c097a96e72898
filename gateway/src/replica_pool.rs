//! A model served by several OpenAI-compatible replicas (`replicas:`): which replica a
//! request goes to first (`balance`), the order of the rest (a failed attempt moves to
//! the next replica before the model's fallback chain), in-flight counts, and health
//! (active checks, and passive ejection on failed attempts).
//!
//! `prefix` keeps a table of the block hashes of prompts it routed (`prefix_blocks.rs`)
//! and sends a prompt to the replica that served its longest known prefix when that
//! prefix covers at least half of the prompt; otherwise it places the prompt by
//! consistent hashing of its first turn (`prefix_blocks::ring_key`; a ring with virtual
//! nodes, so adding or removing a replica moves only its share). The table learns a
//! placement only once the replica has answered. Either way a replica already holding more
//! than `LOAD_FACTOR` times the mean in-flight load is passed over for the next one on
//! the ring (consistent hashing with bounded loads).

use crate::config::{Balance, HealthCheckConfig};
use crate::prefix_blocks::{self, hash_str};
use crate::request::ClientRequest;
use crate::sync::lock;
use crate::upstream::Endpoint;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A replica may hold at most this times the mean in-flight load (plus one request).
pub const LOAD_FACTOR: f64 = 1.25;
/// Ring points per replica.
const VIRTUAL_NODES: usize = 100;
/// Block hashes remembered (the oldest are forgotten first).
const TABLE_CAPACITY: usize = 200_000;

pub struct Replica {
    /// As written in `replicas`; also the `x-novastack-replica` header.
    pub url: String,
    pub endpoint: Endpoint,
    /// scheme://host:port, where health checks and `/metrics` are asked.
    pub origin: String,
    in_flight: AtomicUsize,
    pub served: AtomicU64,
    pub failed: AtomicU64,
    pub ejections: AtomicU64,
    healthy: AtomicBool,
    /// Consecutive failed checks or attempts.
    failures: AtomicU32,
    /// Ejections so far: a health check that began before the latest one does not
    /// bring the replica back.
    generation: AtomicU64,
    /// Requests waiting in the replica's own queue, from its `/metrics`
    /// (`novastack_requests_waiting`), when it is a novastack.
    queued: AtomicU64,
}

impl Replica {
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Prefix table: block hash → replica that last served a prompt with that block.
#[derive(Default)]
struct PrefixTable {
    map: HashMap<u64, (usize, u64)>,
    order: VecDeque<(u64, u64)>,
    stamp: u64,
}

impl PrefixTable {
    fn record(&mut self, hashes: &[u64], replica: usize) {
        for &h in hashes {
            self.stamp += 1;
            self.map.insert(h, (replica, self.stamp));
            self.order.push_back((h, self.stamp));
        }
        while self.order.len() > TABLE_CAPACITY {
            let Some((h, s)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&h).is_some_and(|&(_, st)| st == s) {
                self.map.remove(&h);
            }
        }
    }

    /// The deepest known block: (blocks matched, replica).
    fn longest(&self, hashes: &[u64]) -> Option<(usize, usize)> {
        hashes
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, h)| self.map.get(h).map(|&(r, _)| (i + 1, r)))
    }
}

pub struct ReplicaPool {
    pub model: String,
    pub balance: Balance,
    pub health: HealthCheckConfig,
    pub replicas: Vec<Replica>,
    ring: Vec<(u64, usize)>,
    next: AtomicUsize,
    table: Mutex<PrefixTable>,
    /// When each replica's next health check is due.
    due: Mutex<Vec<Instant>>,
}

/// Where a request may go: replicas in the order to try, and (for `prefix`) its prompt
/// block hashes, learned by the pool once a replica answers.
pub struct Route {
    pub order: Vec<usize>,
    hashes: Vec<u64>,
}

/// A request's slot on a replica; frees it on drop.
pub struct ReplicaSlot {
    pool: Arc<ReplicaPool>,
    pub index: usize,
}

impl Drop for ReplicaSlot {
    fn drop(&mut self) {
        self.pool.replicas[self.index]
            .in_flight
            .fetch_sub(1, Ordering::SeqCst);
    }
}

impl ReplicaSlot {
    pub fn replica(&self) -> &Replica {
        &self.pool.replicas[self.index]
    }

    /// The answer on this replica failed after it started; true when the model may
    /// count it toward its cooldown (no replica of the pool is left).
    pub fn failed(&self, connect: bool) -> bool {
        self.pool.attempt_failed(self.index, connect);
        self.pool.all_ejected()
    }
}

/// scheme://host[:port] of a URL.
pub fn origin_of(url: &reqwest::Url) -> String {
    let mut o = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        o.push_str(&format!(":{p}"));
    }
    o
}

impl ReplicaPool {
    pub fn new(
        model: &str,
        balance: Balance,
        health: HealthCheckConfig,
        replicas: Vec<(String, String, Endpoint)>,
    ) -> Self {
        let mut ring = Vec::with_capacity(replicas.len() * VIRTUAL_NODES);
        for (i, (url, _, _)) in replicas.iter().enumerate() {
            for v in 0..VIRTUAL_NODES {
                ring.push((hash_str(&format!("{url}#{v}")), i));
            }
        }
        ring.sort_unstable();
        let n = replicas.len();
        ReplicaPool {
            model: model.to_string(),
            balance,
            health,
            replicas: replicas
                .into_iter()
                .map(|(url, origin, endpoint)| Replica {
                    url,
                    endpoint,
                    origin,
                    in_flight: AtomicUsize::new(0),
                    served: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    ejections: AtomicU64::new(0),
                    healthy: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    generation: AtomicU64::new(0),
                    queued: AtomicU64::new(0),
                })
                .collect(),
            ring,
            next: AtomicUsize::new(0),
            table: Mutex::new(PrefixTable::default()),
            due: Mutex::new(vec![Instant::now(); n]),
        }
    }

    /// Every replica, in the order attempts should try them: the balance's choice
    /// first, then the other healthy ones, then the ejected ones (tried only when no
    /// healthy one is left or answers).
    pub fn route(&self, req: &ClientRequest) -> Route {
        let hashes = if self.balance == Balance::Prefix {
            prefix_blocks::block_hashes(&prefix_blocks::render(req))
        } else {
            Vec::new()
        };
        let order = self.order(req, &hashes);
        Route { order, hashes }
    }

    fn order(&self, req: &ClientRequest, hashes: &[u64]) -> Vec<usize> {
        let n = self.replicas.len();
        let healthy: Vec<usize> = (0..n).filter(|&i| self.replicas[i].healthy()).collect();
        let candidates = if healthy.is_empty() {
            (0..n).collect()
        } else {
            healthy
        };
        let first = match self.balance {
            Balance::RoundRobin => {
                let k = self.next.fetch_add(1, Ordering::Relaxed);
                candidates[k % candidates.len()]
            }
            Balance::LeastLoaded => self.least_loaded(&candidates),
            Balance::Prefix => self.by_prefix(req, hashes, &candidates),
        };
        let mut order = vec![first];
        // The rest: candidates in ring order after the first, then the ejected.
        let start = candidates.iter().position(|&c| c == first).unwrap_or(0);
        for k in 1..candidates.len() {
            order.push(candidates[(start + k) % candidates.len()]);
        }
        for i in 0..n {
            if !order.contains(&i) {
                order.push(i);
            }
        }
        order
    }

    fn load(&self, i: usize) -> f64 {
        let r = &self.replicas[i];
        r.in_flight() as f64 + r.queued() as f64
    }

    fn least_loaded(&self, candidates: &[usize]) -> usize {
        // Ties go round robin, so an idle pool still spreads.
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let m = candidates.len();
        (0..m)
            .map(|j| candidates[(k + j) % m])
            .min_by(|&a, &b| self.load(a).total_cmp(&self.load(b)))
            .unwrap_or(candidates[0])
    }

    /// Whether replica `i` may take one more request under the bounded-load rule.
    fn under_bound(&self, i: usize, candidates: &[usize]) -> bool {
        let total: f64 = candidates.iter().map(|&c| self.load(c)).sum();
        let bound = (LOAD_FACTOR * (total + 1.0) / candidates.len() as f64).ceil();
        self.load(i) + 1.0 <= bound
    }

    fn by_prefix(&self, req: &ClientRequest, hashes: &[u64], candidates: &[usize]) -> usize {
        let known = lock(&self.table).longest(hashes);
        match known {
            Some((depth, r))
                if 2 * depth >= hashes.len()
                    && candidates.contains(&r)
                    && self.under_bound(r, candidates) =>
            {
                r
            }
            _ => self.on_ring(prefix_blocks::ring_key(req), candidates),
        }
    }

    /// The first candidate clockwise from `key` that is under its bound (the first
    /// candidate at all when none is).
    fn on_ring(&self, key: u64, candidates: &[usize]) -> usize {
        let start = self.ring.partition_point(|&(p, _)| p < key);
        let mut first = None;
        let mut seen = Vec::with_capacity(candidates.len());
        for k in 0..self.ring.len() {
            let r = self.ring[(start + k) % self.ring.len()].1;
            if !candidates.contains(&r) || seen.contains(&r) {
                continue;
            }
            seen.push(r);
            first.get_or_insert(r);
            if self.under_bound(r, candidates) {
                return r;
            }
            if seen.len() == candidates.len() {
                break;
            }
        }
        first.unwrap_or(candidates[0])
    }

    /// Takes a slot on replica `i` (counted in flight until dropped).
    pub fn take(self: &Arc<Self>, i: usize) -> ReplicaSlot {
        self.replicas[i].in_flight.fetch_add(1, Ordering::SeqCst);
        ReplicaSlot {
            pool: self.clone(),
            index: i,
        }
    }

    /// An attempt on replica `i` got an answer: for `prefix`, the replica now holds the
    /// route's prompt blocks.
    pub fn succeeded(&self, i: usize, route: &Route) {
        let r = &self.replicas[i];
        r.served.fetch_add(1, Ordering::Relaxed);
        r.failures.store(0, Ordering::SeqCst);
        if !route.hashes.is_empty() {
            lock(&self.table).record(&route.hashes, i);
        }
    }

    /// An attempt on replica `i` failed; a connection failure ejects it at once, other
    /// failures after `health_check.failures` in a row. True when this ejected it.
    pub fn attempt_failed(&self, i: usize, connect: bool) -> bool {
        let r = &self.replicas[i];
        r.failed.fetch_add(1, Ordering::Relaxed);
        let add = if connect { self.health.failures } else { 1 };
        let f = r.failures.fetch_add(add, Ordering::SeqCst) + add;
        f >= self.health.failures && self.eject(i, "failed requests")
    }

    fn eject(&self, i: usize, why: &str) -> bool {
        let r = &self.replicas[i];
        if r.healthy.swap(false, Ordering::SeqCst) {
            r.generation.fetch_add(1, Ordering::SeqCst);
            r.ejections.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(model = %self.model, replica = %r.url, "gateway: replica ejected after {why}");
            true
        } else {
            false
        }
    }

    /// Every replica is ejected.
    pub fn all_ejected(&self) -> bool {
        self.replicas.iter().all(|r| !r.healthy())
    }

    /// Runs the health checks that are due (and, for `least_loaded`, reads each
    /// replica's queue from its `/metrics`).
    pub async fn check_due(self: &Arc<Self>, client: &reqwest::Client) {
        let now = Instant::now();
        let due: Vec<usize> = {
            let mut d = lock(&self.due);
            let interval = Duration::from_secs_f64(self.health.interval_s);
            (0..self.replicas.len())
                .filter(|&i| {
                    let due = d[i] <= now;
                    if due {
                        d[i] = now + interval;
                    }
                    due
                })
                .collect()
        };
        let checks = due.into_iter().map(|i| {
            let pool = self.clone();
            async move { pool.check(client, i).await }
        });
        futures_util::future::join_all(checks).await;
    }

    async fn check(&self, client: &reqwest::Client, i: usize) {
        let r = &self.replicas[i];
        let timeout = Duration::from_secs_f64(self.health.timeout_s);
        let url = format!("{}{}", r.origin, self.health.path);
        let generation = r.generation.load(Ordering::SeqCst);
        let ok = matches!(
            tokio::time::timeout(timeout, client.get(&url).send()).await,
            Ok(Ok(resp)) if resp.status().is_success()
        );
        // A check that began before an ejection says nothing about the replica since.
        if ok && r.generation.load(Ordering::SeqCst) == generation {
            r.failures.store(0, Ordering::SeqCst);
            if !r.healthy.swap(true, Ordering::SeqCst) {
                tracing::info!(model = %self.model, replica = %r.url, "gateway: replica healthy again, back in the pool");
            }
            if self.balance == Balance::LeastLoaded {
                let m = format!("{}/metrics", r.origin);
                if let Ok(Ok(resp)) = tokio::time::timeout(timeout, client.get(&m).send()).await {
                    if let Ok(Ok(text)) = tokio::time::timeout(timeout, resp.text()).await {
                        r.queued
                            .store(queue_depth(&text).unwrap_or(0), Ordering::Relaxed);
                    }
                }
            }
        } else if !ok {
            let f = r.failures.fetch_add(1, Ordering::SeqCst) + 1;
            if f >= self.health.failures {
                self.eject(i, "failed health checks");
            }
        }
    }
}

/// The requests waiting in a novastack's queue, summed over its models, from its
/// Prometheus text (`novastack_requests_waiting`).
pub fn queue_depth(text: &str) -> Option<u64> {
    let mut sum = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("novastack_requests_waiting") else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        let v: f64 = rest.rsplit(' ').next()?.parse().ok()?;
        *sum.get_or_insert(0) += v.max(0.0) as u64;
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Transport;

    fn pool(n: usize, balance: Balance) -> Arc<ReplicaPool> {
        let reps = (0..n)
            .map(|i| {
                let url = format!("http://127.0.0.1:{}/v1", 9000 + i);
                let ep = Endpoint::new(
                    crate::providers::for_model(crate::config::Provider::Openai),
                    Transport::Http(Vec::new()),
                    None,
                );
                (url, format!("http://127.0.0.1:{}", 9000 + i), ep)
            })
            .collect();
        Arc::new(ReplicaPool::new(
            "m",
            balance,
            HealthCheckConfig::default(),
            reps,
        ))
    }

    /// Routes `req` and lets its first replica answer, as the attempt loop does.
    fn first(p: &ReplicaPool, req: &ClientRequest) -> usize {
        let r = p.route(req);
        p.succeeded(r.order[0], &r);
        r.order[0]
    }

    fn chat(system: &str, turns: &[&str]) -> ClientRequest {
        let mut msgs = vec![serde_json::json!({"role": "system", "content": system})];
        for (i, t) in turns.iter().enumerate() {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            msgs.push(serde_json::json!({"role": role, "content": t}));
        }
        let body = serde_json::json!({"model": "m", "messages": msgs}).to_string();
        crate::request::parse_request(crate::Api::Chat, body.as_bytes()).unwrap()
    }

    fn words(seed: usize, n: usize) -> String {
        (0..n)
            .map(|i| format!("w{}", (seed * 7919 + i * 31) % 1000))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn later_turns_follow_their_conversation_and_conversations_spread() {
        let p = pool(3, Balance::Prefix);
        let mut firsts = Vec::new();
        for c in 0..30 {
            let sys = words(c, 200);
            let t1 = first(&p, &chat(&sys, &["hello"]));
            firsts.push(t1);
            let t2 = first(&p, &chat(&sys, &["hello", "hi", "tell me more"]));
            let t3 = first(
                &p,
                &chat(&sys, &["hello", "hi", "tell me more", "ok", "and then?"]),
            );
            assert_eq!((t1, t1), (t2, t3), "conversation {c}");
        }
        let counts: Vec<usize> = (0..3)
            .map(|r| firsts.iter().filter(|&&x| x == r).count())
            .collect();
        assert!(counts.iter().all(|&c| c >= 5), "{counts:?}");
    }

    #[test]
    fn a_busy_replica_is_passed_over_and_ejected_ones_come_last() {
        let p = pool(3, Balance::Prefix);
        let req = chat(&words(1, 300), &["q"]);
        let home = first(&p, &req);
        // Load the home replica beyond its bound: the next request goes elsewhere.
        let _slots: Vec<_> = (0..4).map(|_| p.take(home)).collect();
        let route = p.route(&req);
        p.succeeded(route.order[0], &route);
        let order = route.order;
        let moved = order[0];
        assert_ne!(moved, home);
        assert_eq!(order.len(), 3);
        drop(_slots);
        // The prefix is now cached where it went last: it stays there.
        assert_eq!(first(&p, &req), moved);
        let home = moved;
        assert!(p.attempt_failed(home, true));
        let order = p.route(&req).order;
        assert_eq!(*order.last().unwrap(), home, "{order:?}");
        p.succeeded(home, &p.route(&req));
        assert!(
            !p.replicas[home].healthy(),
            "only a health check brings it back"
        );
    }

    #[test]
    fn round_robin_and_least_loaded() {
        let p = pool(3, Balance::RoundRobin);
        let req = chat("s", &["q"]);
        let firsts: Vec<usize> = (0..6).map(|_| first(&p, &req)).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        let p = pool(3, Balance::LeastLoaded);
        let _a = p.take(0);
        let _b = p.take(0);
        let _c = p.take(2);
        assert_eq!(first(&p, &req), 1);
        p.replicas[1].queued.store(5, Ordering::Relaxed);
        assert_eq!(first(&p, &req), 2);
    }

    #[test]
    fn queue_depth_sums_the_models() {
        let text = "# HELP novastack_requests_waiting x\nnovastack_requests_waiting{model=\"a\"} 3\nnovastack_requests_waiting{model=\"b\"} 2\nnovastack_requests_waiting_max 9\n";
        assert_eq!(queue_depth(text), Some(5));
        assert_eq!(queue_depth("nothing"), None);
    }
}
