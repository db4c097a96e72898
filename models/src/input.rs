//! One step's batch as every model family sees it: the flattened tokens, their
//! positions and KV slots, the attention metadata, and which rows want logits.
//! Model-agnostic: the engine builds it, any `CausalLm` consumes it.

use novastack_kernels::{AttentionMetadata, SeqAttention};

/// One step's batch, flattened: `token_ids[i]` sits at `positions[i]` and is written to
/// KV slot `slot_mapping[i]`. Logits are computed for rows `logits_indices` only.
#[derive(Debug, Clone, Default)]
pub struct ForwardInput {
    pub token_ids: Vec<u32>,
    pub positions: Vec<u32>,
    pub slot_mapping: Vec<u32>,
    pub attention: AttentionMetadata,
    pub logits_indices: Vec<usize>,
}

impl ForwardInput {
    /// Appends one sequence's tokens at positions `start..`, their KV slots from
    /// `block_table`, and, if `want_logits`, a logits row for its last token. The one
    /// place that turns (positions, block table) into slots.
    pub fn push_seq(
        &mut self,
        tokens: &[u32],
        start: usize,
        block_table: Vec<u32>,
        block_size: usize,
        want_logits: bool,
    ) {
        let bs = block_size as u32;
        self.attention.seqs.push(SeqAttention {
            query_start: self.token_ids.len(),
            num_queries: tokens.len(),
            context_len: start + tokens.len(),
            block_table,
        });
        let table = &self.attention.seqs.last().expect("just pushed").block_table;
        for (i, &t) in tokens.iter().enumerate() {
            let pos = (start + i) as u32;
            self.token_ids.push(t);
            self.positions.push(pos);
            self.slot_mapping
                .push(table[(pos / bs) as usize] * bs + pos % bs);
        }
        if want_logits && !tokens.is_empty() {
            self.logits_indices.push(self.token_ids.len() - 1);
        }
    }

    /// Rows (tokens) in the step.
    pub fn num_tokens(&self) -> usize {
        self.token_ids.len()
    }
}
