//! The block pool: paged KV blocks with ref counts, a free list in eviction order, and
//! a prefix cache of full blocks keyed by a hash chain (block hash = hash(parent hash,
//! its tokens)). Per-request bookkeeping over it lives in `kv_cache_manager`.
//!
//! A block whose ref count drops to zero goes to the tail of the free list but keeps
//! its cached content until it is handed out again, so a later request with the same
//! prefix can still reuse it.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{Hash, Hasher};

/// A block of the paged KV cache: its index in every layer's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(transparent)]
pub struct BlockId(pub u32);

impl BlockId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for BlockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

struct CachedBlock {
    block: BlockId,
    parent: u64,
    tokens: Vec<u32>,
}

pub struct BlockManager {
    block_size: usize,
    ref_counts: Vec<u32>,
    /// The cache key of each block's content, if it is registered.
    hash_of: Vec<Option<u64>>,
    cache: HashMap<u64, CachedBlock>,
    /// Free blocks by the order they were freed: the front is evicted first.
    free: BTreeMap<u64, BlockId>,
    free_key: Vec<Option<u64>>,
    next_key: u64,
    /// Prefix-cache lookups: blocks asked for and blocks found.
    pub num_queried_blocks: u64,
    pub num_hit_blocks: u64,
}

/// The hash of a full block after `parent` (0 for the first block).
pub fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        let mut m = BlockManager {
            block_size: block_size.max(1),
            ref_counts: vec![0; num_blocks],
            hash_of: vec![None; num_blocks],
            cache: HashMap::new(),
            free: BTreeMap::new(),
            free_key: vec![None; num_blocks],
            next_key: 0,
            num_queried_blocks: 0,
            num_hit_blocks: 0,
        };
        for b in 0..num_blocks as u32 {
            m.push_free(BlockId(b));
        }
        m
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.ref_counts.len()
    }

    pub fn num_free_blocks(&self) -> usize {
        self.free.len()
    }

    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.ref_counts[b.index()]
    }

    fn push_free(&mut self, b: BlockId) {
        let key = self.next_key;
        self.next_key += 1;
        self.free.insert(key, b);
        self.free_key[b.index()] = Some(key);
    }

    /// A fresh block (evicting the oldest free one's cached content), or `None`.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let (_, b) = self.free.pop_first()?;
        self.free_key[b.index()] = None;
        if let Some(h) = self.hash_of[b.index()].take() {
            if self.cache.get(&h).is_some_and(|c| c.block == b) {
                self.cache.remove(&h);
            }
        }
        self.ref_counts[b.index()] = 1;
        Some(b)
    }

    /// Takes a reference to a block already holding wanted content.
    pub fn take(&mut self, b: BlockId) {
        if self.ref_counts[b.index()] == 0 {
            if let Some(key) = self.free_key[b.index()].take() {
                self.free.remove(&key);
            }
        }
        self.ref_counts[b.index()] += 1;
    }

    /// Drops one reference; at zero the block becomes free (content kept for reuse).
    pub fn release(&mut self, b: BlockId) {
        let rc = &mut self.ref_counts[b.index()];
        debug_assert!(*rc > 0, "double free of block {b}");
        if *rc == 0 {
            return;
        }
        *rc -= 1;
        if *rc == 0 {
            self.push_free(b);
        }
    }

    /// Releases a sequence's blocks, last first, so that its tail is evicted first.
    pub fn release_all(&mut self, table: &[BlockId]) {
        for &b in table.iter().rev() {
            self.release(b);
        }
    }

    /// The cached blocks holding the longest run of full blocks of `tokens` (at most
    /// `max_blocks`), with their hashes. Does not take references. Every full block
    /// that could have come from the cache counts as queried (not only those up to the
    /// first miss), so hits / queried is the share of cacheable prompt blocks found.
    pub fn lookup_prefix(&mut self, tokens: &[u32], max_blocks: usize) -> Vec<(BlockId, u64)> {
        let mut out = Vec::new();
        let mut parent = 0u64;
        self.num_queried_blocks += (tokens.len() / self.block_size).min(max_blocks) as u64;
        for chunk in tokens.chunks_exact(self.block_size).take(max_blocks) {
            let h = block_hash(parent, chunk);
            match self.cache.get(&h) {
                Some(c) if c.parent == parent && c.tokens == chunk => {
                    self.num_hit_blocks += 1;
                    out.push((c.block, h));
                    parent = h;
                }
                _ => break,
            }
        }
        out
    }

    /// Registers block `b` as holding the full block `tokens` after `parent`; returns its
    /// hash. If another block already holds that content, the cache keeps the first.
    pub fn register(&mut self, b: BlockId, parent: u64, tokens: &[u32]) -> u64 {
        let h = block_hash(parent, tokens);
        if self.hash_of[b.index()].is_none() && !self.cache.contains_key(&h) {
            self.cache.insert(
                h,
                CachedBlock {
                    block: b,
                    parent,
                    tokens: tokens.to_vec(),
                },
            );
            self.hash_of[b.index()] = Some(h);
        }
        h
    }

    /// Checks the bookkeeping; `held` are all block tables currently owned.
    pub fn check_invariants<'a>(
        &self,
        held: impl IntoIterator<Item = &'a [BlockId]>,
    ) -> Result<(), String> {
        let mut want = vec![0u32; self.num_blocks()];
        for table in held {
            for &b in table {
                want[b.index()] += 1;
            }
        }
        for (b, (&rc, &w)) in self.ref_counts.iter().zip(&want).enumerate() {
            if rc != w {
                return Err(format!("block {b}: ref count {rc}, held {w} times"));
            }
            let is_free = self.free_key[b].is_some();
            if is_free != (rc == 0) {
                return Err(format!("block {b}: ref count {rc} but free={is_free}"));
            }
        }
        if self.free.len() != self.ref_counts.iter().filter(|&&r| r == 0).count() {
            return Err("free list size disagrees with ref counts".into());
        }
        for (h, c) in &self.cache {
            if self.hash_of[c.block.index()] != Some(*h) {
                return Err(format!("cache entry for block {} is stale", c.block));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn prefix_blocks_are_reused_after_release() {
        let mut m = BlockManager::new(4, 2);
        let toks = [1, 2, 3, 4, 5];
        let a = m.allocate().unwrap();
        let b = m.allocate().unwrap();
        let h = m.register(a, 0, &toks[0..2]);
        m.register(b, h, &toks[2..4]);
        m.release_all(&[a, b]);
        assert_eq!(m.num_free_blocks(), 4);
        let hit = m.lookup_prefix(&toks, usize::MAX);
        assert_eq!(hit.iter().map(|x| x.0).collect::<Vec<_>>(), vec![a, b]);
        // A different second block stops the chain.
        assert_eq!(m.lookup_prefix(&[1, 2, 9, 9], usize::MAX).len(), 1);
        for (blk, _) in &hit {
            m.take(*blk);
        }
        assert_eq!(m.num_free_blocks(), 2);
        m.check_invariants([&[a, b][..]]).unwrap();
    }

    #[test]
    fn eviction_takes_oldest_free_first_and_forgets_content() {
        let mut m = BlockManager::new(2, 2);
        let a = m.allocate().unwrap();
        m.register(a, 0, &[7, 7]);
        m.release(a);
        let b = m.allocate().unwrap();
        assert_ne!(a, b, "the never-used block is older in the free list");
        let c = m.allocate().unwrap();
        assert_eq!(c, a);
        assert!(m.lookup_prefix(&[7, 7], 1).is_empty());
        assert!(m.allocate().is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        NewSeq(Vec<u32>),
        Extend(usize, u32),
        Free(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            proptest::collection::vec(0u32..3, 1..12).prop_map(Op::NewSeq),
            (0usize..8, 0u32..3).prop_map(|(i, t)| Op::Extend(i, t)),
            (0usize..8).prop_map(Op::Free),
        ]
    }

    /// A sequence as the scheduler keeps it: tokens, table, hashes of full blocks.
    struct Seq {
        tokens: Vec<u32>,
        table: Vec<BlockId>,
        hashes: Vec<u64>,
    }

    fn grow(m: &mut BlockManager, s: &mut Seq) -> bool {
        let bs = m.block_size();
        while s.table.len() * bs < s.tokens.len() {
            match m.allocate() {
                Some(b) => s.table.push(b),
                None => return false,
            }
        }
        while s.hashes.len() < s.tokens.len() / bs {
            let i = s.hashes.len();
            let parent = if i == 0 { 0 } else { s.hashes[i - 1] };
            let h = m.register(s.table[i], parent, &s.tokens[i * bs..(i + 1) * bs]);
            s.hashes.push(h);
        }
        true
    }

    proptest! {
        #[test]
        fn random_sequences_never_leak_or_double_free(ops in proptest::collection::vec(op(), 1..60)) {
            let mut m = BlockManager::new(12, 3);
            let mut seqs: Vec<Seq> = Vec::new();
            for op in ops {
                match op {
                    Op::NewSeq(tokens) => {
                        let hit = m.lookup_prefix(&tokens, (tokens.len() - 1) / 3);
                        let mut s = Seq { tokens, table: vec![], hashes: vec![] };
                        for (b, h) in hit {
                            m.take(b);
                            s.table.push(b);
                            s.hashes.push(h);
                        }
                        if grow(&mut m, &mut s) { seqs.push(s) } else { m.release_all(&s.table) }
                    }
                    Op::Extend(i, t) if !seqs.is_empty() => {
                        let i = i % seqs.len();
                        seqs[i].tokens.push(t);
                        if !grow(&mut m, &mut seqs[i]) {
                            let s = seqs.swap_remove(i);
                            m.release_all(&s.table);
                        }
                    }
                    Op::Free(i) if !seqs.is_empty() => {
                        let s = seqs.swap_remove(i % seqs.len());
                        m.release_all(&s.table);
                    }
                    _ => {}
                }
                m.check_invariants(seqs.iter().map(|s| s.table.as_slice())).map_err(TestCaseError::fail)?;
            }
            for s in seqs.drain(..) {
                m.release_all(&s.table);
            }
            prop_assert_eq!(m.num_free_blocks(), 12);
            m.check_invariants(std::iter::empty()).map_err(TestCaseError::fail)?;
        }
    }
}
