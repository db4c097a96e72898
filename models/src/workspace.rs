//! A model's activation buffers, allocated once and kept from step to step: they grow
//! when a step has more rows (tokens) or more logits rows than any before, and are
//! reused otherwise. Allocating every activation per forward costs an allocation (and
//! on a GPU a memset) per buffer per step, and gives a captured decode graph addresses
//! that are gone by the next step: a graph needs exactly this, fixed buffers.

use crate::error::Result;
use std::sync::Mutex;

/// The capacity a set of buffers was made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capacity {
    /// Rows (tokens) of the step.
    pub rows: usize,
    /// Rows of logits.
    pub logits_rows: usize,
}

impl Capacity {
    fn covers(&self, need: Capacity) -> bool {
        self.rows >= need.rows && self.logits_rows >= need.logits_rows
    }

    fn max(self, other: Capacity) -> Capacity {
        Capacity {
            rows: self.rows.max(other.rows),
            logits_rows: self.logits_rows.max(other.logits_rows),
        }
    }
}

/// Grow-only buffers `W` of a model (one step at a time: the lock is held for it).
pub struct Workspace<W> {
    slot: Mutex<Option<(Capacity, W)>>,
}

impl<W> Default for Workspace<W> {
    fn default() -> Self {
        Workspace {
            slot: Mutex::new(None),
        }
    }
}

impl<W> Workspace<W> {
    /// Runs `f` with buffers of at least `need`, made by `make` when the ones kept are
    /// too small (for the larger of the two capacities, the old ones freed first).
    pub fn with<R>(
        &self,
        need: Capacity,
        make: impl FnOnce(Capacity) -> Result<W>,
        f: impl FnOnce(&mut W) -> Result<R>,
    ) -> Result<R> {
        let mut g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let kept = match g.take() {
            Some((cap, w)) if cap.covers(need) => g.insert((cap, w)),
            old => {
                let cap = old.as_ref().map_or(need, |(c, _)| c.max(need));
                drop(old);
                let w = make(cap)?;
                g.insert((cap, w))
            }
        };
        f(&mut kept.1)
    }

    /// The capacity kept, if any buffers are.
    pub fn capacity(&self) -> Option<Capacity> {
        self.slot
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(c, _)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_grow_to_the_largest_step_and_are_reused() {
        let ws: Workspace<Vec<f32>> = Workspace::default();
        let made = std::cell::Cell::new(0);
        let make = |c: Capacity| {
            made.set(made.get() + 1);
            Ok(vec![0.0; c.rows * 10 + c.logits_rows])
        };
        let cap = |rows, logits_rows| Capacity { rows, logits_rows };
        let len = ws.with(cap(4, 1), make, |w| Ok(w.len())).unwrap();
        assert_eq!((len, made.get()), (41, 1));
        ws.with(cap(2, 1), make, |_| Ok(())).unwrap();
        assert_eq!(made.get(), 1, "a smaller step reuses the buffers");
        ws.with(cap(3, 2), make, |_| Ok(())).unwrap();
        assert_eq!(ws.capacity(), Some(cap(4, 2)), "grows to cover both steps");
        assert_eq!(made.get(), 2);
    }
}
