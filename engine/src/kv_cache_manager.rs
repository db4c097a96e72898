//! Per-request KV bookkeeping over the block pool (vLLM v1's `KVCacheManager`): each
//! request's block table and the hash chain of its full blocks. The scheduler decides
//! who runs and asks this manager for blocks; it never touches hashes or tables.
//!
//! - [`KvCacheManager::admit`]: on (re)admission, take the cached blocks holding the
//!   longest run of the request's known full blocks (prefix caching).
//! - [`KvCacheManager::allocate_slots`]: grow a table to cover a number of tokens,
//!   all or nothing.
//! - [`KvCacheManager::cache_full_blocks`]: after a step, register the request's newly
//!   completed blocks so later requests can reuse them.
//! - [`KvCacheManager::free`]: give every block back (finish, abort, preemption).

use crate::block_manager::{BlockId, BlockManager};
use crate::request::{Request, RequestId};
use std::collections::HashMap;

/// One request's blocks.
#[derive(Default)]
struct SeqBlocks {
    /// Blocks in position order: token `i` lives in `table[i / block_size]`.
    table: Vec<BlockId>,
    /// Hashes of the registered full blocks, a prefix of `table`.
    hashes: Vec<u64>,
}

pub struct KvCacheManager {
    pool: BlockManager,
    seqs: HashMap<RequestId, SeqBlocks>,
}

impl KvCacheManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        KvCacheManager {
            pool: BlockManager::new(num_blocks, block_size),
            seqs: HashMap::new(),
        }
    }

    pub fn block_size(&self) -> usize {
        self.pool.block_size()
    }

    pub fn num_blocks(&self) -> usize {
        self.pool.num_blocks()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.pool.num_free_blocks()
    }

    /// Prefix-cache lookups so far: blocks asked for.
    pub fn num_queried_blocks(&self) -> u64 {
        self.pool.num_queried_blocks
    }

    /// Prefix-cache lookups so far: blocks found.
    pub fn num_hit_blocks(&self) -> u64 {
        self.pool.num_hit_blocks
    }

    /// The request's blocks in position order (empty if it holds none).
    pub fn block_table(&self, id: RequestId) -> &[BlockId] {
        self.seqs.get(&id).map_or(&[], |s| s.table.as_slice())
    }

    /// On (re)admission of a request holding no blocks: reuses cached full blocks of
    /// its known `tokens`, always leaving at least one token to compute so that the
    /// step yields logits. Returns the number of tokens found in the cache.
    pub fn admit(&mut self, id: RequestId, tokens: &[u32]) -> usize {
        let bs = self.pool.block_size();
        debug_assert!(self.block_table(id).is_empty(), "{id} already holds blocks");
        let max_blocks = tokens.len().saturating_sub(1) / bs;
        let hits = self.pool.lookup_prefix(tokens, max_blocks);
        let mut seq = SeqBlocks::default();
        for (b, h) in hits {
            self.pool.take(b);
            seq.table.push(b);
            seq.hashes.push(h);
        }
        let cached = seq.table.len() * bs;
        self.seqs.insert(id, seq);
        cached
    }

    /// Makes the request's table cover `num_tokens` tokens, or returns false with
    /// nothing allocated.
    pub fn allocate_slots(&mut self, id: RequestId, num_tokens: usize) -> bool {
        let have = self.block_table(id).len();
        let need = num_tokens
            .div_ceil(self.pool.block_size())
            .saturating_sub(have);
        if need > self.pool.num_free_blocks() {
            return false;
        }
        let new: Vec<BlockId> = (0..need).filter_map(|_| self.pool.allocate()).collect();
        self.seqs.entry(id).or_default().table.extend(new);
        true
    }

    /// Registers the request's full blocks among its `num_computed_tokens` in the
    /// prefix cache (each block's hash chains from the previous one).
    pub fn cache_full_blocks(&mut self, r: &Request) {
        let bs = self.pool.block_size();
        let seq = self.seqs.entry(r.id).or_default();
        while seq.hashes.len() < r.num_computed_tokens / bs {
            let i = seq.hashes.len();
            let parent = if i == 0 { 0 } else { seq.hashes[i - 1] };
            let toks: Vec<u32> = (i * bs..(i + 1) * bs).map(|t| r.token(t)).collect();
            seq.hashes
                .push(self.pool.register(seq.table[i], parent, &toks));
        }
    }

    /// Gives back every block of the request (last first, so that its tail is evicted
    /// first); its cached content stays reusable until evicted.
    pub fn free(&mut self, id: RequestId) {
        if let Some(seq) = self.seqs.remove(&id) {
            self.pool.release_all(&seq.table);
        }
    }

    /// Requests holding blocks (or an empty table).
    pub fn requests(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.seqs.keys().copied()
    }

    /// Checks the pool's ref counts against the tables held.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.pool
            .check_invariants(self.seqs.values().map(|s| s.table.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::RequestParams;

    fn request(id: u64, prompt: Vec<u32>) -> Request {
        Request::new(RequestId(id), prompt, RequestParams::default(), 0.0, 0)
    }

    #[test]
    fn a_second_request_reuses_the_first_ones_full_blocks() {
        let mut kv = KvCacheManager::new(8, 4);
        let mut a = request(1, (0..10).collect());
        assert_eq!(kv.admit(a.id, &a.all_tokens()), 0);
        assert!(kv.allocate_slots(a.id, 10));
        assert_eq!(kv.block_table(a.id).len(), 3);
        a.num_computed_tokens = 10;
        kv.cache_full_blocks(&a);
        kv.check_invariants().unwrap();

        // Same first 9 tokens: the two full blocks come from the cache, shared.
        let b = request(2, (0..9).chain([99]).collect());
        assert_eq!(kv.admit(b.id, &b.all_tokens()), 8);
        assert_eq!(kv.block_table(b.id), &kv.block_table(a.id)[..2]);
        assert!(kv.allocate_slots(b.id, 10));
        assert_eq!(kv.num_free_blocks(), 8 - 4);
        // Two cacheable blocks each: both missed for `a` (an empty cache), both hit for `b`.
        assert_eq!((kv.num_queried_blocks(), kv.num_hit_blocks()), (4, 2));

        kv.free(a.id);
        kv.free(b.id);
        assert_eq!(kv.num_free_blocks(), 8);
        assert_eq!(kv.requests().count(), 0);
        kv.check_invariants().unwrap();
    }

    #[test]
    fn allocation_is_all_or_nothing_and_a_prompt_keeps_one_token_to_compute() {
        let mut kv = KvCacheManager::new(2, 4);
        let mut a = request(1, (0..8).collect());
        kv.admit(a.id, &a.all_tokens());
        assert!(!kv.allocate_slots(a.id, 9), "needs 3 blocks of 2");
        assert_eq!(kv.num_free_blocks(), 2);
        assert!(kv.allocate_slots(a.id, 8));
        a.num_computed_tokens = 8;
        kv.cache_full_blocks(&a);
        kv.free(a.id);
        // The whole prompt is cached, but the last block is computed again for logits.
        let b = request(2, (0..8).collect());
        assert_eq!(kv.admit(b.id, &b.all_tokens()), 4);
        kv.free(b.id);
        kv.check_invariants().unwrap();
    }
}
