//! The CPU backend's matmul weights: `[n, k]` blocks packed in column panels once, at
//! upload, for the outer-product GEMM (`simd/panel_gemm.rs`), so that no step pays for
//! a transpose and a decode step streams each weight once.

use super::simd;
use crate::error::ensure;
use crate::Result;

/// `groups` weights of `[n, k]` (a MoE layer's experts; one for the rest), each packed
/// in column panels.
pub struct CpuWeight {
    groups: usize,
    n: usize,
    k: usize,
    panels: Vec<f32>,
}

/// The shape, not the (possibly gigabytes of) values.
impl std::fmt::Debug for CpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuWeight({} x [{}, {}])", self.groups, self.n, self.k)
    }
}

impl CpuWeight {
    /// Packs `groups` row-major `[n, k]` blocks stored back to back in `data`.
    pub(crate) fn new(data: &[f32], groups: usize, n: usize, k: usize) -> Result<Self> {
        let need = groups.checked_mul(n).and_then(|v| v.checked_mul(k));
        ensure(need == Some(data.len()), "upload_weight", || {
            format!("{} values for {groups} x [{n}, {k}]", data.len())
        })?;
        let per = simd::panels_len(n, k);
        let mut panels = vec![0.0f32; groups * per];
        if n * k > 0 {
            for (dst, w) in panels.chunks_exact_mut(per).zip(data.chunks_exact(n * k)) {
                simd::pack_panels(w, n, k, dst);
            }
        }
        Ok(CpuWeight {
            groups,
            n,
            k,
            panels,
        })
    }

    /// `(groups, n, k)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.groups, self.n, self.k)
    }

    /// Group `g`'s panels.
    pub(crate) fn group(&self, g: usize) -> &[f32] {
        let per = simd::panels_len(self.n, self.k);
        &self.panels[g * per..(g + 1) * per]
    }

    /// Row `j` of group `g` (`k` values), copied out of its panel into `out`.
    pub(crate) fn row_into(&self, g: usize, j: usize, out: &mut [f32]) {
        // Value p of column j sits at panel_value's index: base + p * NR.
        let base = j / simd::NR * simd::NR * self.k + j % simd::NR;
        let column = self.group(g)[base..].iter().step_by(simd::NR);
        for (o, &v) in out[..self.k].iter_mut().zip(column) {
            *o = v;
        }
    }

    /// Checks that this is one `[n, k]` weight (`groups` of them), for `op`.
    pub(crate) fn check(
        &self,
        op: &'static str,
        what: &str,
        groups: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        ensure(self.shape() == (groups, n, k), op, || {
            format!(
                "{what} is {} x [{}, {}], needs {groups} x [{n}, {k}]",
                self.groups, self.n, self.k
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::CpuWeight;

    #[test]
    fn groups_pack_apart_and_read_back() {
        let (g, n, k) = (3, 5, 7);
        let data: Vec<f32> = (0..g * n * k).map(|i| i as f32).collect();
        let w = CpuWeight::new(&data, g, n, k).unwrap();
        let mut row = vec![0.0; k];
        for e in 0..g {
            for j in 0..n {
                w.row_into(e, j, &mut row);
                assert_eq!(row, data[(e * n + j) * k..(e * n + j + 1) * k]);
            }
        }
        let err = CpuWeight::new(&data[1..], g, n, k).unwrap_err().to_string();
        assert!(err.contains("104 values for 3 x [5, 7]"), "{err}");
        assert!(w.check("matmul", "w", 1, n, k).is_err());
    }
}
