//! The HIP runtime, loaded at run time (feature `hip`): `libamdhip64` for devices,
//! memory, modules and launches, and hiprtc (inside `libamdhip64.so.5` on ROCm 5, in
//! `libhiprtc.so` on ROCm 6+) to compile `kernels/hip/*.hip` for the device's
//! architecture at start-up. No ROCm is needed to build; without the library or a GPU,
//! opening a device is a clear error, never a crash.
//!
//! Every queued operation takes the stream it runs on (`hipStream_t`, a [`Handle`]):
//! the device keeps one stream for kernels, rocBLAS and copies (`stream.rs`), so
//! uploads can be asynchronous and still ordered with the kernels that read them.

use super::arch::{self, PropsLayout};
use crate::gpu::DeviceInfo;
use crate::{Error, Result};
use libloading::Library;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use crate::sources::COMPAT_H;

type HipError = c_int;
const HIP_SUCCESS: HipError = 0;
const HIP_ERROR_NO_DEVICE: HipError = 100;
/// What `hipInit` returns on ROCm 5 when the machine has no AMD GPU at all.
const HIP_ERROR_INVALID_DEVICE: HipError = 101;

type Prog = *mut c_void;

/// A HIP stream or event (`hipStream_t`, `hipEvent_t`): an opaque runtime pointer.
pub type Handle = *mut c_void;

/// `hipDeviceProp_t` filler: `hipGetDevicePropertiesR0600` or `hipGetDeviceProperties`.
type PropsFn = unsafe extern "C" fn(*mut c_void, c_int) -> HipError;

/// `hipStreamDefault`: the stream still orders with the null stream, so anything a
/// library queues there cannot overtake ours.
const HIP_STREAM_DEFAULT: c_uint = 0;
/// `hipEventDisableTiming`: the cheaper event, for ordering only.
const HIP_EVENT_DISABLE_TIMING: c_uint = 0x2;
/// `hipHostMallocDefault`: pinned, portable to the current device.
const HIP_HOST_MALLOC_DEFAULT: c_uint = 0;

