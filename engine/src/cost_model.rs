//! The step cost model: predicts how long a step takes from what it computes, learned
//! online from measured step times, so the scheduler can fill a step up to a time
//! budget without assuming any device's speed.
//!
//! A step's time is modelled as `c0 + c1·prefill + c2·decode + c3·attention`:
//! - `c0`: what every step pays whatever it holds (reading the weights once, launches);
//! - `prefill`: prompt tokens computed (chunks), `decode`: one-token sequences;
//! - `attention`: query × key pairs, `Σ len·(start + len)` over the step's sequences.
//!
//! The coefficients are a least-squares fit over the steps seen, older steps decaying
//! (a forgetting factor), constrained non-negative. Until enough distinct steps have
//! been seen, [`CostModel::predict`] returns `None` and the scheduler falls back to its
//! token budget.

/// What a step computes, the model's inputs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepShape {
    /// Prompt (or recomputed) tokens in chunks longer than one token or not sampling.
    pub prefill_tokens: usize,
    /// Sequences computing their one next token.
    pub decode_tokens: usize,
    /// Σ over sequences of `len · (start + len)`: query × key pairs of attention.
    pub attention_pairs: u64,
}

impl StepShape {
    /// Adds one sequence's chunk: `len` tokens from position `start`.
    pub fn add(&mut self, start: usize, len: usize, decode: bool) {
        if decode {
            self.decode_tokens += len;
        } else {
            self.prefill_tokens += len;
        }
        self.attention_pairs += (len as u64) * (start + len) as u64;
    }

    pub fn is_empty(&self) -> bool {
        self.prefill_tokens == 0 && self.decode_tokens == 0
    }

    /// Features, scaled so that each is O(1) for a typical step (keeps the normal
    /// equations well conditioned).
    fn features(&self) -> [f64; N] {
        [
            1.0,
            self.prefill_tokens as f64 / 1e3,
            self.decode_tokens as f64 / 1e2,
            self.attention_pairs as f64 / 1e6,
        ]
    }
}

const N: usize = 4;

/// Online non-negative least squares over step shapes and their measured seconds.
#[derive(Debug, Clone)]
pub struct CostModel {
    /// Σ w·x·xᵀ and Σ w·x·y, decayed by `forget` per observation.
    xtx: [[f64; N]; N],
    xty: [f64; N],
    coef: [f64; N],
    forget: f64,
    /// Observations so far, and how many had prefill / decode work (the fit needs both
    /// kinds before it is trusted).
    seen: u64,
    seen_prefill: u64,
    seen_decode: u64,
    /// Steps (mean absolute relative error of predictions made before each was seen).
    err_sum: f64,
    err_n: u64,
}

impl Default for CostModel {
    fn default() -> Self {
        CostModel::new(0.995)
    }
}

impl CostModel {
    /// `forget` in (0, 1]: each new step multiplies the weight of all earlier ones by it
    /// (0.995: the last ~200 steps dominate).
    pub fn new(forget: f64) -> Self {
        CostModel {
            xtx: [[0.0; N]; N],
            xty: [0.0; N],
            coef: [0.0; N],
            forget: forget.clamp(0.5, 1.0),
            seen: 0,
            seen_prefill: 0,
            seen_decode: 0,
            err_sum: 0.0,
            err_n: 0,
        }
    }

    /// A model fixed at these coefficients (seconds: per step, per prefill token, per
    /// decode token, per attention pair), already trusted: the simulator's ground truth
    /// and tests.
    pub fn fixed(per_step: f64, per_prefill: f64, per_decode: f64, per_pair: f64) -> Self {
        let mut m = CostModel::new(1.0);
        m.coef = [
            per_step,
            per_prefill * 1e3,
            per_decode * 1e2,
            per_pair * 1e6,
        ];
        m.seen = u64::MAX / 2;
        m.seen_prefill = m.seen;
        m.seen_decode = m.seen;
        m
    }

    /// The coefficients in seconds: per step, per prefill token, per decode token, per
    /// attention pair.
    pub fn coefficients(&self) -> [f64; N] {
        [
            self.coef[0],
            self.coef[1] / 1e3,
            self.coef[2] / 1e2,
            self.coef[3] / 1e6,
        ]
    }

    /// Whether predictions can be trusted: enough steps of both kinds seen.
    pub fn is_ready(&self) -> bool {
        self.seen >= 8 && self.seen_prefill >= 2 && self.seen_decode >= 2
    }

    /// Mean relative error of the predictions made before each step was observed.
    pub fn mean_relative_error(&self) -> Option<f64> {
        (self.err_n > 0).then(|| self.err_sum / self.err_n as f64)
    }

    /// Predicted seconds for a step of `shape`; `None` until [`CostModel::is_ready`].
    pub fn predict(&self, shape: &StepShape) -> Option<f64> {
        self.is_ready().then(|| self.eval(shape))
    }

    fn eval(&self, shape: &StepShape) -> f64 {
        let x = shape.features();
        (0..N).map(|i| self.coef[i] * x[i]).sum::<f64>().max(0.0)
    }

    /// Learns from one step that took `seconds`.
    pub fn observe(&mut self, shape: &StepShape, seconds: f64) {
        if shape.is_empty() || !seconds.is_finite() || seconds < 0.0 {
            return;
        }
        if self.is_ready() && seconds > 0.0 {
            self.err_sum += ((self.eval(shape) - seconds) / seconds).abs();
            self.err_n += 1;
        }
        let x = shape.features();
        for i in 0..N {
            for j in 0..N {
                self.xtx[i][j] = self.xtx[i][j] * self.forget + x[i] * x[j];
            }
            self.xty[i] = self.xty[i] * self.forget + x[i] * seconds;
        }
        self.seen += 1;
        self.seen_prefill += u64::from(shape.prefill_tokens > 0);
        self.seen_decode += u64::from(shape.decode_tokens > 0);
        self.coef = self.solve();
    }

