//! The one percentile rule every benchmark and the scheduler simulator report with: nearest rank on the sorted
//! samples, `NaN` when there are none (a missing value, never a fake zero).

/// The `q`-quantile (0..=1) of `sorted` (ascending): the sample at rank
/// `round((n - 1) q)`. `NaN` when `sorted` is empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize]
}

/// [`percentile`] of the finite values of `values`, in any order.
pub fn finite_percentile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    v.sort_by(f64::total_cmp);
    percentile(&v, q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_and_nan_when_empty() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&v, 0.5), 3.0);
        assert_eq!(percentile(&v, 0.99), 5.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(
            finite_percentile(&[f64::NAN, 3.0, 1.0, f64::INFINITY], 1.0),
            3.0
        );
        assert!(finite_percentile(&[f64::NAN], 0.5).is_nan());
    }
}
