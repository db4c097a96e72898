//! PNG plots of `bench serve` results: latency CDFs (TTFT, TPOT, ITL, E2E) and throughput
//! over time (output tokens/s and requests in flight), one line per run, so one run or
//! several runs side by side (`bench compare --plot-dir`) read the same way.
//!
//! Everything is drawn from the result JSON's per-request records, so plots can be made
//! again later from saved files. Text uses DejaVu Sans embedded in the binary (the
//! `dejavu` crate): no system fonts or fontconfig are needed.

use anyhow::{anyhow, Context, Result};
use novastack_metrics::finite_percentile;
use plotters::prelude::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::Once;

const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];
/// Points per CDF line at most (quantiles of the samples).
const CDF_POINTS: usize = 1000;

fn register_font() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .map_err(|_| anyhow!("the embedded DejaVu Sans font did not load"));
    });
    res
}

/// A run's samples, from its result JSON.
struct Series {
    label: String,
    ttft: Vec<f64>,
    tpot: Vec<f64>,
    itl: Vec<f64>,
    e2el: Vec<f64>,
    /// (seconds since the run began, tokens) per streamed chunk.
    tokens_at: Vec<(f64, f64)>,
    /// (start, end) of each successful request, seconds since the run began.
    spans: Vec<(f64, f64)>,
    duration: f64,
}

fn num(v: &Value, k: &str) -> f64 {
    v[k].as_f64().unwrap_or(0.0)
}

impl Series {
    fn from_result(label: &str, r: &Value) -> Result<Series> {
        let reqs = r["requests"]
            .as_array()
            .context("the result has no per-request records (`requests`)")?;
        let mut s = Series {
            label: label.to_string(),
            ttft: vec![],
            tpot: vec![],
            itl: vec![],
            e2el: vec![],
            tokens_at: vec![],
            spans: vec![],
            duration: num(r, "duration_s"),
        };
        for q in reqs.iter().filter(|q| q["ok"].as_bool() == Some(true)) {
            let (ttft, e2el, start) = (num(q, "ttft_ms"), num(q, "e2el_ms"), num(q, "start_s"));
            let out = num(q, "output_len");
            let itl: Vec<f64> = q["itl_ms"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default();
            s.ttft.push(ttft);
            s.e2el.push(e2el);
            if out > 1.0 {
                s.tpot.push((e2el - ttft) / (out - 1.0));
            }
            // Each chunk carries out / chunks tokens (1 for servers that stream per token).
            let per_chunk = out / (itl.len() + 1) as f64;
            let mut t = start + ttft / 1e3;
            s.tokens_at.push((t, per_chunk));
            for d in &itl {
                t += d / 1e3;
                s.tokens_at.push((t, per_chunk));
            }
            s.itl.extend(itl);
            s.spans.push((start, start + e2el / 1e3));
        }
        if s.duration <= 0.0 {
            s.duration = s.spans.iter().map(|x| x.1).fold(0.0, f64::max);
        }
        Ok(s)
    }
}

/// (x, y) points of one line.
type Points = Vec<(f64, f64)>;

/// CDF points: (value, fraction ≤ value), at most `CDF_POINTS` of them.
fn cdf(v: &[f64]) -> Vec<(f64, f64)> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return vec![];
    }
    let step = n.div_ceil(CDF_POINTS).max(1);
    let mut pts: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (v[i], (i + 1) as f64 / n as f64))
        .collect();
    pts.push((v[n - 1], 1.0));
    pts
}

/// (bin start s, output tokens/s) and (bin start s, requests in flight) per bin.
fn over_time(s: &Series, bin: f64) -> (Points, Points) {
    let nbins = ((s.duration / bin).ceil() as usize).max(1);
    let mut toks = vec![0.0; nbins];
    for &(t, n) in &s.tokens_at {
        let b = ((t / bin) as usize).min(nbins - 1);
        toks[b] += n;
    }
    let mut inflight = vec![0.0; nbins];
    for &(a, e) in &s.spans {
        // Time-weighted count of requests in flight over each bin.
        for (b, slot) in inflight.iter_mut().enumerate() {
            let (lo, hi) = (b as f64 * bin, (b + 1) as f64 * bin);
            let overlap = (e.min(hi) - a.max(lo)).max(0.0);
            *slot += overlap / bin;
        }
    }
    let at = |b: usize| b as f64 * bin;
    (
        toks.iter()
            .enumerate()
            .map(|(b, &n)| (at(b), n / bin))
            .collect(),
        inflight
            .iter()
            .enumerate()
            .map(|(b, &n)| (at(b), n))
            .collect(),
    )
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

fn draw_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// One panel: a line per run, with a legend.
fn panel(
    area: &Area,
    title: &str,
    x_label: &str,
    y_label: &str,
    lines: &[(String, Points)],
    x_max: f64,
    y_max: f64,
) -> Result<()> {
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let y_max = if y_max > 0.0 { y_max } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 13))
        .light_line_style(RGBColor(235, 235, 235))
        .draw()
        .map_err(draw_err)?;
    for (i, (label, pts)) in lines.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(draw_err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 13))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(draw_err)?;
    Ok(())
}

