//! Asynchronous uploads for the AMD device: the small host-to-device copies every step
//! makes (token ids, positions, KV slots, attention metadata, gather indices) go
//! through pinned staging buffers with `hipMemcpyHtoDAsync` on the device's stream.
//!
//! Why: `hipMemcpyHtoD` from pageable memory blocks the host until the copy is done,
//! and the copy waits for the kernels queued before it, so each of the ~5 uploads of a
//! step (3 inside layer 0) stalled the host until the GPU caught up: the CPU could
//! never run ahead and queue the step's launches while the GPU worked. A copy from
//! pinned memory returns at once; the pinned bytes must then stay unchanged until the
//! GPU has read them, which is what the ring below guarantees.
//!
//! The ring: [`SLOTS`] pinned buffers used in turn, each with an event recorded after
//! its copy. A slot is written again only after its event has completed (the host waits
//! on it, which in practice has long happened: a step makes far fewer uploads than
//! there are slots, and ends with a download that drains the stream). A slot grows
//! (freed and allocated larger) only after that wait, too. Uploads above
//! [`MAX_STAGED`] bytes (weights, loaded once) do not use the ring: they are copied
//! in stream order and waited for (`Hip::copy_to_device`).

use super::runtime::{Handle, Hip};
use crate::Result;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// Pinned buffers in the ring: more than one step's uploads, so a slot's previous
/// copy is a step old when it is reused.
pub(super) const SLOTS: usize = 16;

/// The largest upload staged (bigger ones are one-off weight uploads): at most
/// `SLOTS × MAX_STAGED` = 16 MiB of pinned memory.
pub(super) const MAX_STAGED: usize = 1 << 20;

/// Smallest slot allocation, so tiny uploads do not reallocate as they grow.
const MIN_SLOT: usize = 4096;

/// The runtime calls the ring makes (the HIP runtime; a model of an asynchronous
/// device in the tests).
pub(super) trait StagingOps {
    fn host_alloc(&self, bytes: usize) -> Result<*mut u8>;
    /// # Safety
    /// `p` from `host_alloc`, no queued copy reading it.
    unsafe fn host_free(&self, p: *mut u8) -> Result<()>;
    fn event_create(&self) -> Result<Handle>;
    /// # Safety
    /// Live handles.
    unsafe fn event_record(&self, event: Handle, stream: Handle) -> Result<()>;
    /// # Safety
    /// A live, recorded event.
    unsafe fn event_synchronize(&self, event: Handle) -> Result<()>;
    /// # Safety
    /// A live event, not used afterwards.
    unsafe fn event_destroy(&self, event: Handle) -> Result<()>;
    /// # Safety
    /// As [`Hip::copy_to_device_async`].
    unsafe fn copy_async(
        &self,
        dst: *mut c_void,
        src: *const u8,
        bytes: usize,
        stream: Handle,
    ) -> Result<()>;
    /// # Safety
    /// A live stream.
    unsafe fn stream_synchronize(&self, stream: Handle) -> Result<()>;
}

impl StagingOps for Hip {
    fn host_alloc(&self, bytes: usize) -> Result<*mut u8> {
        Hip::host_alloc(self, bytes)
    }
    unsafe fn host_free(&self, p: *mut u8) -> Result<()> {
        Hip::host_free(self, p)
    }
    fn event_create(&self) -> Result<Handle> {
        Hip::event_create(self)
    }
    unsafe fn event_record(&self, event: Handle, stream: Handle) -> Result<()> {
        Hip::event_record(self, event, stream)
    }
    unsafe fn event_synchronize(&self, event: Handle) -> Result<()> {
        Hip::event_synchronize(self, event)
    }
    unsafe fn event_destroy(&self, event: Handle) -> Result<()> {
        Hip::event_destroy(self, event)
    }
    unsafe fn copy_async(
        &self,
        dst: *mut c_void,
        src: *const u8,
        bytes: usize,
        stream: Handle,
    ) -> Result<()> {
        self.copy_to_device_async(dst, src, bytes, stream)
    }
    unsafe fn stream_synchronize(&self, stream: Handle) -> Result<()> {
        Hip::stream_synchronize(self, stream)
    }
}

/// One pinned buffer and the event that says its last copy has run.
struct Slot {
    host: *mut u8,
    cap: usize,
    done: Handle,
    /// `done` was recorded after a copy the host has not yet waited for.
    pending: bool,
}

struct Ring {
    next: usize,
    slots: Vec<Slot>,
}

pub(super) struct Staging<R: StagingOps = Hip> {
    rt: Arc<R>,
    ring: Mutex<Ring>,
}

