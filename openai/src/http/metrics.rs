//! HTTP response counts by route template and status, shared by `serve` and the
//! gateway: the middleware that records them and their `/metrics` lines.

use novastack_metrics::{escape, write_head, write_sample};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// Responses by route and status code.
#[derive(Default)]
pub struct HttpMetrics {
    counts: Mutex<std::collections::HashMap<String, BTreeMap<u16, u64>>>,
}

impl HttpMetrics {
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
}
