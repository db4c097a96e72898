//! A fixed-bucket histogram (Prometheus style): O(1) to record and cheap to copy, so
//! the engine thread can publish its stats every step.

/// Latency bucket upper bounds in seconds.
pub const LATENCY_BOUNDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds; a last, implicit `+Inf` bucket follows.
    pub bounds: &'static [f64],
    /// Observations per bucket (not cumulative), `bounds.len() + 1` of them.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

impl Default for Histogram {
    /// Latency buckets ([`LATENCY_BOUNDS`]).
    fn default() -> Self {
        Histogram::with_bounds(LATENCY_BOUNDS)
    }
}

impl Histogram {
    pub fn with_bounds(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let mut h = Histogram::default();
        h.observe(0.005);
        h.observe(0.0051);
        h.observe(1e9);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[LATENCY_BOUNDS.len()], 1);
        assert_eq!(h.count, 3);
    }
}
