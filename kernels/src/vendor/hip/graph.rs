//! HIP graphs for decode steps (`gpu/graph.rs`): the device's stream captured with
//! `hipStreamBeginCapture` / `hipStreamEndCapture`, instantiated with
//! `hipGraphInstantiate`, replayed with `hipGraphLaunch` on the same stream, destroyed
//! with `hipGraphExecDestroy` / `hipGraphDestroy`. rocBLAS already queues on that
//! stream, so its GEMMs are captured with the kernels.
//!
//! Not verified on an AMD GPU (none is available to the project): that rocBLAS's
//! `rocblas_gemm_ex` captures without allocating (it may need its workspace set up
//! before the capture; the eager step before each capture runs every GEMM shape
//! first), and the speed-up. The bookkeeping around capture and replay is tested on
//! the simulated device.

use super::runtime::{Handle, Hip};
use std::sync::Arc;

/// A captured and instantiated graph; destroyed on drop (the backend waits for its
/// launches first).
pub struct HipGraph {
    hip: Arc<Hip>,
    graph: Handle,
    exec: Handle,
}

// SAFETY: graph handles are process-wide; the backend launches and drops a graph
// under its graph lock, one thread at a time.
unsafe impl Send for HipGraph {}
unsafe impl Sync for HipGraph {}

impl HipGraph {
    pub(super) fn new(hip: Arc<Hip>, (graph, exec): (Handle, Handle)) -> HipGraph {
        HipGraph { hip, graph, exec }
    }

    pub(super) fn exec(&self) -> Handle {
        self.exec
    }
}

impl Drop for HipGraph {
    fn drop(&mut self) {
        // SAFETY: both come from one `end_capture`, are destroyed once, and no launch
        // is in flight (the backend synchronizes before dropping a graph).
        unsafe {
            let _ = self.hip.graph_destroy(self.graph, self.exec);
        }
    }
}
