//! The simulated GPU ([`SimDevice`], `--device sim`): the real GPU backend
//! ([`GpuBackend`]: argument packing, launch geometry from the warp width, the
//! `#define NS_WARP` prefix, scratch and upload caches) over a device whose memory is
//! host memory and whose kernels are the `kernels/hip/*.hip` sources compiled for the
//! host by the system C++ compiler, with `kernels/sim/ns_sim.h` running each block's
//! threads as fibers. It takes compat.h's AMD branch at 64 or 32 lanes, or its NVIDIA
//! branch at 32, so wavefront-64 code paths run on any x86 or ARM machine.
//!
//! It exists to find bugs: it checks what a GPU would silently get wrong or hang on
//! (divergent barriers and collectives, partial warps, deadlocks, argument count and
//! size, shared-memory limits, out-of-bounds accesses, reads of unwritten shared or
//! scratch memory through poison fills, order-dependent results through several
//! interleavings) and reports each with the kernel, block, thread and source line.
//!
//! Files: `source.rs` (the shared-memory rewrite and entry points), `compile.rs` (the
//! C++ compile and the kernel cache), `memory.rs` (guarded allocations), `gemm.rs` (the
//! host GEMM behind the vendors' BLAS mapping), `graph.rs` (capture as a recording,
//! replay, and the counters tests read), `ffi.rs` (the C structs).

mod compile;
mod ffi;
mod gemm;
mod graph;
mod memory;
mod source;

pub use self::graph::{SimGraph, SimStats};
pub use self::memory::SimMem;

use self::compile::Library;
use self::ffi::{Config, Report, RunFn};
use self::graph::{Counters, Recorded};
use self::memory::Registry;
use crate::gpu::{Device, DeviceInfo, Gemm, GpuBackend, Launch};
use crate::{Dtype, Error, Result};
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// The shared GPU backend on the simulated device.
pub type SimBackend = GpuBackend<SimDevice>;

impl SimBackend {
    /// The GPU backend over a simulated device, storing buffers as `dtype`.
    pub fn new(options: SimOptions, dtype: Dtype) -> Result<SimBackend> {
        GpuBackend::with_device(SimDevice::new(options)?, dtype)
    }
}

/// Which vendor branch of `kernels/hip/compat.h` the kernels take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Branch {
    /// The AMD branch (`__shfl_xor` with a width, 64-bit ballot), at 64 lanes (MI250) or 32.
    Amd,
    /// The NVIDIA branch (the `*_sync` intrinsics), at 32 lanes.
    Nvidia,
}

impl Branch {
    pub(super) fn define(self) -> &'static str {
        match self {
            Branch::Amd => "NS_SIM_AMD",
            Branch::Nvidia => "NS_SIM_NVIDIA",
        }
    }
}

/// The order in which the threads of a block run between synchronization points. A
/// correct kernel gives the same bits under every order; one that does not has a race.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Every runnable thread to its next barrier or collective, in thread order.
    Pass,
    /// The same, last thread first.
    Reverse,
    /// Each warp as far as it can go (to a barrier) before the next warp starts.
    Warp,
    /// The same, last warp first.
    WarpReverse,
    /// Warps and lanes in a random order (seeded), different in every block.
    Random(u64),
}

impl Order {
    fn code(self) -> (i32, u64) {
        match self {
            Order::Pass => (0, 0),
            Order::Reverse => (1, 0),
            Order::Warp => (2, 0),
            Order::WarpReverse => (3, 0),
            Order::Random(seed) => (4, seed),
        }
    }
}

/// What fills shared memory before each block and the contents of [`Device::alloc`]
/// allocations: a kernel that reads what it did not write reads this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poison {
    /// All bits set: NaN as f32, -1 as an integer.
    Nan,
    /// 0x7f bytes: 3.4e38 as f32, which `fmaxf` does not skip the way it skips NaN.
    Big,
    Zero,
}

