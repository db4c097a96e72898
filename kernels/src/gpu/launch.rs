//! How an op's arguments reach the device: [`GpuBuf`] (a device allocation with its
//! length and storage type), the per-step metadata upload caches, the grow-only scratch
//! area, the by-value kernel argument slots ([`Params`]) and the [`launch!`] macro that
//! fills them, the launch grids, and the buffer checks every op makes before launching.
//!
//! Arguments travel by value in the order the kernel's C signature lists them; the
//! `ops/*.rs` file beside each `kernels/hip/*.hip` is where that order is kept.

use super::device::{Device, Launch};
use super::GpuBackend;
use crate::{Dtype, Error, Result};
use std::ffi::c_void;
use std::sync::Mutex;

/// A device buffer of `len` values stored as `dtype`.
pub struct GpuBuf<D: Device> {
    pub(super) mem: D::Mem,
    pub(super) ptr: u64,
    pub(super) len: usize,
    pub(super) dtype: Dtype,
}

impl<D: Device> GpuBuf<D> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }
}

/// The last upload of some per-step metadata: its host copy and the fixed device
/// allocation it was written into (grow-only, so a captured graph's address stays
/// valid until a larger batch needs more room).
pub(super) struct Cached<D: Device> {
    host: Vec<u32>,
    mem: D::Mem,
    /// Bytes `mem` holds.
    cap: usize,
    ptr: u64,
}

pub(super) type UploadCache<D> = Mutex<Option<Cached<D>>>;

/// The smallest metadata allocation: room for 1024 values, so that the buffers of
/// small batches are not reallocated (and their graphs not invalidated) as they grow.
const MIN_UPLOAD_BYTES: usize = 4096;

/// A grow-only device scratch area (split-K partials, f32 logits). Reusing it across
/// calls is safe because all work is queued on one stream in order.
pub(super) type Scratch<D> = Mutex<Option<Area<D>>>;
/// A grow-only area: (bytes, allocation, address).
pub(super) type Area<D> = (usize, <D as Device>::Mem, u64);

pub(super) const THREADS: u32 = 256;
/// Warps per block for the attention and head-norm kernels (4 x the warp width).
pub(super) const ATTN_WARPS: u32 = 4;

/// Kernel arguments by value, each in its own 8-byte-aligned 64-byte slot, and the
/// pointer array a launch takes. No allocation per launch.
pub(crate) struct Params {
    slots: [[u64; 8]; Params::MAX],
    /// The size of each value, which the simulated device checks against the kernel.
    pub(crate) sizes: [usize; Params::MAX],
    pub(crate) n: usize,
}

impl Params {
    const MAX: usize = 16;

    pub(crate) fn new() -> Params {
        Params {
            slots: [[0; 8]; Params::MAX],
            sizes: [0; Params::MAX],
            n: 0,
        }
    }

    pub(crate) fn push<T: Copy>(&mut self, v: T) {
        const { assert!(std::mem::size_of::<T>() <= 64 && std::mem::align_of::<T>() <= 8) };
        assert!(self.n < Params::MAX, "too many kernel arguments");
        // SAFETY: the slot is 64 bytes, 8-aligned, and T fits (checked above).
        unsafe {
            std::ptr::write(self.slots[self.n].as_mut_ptr() as *mut T, v);
        }
        self.sizes[self.n] = std::mem::size_of::<T>();
        self.n += 1;
    }

    pub(crate) fn ptrs(&mut self) -> [*mut c_void; Params::MAX] {
        let mut p = [std::ptr::null_mut(); Params::MAX];
        for (i, s) in self.slots.iter_mut().enumerate().take(self.n) {
            p[i] = s.as_mut_ptr() as *mut c_void;
        }
        p
    }
}