/// The functions we use, resolved once.
#[allow(non_snake_case)]
struct Api {
    hipInit: unsafe extern "C" fn(c_uint) -> HipError,
    hipGetDeviceCount: unsafe extern "C" fn(*mut c_int) -> HipError,
    hipSetDevice: unsafe extern "C" fn(c_int) -> HipError,
    hipGetErrorString: unsafe extern "C" fn(HipError) -> *const c_char,
    hipDeviceGetName: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> HipError,
    hipMemGetInfo: unsafe extern "C" fn(*mut usize, *mut usize) -> HipError,
    hipMalloc: unsafe extern "C" fn(*mut *mut c_void, usize) -> HipError,
    hipFree: unsafe extern "C" fn(*mut c_void) -> HipError,
    hipMemsetAsync: unsafe extern "C" fn(*mut c_void, c_int, usize, Handle) -> HipError,
    hipDeviceGetAttribute: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> HipError,
    /// ROCm 6+: fills the `R0600` layout.
    props_r0600: Option<PropsFn>,
    /// ROCm 5 (`hipGetDeviceProperties`), or ROCm 6's compatibility entry point
    /// (`hipGetDevicePropertiesR0000`): fills the `R0000` layout.
    props_r0000: Option<PropsFn>,
    hipMemcpyHtoDAsync: unsafe extern "C" fn(*mut c_void, *const c_void, usize, Handle) -> HipError,
    hipMemcpyDtoHAsync: unsafe extern "C" fn(*mut c_void, *const c_void, usize, Handle) -> HipError,
    hipMemcpyDtoDAsync: unsafe extern "C" fn(*mut c_void, *const c_void, usize, Handle) -> HipError,
    hipStreamCreateWithFlags: unsafe extern "C" fn(*mut Handle, c_uint) -> HipError,
    hipStreamDestroy: unsafe extern "C" fn(Handle) -> HipError,
    hipStreamSynchronize: unsafe extern "C" fn(Handle) -> HipError,
    hipEventCreateWithFlags: unsafe extern "C" fn(*mut Handle, c_uint) -> HipError,
    hipEventRecord: unsafe extern "C" fn(Handle, Handle) -> HipError,
    hipEventSynchronize: unsafe extern "C" fn(Handle) -> HipError,
    hipEventDestroy: unsafe extern "C" fn(Handle) -> HipError,
    /// `hipHostMalloc` (or `hipHostAlloc`, its CUDA-named twin).
    host_malloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> HipError,
    hipHostFree: unsafe extern "C" fn(*mut c_void) -> HipError,
    hipModuleLoadData: unsafe extern "C" fn(*mut *mut c_void, *const c_void) -> HipError,
    hipModuleGetFunction:
        unsafe extern "C" fn(*mut *mut c_void, *mut c_void, *const c_char) -> HipError,
    #[allow(clippy::type_complexity)]
    hipModuleLaunchKernel: unsafe extern "C" fn(
        *mut c_void,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        Handle,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> HipError,
    hiprtcCreateProgram: unsafe extern "C" fn(
        *mut Prog,
        *const c_char,
        *const c_char,
        c_int,
        *const *const c_char,
        *const *const c_char,
    ) -> c_int,
    hiprtcCompileProgram: unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int,
    hiprtcGetProgramLogSize: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    hiprtcGetProgramLog: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    hiprtcGetCodeSize: unsafe extern "C" fn(Prog, *mut usize) -> c_int,
    hiprtcGetCode: unsafe extern "C" fn(Prog, *mut c_char) -> c_int,
    hiprtcDestroyProgram: unsafe extern "C" fn(*mut Prog) -> c_int,
    /// Stream capture and graphs (decode graphs), where the runtime has all of them.
    graph: Option<GraphApi>,
}

/// `hipStreamBeginCapture` .. `hipGraphDestroy`.
#[allow(non_snake_case)]
struct GraphApi {
    hipStreamBeginCapture: unsafe extern "C" fn(Handle, c_int) -> HipError,
    hipStreamEndCapture: unsafe extern "C" fn(Handle, *mut Handle) -> HipError,
    hipGraphInstantiate:
        unsafe extern "C" fn(*mut Handle, Handle, *mut Handle, *mut c_char, usize) -> HipError,
    hipGraphLaunch: unsafe extern "C" fn(Handle, Handle) -> HipError,
    hipGraphExecDestroy: unsafe extern "C" fn(Handle) -> HipError,
    hipGraphDestroy: unsafe extern "C" fn(Handle) -> HipError,
}

/// `hipStreamCaptureModeRelaxed`: another thread's unrelated HIP calls do not
/// invalidate the capture.
const HIP_STREAM_CAPTURE_MODE_RELAXED: c_int = 2;

/// An opened device: what it reports, and the full target ID kernels are compiled for.
pub struct Opened {
    /// `arch` is the base name (`gfx90a`), for display and rules by family.
    pub info: DeviceInfo,
    /// What hiprtc compiles for: the device's `gcnArchName` with its target-ID
    /// features (`gfx90a:sramecc+:xnack-`), or `NOVASTACK_HIP_ARCH`.
    pub target: String,
}

/// A loaded HIP runtime (no device opened yet).
pub struct Hip {
    api: Api,
    _libs: Vec<Library>,
}

/// The first of `names` that loads, or every attempt's error.
pub(crate) fn open_first(names: &[&str]) -> std::result::Result<Library, String> {
    let mut errs = Vec::new();
    for n in names {
        // SAFETY: loading a system library whose initialisers are the vendor's.
        match unsafe { Library::new(n) } {
            Ok(l) => return Ok(l),
            Err(e) => errs.push(format!("{n}: {e}")),
        }
    }
    Err(errs.join("; "))
}

/// The symbol named by `$name` (a string literal, or `stringify!(ident)`) from the
/// first library that has it, if any.
macro_rules! opt_sym {
    ($libs:expr, $($name:tt)+) => {{
        let mut found = None;
        for lib in $libs.iter() {
            // SAFETY: the symbol's type is the HIP C API's signature for that name.
            if let Ok(s) = unsafe { lib.get(concat!($($name)+, "\0").as_bytes()) } {
                found = Some(*s);
                break;
            }
        }
        found
    }};
}

/// The symbol `$name`, or an error naming it.
macro_rules! sym {
    ($libs:expr, $name:ident) => {{
        opt_sym!($libs, stringify!($name)).ok_or_else(|| lacks(stringify!($name)))?
    }};
}

fn lacks(name: &str) -> Error {
    Error::Unavailable(format!("the HIP runtime lacks {name} (ROCm too old?)"))
}

impl Hip {
    /// Loads `libamdhip64` (and `libhiprtc` where separate).
    pub fn load() -> Result<Hip> {
        let hip = open_first(&["libamdhip64.so", "libamdhip64.so.6", "libamdhip64.so.5"]).map_err(|e| {
            Error::Unavailable(format!(
                "cannot load the HIP runtime (libamdhip64): {e}. Install ROCm, or set LD_LIBRARY_PATH to its lib folder"
            ))
        })?;
        let mut libs = vec![hip];
        if let Ok(rtc) = open_first(&["libhiprtc.so", "libhiprtc.so.6"]) {
            libs.insert(0, rtc);
        }
        let api = Api {
            hipInit: sym!(libs, hipInit),
            hipGetDeviceCount: sym!(libs, hipGetDeviceCount),
            hipSetDevice: sym!(libs, hipSetDevice),
            hipGetErrorString: sym!(libs, hipGetErrorString),
            hipDeviceGetName: sym!(libs, hipDeviceGetName),
            hipMemGetInfo: sym!(libs, hipMemGetInfo),
            hipMalloc: sym!(libs, hipMalloc),
            hipFree: sym!(libs, hipFree),
            hipMemsetAsync: sym!(libs, hipMemsetAsync),
            hipDeviceGetAttribute: sym!(libs, hipDeviceGetAttribute),
            props_r0600: opt_sym!(libs, "hipGetDevicePropertiesR0600"),
            props_r0000: opt_sym!(libs, "hipGetDevicePropertiesR0000")
                .or(opt_sym!(libs, "hipGetDeviceProperties")),
            hipMemcpyHtoDAsync: sym!(libs, hipMemcpyHtoDAsync),
            hipMemcpyDtoHAsync: sym!(libs, hipMemcpyDtoHAsync),
            hipMemcpyDtoDAsync: sym!(libs, hipMemcpyDtoDAsync),
            hipStreamCreateWithFlags: sym!(libs, hipStreamCreateWithFlags),
            hipStreamDestroy: sym!(libs, hipStreamDestroy),
            hipStreamSynchronize: sym!(libs, hipStreamSynchronize),
            hipEventCreateWithFlags: sym!(libs, hipEventCreateWithFlags),
            hipEventRecord: sym!(libs, hipEventRecord),
            hipEventSynchronize: sym!(libs, hipEventSynchronize),
            hipEventDestroy: sym!(libs, hipEventDestroy),
            host_malloc: opt_sym!(libs, "hipHostMalloc")
                .or(opt_sym!(libs, "hipHostAlloc"))
                .ok_or_else(|| lacks("hipHostMalloc"))?,
            hipHostFree: sym!(libs, hipHostFree),
            hipModuleLoadData: sym!(libs, hipModuleLoadData),
            hipModuleGetFunction: sym!(libs, hipModuleGetFunction),
            hipModuleLaunchKernel: sym!(libs, hipModuleLaunchKernel),
            hiprtcCreateProgram: sym!(libs, hiprtcCreateProgram),
            hiprtcCompileProgram: sym!(libs, hiprtcCompileProgram),
            hiprtcGetProgramLogSize: sym!(libs, hiprtcGetProgramLogSize),
            hiprtcGetProgramLog: sym!(libs, hiprtcGetProgramLog),
            hiprtcGetCodeSize: sym!(libs, hiprtcGetCodeSize),
            hiprtcGetCode: sym!(libs, hiprtcGetCode),
            hiprtcDestroyProgram: sym!(libs, hiprtcDestroyProgram),
            graph: (|| {
                Some(GraphApi {
                    hipStreamBeginCapture: opt_sym!(libs, "hipStreamBeginCapture")?,
                    hipStreamEndCapture: opt_sym!(libs, "hipStreamEndCapture")?,
                    hipGraphInstantiate: opt_sym!(libs, "hipGraphInstantiate")?,
                    hipGraphLaunch: opt_sym!(libs, "hipGraphLaunch")?,
                    hipGraphExecDestroy: opt_sym!(libs, "hipGraphExecDestroy")?,
                    hipGraphDestroy: opt_sym!(libs, "hipGraphDestroy")?,
                })
            })(),
        };
        Ok(Hip { api, _libs: libs })
    }

