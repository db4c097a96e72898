//! The launch description and the result report shared with `kernels/sim/ns_sim.h`
//! (`ns_sim::Config`, `ns_sim::Report`): `#[repr(C)]` mirrors, and the signature of the
//! per-kernel entry points the simulator appends to each source.

use std::ffi::{c_char, c_int, c_long, c_uint, c_ulong, c_void};

#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Config {
    pub grid: [c_uint; 3],
    pub block: [c_uint; 3],
    pub dyn_shared: c_ulong,
    pub shared_limit: c_ulong,
    pub warp: c_uint,
    pub order: c_int,
    pub seed: c_ulong,
    pub poison: c_int,
    pub strict_exit: c_int,
}

#[repr(C)]
pub(super) struct Report {
    /// 0 ok, 1 an error in `msg`, 2 a memory fault (`msg`, `fault_addr`, `pc_offset`).
    pub status: c_int,
    pub msg: [c_char; 1024],
    pub fault_addr: c_ulong,
    pub pc_offset: c_ulong,
}

impl Report {
    pub fn new() -> Report {
        Report {
            status: 0,
            msg: [0; 1024],
            fault_addr: 0,
            pc_offset: 0,
        }
    }

    pub fn message(&self) -> String {
        let bytes: Vec<u8> = self
            .msg
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// `ns_sim_run_<kernel>(config, params, sizes, nparams, first_block, end_block, report)`.
pub(super) type RunFn = unsafe extern "C" fn(
    *const Config,
    *mut *mut c_void,
    *const usize,
    usize,
    c_long,
    c_long,
    *mut Report,
);

/// `ns_sim_install()`: the library's fault handler, chained to the one before it.
pub(super) type InstallFn = unsafe extern "C" fn();
