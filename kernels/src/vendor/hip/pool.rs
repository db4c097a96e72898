//! The AMD device's memory pool: freed device blocks kept by size class for reuse, as
//! `hipFree` waits for the whole device and the model allocates every op's output
//! afresh each step.

use super::runtime::Hip;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Device memory cached for reuse: `hipFree` waits for the whole device, and the model
/// allocates every op's output afresh each step, so freed blocks go back to this pool
/// (by size class) instead. Reuse is safe because all work (kernels, GEMMs, copies,
/// memsets) runs in order on the device's one stream: work queued before a block was
/// dropped finishes before any work queued after it was handed out again. Blocks over
/// 64 MiB are freed with `hipFree`, which waits for the device first.
pub(super) struct Pool {
    hip: Arc<Hip>,
    free: Mutex<HashMap<usize, Vec<usize>>>,
}

impl Pool {
    pub(super) fn new(hip: Arc<Hip>) -> Pool {
        Pool {
            hip,
            free: Mutex::new(HashMap::new()),
        }
    }

    /// Size classes: powers of two up to 1 MiB, then 1 MiB multiples up to 64 MiB, then
    /// exact sizes (weights: allocated once, never reused).
    pub(super) fn class(bytes: usize) -> usize {
        let b = bytes.max(256);
        if b <= 1 << 20 {
            b.next_power_of_two()
        } else if b <= 64 << 20 {
            b.div_ceil(1 << 20) << 20
        } else {
            b
        }
    }

    pub(super) fn take(&self, class: usize) -> Option<*mut c_void> {
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        f.get_mut(&class)
            .and_then(|v| v.pop())
            .map(|p| p as *mut c_void)
    }

    pub(super) fn give(&self, class: usize, p: *mut c_void) {
        if class > 64 << 20 {
            // SAFETY: allocated by `Hip::alloc`, freed once here.
            let _ = unsafe { self.hip.free(p) };
            return;
        }
        let mut f = self.free.lock().unwrap_or_else(|e| e.into_inner());
        f.entry(class).or_default().push(p as usize);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let f = self.free.get_mut().unwrap_or_else(|e| e.into_inner());
        for p in f.values().flatten() {
            // SAFETY: each cached block was allocated by `Hip::alloc` and is freed once.
            let _ = unsafe { self.hip.free(*p as *mut c_void) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_size_classes_cover_the_request() {
        for b in [
            0,
            1,
            255,
            256,
            257,
            4096,
            (1 << 20) + 1,
            63 << 20,
            (64 << 20) + 5,
        ] {
            let c = Pool::class(b);
            assert!(c >= b.max(1), "{b} -> {c}");
            assert!(c <= (2 * b).max(256) || b > 1 << 20, "{b} -> {c}");
        }
        assert_eq!(Pool::class(3 << 20), 3 << 20);
        assert_eq!(Pool::class(1000), 1024);
    }
}