    fn check(&self, what: &str, e: HipError) -> Result<()> {
        if e == HIP_SUCCESS {
            return Ok(());
        }
        // SAFETY: hipGetErrorString returns a static C string for any code.
        let msg = unsafe { CStr::from_ptr((self.api.hipGetErrorString)(e)) }
            .to_string_lossy()
            .into_owned();
        Err(Error::Unavailable(format!("{what}: {msg} (hipError {e})")))
    }

    /// Number of visible AMD GPUs; a machine without one gives a clear error.
    pub fn device_count(&self) -> Result<usize> {
        // SAFETY: plain C calls with valid out-pointers.
        let e = unsafe { (self.api.hipInit)(0) };
        if e == HIP_ERROR_NO_DEVICE || e == HIP_ERROR_INVALID_DEVICE {
            return Err(Error::Unavailable(format!(
                "no AMD GPU is visible (hipInit returned {e}): check /dev/kfd and /dev/dri permissions and HIP_VISIBLE_DEVICES"
            )));
        }
        self.check("hipInit", e)?;
        let mut n = 0;
        let e = unsafe { (self.api.hipGetDeviceCount)(&mut n) };
        if e == HIP_ERROR_NO_DEVICE || n == 0 {
            return Err(Error::Unavailable(
                "no AMD GPU is visible (hipErrorNoDevice): check /dev/kfd and /dev/dri permissions and HIP_VISIBLE_DEVICES".into(),
            ));
        }
        self.check("hipGetDeviceCount", e)?;
        Ok(n as usize)
    }