/// `launch!(self, "kernel", cfg, arg, ...)`: every argument is a plain value (device
/// addresses as `u64`, `i32`, `i64`, `f32`, `#[repr(C)]` args structs).
macro_rules! launch {
    ($self:expr, $name:expr, $cfg:expr, $($arg:expr),* $(,)?) => {{
        let f = $self.f($name)?;
        let cfg: $crate::gpu::Launch = $cfg;
        if cfg.grid.0 == 0 || cfg.grid.1 == 0 || cfg.grid.2 == 0 {
            // Nothing to do (no rows, no sequences): a kernel launched anyway would run
            // one block over row 0 of buffers that may hold no rows.
            Ok(())
        } else {
            let mut p = $crate::gpu::launch::Params::new();
            $( p.push($arg); )*
            let n = p.n;
            let mut ptrs = p.ptrs();
            // SAFETY: arguments match the kernel's parameter list (see kernels/hip/), and
            // the buffers they address are borrowed for the duration of the op.
            unsafe { $self.dispatch_launch($name, f, cfg, &mut ptrs[..n], &p.sizes[..n]) }
        }
    }};
}
pub(crate) use launch;

/// `extern "C"` entry points in a source: the names `NS_FOR_DTYPES` and `NS_KERNEL` make.
pub(crate) fn kernel_names(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("NS_FOR_DTYPES(") {
        rest = &rest[i + "NS_FOR_DTYPES(".len()..];
        if let Some(name) = rest.split(',').next() {
            let name = name.trim();
            if !name.is_empty() && !name.contains(' ') {
                for d in ["f32", "f16", "bf16"] {
                    out.push(format!("{name}_{d}"));
                }
            }
        }
    }
    for line in src.lines() {
        if let Some(r) = line.trim().strip_prefix("NS_KERNEL void ") {
            if let Some(name) = r.split('(').next() {
                out.push(name.trim().to_string());
            }
        }
    }
    out
}

/// One block per row; no launch at all for 0 rows.
pub(super) fn grid1(n: usize) -> Launch {
    Launch {
        grid: (n as u32, 1, 1),
        block: (THREADS, 1, 1),
        shared: 0,
    }
}

/// A grid-stride loop over `n` values; no launch for 0.
pub(super) fn stride_grid(n: usize) -> Launch {
    Launch {
        grid: (n.div_ceil(THREADS as usize).min(65535) as u32, 1, 1),
        block: (THREADS, 1, 1),
        shared: 0,
    }
}

impl<D: Device> GpuBackend<D> {
    /// A buffer in this backend's dtype: the bytes of `data`, or `len` zeros.
    pub(super) fn new_buf(&self, data: Option<&[f32]>, len: usize) -> Result<GpuBuf<D>> {
        self.not_capturing("an allocation")?;
        let mem = match data {
            Some(data) if !data.is_empty() => self.dev.htod(&self.dtype.to_bytes(data))?,
            _ => self.dev.alloc_zeros(self.dtype.bytes(len).max(1))?,
        };
        Ok(GpuBuf {
            ptr: self.dev.ptr(&mem),
            mem,
            len,
            dtype: self.dtype,
        })
    }

    /// The first `len` (at most `buf.len`) values of `buf`.
    pub(super) fn read_buf(&self, buf: &GpuBuf<D>, len: usize) -> Result<Vec<f32>> {
        self.not_capturing("a download")?;
        let mut bytes = vec![0u8; buf.dtype.bytes(len)];
        self.dev.dtoh(&buf.mem, &mut bytes)?;
        Ok(buf.dtype.from_bytes(&bytes, len))
    }

    /// `v` on the device, through the fixed allocation of `slot`: nothing is copied
    /// when the contents are the same as last time (a step's positions, slot mapping
    /// and attention metadata are the same for every layer, so they cross the bus once
    /// per step, not once per layer), and a change is written in place (stream-ordered)
    /// unless it needs more room. The address stays the same from step to step, which
    /// is what lets a captured graph read each step's metadata.
    pub(super) fn cached_u32s(&self, slot: &UploadCache<D>, v: &[u32]) -> Result<u64> {
        let mut g = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = g.as_ref().filter(|c| c.host.as_slice() == v) {
            return Ok(c.ptr);
        }
        self.not_capturing("a metadata upload")?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let c = match g.take() {
            Some(c) if c.cap >= bytes.len() => c,
            old => {
                // Grow geometrically, so a batch creeping upwards reallocates rarely.
                let cap = bytes
                    .len()
                    .max(MIN_UPLOAD_BYTES)
                    .max(old.as_ref().map_or(0, |c| 2 * c.cap));
                drop(old);
                let mem = self.dev.alloc_zeros(cap)?;
                Cached {
                    host: Vec::new(),
                    ptr: self.dev.ptr(&mem),
                    mem,
                    cap,
                }
            }
        };
        let c = g.insert(c);
        // Forget the old contents first: if the write fails they are unknown.
        c.host.clear();
        if !bytes.is_empty() {
            self.dev.write(&mut c.mem, 0, &bytes)?;
        }
        c.host.extend_from_slice(v);
        Ok(c.ptr)
    }

