//! Admission at the edge: how many sequences of a model wait for the engine, counted
//! atomically as requests arrive, so `--max-waiting` holds under any burst. (The
//! engine's own queue length is refreshed once per step, far too late for a burst.)
//!
//! A sequence counts as waiting from admission until its first event (its first token,
//! or its end) reaches the server; by then the engine has scheduled it, so the engine's
//! queue is never longer than this count. [`Waiting`] holds a request's share and gives
//! it back as its sequences start, or all at once when dropped (an error, a
//! disconnect), so nothing leaks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Default)]
struct Counts {
    waiting: AtomicUsize,
    /// The most sequences ever waiting at once (the `/metrics` high-water mark).
    high_water: AtomicUsize,
}

/// One model's admission counter.
#[derive(Default, Clone)]
pub struct Admission(Arc<Counts>);

/// Sequences admitted and not yet started, given back on start or drop.
pub(crate) struct Waiting {
    counts: Arc<Counts>,
    held: usize,
}

impl Admission {
    /// Admits `seqs` sequences if the waiting count stays within `limit`; a request
    /// larger than `limit` alone is admitted only when nothing waits (otherwise it
    /// could never run). Refused: the count now waiting.
    pub(crate) fn try_admit(&self, seqs: usize, limit: usize) -> Result<Waiting, usize> {
        let c = &self.0;
        let prev = c
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                let fits = cur + seqs <= limit || (cur == 0 && limit > 0);
                fits.then_some(cur + seqs)
            })?;
        c.high_water.fetch_max(prev + seqs, Ordering::AcqRel);
        Ok(Waiting {
            counts: c.clone(),
            held: seqs,
        })
    }

    /// Sequences waiting now.
    pub fn waiting(&self) -> usize {
        self.0.waiting.load(Ordering::Acquire)
    }

    /// The most sequences that ever waited at once.
    pub fn high_water(&self) -> usize {
        self.0.high_water.load(Ordering::Acquire)
    }
}

impl Waiting {
    /// One of the request's sequences has started.
    pub(crate) fn started_one(&mut self) {
        if self.held > 0 {
            self.held -= 1;
            self.counts.waiting.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.held > 0 {
            self.counts.waiting.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_holds_across_threads_and_drops_give_back() {
        let a = Admission::default();
        let admitted: Vec<Waiting> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..64)
                .map(|_| s.spawn(|| a.try_admit(1, 8).ok()))
                .collect();
            hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(admitted.len(), 8);
        assert_eq!((a.waiting(), a.high_water()), (8, 8));
        assert_eq!(a.try_admit(1, 8).err(), Some(8));
        let mut it = admitted.into_iter();
        let mut first = it.next().unwrap();
        first.started_one();
        first.started_one(); // only one was held
        assert_eq!(a.waiting(), 7);
        drop(first);
        drop(it);
        assert_eq!(a.waiting(), 0);
        // A request of more sequences than the limit runs alone.
        let big = a.try_admit(12, 8).unwrap();
        assert!(a.try_admit(1, 8).is_err());
        drop(big);
        assert!(a.try_admit(1, 0).is_err());
        assert_eq!(a.high_water(), 12);
    }
}
