//! NVRTC (feature `cuda`, through `cudarc`, loaded at run time): compiles the
//! `kernels/hip/*.hip` sources (through `compat.h`) to cubins for the device, GPU or
//! not, so the default build and CI need no CUDA.

use crate::sources::COMPAT_H;
use crate::{Error, Result};
use cudarc::nvrtc::sys as nvrtc;
use std::ffi::{c_char, CStr, CString};

/// The CUDA include folder NVRTC needs for `cuda_fp16.h`: `NOVASTACK_CUDA_INCLUDE`,
/// `$CUDA_HOME/include`, or `/usr/local/cuda/include`.
pub fn include_dir() -> Option<String> {
    let candidates = [
        std::env::var("NOVASTACK_CUDA_INCLUDE").ok(),
        std::env::var("CUDA_HOME")
            .ok()
            .map(|h| format!("{h}/include")),
        Some("/usr/local/cuda/include".to_string()),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| std::path::Path::new(d).join("cuda_fp16.h").exists())
}

fn nvrtc_check(what: &str, r: nvrtc::nvrtcResult) -> Result<()> {
    if r == nvrtc::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        // SAFETY: returns a static string for any result.
        let msg = unsafe { CStr::from_ptr(nvrtc::nvrtcGetErrorString(r)) }
            .to_string_lossy()
            .into_owned();
        Err(Error::Unavailable(format!("{what}: {msg}")))
    }
}

/// Compiles one kernel source to a cubin for `arch` (e.g. `sm_90`) with NVRTC; errors
/// carry the compiler log. Needs no GPU, only libnvrtc and the CUDA headers.
pub fn compile(name: &str, source: &str, arch: &str) -> Result<Vec<u8>> {
    // SAFETY: only probes whether the library can be loaded.
    if !unsafe { nvrtc::is_culib_present() } {
        return Err(Error::Unavailable(
            "cannot load NVRTC (libnvrtc.so): install the CUDA toolkit or set LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let inc = include_dir().ok_or_else(|| {
        Error::Unavailable(
            "CUDA headers not found: set NOVASTACK_CUDA_INCLUDE to the folder with cuda_fp16.h"
                .into(),
        )
    })?;
    let cstr = |s: &str| CString::new(s).map_err(|e| Error::Unavailable(e.to_string()));
    let (src, cname, hdr, hdr_name) = (
        cstr(source)?,
        cstr(name)?,
        cstr(COMPAT_H)?,
        cstr("compat.h")?,
    );
    let opts: Vec<CString> = [
        format!("--gpu-architecture={arch}"),
        "-std=c++17".into(),
        format!("--include-path={inc}"),
        "-default-device".into(),
    ]
    .iter()
    .map(|o| cstr(o))
    .collect::<Result<_>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: nvrtc::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: NVRTC C API; every pointer outlives the calls; the program is destroyed once.
    unsafe {
        let headers = [hdr.as_ptr()];
        let names = [hdr_name.as_ptr()];
        nvrtc_check(
            "nvrtcCreateProgram",
            nvrtc::nvrtcCreateProgram(
                &mut prog,
                src.as_ptr(),
                cname.as_ptr(),
                1,
                headers.as_ptr(),
                names.as_ptr(),
            ),
        )?;
        let r = nvrtc::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        let mut log_len = 0usize;
        nvrtc::nvrtcGetProgramLogSize(prog, &mut log_len);
        let mut log = vec![0u8; log_len.max(1)];
        nvrtc::nvrtcGetProgramLog(prog, log.as_mut_ptr() as *mut c_char);
        let log = String::from_utf8_lossy(&log)
            .trim_end_matches('\0')
            .to_string();
        let out = if r != nvrtc::nvrtcResult::NVRTC_SUCCESS {
            Err(Error::Unavailable(format!(
                "NVRTC could not compile {name} for {arch}:\n{log}"
            )))
        } else {
            let mut size = 0usize;
            nvrtc_check(
                "nvrtcGetCUBINSize",
                nvrtc::nvrtcGetCUBINSize(prog, &mut size),
            )
            .map(|_| {
                let mut code = vec![0u8; size];
                nvrtc::nvrtcGetCUBIN(prog, code.as_mut_ptr() as *mut c_char);
                code
            })
        };
        nvrtc::nvrtcDestroyProgram(&mut prog);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// NVRTC compiles every kernel for sm_90 where libnvrtc and the headers are present;
    /// `NOVASTACK_REQUIRE_NVRTC=1` (CI, with the pip toolkit) makes their absence a failure.
    #[test]
    fn nvrtc_compiles_every_kernel_for_sm90() {
        // SAFETY: probe only.
        if !unsafe { nvrtc::is_culib_present() } || include_dir().is_none() {
            assert!(
                std::env::var_os("NOVASTACK_REQUIRE_NVRTC").is_none(),
                "NVRTC or CUDA headers missing"
            );
            eprintln!("skipped: no NVRTC or CUDA headers");
            return;
        }
        for (name, src) in crate::sources::KERNELS {
            for src in [src.to_string(), format!("#define NS_WARP 32\n{src}")] {
                let cubin = compile(name, &src, "sm_90").unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(&cubin[..4], b"\x7fELF", "{name}");
            }
        }
        let e = compile(
            "bad.hip",
            "#include \"compat.h\"\nNS_KERNEL void k() { undefined_thing(); }",
            "sm_90",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("bad.hip") && e.contains("undefined_thing"),
            "{e}"
        );
    }
}
