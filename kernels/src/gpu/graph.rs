//! Decode graphs on the GPU backend: capture one step's launches and GEMMs into a
//! device graph (CUDA / HIP graphs, or the simulated device's recording) under a key
//! (the caller's batch-size bucket), and replay it on later steps instead of launching
//! each kernel again.
//!
//! A graph replays the argument values it was captured with: device addresses
//! (activations, KV cache, weights, the per-step metadata buffers), grid sizes, split-K
//! partition counts, block-table widths. So a replay is only right when the step would
//! launch exactly those kernels with exactly those arguments, and only the *contents*
//! of the buffers they read differ. Rather than predict that from shapes (which would
//! copy every op's launch logic, and break when an op's geometry rule changes), the
//! backend checks it: a replay runs the step's host code in a *check* pass, in which
//! every op computes its launch as usual and writes its metadata into its fixed
//! buffer, but each launch and GEMM is compared with the recorded one instead of being
//! issued. If every one matches, the graph is replayed; if any differs (a context
//! grew into another split-K partition, a buffer was reallocated, the dtype changed),
//! nothing has been launched, the graph is dropped, and the caller runs the step
//! eagerly (and may capture again). The host-side cost is the ops' argument packing
//! and one comparison per launch, without the driver calls.
//!
//! Capture does not run anything (on CUDA and HIP the stream records, on the simulated
//! device the recording is kept), so the caller runs the step eagerly first and then
//! captures the same step: its metadata is already in the fixed buffers, so capture
//! issues no upload (an upload, allocation or download while capturing is an error).

use super::device::{Device, Gemm, Launch};
use super::GpuBackend;
use crate::{Dtype, Error, Result};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::atomic::Ordering;

/// What [`crate::Backend::graph_begin`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphPhase {
    /// Record the step into a new graph under the key (replacing any).
    Capture,
    /// Check the step against the graph under the key, and replay it if it matches.
    Replay,
}

/// One recorded launch or GEMM, as the check pass compares it.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    Kernel {
        name: &'static str,
        cfg: Launch,
        sizes: Vec<usize>,
        /// The argument values, concatenated.
        args: Vec<u8>,
    },
    Gemm(Dtype, Gemm),
}

/// The argument values behind `params` (`sizes[i]` bytes each), concatenated.
///
/// # Safety
/// `params[i]` must point at `sizes[i]` readable bytes.
unsafe fn arg_bytes<'a>(
    params: &'a [*mut c_void],
    sizes: &'a [usize],
) -> impl Iterator<Item = u8> + 'a {
    params.iter().zip(sizes).flat_map(|(&p, &n)| {
        // SAFETY: the caller's contract.
        unsafe { std::slice::from_raw_parts(p as *const u8, n) }
            .iter()
            .copied()
    })
}

struct Captured<D: Device> {
    ops: Vec<Op>,
    graph: D::Graph,
}

enum Mode {
    Eager,
    Capture {
        key: u64,
        ops: Vec<Op>,
    },
    Check {
        key: u64,
        next: usize,
        matched: bool,
    },
}

/// The backend's graphs and what the current step is doing with them.
pub(super) struct Graphs<D: Device> {
    mode: Mode,
    captured: HashMap<u64, Captured<D>>,
}

impl<D: Device> Default for Graphs<D> {
    fn default() -> Self {
        Graphs {
            mode: Mode::Eager,
            captured: HashMap::new(),
        }
    }
}

impl<D: Device> GpuBackend<D> {
    fn graphs(&self) -> std::sync::MutexGuard<'_, Graphs<D>> {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether decode graphs are on: the device supports them and nobody turned them
    /// off ([`GpuBackend::set_graphs`], `--enforce-eager`).
    pub fn graphs_enabled(&self) -> bool {
        self.graphs_on.load(Ordering::Relaxed) && self.dev.graphs_supported()
    }

    /// Turns decode graphs on or off (on by default where the device supports them).
    /// Turning them off drops every captured graph.
    pub fn set_graphs(&self, on: bool) {
        self.graphs_on.store(on, Ordering::Relaxed);
        if !on {
            self.graph_abort();
            let _ = self.dev.synchronize();
            self.graphs().captured.clear();
        }
    }

    /// How many graphs are captured (one per key).
    pub fn graph_count(&self) -> usize {
        self.graphs().captured.len()
    }

    /// Starts a capture or a check pass under `key`; false when there is nothing to
    /// do (graphs off or unsupported, or no graph under `key` to check against).
    pub fn graph_begin(&self, key: u64, phase: GraphPhase) -> Result<bool> {
        if !self.graphs_enabled() {
            return Ok(false);
        }
        let mut g = self.graphs();
        if !matches!(g.mode, Mode::Eager) {
            return Err(Error::Unavailable(format!(
                "{}: a graph pass began inside another",
                D::NAME
            )));
        }
        match phase {
            GraphPhase::Capture => {
                self.dev.begin_capture()?;
                g.mode = Mode::Capture {
                    key,
                    ops: Vec::new(),
                };
            }
            GraphPhase::Replay => {
                if !g.captured.contains_key(&key) {
                    return Ok(false);
                }
                g.mode = Mode::Check {
                    key,
                    next: 0,
                    matched: true,
                };
            }
        }
        self.graph_active.store(true, Ordering::Relaxed);
        Ok(true)
    }

