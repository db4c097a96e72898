//! The AMD device's one stream: kernels, rocBLAS GEMMs, uploads, copies and memsets
//! all queue on it, so they run in the order the backend issued them and the host
//! waits only where it reads a result (`dtoh`, `synchronize`).
//!
//! Why not the null stream, as before: an asynchronous upload needs a stream to be
//! ordered on, and capturing decode steps into HIP graphs (issue 15 §5) cannot capture
//! the null stream. The stream is created with `hipStreamDefault`, so it still orders
//! with anything a library queues on the null stream.

use super::runtime::{Handle, Hip};
use crate::Result;
use std::sync::Arc;

pub(super) struct Stream {
    hip: Arc<Hip>,
    raw: Handle,
}

// SAFETY: a stream handle may be used from any host thread of the process; the
// backend's ops are issued by one engine thread at a time.
unsafe impl Send for Stream {}
unsafe impl Sync for Stream {}

impl Stream {
    /// A new stream on the current device.
    pub(super) fn new(hip: Arc<Hip>) -> Result<Stream> {
        let raw = hip.stream_create()?;
        Ok(Stream { hip, raw })
    }

    /// The `hipStream_t` to queue work on.
    pub(super) fn raw(&self) -> Handle {
        self.raw
    }

    /// Waits for everything queued so far.
    pub(super) fn synchronize(&self) -> Result<()> {
        // SAFETY: `raw` is live until drop.
        unsafe { self.hip.stream_synchronize(self.raw) }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // Let queued work finish (it may read pool blocks), then release the stream.
        // SAFETY: created by `stream_create`, destroyed once, never used after.
        unsafe {
            let _ = self.hip.stream_synchronize(self.raw);
            let _ = self.hip.stream_destroy(self.raw);
        }
    }
}