    /// Non-negative least squares by active sets: solve, drop the most negative
    /// coefficient, solve again (at most N rounds). A small ridge keeps features that
    /// never varied (say, no attention yet) at zero instead of singular.
    fn solve(&self) -> [f64; N] {
        let scale = (0..N)
            .map(|i| self.xtx[i][i])
            .fold(0.0, f64::max)
            .max(1e-12);
        let ridge = 1e-9 * scale;
        let mut active = [true; N];
        let mut coef = [0.0; N];
        for _ in 0..N {
            let idx: Vec<usize> = (0..N).filter(|&i| active[i]).collect();
            let k = idx.len();
            let mut a = vec![vec![0.0; k + 1]; k];
            for (r, &i) in idx.iter().enumerate() {
                for (c, &j) in idx.iter().enumerate() {
                    a[r][c] = self.xtx[i][j] + if i == j { ridge } else { 0.0 };
                }
                a[r][k] = self.xty[i];
            }
            let Some(sol) = gauss(a) else {
                return self.coef;
            };
            coef = [0.0; N];
            for (r, &i) in idx.iter().enumerate() {
                coef[i] = sol[r];
            }
            match (0..N)
                .filter(|&i| active[i] && coef[i] < 0.0)
                .min_by(|&a, &b| coef[a].total_cmp(&coef[b]))
            {
                Some(worst) => active[worst] = false,
                None => return coef,
            }
        }
        coef.map(|c| c.max(0.0))
    }
}

/// Solves the augmented system `a` (k rows of k + 1) by Gaussian elimination with
/// partial pivoting; `None` if singular.
fn gauss(mut a: Vec<Vec<f64>>) -> Option<Vec<f64>> {
    let k = a.len();
    for col in 0..k {
        let piv = (col..k).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[piv][col].abs() < 1e-300 {
            return None;
        }
        a.swap(col, piv);
        let pivot_row = a[col].clone();
        for (r, row) in a.iter_mut().enumerate() {
            if r != col {
                let f = row[col] / pivot_row[col];
                for (x, p) in row.iter_mut().zip(&pivot_row).skip(col) {
                    *x -= f * p;
                }
            }
        }
    }
    Some((0..k).map(|r| a[r][k] / a[r][r]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(prefill: usize, start: usize, decodes: usize, ctx: usize) -> StepShape {
        let mut s = StepShape::default();
        if prefill > 0 {
            s.add(start, prefill, false);
        }
        for _ in 0..decodes {
            s.add(ctx, 1, true);
        }
        s
    }

    #[test]
    fn learns_the_coefficients_of_a_linear_device() {
        let truth = CostModel::fixed(0.030, 0.0008, 0.002, 2e-9);
        let mut m = CostModel::default();
        assert_eq!(m.predict(&shape(100, 0, 4, 200)), None);
        let mut rng = 12345u64;
        let mut next = |n: u64| {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (rng >> 33) % n
        };
        for _ in 0..200 {
            let s = shape(
                next(3) as usize * next(512) as usize,
                next(1000) as usize,
                next(17) as usize,
                next(2000) as usize,
            );
            if !s.is_empty() {
                m.observe(&s, truth.predict(&s).unwrap());
            }
        }
        let (got, want) = (m.coefficients(), truth.coefficients());
        for i in 0..4 {
            assert!(
                (got[i] - want[i]).abs() <= 1e-3 * want[i].abs() + 1e-12,
                "{got:?} vs {want:?}"
            );
        }
        let s = shape(300, 50, 16, 700);
        let (p, t) = (m.predict(&s).unwrap(), truth.predict(&s).unwrap());
        assert!((p - t).abs() < 1e-6 * t.max(1.0), "{p} vs {t}");
        assert!(m.mean_relative_error().unwrap() < 0.05);
    }

    #[test]
    fn stays_non_negative_and_ignores_garbage() {
        let mut m = CostModel::default();
        // Noisy steps where more tokens seem faster: no coefficient goes negative.
        for i in 0..50 {
            let s = shape(if i % 2 == 0 { 400 } else { 0 }, 0, 1 + i % 5, 100);
            m.observe(&s, if i % 2 == 0 { 0.010 } else { 0.012 });
        }
        m.observe(&shape(10, 0, 1, 1), f64::NAN);
        m.observe(&shape(10, 0, 1, 1), -1.0);
        m.observe(&StepShape::default(), 5.0);
        assert!(
            m.coefficients().iter().all(|&c| c >= 0.0),
            "{:?}",
            m.coefficients()
        );
        let p = m.predict(&shape(400, 0, 1, 100)).unwrap();
        assert!(p.is_finite() && p >= 0.0);
    }

    #[test]
    fn tracks_a_device_whose_speed_changes() {
        let mut m = CostModel::new(0.95);
        let slow = CostModel::fixed(0.050, 0.002, 0.004, 0.0);
        let fast = CostModel::fixed(0.010, 0.0005, 0.001, 0.0);
        for (i, truth) in std::iter::repeat_n(&slow, 100)
            .chain(std::iter::repeat_n(&fast, 200))
            .enumerate()
        {
            let s = shape((i % 3) * 100, 0, 1 + i % 7, 10);
            m.observe(&s, truth.predict(&s).unwrap());
        }
        let s = shape(200, 0, 8, 10);
        let (p, t) = (m.predict(&s).unwrap(), fast.predict(&s).unwrap());
        assert!((p - t).abs() < 0.02 * t, "{p} vs {t}");
    }
}