impl Poison {
    fn byte(self) -> u8 {
        match self {
            Poison::Nan => 0xff,
            Poison::Big => 0x7f,
            Poison::Zero => 0,
        }
    }
}

/// A simulated device.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Lanes per warp: 64 (MI250's wavefront) or 32.
    pub warp: u32,
    pub branch: Branch,
    pub order: Order,
    pub poison: Poison,
    /// A thread that exits while others of its block wait at a barrier is an error
    /// (legal on current GPUs, but usually a bug).
    pub strict_exit: bool,
    /// OS threads that run blocks (0: all cores).
    pub threads: usize,
    /// The memory the device reports (the KV cache is sized from it).
    pub memory_bytes: usize,
}

impl SimOptions {
    /// The AMD branch at `warp` lanes (64 is MI250).
    pub fn amd(warp: u32) -> SimOptions {
        SimOptions {
            warp,
            branch: Branch::Amd,
            order: Order::Pass,
            poison: Poison::Nan,
            strict_exit: false,
            threads: 0,
            memory_bytes: 4 << 30,
        }
    }

    /// The NVIDIA branch (32 lanes).
    pub fn nvidia() -> SimOptions {
        SimOptions {
            branch: Branch::Nvidia,
            ..SimOptions::amd(32)
        }
    }

    /// A short name: `amd64`, `amd32`, `nvidia32`.
    pub fn label(&self) -> String {
        match self.branch {
            Branch::Amd => format!("amd{}", self.warp),
            Branch::Nvidia => format!("nvidia{}", self.warp),
        }
    }
}

/// A kernel: its entry point and the library it lives in.
#[derive(Clone)]
pub struct SimFunc {
    name: String,
    run: RunFn,
    lib: Arc<Library>,
}

pub struct SimDevice {
    options: SimOptions,
    info: DeviceInfo,
    registry: Arc<Registry>,
    threads: usize,
    /// Launches run one at a time, as on one stream.
    stream: Mutex<()>,
    /// The recording of a capture under way.
    capture: Mutex<Option<Vec<Recorded>>>,
    counters: Counters,
}

impl SimDevice {
    pub fn new(options: SimOptions) -> Result<SimDevice> {
        if options.warp != 32 && options.warp != 64 {
            return Err(Error::Unavailable(format!(
                "sim: a warp of {} lanes: use 64 (AMD MI250) or 32",
                options.warp
            )));
        }
        if options.branch == Branch::Nvidia && options.warp != 32 {
            return Err(Error::Unavailable(
                "sim: the NVIDIA branch runs 32-lane warps".into(),
            ));
        }
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let info = DeviceInfo {
            name: format!("simulated {} GPU", options.label()),
            free_bytes: options.memory_bytes,
            total_bytes: options.memory_bytes,
            arch: format!("sim-{}", options.label()),
            warp: options.warp,
        };
        Ok(SimDevice {
            options,
            info,
            registry: Arc::default(),
            threads,
            stream: Mutex::new(()),
            capture: Mutex::new(None),
            counters: Counters::default(),
        })
    }

    pub fn options(&self) -> &SimOptions {
        &self.options
    }

    /// What the device has run, allocated, written and recorded so far.
    pub fn stats(&self) -> SimStats {
        self.counters.snapshot()
    }

