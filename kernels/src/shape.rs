//! Shape rules that more than one backend enforces, written once so that the CPU oracle
//! and the GPU reject exactly the same calls (a GPU kernel given these shapes would
//! read or write outside the row).

use crate::error::{ensure, Result};

/// `num_heads` heads of `head_dim` from `col_offset` fit in a row of `row_stride` (the
/// q/k sections rope and the q/k norms work on), on every backend.
pub(crate) fn heads_in_row(
    op: &'static str,
    row_stride: usize,
    col_offset: usize,
    num_heads: usize,
    head_dim: usize,
) -> Result<()> {
    ensure(col_offset + num_heads * head_dim <= row_stride, op, || {
        "heads overrun the row".into()
    })
}

/// Rope's shape rules on every backend: heads in the row and an even rotary width no
/// wider than a head (the halves rotate in pairs).
pub(crate) fn rope_shape(
    row_stride: usize,
    col_offset: usize,
    num_heads: usize,
    head_dim: usize,
    rotary_dim: usize,
) -> Result<()> {
    ensure(
        rotary_dim.is_multiple_of(2) && rotary_dim <= head_dim,
        "rope",
        || format!("rotary_dim {rotary_dim} is odd or wider than head_dim {head_dim}"),
    )?;
    heads_in_row("rope", row_stride, col_offset, num_heads, head_dim)
}

/// reshape_and_cache's rule on every backend: the k and v sections fit in the row.
pub(crate) fn kv_in_row(row_stride: usize, k_offset: usize, slot_len: usize) -> Result<()> {
    ensure(
        k_offset + 2 * slot_len <= row_stride,
        "reshape_and_cache",
        || "k and v overrun the row".into(),
    )
}

/// The grouped GEMM's offsets: at least one expert, never decreasing.
pub(crate) fn group_offsets(op: &'static str, offsets: &[usize]) -> Result<()> {
    ensure(
        offsets.len() >= 2 && offsets.windows(2).all(|w| w[0] <= w[1]),
        op,
        || format!("offsets {offsets:?} must hold experts + 1 non-decreasing row offsets"),
    )
}

/// The combine's inputs: `top_k` sources and weights per token, every source a row of
/// the `y_rows` rows of `y`. Returns the tokens.
pub(crate) fn combine_shape(
    op: &'static str,
    top_k: usize,
    sources: &[u32],
    weights: &[f32],
    y_rows: usize,
) -> Result<usize> {
    if let Some(&s) = sources.iter().find(|&&s| s as usize >= y_rows) {
        return Err(crate::Error::OutOfRange {
            op,
            index: s as usize,
            limit: y_rows,
        });
    }
    ensure(
        top_k >= 1 && sources.len() == weights.len() && sources.len().is_multiple_of(top_k),
        op,
        || {
            format!(
                "{} sources and {} weights for top_k {top_k}",
                sources.len(),
                weights.len()
            )
        },
    )?;
    Ok(sources.len() / top_k)
}