    /// Opens device `ordinal` and makes it current: its name, free/total memory, the
    /// architecture kernels are compiled for (`NOVASTACK_HIP_ARCH`, else the device's
    /// own, [`Hip::device_target`]) and its wavefront width.
    pub fn open(&self, ordinal: usize) -> Result<Opened> {
        let n = self.device_count()?;
        if ordinal >= n {
            return Err(Error::Unavailable(format!(
                "AMD GPU {ordinal} requested, {n} visible"
            )));
        }
        // SAFETY: valid ordinal, buffers sized as passed.
        unsafe {
            self.check("hipSetDevice", (self.api.hipSetDevice)(ordinal as c_int))?;
            let mut name = [0 as c_char; 256];
            self.check(
                "hipDeviceGetName",
                (self.api.hipDeviceGetName)(name.as_mut_ptr(), 256, ordinal as c_int),
            )?;
            let (mut free, mut total) = (0usize, 0usize);
            self.check(
                "hipMemGetInfo",
                (self.api.hipMemGetInfo)(&mut free, &mut total),
            )?;
            let target = arch::select(arch::env_override(), self.device_target(ordinal))?;
            let arch = arch::base(&target).to_string();
            let warp = self.warp_size(ordinal, &arch);
            Ok(Opened {
                info: DeviceInfo {
                    name: CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned(),
                    free_bytes: free,
                    total_bytes: total,
                    arch,
                    warp,
                },
                target,
            })
        }
    }

    /// The target ID device `ordinal` reports (`hipDeviceProp_t.gcnArchName`), read
    /// from a zeroed buffer far larger than any known layout (see `arch.rs`), so a
    /// runtime whose struct grew cannot write past it.
    pub fn device_target(&self, ordinal: usize) -> Result<String> {
        let (fill, layout) = match (self.api.props_r0600, self.api.props_r0000) {
            (Some(f), _) => (f, PropsLayout::R0600),
            (None, Some(f)) => (f, PropsLayout::R0000),
            (None, None) => return Err(lacks("hipGetDeviceProperties")),
        };
        // u64 words: the struct holds size_t fields and wants their alignment.
        let mut words = vec![0u64; arch::PROPS_BUF / 8];
        // SAFETY: the buffer is PROPS_BUF bytes, larger than every hipDeviceProp_t.
        self.check("hipGetDeviceProperties", unsafe {
            fill(words.as_mut_ptr() as *mut c_void, ordinal as c_int)
        })?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        arch::target_from_props(&bytes, layout).ok_or_else(|| {
            Error::Unavailable(format!(
                "hipDeviceProp_t.gcnArchName does not read as an AMD architecture (expected the {layout:?} layout)"
            ))
        })
    }