    fn capturing(&self) -> bool {
        self.capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// An error if a capture is under way: `what` cannot be recorded into a graph.
    fn refuse_while_capturing(&self, what: &str) -> Result<()> {
        if self.capturing() {
            return Err(Error::Unavailable(format!(
                "sim: {what} while capturing a graph"
            )));
        }
        Ok(())
    }

    fn new_mem(&self, bytes: usize) -> Result<SimMem> {
        self.refuse_while_capturing("an allocation")?;
        Counters::bump(&self.counters.allocations);
        SimMem::new(bytes, &self.registry)
    }

    /// Runs one launch now.
    ///
    /// # Safety
    /// As [`Device::launch`].
    unsafe fn run(
        &self,
        f: &SimFunc,
        cfg: Launch,
        params: &mut [*mut c_void],
        sizes: &[usize],
    ) -> Result<()> {
        Counters::bump(&self.counters.launches);
        let _stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the caller's contract.
        unsafe { self.run_locked(f, cfg, params, sizes) }
    }

    /// Shared memory per block: 64 KiB of LDS on AMD, NVIDIA's 48 KiB default.
    fn shared_limit(&self) -> u64 {
        match self.options.branch {
            Branch::Amd => 64 * 1024,
            Branch::Nvidia => 48 * 1024,
        }
    }

    fn error(&self, f: &SimFunc, r: &Report) -> Error {
        let mut msg = r.message();
        if r.status == 2 {
            msg.push_str(&format!(
                "; the address is {}",
                self.registry.describe(r.fault_addr)
            ));
            if let Some(at) = compile::source_line(&f.lib.path, r.pc_offset) {
                msg.push_str(&format!("; at {at}"));
            }
        }
        Error::Kernel(format!("sim ({}): {msg}", self.options.label()))
    }
}

/// The launch's shared pieces, sent to the threads that run its blocks.
struct Shared<'a> {
    cfg: Config,
    params: *mut *mut c_void,
    sizes: &'a [usize],
    run: RunFn,
}
// SAFETY: the parameter values are only read, and outlive the launch.
unsafe impl Send for Shared<'_> {}
unsafe impl Sync for Shared<'_> {}

impl Device for SimDevice {
    type Mem = SimMem;
    type Func = SimFunc;
    type Graph = SimGraph;
    const NAME: &'static str = "sim";

    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn load_kernels(&self, file: &str, source: &str, names: &[String]) -> Result<Vec<SimFunc>> {
        // Line numbers and __FILE__ as in the repository's file, past the backend's
        // `#define NS_WARP` line, so reports point at kernels/hip/<file>:<line>.
        let source = match source.split_once('\n') {
            Some((first, rest)) if first.starts_with("#define NS_WARP") => {
                format!("{first}\n#line 1 \"{file}\"\n{rest}")
            }
            _ => format!("#line 1 \"{file}\"\n{source}"),
        };
        let mut src = source::rewrite_shared(file, &source)?;
        src.push_str(&source::entry_points(names));
        let lib = compile::load(file, &src, self.options.branch)?;
        names
            .iter()
            .map(|n| {
                Ok(SimFunc {
                    name: n.clone(),
                    run: lib.entry(n)?,
                    lib: lib.clone(),
                })
            })
            .collect()
    }

    fn alloc_zeros(&self, bytes: usize) -> Result<SimMem> {
        self.new_mem(bytes)
    }

    fn alloc(&self, bytes: usize) -> Result<SimMem> {
        let mut m = self.new_mem(bytes)?;
        m.bytes_mut().fill(self.options.poison.byte());
        Ok(m)
    }

    fn htod(&self, bytes: &[u8]) -> Result<SimMem> {
        let mut m = self.new_mem(bytes.len())?;
        m.bytes_mut()[..bytes.len()].copy_from_slice(bytes);
        Ok(m)
    }

    fn write(&self, m: &mut SimMem, offset: usize, bytes: &[u8]) -> Result<()> {
        self.refuse_while_capturing("a write")?;
        let len = m.len();
        let dst = offset
            .checked_add(bytes.len())
            .and_then(|end| m.bytes_mut().get_mut(offset..end))
            .ok_or_else(|| {
                Error::Unavailable(format!(
                    "sim: a write of {} bytes at {offset} into a {len}-byte allocation",
                    bytes.len()
                ))
            })?;
        dst.copy_from_slice(bytes);
        Counters::bump(&self.counters.writes);
        Ok(())
    }

    fn dtoh(&self, m: &SimMem, out: &mut [u8]) -> Result<()> {
        self.refuse_while_capturing("a download")?;
        let src = m.bytes().get(..out.len()).ok_or_else(|| {
            Error::Unavailable(format!(
                "sim: a copy of {} bytes from a {}-byte allocation",
                out.len(),
                m.len()
            ))
        })?;
        out.copy_from_slice(src);
        Ok(())
    }