/// Writes `latency_cdf.png` and `throughput.png` into `dir` for these runs
/// (label, result JSON); returns the files written.
pub fn plot_runs(dir: &Path, runs: &[(String, &Value)]) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let series: Vec<Series> = runs
        .iter()
        .map(|(l, r)| Series::from_result(l, r).with_context(|| format!("run {l:?}")))
        .collect::<Result<_>>()?;

    let cdf_path = dir.join("latency_cdf.png");
    {
        let root = BitMapBackend::new(&cdf_path, (1400, 1000)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let panels = root.split_evenly((2, 2));
        type Pick = fn(&Series) -> &Vec<f64>;
        let metrics: [(&str, Pick); 4] = [
            ("Time to first token", |s| &s.ttft),
            ("Time per output token", |s| &s.tpot),
            ("Inter-token latency", |s| &s.itl),
            ("End-to-end latency", |s| &s.e2el),
        ];
        for (area, (title, pick)) in panels.iter().zip(metrics) {
            // Up to the largest p99.5 of the runs, so one outlier does not flatten the rest.
            let x_max = series
                .iter()
                .map(|s| finite_percentile(pick(s), 0.995))
                .fold(0.0, f64::max)
                * 1.05;
            let lines: Vec<(String, Points)> = series
                .iter()
                .map(|s| (s.label.clone(), cdf(pick(s))))
                .collect();
            panel(area, title, "ms", "fraction of samples", &lines, x_max, 1.0)?;
        }
        root.present().map_err(draw_err)?;
    }

    let tput_path = dir.join("throughput.png");
    {
        let root = BitMapBackend::new(&tput_path, (1400, 900)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(450);
        let dur = series.iter().map(|s| s.duration).fold(0.0, f64::max);
        // About 60 bins over the longest run, at least 0.25 s each.
        let bin = (dur / 60.0).max(0.25);
        let per: Vec<_> = series.iter().map(|s| over_time(s, bin)).collect();
        let toks: Vec<(String, Points)> = series
            .iter()
            .zip(&per)
            .map(|(s, p)| (s.label.clone(), p.0.clone()))
            .collect();
        let fl: Vec<(String, Points)> = series
            .iter()
            .zip(&per)
            .map(|(s, p)| (s.label.clone(), p.1.clone()))
            .collect();
        let ymax = |v: &[(String, Points)]| {
            v.iter()
                .flat_map(|(_, p)| p.iter().map(|x| x.1))
                .fold(0.0, f64::max)
                * 1.1
        };
        panel(
            &top,
            &format!("Output tokens per second ({bin:.2} s bins)"),
            "seconds since start",
            "tokens/s",
            &toks,
            dur,
            ymax(&toks),
        )?;
        panel(
            &bottom,
            "Requests in flight (time-weighted mean per bin)",
            "seconds since start",
            "requests",
            &fl,
            dur,
            ymax(&fl),
        )?;
        root.present().map_err(draw_err)?;
    }
    Ok(vec![cdf_path, tput_path])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn result(scale: f64) -> Value {
        let reqs: Vec<Value> = (0..50)
            .map(|i| {
                json!({"ok": true, "input_len": 10, "output_len": 8, "ttft_ms": 20.0 * scale + i as f64,
                       "e2el_ms": 100.0 * scale + i as f64, "itl_ms": vec![10.0 * scale; 7],
                       "start_s": i as f64 * 0.05, "error": null})
            })
            .chain([json!({"ok": false, "input_len": 10, "output_len": 0, "ttft_ms": 0.0,
                           "e2el_ms": 0.0, "itl_ms": [], "start_s": 0.0, "error": "x"})])
            .collect();
        json!({"duration_s": 3.0, "requests": reqs})
    }

    #[test]
    fn series_counts_tokens_and_spans() {
        let s = Series::from_result("a", &result(1.0)).unwrap();
        assert_eq!(s.ttft.len(), 50, "the failed request is left out");
        assert_eq!(s.itl.len(), 50 * 7);
        let toks: f64 = s.tokens_at.iter().map(|x| x.1).sum();
        assert!((toks - 400.0).abs() < 1e-9, "{toks}");
        assert!((s.tpot[0] - 80.0 / 7.0).abs() < 1e-9);
        let (tput, inflight) = over_time(&s, 0.5);
        let total: f64 = tput.iter().map(|x| x.1 * 0.5).sum();
        assert!(
            (total - 400.0).abs() < 1e-6,
            "every token is in a bin: {total}"
        );
        // 50 requests of ~0.1-0.15 s each over 3 s: the busy-time integral matches.
        let busy: f64 = inflight.iter().map(|x| x.1 * 0.5).sum();
        let want: f64 = s.spans.iter().map(|(a, b)| b - a).sum();
        assert!((busy - want).abs() < 1e-6, "{busy} vs {want}");
    }

    #[test]
    fn cdf_is_monotone_and_bounded() {
        let v: Vec<f64> = (0..5000).map(|i| ((i * 7919) % 5000) as f64).collect();
        let c = cdf(&v);
        assert!(c.len() <= CDF_POINTS + 1);
        assert!(c.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
        assert_eq!(c.last().unwrap(), &(4999.0, 1.0));
        assert!(cdf(&[]).is_empty());
    }

    #[test]
    fn plots_are_written_as_png() {
        let dir = std::env::temp_dir().join(format!("ns-plot-{}", std::process::id()));
        let (a, b) = (result(1.0), result(2.0));
        let files = plot_runs(&dir, &[("fast".into(), &a), ("slow".into(), &b)]).unwrap();
        for f in &files {
            let bytes = std::fs::read(f).unwrap();
            assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{}", f.display());
            assert!(bytes.len() > 10_000, "{} is nearly empty", f.display());
        }
        let err = plot_runs(&dir, &[("x".into(), &json!({}))]).unwrap_err();
        assert!(format!("{err:#}").contains("requests"), "{err:#}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
