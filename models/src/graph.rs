//! Decode graphs, the model's side: which steps go through a graph, how a step is
//! padded to its batch-size bucket, and the order of capture and replay. The backend
//! does the rest (`novastack_kernels::gpu::graph`): it captures, checks a step against
//! the graph launch for launch, and replays it only when nothing but buffer contents
//! differ.
//!
//! A *decode step* is one where every sequence has exactly one new token and every row
//! wants logits. It is padded to the smallest bucket that holds it (1, 2, 4, .. 256
//! sequences), and every block table to one width per bucket (a power of two of at
//! least [`MIN_WIDTH`] blocks, grown when a context needs more, up to
//! [`GraphOptions::max_blocks`]), so that the launches (grids, argument structs,
//! metadata layouts) are the same from step to step and only the metadata written into
//! the fixed buffers changes. Padding rows are harmless: token 0 at position 0, slot
//! [`PADDING_SLOT`] (the cache write skips it), one token of context in block 0 (a
//! finite read; the attention check wants a query's context to hold it); their
//! logits are ignored. Anything else (prefill, mixed steps, a batch over the largest
//! bucket, a context over `max_blocks`) runs eagerly.
//!
//! Order: the first decode step of a bucket runs eagerly (which also sizes the
//! workspace and scratch, and lets the vendor BLAS set up), then the same step is
//! captured (capture runs nothing). Later steps are checked and replayed; a step that
//! does not match (its context crossed into another split-K partition, a buffer grew)
//! runs eagerly and is captured again.
//!
//! The padded batch is what the GEMMs see, so on a vendor BLAS that picks its
//! algorithm by the row count a graph step may round differently from an eager step of
//! the unpadded batch (vLLM's graphs have the same property); the simulated device's
//! GEMM is batch-invariant, so there graph and eager steps are bit for bit the same.

use crate::error::Result;
use crate::input::ForwardInput;
use novastack_kernels::{Backend, GraphPhase, SeqAttention, PADDING_SLOT};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

/// The narrowest block table a graph is captured for.
pub const MIN_WIDTH: usize = 16;

/// Which decode steps use graphs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphOptions {
    /// Batch sizes graphs are captured for, ascending; a batch is padded up to the
    /// first that holds it, and a larger one runs eagerly.
    pub buckets: Vec<usize>,
    /// The widest block table (in blocks) a graph is captured for; a step with a
    /// longer context runs eagerly.
    pub max_blocks: usize,
}

impl Default for GraphOptions {
    fn default() -> Self {
        GraphOptions {
            buckets: vec![1, 2, 4, 8, 16, 32, 64, 128, 256],
            max_blocks: 1024,
        }
    }
}

/// A decode step padded to its bucket.
pub struct Padded {
    pub input: ForwardInput,
    pub bucket: usize,
}

/// A model's graph bookkeeping: the block-table width of each bucket, and the buckets
/// whose capture failed (they run eagerly from then on).
#[derive(Default)]
pub struct DecodeGraphs {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    options: GraphOptions,
    widths: HashMap<usize, usize>,
    failed: HashSet<usize>,
}

impl DecodeGraphs {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_options(&self, options: GraphOptions) {
        let mut s = self.state();
        *s = State {
            options,
            ..State::default()
        };
    }

    /// `input` padded to its bucket, if it is a decode step that a graph can run.
    pub fn plan(&self, input: &ForwardInput) -> Option<Padded> {
        let n = input.num_tokens();
        let seqs = &input.attention.seqs;
        if n == 0
            || seqs.len() != n
            || seqs.iter().any(|s| s.num_queries != 1)
            || !input.logits_indices.iter().copied().eq(0..n)
        {
            return None;
        }
        let mut st = self.state();
        let bucket = *st.options.buckets.iter().find(|&&b| b >= n)?;
        if st.failed.contains(&bucket) {
            return None;
        }
        let needed = seqs.iter().map(|s| s.block_table.len()).max()?;
        if needed > st.options.max_blocks {
            return None;
        }
        let max_blocks = st.options.max_blocks;
        let width = st.widths.entry(bucket).or_insert(0);
        if needed > *width {
            *width = needed.next_power_of_two().max(MIN_WIDTH).min(max_blocks);
        }
        let width = *width;
        let mut p = ForwardInput {
            token_ids: input.token_ids.clone(),
            positions: input.positions.clone(),
            slot_mapping: input.slot_mapping.clone(),
            attention: input.attention.clone(),
            logits_indices: (0..bucket).collect(),
        };
        for s in &mut p.attention.seqs {
            s.block_table.resize(width, 0);
        }
        for i in n..bucket {
            p.token_ids.push(0);
            p.positions.push(0);
            p.slot_mapping.push(PADDING_SLOT);
            p.attention.seqs.push(SeqAttention {
                query_start: i,
                num_queries: 1,
                context_len: 1,
                block_table: vec![0; width],
            });
        }
        Some(Padded { input: p, bucket })
    }

