//! Shape rules that more than one backend enforces, written once so that the CPU oracle
//! and the GPU reject exactly the same calls (a GPU kernel given these shapes would
//! read or write outside the row).

use crate::error::{ensure, Result};
use crate::{Error, KvCacheConfig, PADDING_SLOT};

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

/// `len` values from `col_offset` fit in a row of `row_stride` (cache_rows's rule).
pub(crate) fn row_in_row(
    op: &'static str,
    row_stride: usize,
    col_offset: usize,
    len: usize,
) -> Result<()> {
    ensure(col_offset + len <= row_stride, op, || {
        format!("{len} values from column {col_offset} overrun a row of {row_stride}")
    })
}

/// Every slot of a cache write is in the cache or the padding slot (the kernels trust
/// them), checked before anything is written.
pub(crate) fn slots_in_cache(
    op: &'static str,
    slot_mapping: &[u32],
    cache: &KvCacheConfig,
) -> Result<()> {
    match slot_mapping
        .iter()
        .find(|&&s| s != PADDING_SLOT && s as usize >= cache.num_slots())
    {
        Some(&s) => Err(Error::OutOfRange {
            op,
            index: s as usize,
            limit: cache.num_slots(),
        }),
        None => Ok(()),
    }
}
