//! The CPU backend's matmul weights. The f32 oracle's: `[n, k]` blocks packed in column
//! panels once, at upload, for the outer-product GEMM (`simd/panel_gemm.rs`), so that no
//! step pays for a transpose and a decode step streams each weight once. A weight kept
//! in its file's precision (`upload_stored_weight`): its rows in segments, each in its
//! own format (a fused projection's parts may differ, as in llama.cpp's mixed
//! quantizations): bf16 / f16 in the same panels (widened in registers: the same bits as
//! the f32 path), or quantized blocks for the integer GEMM (`quant/`).

use super::quant::QMatrix;
use super::simd::{self, Bf16, PanelElem, F16};
use crate::error::ensure;
use crate::{Result, StoredRows, WeightFormat};

/// `groups` weights of `[n, k]` (a MoE layer's experts; one for the rest).
pub struct CpuWeight {
    groups: usize,
    n: usize,
    k: usize,
    store: Store,
}

enum Store {
    /// Each group packed in f32 column panels.
    F32(Vec<f32>),
    /// One weight (`groups == 1`), its rows in segments of stored formats.
    Native(Vec<Segment>),
}

/// Rows `row0..row0 + rows` of a weight kept as stored.
pub(crate) struct Segment {
    pub row0: usize,
    pub rows: usize,
    pub data: SegmentData,
}

pub(crate) enum SegmentData {
    F32(Vec<f32>),
    Bf16(Vec<Bf16>),
    F16(Vec<F16>),
    Quant(QMatrix),
}

impl SegmentData {
    fn format(&self) -> WeightFormat {
        match self {
            SegmentData::F32(_) => WeightFormat::F32,
            SegmentData::Bf16(_) => WeightFormat::BF16,
            SegmentData::F16(_) => WeightFormat::F16,
            SegmentData::Quant(q) => q.layout.format,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            SegmentData::F32(p) => 4 * p.len(),
            SegmentData::Bf16(p) => 2 * p.len(),
            SegmentData::F16(p) => 2 * p.len(),
            SegmentData::Quant(q) => q.bytes(),
        }
    }
}

/// The shape, not the (possibly gigabytes of) values.
impl std::fmt::Debug for CpuWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuWeight({} x [{}, {}]", self.groups, self.n, self.k)?;
        if let Store::Native(segs) = &self.store {
            for s in segs {
                write!(f, ", {} rows {}", s.rows, s.data.format())?;
            }
        }
        f.write_str(")")
    }
}

fn packed<T: PanelElem>(w: &[T], n: usize, k: usize) -> Vec<T> {
    let mut p = vec![T::ZERO; simd::panels_len(n, k)];
    if n * k > 0 {
        simd::pack_panels(w, n, k, &mut p);
    }
    p
}