    fn ptr(&self, m: &SimMem) -> u64 {
        m.addr()
    }

    unsafe fn launch(
        &self,
        f: &SimFunc,
        cfg: Launch,
        params: &mut [*mut c_void],
        sizes: &[usize],
    ) -> Result<()> {
        if let Some(rec) = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            // SAFETY: the caller's contract: params point at values of `sizes` bytes.
            rec.push(unsafe { Recorded::launch(f, cfg, params, sizes)? });
            Counters::bump(&self.counters.recorded);
            return Ok(());
        }
        // SAFETY: the caller's contract.
        unsafe { self.run(f, cfg, params, sizes) }
    }

    unsafe fn gemm_bt(&self, dtype: Dtype, g: Gemm) -> Result<()> {
        if let Some(rec) = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            rec.push(Recorded::Gemm(dtype, g));
            Counters::bump(&self.counters.recorded);
            return Ok(());
        }
        Counters::bump(&self.counters.gemms);
        let _stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the caller's contract.
        unsafe { gemm::gemm(dtype, g.column_major()) }
    }

    unsafe fn copy(&self, src: &SimMem, dst: &mut SimMem, bytes: usize) -> Result<()> {
        self.refuse_while_capturing("a copy")?;
        if bytes > src.len() || bytes > dst.len() {
            return Err(Error::Unavailable(format!(
                "sim: a copy of {bytes} bytes between allocations of {} and {}",
                src.len(),
                dst.len()
            )));
        }
        dst.bytes_mut()[..bytes].copy_from_slice(&src.bytes()[..bytes]);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    fn mem_info(&self) -> Result<(usize, usize)> {
        let total = self.options.memory_bytes;
        Ok((total.saturating_sub(self.registry.used()), total))
    }

    fn graphs_supported(&self) -> bool {
        true
    }

    fn begin_capture(&self) -> Result<()> {
        let mut c = self.capture.lock().unwrap_or_else(|e| e.into_inner());
        if c.is_some() {
            return Err(Error::Unavailable(
                "sim: a capture is already under way".into(),
            ));
        }
        *c = Some(Vec::new());
        Ok(())
    }

    fn end_capture(&self) -> Result<SimGraph> {
        let ops = self
            .capture
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| Error::Unavailable("sim: no capture is under way".into()))?;
        Ok(SimGraph { ops })
    }

    unsafe fn replay(&self, graph: &SimGraph) -> Result<()> {
        self.refuse_while_capturing("a replay")?;
        Counters::bump(&self.counters.replays);
        for op in &graph.ops {
            match op {
                Recorded::Launch {
                    f,
                    cfg,
                    args,
                    sizes,
                } => {
                    // The recorded values are only read (the kernels copy them in).
                    let mut params: Vec<*mut c_void> =
                        args.iter().map(|a| a.as_ptr() as *mut c_void).collect();
                    // SAFETY: the values were recorded from a valid launch of `f`, and
                    // the caller guarantees the buffers they address are still live.
                    unsafe { self.run(f, *cfg, &mut params, sizes)? };
                }
                Recorded::Gemm(dtype, g) => {
                    // SAFETY: as above.
                    unsafe { self.gemm_bt(*dtype, *g)? };
                }
            }
        }
        Ok(())
    }
}