    /// Ends the pass [`GpuBackend::graph_begin`] started. A capture is stored under its
    /// key (true). A check pass replays the graph if the step matched it launch for
    /// launch (true); otherwise nothing ran, the graph is dropped, and the caller must
    /// run the step eagerly (false).
    pub fn graph_end(&self) -> Result<bool> {
        let mut g = self.graphs();
        self.graph_active.store(false, Ordering::Relaxed);
        match std::mem::replace(&mut g.mode, Mode::Eager) {
            Mode::Eager => Ok(false),
            Mode::Capture { key, ops } => {
                let graph = self.dev.end_capture()?;
                if let Some(old) = g.captured.insert(key, Captured { ops, graph }) {
                    // The old graph may still be queued: let it finish before it goes.
                    self.dev.synchronize()?;
                    drop(old);
                }
                Ok(true)
            }
            Mode::Check { key, next, matched } => {
                let fits = matched && g.captured.get(&key).is_some_and(|c| c.ops.len() == next);
                if fits {
                    let c = &g.captured[&key];
                    // SAFETY: every launch of the graph was just matched, argument for
                    // argument, by a launch the ops would make now with live buffers.
                    unsafe { self.dev.replay(&c.graph)? };
                    return Ok(true);
                }
                if let Some(old) = g.captured.remove(&key) {
                    self.dev.synchronize()?;
                    drop(old);
                }
                Ok(false)
            }
        }
    }

    /// Leaves a capture or check pass after an error: a partial capture is ended and
    /// dropped, and nothing replays.
    pub fn graph_abort(&self) {
        let mut g = self.graphs();
        self.graph_active.store(false, Ordering::Relaxed);
        if let Mode::Capture { .. } = std::mem::replace(&mut g.mode, Mode::Eager) {
            let _ = self.dev.end_capture();
        }
    }

    /// An error if a capture is under way: the backend must not allocate, upload or
    /// download then (a stream capture would record it, or refuse).
    pub(super) fn not_capturing(&self, what: &str) -> Result<()> {
        if self.graph_active.load(Ordering::Relaxed)
            && matches!(self.graphs().mode, Mode::Capture { .. })
        {
            return Err(Error::Unavailable(format!(
                "{}: {what} while capturing a graph",
                D::NAME
            )));
        }
        Ok(())
    }

    /// A launch, as the current pass wants it: issued (eager, and capture, where the
    /// device records it), or compared with the graph (check).
    ///
    /// # Safety
    /// As [`Device::launch`].
    pub(crate) unsafe fn dispatch_launch(
        &self,
        name: &'static str,
        f: &D::Func,
        cfg: Launch,
        params: &mut [*mut c_void],
        sizes: &[usize],
    ) -> Result<()> {
        if !self.graph_active.load(Ordering::Relaxed) {
            // SAFETY: the caller's contract.
            return unsafe { self.dev.launch(f, cfg, params, sizes) };
        }
        let mut g = self.graphs();
        let Graphs { mode, captured } = &mut *g;
        match mode {
            Mode::Eager => unsafe { self.dev.launch(f, cfg, params, sizes) },
            Mode::Capture { ops, .. } => {
                ops.push(Op::Kernel {
                    name,
                    cfg,
                    sizes: sizes.to_vec(),
                    // SAFETY: the caller's contract: params point at values of `sizes`.
                    args: unsafe { arg_bytes(params, sizes) }.collect(),
                });
                // SAFETY: the caller's contract.
                unsafe { self.dev.launch(f, cfg, params, sizes) }
            }
            Mode::Check { key, next, matched } => {
                let same = *matched
                    && match captured.get(key).and_then(|c| c.ops.get(*next)) {
                        Some(Op::Kernel {
                            name: n,
                            cfg: c,
                            sizes: s,
                            args,
                        }) => {
                            *n == name
                                && *c == cfg
                                && s.as_slice() == sizes
                                // SAFETY: the caller's contract.
                                && args.iter().copied().eq(unsafe { arg_bytes(params, sizes) })
                        }
                        _ => false,
                    };
                *matched = same;
                *next += 1;
                Ok(())
            }
        }
    }

    /// A GEMM, as the current pass wants it (see [`GpuBackend::dispatch_launch`]).
    ///
    /// # Safety
    /// As [`Device::gemm_bt`].
    pub(crate) unsafe fn dispatch_gemm(&self, dtype: Dtype, gemm: Gemm) -> Result<()> {
        if !self.graph_active.load(Ordering::Relaxed) {
            // SAFETY: the caller's contract.
            return unsafe { self.dev.gemm_bt(dtype, gemm) };
        }
        let mut g = self.graphs();
        let Graphs { mode, captured } = &mut *g;
        match mode {
            Mode::Eager => unsafe { self.dev.gemm_bt(dtype, gemm) },
            Mode::Capture { ops, .. } => {
                ops.push(Op::Gemm(dtype, gemm));
                // SAFETY: the caller's contract.
                unsafe { self.dev.gemm_bt(dtype, gemm) }
            }
            Mode::Check { key, next, matched } => {
                let want = Op::Gemm(dtype, gemm);
                *matched = *matched
                    && captured
                        .get(key)
                        .and_then(|c| c.ops.get(*next))
                        .is_some_and(|op| *op == want);
                *next += 1;
                Ok(())
            }
        }
    }
}