    /// Compiles one kernel source with hiprtc for `arch` (e.g. `gfx90a`); returns the
    /// code object. Works without a GPU. Errors carry the compiler log.
    pub fn compile(&self, name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
        let src = CString::new(source).map_err(|e| Error::Unavailable(e.to_string()))?;
        let cname = CString::new(name).map_err(|e| Error::Unavailable(e.to_string()))?;
        let hdr = CString::new(COMPAT_H).map_err(|e| Error::Unavailable(e.to_string()))?;
        let hdr_name = c"compat.h";
        let opts: Vec<CString> = [
            format!("--offload-arch={arch}"),
            "-O3".into(),
            "-std=c++17".into(),
        ]
        .into_iter()
        .map(|o| CString::new(o).expect("no NUL"))
        .collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: hiprtc C API with pointers that outlive the calls.
        unsafe {
            let headers = [hdr.as_ptr()];
            let names = [hdr_name.as_ptr()];
            let r = (self.api.hiprtcCreateProgram)(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                1,
                headers.as_ptr(),
                names.as_ptr(),
            );
            if r != 0 {
                return Err(Error::Unavailable(format!(
                    "hiprtcCreateProgram({name}) failed: {r}"
                )));
            }
            let r =
                (self.api.hiprtcCompileProgram)(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let mut log_len = 0usize;
            (self.api.hiprtcGetProgramLogSize)(prog, &mut log_len);
            let mut log = vec![0u8; log_len.max(1)];
            (self.api.hiprtcGetProgramLog)(prog, log.as_mut_ptr() as *mut c_char);
            let log = String::from_utf8_lossy(&log)
                .trim_end_matches('\0')
                .to_string();
            if r != 0 {
                (self.api.hiprtcDestroyProgram)(&mut prog);
                return Err(Error::Unavailable(format!(
                    "hiprtc could not compile {name} for {arch} (error {r}):\n{log}"
                )));
            }
            let mut size = 0usize;
            (self.api.hiprtcGetCodeSize)(prog, &mut size);
            let mut code = vec![0u8; size];
            (self.api.hiprtcGetCode)(prog, code.as_mut_ptr() as *mut c_char);
            (self.api.hiprtcDestroyProgram)(&mut prog);
            Ok(code)
        }
    }

    /// Allocates, copies and frees device memory; the GPU backend builds on these.
    pub fn alloc(&self, bytes: usize) -> Result<*mut c_void> {
        let mut p = std::ptr::null_mut();
        // SAFETY: out-pointer valid.
        self.check("hipMalloc", unsafe {
            (self.api.hipMalloc)(&mut p, bytes.max(1))
        })?;
        Ok(p)
    }

    /// Queues zeroing `bytes` bytes at `p` on `stream`.
    ///
    /// # Safety
    /// `p` must be a device allocation of at least `bytes` bytes; `stream` a live stream.
    pub unsafe fn memset_zero(&self, p: *mut c_void, bytes: usize, stream: Handle) -> Result<()> {
        self.check(
            "hipMemsetAsync",
            (self.api.hipMemsetAsync)(p, 0, bytes, stream),
        )
    }

    /// Makes `ordinal` the calling thread's current device.
    pub fn set_device(&self, ordinal: usize) -> Result<()> {
        // SAFETY: plain C call; the ordinal was validated by `open`.
        self.check("hipSetDevice", unsafe {
            (self.api.hipSetDevice)(ordinal as c_int)
        })
    }

    /// Lanes per wavefront of device `ordinal` (64 on gfx9/CDNA, 32 on RDNA), from
    /// `hipDeviceAttributeWarpSize` (87 in ROCm 5 and 6), checked against the arch.
    pub fn warp_size(&self, ordinal: usize, arch: &str) -> u32 {
        const HIP_DEVICE_ATTRIBUTE_WARP_SIZE: c_int = 87;
        let guess = if arch.starts_with("gfx9") { 64 } else { 32 };
        let mut v: c_int = 0;
        // SAFETY: valid out-pointer.
        let e = unsafe {
            (self.api.hipDeviceGetAttribute)(
                &mut v,
                HIP_DEVICE_ATTRIBUTE_WARP_SIZE,
                ordinal as c_int,
            )
        };
        if e == HIP_SUCCESS && (v == 32 || v == 64) {
            v as u32
        } else {
            guess
        }
    }

    /// # Safety
    /// `p` must come from [`Hip::alloc`] and not be freed twice.
    pub unsafe fn free(&self, p: *mut c_void) -> Result<()> {
        self.check("hipFree", (self.api.hipFree)(p))
    }

    /// Queues a copy of `bytes` bytes from host `src` to device `dst` on `stream` and
    /// returns at once when `src` is pinned ([`Hip::host_alloc`]).
    ///
    /// # Safety
    /// `dst` must be a device allocation of at least `bytes` bytes, `src` must hold
    /// `bytes` bytes and stay unchanged until the copy has run (an event recorded after
    /// it completes, or the stream is synchronized).
    pub unsafe fn copy_to_device_async(
        &self,
        dst: *mut c_void,
        src: *const u8,
        bytes: usize,
        stream: Handle,
    ) -> Result<()> {
        self.check(
            "hipMemcpyHtoDAsync",
            (self.api.hipMemcpyHtoDAsync)(dst, src as *const c_void, bytes, stream),
        )
    }

    /// Copies `src` to device `dst` after everything queued on `stream`, and waits for
    /// it: the path for large one-off uploads (weights) from pageable memory.
    ///
    /// # Safety
    /// `dst` must be a device allocation of at least `src.len()` bytes.
    pub unsafe fn copy_to_device(
        &self,
        dst: *mut c_void,
        src: &[u8],
        stream: Handle,
    ) -> Result<()> {
        self.copy_to_device_async(dst, src.as_ptr(), src.len(), stream)?;
        self.stream_synchronize(stream)
    }

    /// Copies device `src` into `dst` after everything queued on `stream`, and waits.
    ///
    /// # Safety
    /// `src` must be a device allocation of at least `dst.len()` bytes.
    pub unsafe fn copy_to_host(
        &self,
        dst: &mut [u8],
        src: *const c_void,
        stream: Handle,
    ) -> Result<()> {
        self.check(
            "hipMemcpyDtoHAsync",
            (self.api.hipMemcpyDtoHAsync)(dst.as_mut_ptr() as *mut c_void, src, dst.len(), stream),
        )?;
        self.stream_synchronize(stream)
    }

    /// Queues a device-to-device copy on `stream`.
    ///
    /// # Safety
    /// `dst` and `src` must be device allocations of at least `bytes` bytes.
    pub unsafe fn copy_on_device(
        &self,
        dst: *mut c_void,
        src: *const c_void,
        bytes: usize,
        stream: Handle,
    ) -> Result<()> {
        self.check(
            "hipMemcpyDtoDAsync",
            (self.api.hipMemcpyDtoDAsync)(dst, src, bytes, stream),
        )
    }

    /// A new stream on the current device.
    pub fn stream_create(&self) -> Result<Handle> {
        let mut s = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("hipStreamCreateWithFlags", unsafe {
            (self.api.hipStreamCreateWithFlags)(&mut s, HIP_STREAM_DEFAULT)
        })?;
        Ok(s)
    }

    /// # Safety
    /// `s` must come from [`Hip::stream_create`] and not be used afterwards.
    pub unsafe fn stream_destroy(&self, s: Handle) -> Result<()> {
        self.check("hipStreamDestroy", (self.api.hipStreamDestroy)(s))
    }

    /// Waits for everything queued on `s`.
    ///
    /// # Safety
    /// `s` must be a live stream.
    pub unsafe fn stream_synchronize(&self, s: Handle) -> Result<()> {
        self.check("hipStreamSynchronize", (self.api.hipStreamSynchronize)(s))
    }

    /// A new event, for ordering only (no timing).
    pub fn event_create(&self) -> Result<Handle> {
        let mut e = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("hipEventCreateWithFlags", unsafe {
            (self.api.hipEventCreateWithFlags)(&mut e, HIP_EVENT_DISABLE_TIMING)
        })?;
        Ok(e)
    }

    /// Marks the point in `stream` that `event` completes at.
    ///
    /// # Safety
    /// `event` and `stream` must be live.
    pub unsafe fn event_record(&self, event: Handle, stream: Handle) -> Result<()> {
        self.check("hipEventRecord", (self.api.hipEventRecord)(event, stream))
    }

    /// Waits until the work before `event`'s last record has run.
    ///
    /// # Safety
    /// `event` must be live and recorded.
    pub unsafe fn event_synchronize(&self, event: Handle) -> Result<()> {
        self.check("hipEventSynchronize", (self.api.hipEventSynchronize)(event))
    }

    /// # Safety
    /// `event` must come from [`Hip::event_create`] and not be used afterwards.
    pub unsafe fn event_destroy(&self, event: Handle) -> Result<()> {
        self.check("hipEventDestroy", (self.api.hipEventDestroy)(event))
    }

    /// `bytes` of pinned (page-locked) host memory, which the GPU reads directly, so
    /// a copy from it is asynchronous.
    pub fn host_alloc(&self, bytes: usize) -> Result<*mut u8> {
        let mut p = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        self.check("hipHostMalloc", unsafe {
            (self.api.host_malloc)(&mut p, bytes.max(1), HIP_HOST_MALLOC_DEFAULT)
        })?;
        Ok(p as *mut u8)
    }

    /// # Safety
    /// `p` must come from [`Hip::host_alloc`], with no copy from it still queued.
    pub unsafe fn host_free(&self, p: *mut u8) -> Result<()> {
        self.check("hipHostFree", (self.api.hipHostFree)(p as *mut c_void))
    }

    /// Free and total memory of the current device, in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        self.check("hipMemGetInfo", unsafe {
            (self.api.hipMemGetInfo)(&mut free, &mut total)
        })?;
        Ok((free, total))
    }

    /// Loads a code object (kept loaded for the life of the process).
    pub fn module(&self, code: &[u8]) -> Result<*mut c_void> {
        let mut module = std::ptr::null_mut();
        // SAFETY: code is a complete code object; out-pointer valid.
        unsafe {
            self.check(
                "hipModuleLoadData",
                (self.api.hipModuleLoadData)(&mut module, code.as_ptr() as *const c_void),
            )?;
        }
        Ok(module)
    }

    /// A kernel of a loaded module.
    ///
    /// # Safety
    /// `module` must come from [`Hip::module`].
    pub unsafe fn get_function(&self, module: *mut c_void, kernel: &str) -> Result<*mut c_void> {
        let name = CString::new(kernel).map_err(|e| Error::Unavailable(e.to_string()))?;
        let mut f = std::ptr::null_mut();
        self.check(
            &format!("hipModuleGetFunction({kernel})"),
            (self.api.hipModuleGetFunction)(&mut f, module, name.as_ptr()),
        )?;
        Ok(f)
    }

    /// Whether the runtime has stream capture and graphs.
    pub fn has_graphs(&self) -> bool {
        self.api.graph.is_some()
    }

    fn graph_api(&self) -> Result<&GraphApi> {
        self.api
            .graph
            .as_ref()
            .ok_or_else(|| lacks("hipStreamBeginCapture"))
    }

    /// Starts recording `stream` into a graph (relaxed mode).
    ///
    /// # Safety
    /// `stream` must be a live stream created by [`Hip::stream_create`].
    pub unsafe fn begin_capture(&self, stream: Handle) -> Result<()> {
        let g = self.graph_api()?;
        self.check(
            "hipStreamBeginCapture",
            (g.hipStreamBeginCapture)(stream, HIP_STREAM_CAPTURE_MODE_RELAXED),
        )
    }

    /// Ends the capture on `stream` and instantiates it: `(graph, executable graph)`,
    /// both to be destroyed by [`Hip::graph_destroy`].
    ///
    /// # Safety
    /// `stream` must be capturing (after [`Hip::begin_capture`]).
    pub unsafe fn end_capture(&self, stream: Handle) -> Result<(Handle, Handle)> {
        let g = self.graph_api()?;
        let mut graph = std::ptr::null_mut();
        self.check(
            "hipStreamEndCapture",
            (g.hipStreamEndCapture)(stream, &mut graph),
        )?;
        let mut exec = std::ptr::null_mut();
        let e = (g.hipGraphInstantiate)(
            &mut exec,
            graph,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        );
        if let Err(e) = self.check("hipGraphInstantiate", e) {
            (g.hipGraphDestroy)(graph);
            return Err(e);
        }
        Ok((graph, exec))
    }

    /// Queues the executable graph `exec` on `stream`.
    ///
    /// # Safety
    /// `exec` must come from [`Hip::end_capture`] and be live; `stream` must be live.
    pub unsafe fn graph_launch(&self, exec: Handle, stream: Handle) -> Result<()> {
        let g = self.graph_api()?;
        self.check("hipGraphLaunch", (g.hipGraphLaunch)(exec, stream))
    }

    /// Destroys a graph and its executable graph.
    ///
    /// # Safety
    /// Both must come from one [`Hip::end_capture`], with no launch of them in flight,
    /// and not be used afterwards.
    pub unsafe fn graph_destroy(&self, graph: Handle, exec: Handle) -> Result<()> {
        let g = self.graph_api()?;
        self.check("hipGraphExecDestroy", (g.hipGraphExecDestroy)(exec))?;
        self.check("hipGraphDestroy", (g.hipGraphDestroy)(graph))
    }

    /// Queues `f` on `stream`.
    ///
    /// # Safety
    /// `args` must point at values matching the kernel's parameter list; `stream` must
    /// be live.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn launch(
        &self,
        f: *mut c_void,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared: u32,
        stream: Handle,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        self.check(
            "hipModuleLaunchKernel",
            (self.api.hipModuleLaunchKernel)(
                f,
                grid.0,
                grid.1,
                grid.2,
                block.0,
                block.1,
                block.2,
                shared,
                stream,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine with the HIP runtime but no GPU (CI installs Debian's), opening a
    /// device is a clear error; without the runtime, loading is.
    #[test]
    fn no_gpu_or_no_runtime_is_a_clear_error() {
        match Hip::load() {
            Err(e) => assert!(e.to_string().contains("libamdhip64"), "{e}"),
            Ok(hip) => match hip.open(0) {
                Err(e) => assert!(e.to_string().contains("no AMD GPU"), "{e}"),
                Ok(o) => assert!(
                    o.info.total_bytes > 0 && !o.target.is_empty(),
                    "{:?}",
                    o.info
                ),
            },
        }
    }

    /// hiprtc compiles every kernel for gfx90a at run time, GPU or not. Runs where the
    /// runtime is installed; `NOVASTACK_REQUIRE_HIP=1` (CI) makes its absence a failure.
    #[test]
    fn hiprtc_compiles_every_kernel_for_gfx90a() {
        let hip = match Hip::load() {
            Ok(h) => h,
            Err(e) => {
                assert!(std::env::var_os("NOVASTACK_REQUIRE_HIP").is_none(), "{e}");
                eprintln!("skipped: {e}");
                return;
            }
        };
        for (name, src) in crate::sources::KERNELS {
            // As written, and as the backend compiles it (the device's warp width first).
            for src in [src.to_string(), format!("#define NS_WARP 64\n{src}")] {
                let code = hip
                    .compile(name, &src, "gfx90a")
                    .unwrap_or_else(|e| panic!("{e}"));
                // An ELF code object for amdgcn.
                assert_eq!(&code[..4], b"\x7fELF", "{name}");
            }
        }
        // The device's full target ID (what `open` compiles for) is accepted as is.
        let (name, src) = crate::sources::KERNELS[0];
        let code = hip
            .compile(name, src, "gfx90a:sramecc+:xnack-")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&code[..4], b"\x7fELF", "{name}");
        let bad = hip.compile(
            "bad.hip",
            "#include \"compat.h\"\nNS_KERNEL void k() { undefined_thing(); }",
            "gfx90a",
        );
        let e = bad.unwrap_err().to_string();
        assert!(
            e.contains("bad.hip") && e.contains("undefined_thing"),
            "{e}"
        );
    }
}