fn halves<T>(bytes: &[u8], wrap: impl Fn(u16) -> T) -> Vec<T> {
    bytes
        .chunks_exact(2)
        .map(|b| wrap(u16::from_le_bytes([b[0], b[1]])))
        .collect()
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
            store: Store::F32(panels),
        })
    }

    /// One `[Σ rows, k]` weight from `parts` kept as stored, or `None` where a part's
    /// format has no kernel here (a quantized row that is not whole blocks).
    pub(crate) fn from_stored(parts: &[StoredRows], k: usize) -> Result<Option<Self>> {
        let mut segments = Vec::with_capacity(parts.len());
        let mut row0 = 0;
        for p in parts {
            let per = p.format.row_bytes(k);
            ensure(
                per.is_some_and(|b| Some(b * p.rows) == Some(p.bytes.len())),
                "upload_stored_weight",
                || {
                    format!(
                        "{} bytes of {} for {} rows of {k} values",
                        p.bytes.len(),
                        p.format,
                        p.rows
                    )
                },
            )?;
            let data = match p.format {
                WeightFormat::F32 => {
                    let v: Vec<f32> = p
                        .bytes
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .collect();
                    SegmentData::F32(packed(&v, p.rows, k))
                }
                WeightFormat::BF16 => SegmentData::Bf16(packed(&halves(&p.bytes, Bf16), p.rows, k)),
                WeightFormat::F16 => SegmentData::F16(packed(&halves(&p.bytes, F16), p.rows, k)),
                _ if !k.is_multiple_of(32) => return Ok(None),
                _ => SegmentData::Quant(QMatrix::new(p, k)?),
            };
            segments.push(Segment {
                row0,
                rows: p.rows,
                data,
            });
            row0 += p.rows;
        }
        Ok(Some(CpuWeight {
            groups: 1,
            n: row0,
            k,
            store: Store::Native(segments),
        }))
    }

    /// `(groups, n, k)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.groups, self.n, self.k)
    }

    /// Bytes of weight storage: what a pass over every group reads.
    pub fn bytes(&self) -> usize {
        match &self.store {
            Store::F32(p) => 4 * p.len(),
            Store::Native(s) => s.iter().map(|s| s.data.bytes()).sum(),
        }
    }

    /// Each segment's format and rows (one `F32` entry for the oracle's layout).
    pub fn formats(&self) -> Vec<(WeightFormat, usize)> {
        match &self.store {
            Store::F32(_) => vec![(WeightFormat::F32, self.groups * self.n)],
            Store::Native(s) => s.iter().map(|s| (s.data.format(), s.rows)).collect(),
        }
    }

    /// Group `g`'s f32 panels, for the ops that read only those (MoE experts, latent
    /// heads, the router); an error for a weight kept as stored.
    pub(crate) fn group(&self, op: &'static str, g: usize) -> Result<&[f32]> {
        match &self.store {
            Store::F32(p) => {
                let per = simd::panels_len(self.n, self.k);
                Ok(&p[g * per..(g + 1) * per])
            }
            Store::Native(_) => Err(crate::Error::Shape {
                op,
                msg: format!("{self:?} is kept as stored; {op} reads f32 weights only"),
            }),
        }
    }

    /// Every group's f32 panels, back to back (`simd::panels_len(n, k)` each).
    pub(crate) fn all_panels(&self, op: &'static str) -> Result<&[f32]> {
        self.group(op, 0)?;
        match &self.store {
            Store::F32(p) => Ok(p),
            Store::Native(_) => unreachable!("checked by group"),
        }
    }

    /// The segments of a weight kept as stored (`None` for f32 panels).
    pub(crate) fn segments(&self) -> Option<&[Segment]> {
        match &self.store {
            Store::F32(_) => None,
            Store::Native(s) => Some(s),
        }
    }

    /// Row `j` of group `g` (`k` values) into `out`: the values the matmul uses.
    pub(crate) fn row_into(&self, g: usize, j: usize, out: &mut [f32]) {
        fn from_panels<T: PanelElem>(p: &[T], k: usize, j: usize, out: &mut [f32]) {
            // Value q of column j sits at base + q * NR.
            let base = j / simd::NR * simd::NR * k + j % simd::NR;
            for (o, v) in out[..k].iter_mut().zip(p[base..].iter().step_by(simd::NR)) {
                *o = v.to_f32();
            }
        }
        let k = self.k;
        match &self.store {
            Store::F32(p) => {
                let per = simd::panels_len(self.n, k);
                from_panels(&p[g * per..(g + 1) * per], k, j, out)
            }
            Store::Native(segs) => {
                let Some(s) = segs.iter().find(|s| j < s.row0 + s.rows) else {
                    return;
                };
                let j = j - s.row0;
                match &s.data {
                    SegmentData::F32(p) => from_panels(p, k, j, out),
                    SegmentData::Bf16(p) => from_panels(p, k, j, out),
                    SegmentData::F16(p) => from_panels(p, k, j, out),
                    SegmentData::Quant(q) => q.row_into(j, out),
                }
            }
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
    use crate::cpu::quant::tests::{random_rows, QUANTIZED};
    use crate::{StoredRows, WeightFormat};

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

    /// Mixed segments read back row by row from the right one; half-precision rows widen
    /// exactly.
    #[test]
    fn segments_of_mixed_formats_read_back() {
        let k = 64;
        let bf: Vec<u8> = (0..3 * k)
            .flat_map(|i| half::bf16::from_f32(i as f32 / 8.0 - 3.0).to_le_bytes())
            .collect();
        let parts = vec![
            StoredRows::new(WeightFormat::BF16, 3, k, bf).unwrap(),
            random_rows(QUANTIZED[3], 17, k, 1),
        ];
        let w = CpuWeight::from_stored(&parts, k).unwrap().unwrap();
        assert_eq!(w.shape(), (1, 20, k));
        let mut row = vec![0.0; k];
        w.row_into(0, 2, &mut row);
        assert_eq!(row[5], (2 * k + 5) as f32 / 8.0 - 3.0);
        assert!(format!("{w:?}").contains("3 rows BF16, 17 rows Q5_0"));
        assert!(w.group("moe", 0).is_err());
        // A quantized row that is not whole blocks has no kernel here.
        let odd = StoredRows::new(WeightFormat::BF16, 1, 48, vec![0; 96]).unwrap();
        assert!(CpuWeight::from_stored(&[odd], 48).unwrap().is_some());
    }
}