impl SimDevice {
    /// The body of a launch (see [`SimDevice::run`]).
    ///
    /// # Safety
    /// As [`Device::launch`]; called with the stream lock held.
    unsafe fn run_locked(
        &self,
        f: &SimFunc,
        cfg: Launch,
        params: &mut [*mut c_void],
        sizes: &[usize],
    ) -> Result<()> {
        let (order, seed) = self.options.order.code();
        let c = Config {
            grid: [cfg.grid.0, cfg.grid.1, cfg.grid.2],
            block: [cfg.block.0, cfg.block.1, cfg.block.2],
            dyn_shared: cfg.shared as _,
            shared_limit: self.shared_limit() as _,
            warp: self.options.warp,
            order,
            seed,
            poison: match self.options.poison {
                Poison::Nan => 0,
                Poison::Big => 1,
                Poison::Zero => 2,
            },
            strict_exit: self.options.strict_exit as i32,
        };
        if sizes.len() != params.len() {
            return Err(Error::Kernel(format!(
                "sim: kernel {}: {} argument sizes for {} arguments",
                f.name,
                sizes.len(),
                params.len()
            )));
        }
        let blocks = cfg.grid.0 as i64 * cfg.grid.1 as i64 * cfg.grid.2 as i64;
        let shared = Shared {
            cfg: c,
            params: params.as_mut_ptr(),
            sizes,
            run: f.run,
        };
        // Captured whole (edition 2021 would capture the raw-pointer field alone).
        let shared = &shared;
        let run_range = |begin: i64, end: i64| -> Report {
            let mut r = Report::new();
            // SAFETY: the entry point of this kernel, with the launch's own arguments;
            // the caller guarantees they match the kernel and stay alive.
            unsafe {
                (shared.run)(
                    &shared.cfg,
                    shared.params,
                    shared.sizes.as_ptr(),
                    shared.sizes.len(),
                    begin,
                    end,
                    &mut r,
                )
            };
            r
        };
        let threads = self.threads.min(blocks.max(1) as usize);
        if threads <= 1 {
            let r = run_range(0, blocks);
            return if r.status == 0 {
                Ok(())
            } else {
                Err(self.error(f, &r))
            };
        }
        // Blocks in chunks from a shared counter, on the rayon pool's threads (which
        // live as long as the process, and so keep their fiber stacks); the first error
        // stops the rest.
        let chunk = (blocks / (threads as i64 * 8)).max(1);
        let next = AtomicI64::new(0);
        let stop = AtomicBool::new(false);
        let first: Mutex<Option<Report>> = Mutex::new(None);
        rayon::scope(|s| {
            for _ in 0..threads {
                s.spawn(|_| {
                    while !stop.load(Ordering::Relaxed) {
                        let begin = next.fetch_add(chunk, Ordering::Relaxed);
                        if begin >= blocks {
                            break;
                        }
                        let r = run_range(begin, (begin + chunk).min(blocks));
                        if r.status != 0 {
                            stop.store(true, Ordering::Relaxed);
                            first
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(r);
                        }
                    }
                });
            }
        });
        match first.into_inner().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(r) => Err(self.error(f, &r)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uninitialized_allocations_hold_the_poison_and_zeroed_ones_zeros() {
        for (poison, byte) in [(Poison::Nan, 0xff), (Poison::Big, 0x7f), (Poison::Zero, 0)] {
            let dev = SimDevice::new(SimOptions {
                poison,
                ..SimOptions::amd(64)
            })
            .unwrap();
            let mut out = [1u8; 12];
            dev.dtoh(&dev.alloc(12).unwrap(), &mut out).unwrap();
            assert_eq!(out, [byte; 12], "{poison:?}");
            dev.dtoh(&dev.alloc_zeros(12).unwrap(), &mut out).unwrap();
            assert_eq!(out, [0; 12]);
        }
    }

    #[test]
    fn devices_the_kernels_were_not_written_for_are_refused() {
        for bad in [
            SimOptions::amd(16),
            SimOptions {
                warp: 64,
                ..SimOptions::nvidia()
            },
        ] {
            assert!(SimDevice::new(bad).is_err());
        }
        let dev = SimDevice::new(SimOptions::amd(64)).unwrap();
        assert_eq!(
            (dev.info().warp, dev.info().arch.as_str()),
            (64, "sim-amd64")
        );
        let (free, total) = dev.mem_info().unwrap();
        let _m = dev.alloc_zeros(1000).unwrap();
        assert_eq!(dev.mem_info().unwrap(), (free - 1000, total));
    }
}