    /// The scratch area, grown to at least `bytes`; returns its address.
    pub(super) fn scratch(&self, bytes: usize) -> Result<u64> {
        self.grow(&self.scratch, bytes).map(|(ptr, _)| ptr)
    }

    /// The grow-only area `area`, grown to at least `bytes`: its address, and the lock
    /// that keeps it (for a download from it).
    pub(super) fn grow<'a>(
        &self,
        area: &'a Scratch<D>,
        bytes: usize,
    ) -> Result<(u64, std::sync::MutexGuard<'a, Option<Area<D>>>)> {
        let mut g = area.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((size, _, ptr)) = g.as_ref() {
            if *size >= bytes {
                let ptr = *ptr;
                return Ok((ptr, g));
            }
        }
        self.not_capturing("a scratch allocation")?;
        // Grow geometrically so a slowly rising context does not reallocate per step.
        let size = bytes.max(g.as_ref().map_or(0, |s| s.0 * 2));
        *g = None;
        let mem = self.dev.alloc(size)?;
        let ptr = self.dev.ptr(&mem);
        *g = Some((size, mem, ptr));
        Ok((ptr, g))
    }

    /// `b` is stored as the loaded kernels expect: every kernel of this backend was
    /// loaded for one dtype, and would misread a buffer of another.
    pub(super) fn check_dtype(
        &self,
        op: &'static str,
        arg: &'static str,
        b: &GpuBuf<D>,
    ) -> Result<()> {
        if b.dtype != self.dtype {
            return Err(Error::Dtype {
                op,
                arg,
                found: b.dtype,
                expected: self.dtype,
            });
        }
        Ok(())
    }

    /// `b` is in the kernels' dtype and holds at least `need` values.
    pub(super) fn check(
        &self,
        op: &'static str,
        arg: &'static str,
        b: &GpuBuf<D>,
        need: usize,
    ) -> Result<()> {
        self.check_dtype(op, arg, b)?;
        if b.len < need {
            return Err(Error::Shape {
                op,
                msg: format!("{arg} holds {} values, needs {need}", b.len),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_entry_point() {
        let names = kernel_names(include_str!("../../hip/sampling.hip"));
        assert_eq!(names, ["argmax_rows"]);
        let names = kernel_names(include_str!("../../hip/norm.hip"));
        assert!(
            names.contains(&"add_rms_norm_bf16".to_string()) && names.len() == 9,
            "{names:?}"
        );
        // Every NS_FOR_DTYPES entry point comes in the three dtypes.
        let names = kernel_names(include_str!("../../hip/elementwise.hip"));
        assert!(
            names.len().is_multiple_of(3) && names.contains(&"to_f32_f16".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn params_hold_values_in_aligned_slots() {
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Args {
            a: u64,
            b: i32,
            c: f32,
        }
        let mut p = Params::new();
        p.push(0x1122_3344_5566_7788u64);
        p.push(-3i32);
        p.push(1.5f32);
        p.push(Args {
            a: 4,
            b: 11,
            c: 0.5,
        });
        let n = p.n;
        let ptrs = p.ptrs();
        assert_eq!(n, 4);
        // SAFETY: each pointer addresses the value pushed into its slot.
        unsafe {
            assert_eq!(*(ptrs[0] as *const u64), 0x1122_3344_5566_7788);
            assert_eq!(*(ptrs[1] as *const i32), -3);
            assert_eq!(*(ptrs[2] as *const f32), 1.5);
            let back = *(ptrs[3] as *const Args);
            assert_eq!((back.a, back.b, back.c), (4, 11, 0.5));
        }
        assert!(ptrs.iter().all(|p| p.align_offset(8) == 0));
    }
}
