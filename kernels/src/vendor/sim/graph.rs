//! The simulated device's graphs and counters. Capture keeps a recording of each
//! launch (the kernel, its geometry, and a copy of its argument values) and GEMM
//! instead of running it; replay runs the recording, so a replay does exactly what the
//! captured launches would have done with the arguments they were captured with, and
//! reads whatever the buffers hold at replay time. That is what a CUDA or HIP graph
//! does, so the bookkeeping around graphs (fixed buffers, metadata written before the
//! replay, padding) is tested here without a GPU. The counters ([`SimStats`]) let tests
//! see what a step launched, allocated and wrote.

use super::SimFunc;
use crate::gpu::{Gemm, Launch};
use crate::{Dtype, Error, Result};
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

/// The largest argument value a recording keeps (the backend's `Params` slot).
const MAX_ARG: usize = 64;

/// One recorded launch or GEMM.
pub(super) enum Recorded {
    Launch {
        f: SimFunc,
        cfg: Launch,
        /// Each argument's value, in a slot of its own (8-byte aligned).
        args: Vec<[u64; MAX_ARG / 8]>,
        sizes: Vec<usize>,
    },
    Gemm(Dtype, Gemm),
}

impl Recorded {
    /// A launch with a copy of its argument values.
    ///
    /// # Safety
    /// `params[i]` must point at `sizes[i]` readable bytes.
    pub(super) unsafe fn launch(
        f: &SimFunc,
        cfg: Launch,
        params: &[*mut c_void],
        sizes: &[usize],
    ) -> Result<Recorded> {
        let mut args = Vec::with_capacity(params.len());
        for (&p, &n) in params.iter().zip(sizes) {
            if n > MAX_ARG {
                return Err(Error::Kernel(format!(
                    "sim: kernel {}: a {n}-byte argument cannot be recorded into a graph",
                    f.name
                )));
            }
            let mut slot = [0u64; MAX_ARG / 8];
            // SAFETY: `p` holds `n` bytes (the caller's contract) and the slot holds 64.
            unsafe {
                std::ptr::copy_nonoverlapping(p as *const u8, slot.as_mut_ptr() as *mut u8, n)
            };
            args.push(slot);
        }
        Ok(Recorded::Launch {
            f: f.clone(),
            cfg,
            args,
            sizes: sizes.to_vec(),
        })
    }
}

/// A captured graph: the recording, replayed in order.
pub struct SimGraph {
    pub(super) ops: Vec<Recorded>,
}

impl SimGraph {
    /// Launches and GEMMs recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// What the device has done so far (see [`super::SimDevice::stats`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    /// Kernels run (eagerly or by a replay).
    pub launches: u64,
    /// GEMMs run (eagerly or by a replay).
    pub gemms: u64,
    /// Allocations made (zeroed, unspecified or uploads).
    pub allocations: u64,
    /// Writes into existing allocations (`Device::write`).
    pub writes: u64,
    /// Launches and GEMMs recorded by captures.
    pub recorded: u64,
    /// Graphs replayed.
    pub replays: u64,
}

#[derive(Default)]
pub(super) struct Counters {
    pub launches: AtomicU64,
    pub gemms: AtomicU64,
    pub allocations: AtomicU64,
    pub writes: AtomicU64,
    pub recorded: AtomicU64,
    pub replays: AtomicU64,
}

impl Counters {
    pub(super) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn snapshot(&self) -> SimStats {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SimStats {
            launches: l(&self.launches),
            gemms: l(&self.gemms),
            allocations: l(&self.allocations),
            writes: l(&self.writes),
            recorded: l(&self.recorded),
            replays: l(&self.replays),
        }
    }
}