    /// Runs the padded step through its bucket's graph: `forward` (the model's forward
    /// into its fixed buffers) in a check pass and a replay when the step matches the
    /// graph; otherwise eagerly, followed by a capture of the same step.
    pub fn run<B: Backend + ?Sized>(
        &self,
        b: &B,
        step: &Padded,
        forward: &mut dyn FnMut(&ForwardInput) -> Result<()>,
    ) -> Result<()> {
        let key = step.bucket as u64;
        if b.graph_begin(key, GraphPhase::Replay)? {
            if let Err(e) = forward(&step.input) {
                b.graph_abort();
                return Err(e);
            }
            if b.graph_end()? {
                return Ok(());
            }
        }
        forward(&step.input)?;
        if b.graph_begin(key, GraphPhase::Capture)? {
            let captured = forward(&step.input);
            let ended = match captured {
                Ok(()) => b.graph_end().map_err(crate::Error::from),
                Err(e) => {
                    b.graph_abort();
                    Err(e)
                }
            };
            if let Err(e) = ended {
                // The step itself ran; only its graph failed. Stop trying this bucket.
                tracing::warn!(bucket = step.bucket, "decode graph capture failed: {e}");
                self.state().failed.insert(step.bucket);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(contexts: &[usize], block: usize) -> ForwardInput {
        let mut input = ForwardInput::default();
        for (i, &c) in contexts.iter().enumerate() {
            let table: Vec<u32> = (0..c.div_ceil(block) as u32)
                .map(|b| b + 10 * i as u32)
                .collect();
            input.push_seq(&[7], c - 1, table, block, true);
        }
        input
    }

    #[test]
    fn decode_steps_pad_to_their_bucket_with_harmless_rows() {
        let g = DecodeGraphs::default();
        let p = g.plan(&decode(&[5, 40, 17], 4)).unwrap();
        assert_eq!(p.bucket, 4);
        let i = &p.input;
        assert_eq!(i.token_ids, [7, 7, 7, 0]);
        assert_eq!(i.slot_mapping[3], PADDING_SLOT);
        assert_eq!(i.logits_indices, [0, 1, 2, 3]);
        // 40 tokens in blocks of 4 need 10: the width is 16 for every sequence.
        assert!(i.attention.seqs.iter().all(|s| s.block_table.len() == 16));
        let pad = &i.attention.seqs[3];
        assert_eq!(
            (pad.query_start, pad.num_queries, pad.context_len),
            (3, 1, 1)
        );
        // The real rows are unchanged but for the zeros after their blocks.
        assert_eq!(i.attention.seqs[0].block_table[..2], [0, 1]);
        assert_eq!(i.positions[..3], [4, 39, 16]);
        let cache = novastack_kernels::KvCacheConfig {
            num_blocks: 64,
            block_size: 4,
            num_kv_heads: 1,
            head_dim: 2,
        };
        i.attention.validate(2, 1, &cache, 8, 8).unwrap();
    }

    #[test]
    fn the_width_grows_by_powers_of_two_and_other_steps_run_eagerly() {
        let g = DecodeGraphs::default();
        g.set_options(GraphOptions {
            buckets: vec![1, 2],
            max_blocks: 32,
        });
        let width = |p: Padded| p.input.attention.seqs[0].block_table.len();
        assert_eq!(width(g.plan(&decode(&[4], 4)).unwrap()), 16);
        assert_eq!(width(g.plan(&decode(&[4 * 17], 4)).unwrap()), 32);
        // Once grown, a bucket keeps its width (its graph's layout).
        assert_eq!(width(g.plan(&decode(&[4], 4)).unwrap()), 32);
        assert!(g.plan(&decode(&[4 * 33], 4)).is_none(), "past max_blocks");
        assert!(
            g.plan(&decode(&[4, 4, 4], 4)).is_none(),
            "past the largest bucket"
        );
        let mut prefill = ForwardInput::default();
        prefill.push_seq(&[1, 2], 0, vec![0], 4, true);
        assert!(g.plan(&prefill).is_none());
        let mut no_logits = ForwardInput::default();
        no_logits.push_seq(&[1], 3, vec![0], 4, false);
        assert!(g.plan(&no_logits).is_none());
        assert!(g.plan(&ForwardInput::default()).is_none());
    }
}