// SAFETY: the pinned pointers and event handles are process-wide and only touched
// under the ring's mutex.
unsafe impl Send for Staging<Hip> {}
unsafe impl Sync for Staging<Hip> {}

/// The pinned size for an upload of `bytes`: a power of two, at least [`MIN_SLOT`].
fn slot_size(bytes: usize) -> usize {
    bytes.max(MIN_SLOT).next_power_of_two()
}

impl<R: StagingOps> Staging<R> {
    /// An empty ring: pinned buffers and events are made on first use.
    pub(super) fn new(rt: Arc<R>) -> Staging<R> {
        let slots = (0..SLOTS)
            .map(|_| Slot {
                host: std::ptr::null_mut(),
                cap: 0,
                done: std::ptr::null_mut(),
                pending: false,
            })
            .collect();
        Staging {
            rt,
            ring: Mutex::new(Ring { next: 0, slots }),
        }
    }

    /// Whether an upload of `bytes` goes through the ring.
    pub(super) fn takes(bytes: usize) -> bool {
        bytes > 0 && bytes <= MAX_STAGED
    }

    /// Queues a copy of `src` into device `dst` on `stream` and returns without
    /// waiting for it; `src` may be reused at once.
    ///
    /// # Safety
    /// `dst` must be a device allocation of at least `src.len()` bytes that stays
    /// allocated until the copy has run (stream order: a pool block handed out again
    /// is only used by work queued after this copy), and `stream` must be live.
    pub(super) unsafe fn upload(&self, dst: *mut c_void, src: &[u8], stream: Handle) -> Result<()> {
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        let i = ring.next;
        ring.next = (i + 1) % SLOTS;
        let slot = &mut ring.slots[i];
        if slot.pending {
            self.rt.event_synchronize(slot.done)?;
            slot.pending = false;
        }
        if slot.cap < src.len() {
            if !slot.host.is_null() {
                self.rt.host_free(slot.host)?;
                slot.host = std::ptr::null_mut();
                slot.cap = 0;
            }
            let cap = slot_size(src.len());
            slot.host = self.rt.host_alloc(cap)?;
            slot.cap = cap;
        }
        if slot.done.is_null() {
            slot.done = self.rt.event_create()?;
        }
        // SAFETY: the slot holds `cap >= src.len()` bytes and no queued copy reads it.
        std::ptr::copy_nonoverlapping(src.as_ptr(), slot.host, src.len());
        self.rt.copy_async(dst, slot.host, src.len(), stream)?;
        if let Err(e) = self.rt.event_record(slot.done, stream) {
            // Without the event nothing says when the copy is done: wait for it here.
            let _ = self.rt.stream_synchronize(stream);
            return Err(e);
        }
        slot.pending = true;
        Ok(())
    }
}

