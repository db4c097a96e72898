//! HTTP response counts by route template and status, shared by `serve` and the
//! gateway: the middleware that records them and their `/metrics` lines. The answers
//! the listener gives without reaching the router (over the connection cap, while
//! draining, when the drain is abandoned) are counted here too, under the route
//! [`LISTENER_ROUTE`], and broken out by [`Refusal`].

use novastack_metrics::{escape, write_head, write_sample};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

/// The route label of answers the listener gives itself (no route was matched).
pub const LISTENER_ROUTE: &str = "(listener)";

/// Why the listener answered a request (or a connection) itself, with a 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A new connection over `--max-connections`.
    ConnectionCap,
    /// A request that arrived after the shutdown signal.
    Draining,
    /// A request still running when `--shutdown-timeout` passed.
    ShutdownTimeout,
}

impl Refusal {
    const ALL: [Refusal; 3] = [
        Refusal::ConnectionCap,
        Refusal::Draining,
        Refusal::ShutdownTimeout,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::ConnectionCap => "connection_cap",
            Refusal::Draining => "draining",
            Refusal::ShutdownTimeout => "shutdown_timeout",
        }
    }
}

/// Responses by route and status code, the listener's refusals, open connections.
#[derive(Default)]
pub struct HttpMetrics {
    counts: Mutex<std::collections::HashMap<String, BTreeMap<u16, u64>>>,
    refused: [AtomicU64; 3],
    connections_open: AtomicI64,
}

impl HttpMetrics {
    /// `n` connections or requests the listener refused or cut for `why` (whether or
    /// not a 503 could still be sent: see [`HttpMetrics::listener_503`]).
    pub fn refused(&self, why: Refusal, n: u64) {
        self.refused[why as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// A 503 the listener wrote itself, counted as a response of [`LISTENER_ROUTE`].
    pub fn listener_503(&self) {
        self.record(LISTENER_ROUTE, 503);
    }

    /// How many times the listener refused for `why`.
    pub fn refusals(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    /// A connection was accepted (`+1`) or closed (`-1`); over-cap connections are not
    /// counted.
    pub fn connection(&self, delta: i64) {
        self.connections_open.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn record(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.counts.lock() {
            // No allocation once the route has been seen.
            match m.get_mut(route) {
                Some(by_status) => *by_status.entry(status).or_default() += 1,
                None => {
                    m.insert(route.to_string(), BTreeMap::from([(status, 1)]));
                }
            }
        }
    }

    /// Counts by (route, status), sorted.
    pub fn snapshot(&self) -> BTreeMap<(String, u16), u64> {
        let Ok(m) = self.counts.lock() else {
            return BTreeMap::new();
        };
        m.iter()
            .flat_map(|(r, by)| by.iter().map(move |(s, n)| ((r.clone(), *s), *n)))
            .collect()
    }
}

/// Middleware body shared by `serve` and the gateway: counts each response by its route
/// template (not the raw path, so ids do not explode the label set) and status.
pub async fn count_response(
    http: &HttpMetrics,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched".to_string(), |p| p.as_str().to_string());
    let resp = next.run(req).await;
    http.record(&route, resp.status().as_u16());
    resp
}

/// `novastack_http_requests_total{route,status}`, HELP and TYPE included.
pub fn render_http(out: &mut String, http: &HttpMetrics) {
    const NAME: &str = "http_requests_total";
    write_head(
        out,
        NAME,
        "HTTP responses by route and status code.",
        "counter",
    );
    for ((route, status), n) in http.snapshot() {
        let labels = format!("route=\"{}\",status=\"{status}\"", escape(&route));
        write_sample(out, NAME, &labels, n as f64);
    }
    const REFUSED: &str = "http_refused_total";
    write_head(
        out,
        REFUSED,
        "503s the listener answered without routing: over --max-connections, while draining, or cut by --shutdown-timeout.",
        "counter",
    );
    for why in Refusal::ALL {
        let labels = format!("reason=\"{}\"", why.label());
        write_sample(out, REFUSED, &labels, http.refusals(why) as f64);
    }
    const OPEN: &str = "http_connections_open";
    write_head(out, OPEN, "Client connections open now.", "gauge");
    write_sample(
        out,
        OPEN,
        "",
        http.connections_open.load(Ordering::Relaxed).max(0) as f64,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_count_as_listener_503s_and_by_reason() {
        let m = HttpMetrics::default();
        m.record("/v1/models", 200);
        for why in [
            Refusal::ConnectionCap,
            Refusal::ConnectionCap,
            Refusal::Draining,
        ] {
            m.refused(why, 1);
            m.listener_503();
        }
        m.connection(1);
        m.connection(1);
        m.connection(-1);
        let mut out = String::new();
        render_http(&mut out, &m);
        for line in [
            "novastack_http_requests_total{route=\"(listener)\",status=\"503\"} 3",
            "novastack_http_requests_total{route=\"/v1/models\",status=\"200\"} 1",
            "novastack_http_refused_total{reason=\"connection_cap\"} 2",
            "novastack_http_refused_total{reason=\"draining\"} 1",
            "novastack_http_refused_total{reason=\"shutdown_timeout\"} 0",
            "novastack_http_connections_open 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
    }
}
