//! The Prometheus text exposition format: HELP/TYPE heads, samples, histograms, and
//! label value escaping. Every metric name gets the `novastack_` prefix here, once.

use crate::Histogram;
use std::fmt::Write;

/// The `Content-Type` of a `/metrics` page.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value (backslash, double quote, newline).
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `# HELP novastack_{name} {help}` and `# TYPE novastack_{name} {kind}`.
pub fn write_head(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(
        out,
        "# HELP novastack_{name} {help}\n# TYPE novastack_{name} {kind}"
    );
}

/// One sample line, `labels` already formatted (`a="x",b="y"`; empty for none).
pub fn write_sample(out: &mut String, name: &str, labels: &str, v: f64) {
    let _ = if labels.is_empty() {
        writeln!(out, "novastack_{name} {v}")
    } else {
        writeln!(out, "novastack_{name}{{{labels}}} {v}")
    };
}

/// One histogram's cumulative bucket, sum and count lines (no HELP/TYPE) with `labels`.
pub fn write_histogram(out: &mut String, name: &str, labels: &str, h: &Histogram) {
    let mut cum = 0;
    for (i, c) in h.counts.iter().enumerate() {
        cum += c;
        let le = h
            .bounds
            .get(i)
            .map_or("+Inf".to_string(), |b| b.to_string());
        let _ = writeln!(out, "novastack_{name}_bucket{{{labels},le=\"{le}\"}} {cum}");
    }
    let _ = writeln!(out, "novastack_{name}_sum{{{labels}}} {}", h.sum);
    let _ = writeln!(out, "novastack_{name}_count{{{labels}}} {}", h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_lines_are_cumulative_and_end_with_inf() {
        let mut h = Histogram::with_bounds(&[1.0, 2.0]);
        h.observe(0.5);
        h.observe(1.5);
        h.observe(9.0);
        let mut out = String::new();
        write_histogram(&mut out, "x", "m=\"a\"", &h);
        assert_eq!(
            out,
            "novastack_x_bucket{m=\"a\",le=\"1\"} 1\nnovastack_x_bucket{m=\"a\",le=\"2\"} 2\n\
             novastack_x_bucket{m=\"a\",le=\"+Inf\"} 3\nnovastack_x_sum{m=\"a\"} 11\nnovastack_x_count{m=\"a\"} 3\n"
        );
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