impl<R: StagingOps> Drop for Staging<R> {
    fn drop(&mut self) {
        let ring = self.ring.get_mut().unwrap_or_else(|e| e.into_inner());
        for slot in &mut ring.slots {
            // SAFETY: each handle was made by this ring and is released once, after
            // the copy reading its buffer has run.
            unsafe {
                if slot.pending {
                    let _ = self.rt.event_synchronize(slot.done);
                }
                if !slot.done.is_null() {
                    let _ = self.rt.event_destroy(slot.done);
                }
                if !slot.host.is_null() {
                    let _ = self.rt.host_free(slot.host);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use std::collections::HashMap;

    /// A device that runs copies late: a queued copy reads its pinned source only when
    /// an event recorded after it is waited on or the stream is synchronized, as a
    /// real GPU may. A ring that reused or freed a buffer too early would deliver the
    /// wrong bytes (or free memory a copy still reads, which the model refuses).
    #[derive(Default)]
    struct LateDevice {
        state: Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        /// Pinned buffers by address.
        pinned: HashMap<usize, Vec<u8>>,
        /// Queued copies (dst, src, bytes) and event markers, in stream order.
        queue: Vec<Op>,
        next_event: usize,
        host_waits: usize,
    }

    enum Op {
        Copy(usize, usize, usize),
        Event(usize),
    }

    impl State {
        /// Runs the queue up to and including `upto` ops.
        fn run(&mut self, upto: usize) {
            for op in self.queue.drain(..upto) {
                if let Op::Copy(dst, src, n) = op {
                    // SAFETY: dst is a live test vector, src a live pinned buffer.
                    unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, n) };
                }
            }
        }
    }

    impl StagingOps for LateDevice {
        fn host_alloc(&self, bytes: usize) -> Result<*mut u8> {
            let mut v = vec![0u8; bytes];
            let p = v.as_mut_ptr();
            self.state.lock().unwrap().pinned.insert(p as usize, v);
            Ok(p)
        }
        unsafe fn host_free(&self, p: *mut u8) -> Result<()> {
            let mut s = self.state.lock().unwrap();
            let len = s.pinned[&(p as usize)].len();
            let reads = s.queue.iter().any(|op| {
                matches!(op, Op::Copy(_, src, _) if (p as usize..p as usize + len).contains(src))
            });
            if reads {
                return Err(Error::Unavailable(
                    "freed pinned memory a copy still reads".into(),
                ));
            }
            s.pinned.remove(&(p as usize));
            Ok(())
        }
        fn event_create(&self) -> Result<Handle> {
            let mut s = self.state.lock().unwrap();
            s.next_event += 1;
            Ok(s.next_event as Handle)
        }
        unsafe fn event_record(&self, event: Handle, _: Handle) -> Result<()> {
            self.state
                .lock()
                .unwrap()
                .queue
                .push(Op::Event(event as usize));
            Ok(())
        }
        unsafe fn event_synchronize(&self, event: Handle) -> Result<()> {
            let mut s = self.state.lock().unwrap();
            s.host_waits += 1;
            // The event's latest record (a later record of the same event moves it).
            let at = s
                .queue
                .iter()
                .rposition(|op| matches!(op, Op::Event(e) if *e == event as usize));
            if let Some(at) = at {
                s.run(at + 1);
            }
            Ok(())
        }
        unsafe fn event_destroy(&self, _: Handle) -> Result<()> {
            Ok(())
        }
        unsafe fn copy_async(
            &self,
            dst: *mut c_void,
            src: *const u8,
            bytes: usize,
            _: Handle,
        ) -> Result<()> {
            let q = &mut self.state.lock().unwrap().queue;
            q.push(Op::Copy(dst as usize, src as usize, bytes));
            Ok(())
        }
        unsafe fn stream_synchronize(&self, _: Handle) -> Result<()> {
            let mut s = self.state.lock().unwrap();
            let n = s.queue.len();
            s.run(n);
            Ok(())
        }
    }

    /// Uploads of `sizes` from one host buffer rewritten between uploads, through a
    /// device that runs copies late: every destination must get its own bytes.
    fn upload_all(sizes: &[usize]) {
        let dev = Arc::new(LateDevice::default());
        // Before the ring, so that it drops (running its late copies) first.
        let mut dsts: Vec<Vec<u8>> = sizes.iter().map(|&s| vec![0u8; s]).collect();
        let staging = Staging::new(dev.clone());
        let mut src = Vec::new();
        for (i, d) in dsts.iter_mut().enumerate() {
            src.clear();
            src.extend((0..sizes[i]).map(|j| (i * 31 + j) as u8));
            // SAFETY: d outlives the copies (run below, before it is read).
            unsafe { staging.upload(d.as_mut_ptr() as *mut c_void, &src, std::ptr::null_mut()) }
                .unwrap();
        }
        // The first SLOTS uploads needed no wait; each later one waited for one event.
        let waits = dev.state.lock().unwrap().host_waits;
        assert_eq!(waits, sizes.len().saturating_sub(SLOTS));
        // SAFETY: the model's stream handle is ignored.
        unsafe { dev.stream_synchronize(std::ptr::null_mut()) }.unwrap();
        for (i, d) in dsts.iter().enumerate() {
            let want: Vec<u8> = (0..sizes[i]).map(|j| (i * 31 + j) as u8).collect();
            assert!(d == &want, "upload {i} delivered other bytes");
        }
        drop(staging);
        assert!(
            dev.state.lock().unwrap().pinned.is_empty(),
            "pinned memory leaked"
        );
    }

    /// Many more uploads than slots: of one size (slots reused as they are), and of
    /// varying sizes (slots reallocated larger).
    #[test]
    fn every_upload_delivers_its_bytes_though_copies_run_late() {
        let n = 3 * SLOTS + 5;
        upload_all(&vec![100; n]);
        upload_all(&(0..n).map(|i| 1 + i * 997 % 20000).collect::<Vec<_>>());
    }

    #[test]
    fn only_small_nonempty_uploads_are_staged_and_slots_round_up() {
        assert!(!Staging::<Hip>::takes(0));
        assert!(Staging::<Hip>::takes(1));
        assert!(Staging::<Hip>::takes(MAX_STAGED));
        assert!(!Staging::<Hip>::takes(MAX_STAGED + 1));
        assert_eq!(slot_size(1), MIN_SLOT);
        assert_eq!(slot_size(MIN_SLOT + 1), 2 * MIN_SLOT);
        assert_eq!(slot_size(MAX_STAGED), MAX_STAGED);
    }
}
