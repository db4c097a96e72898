//! Building the simulated device's kernels: the backend's source, rewritten
//! (`source.rs`), compiled for the host by the system C++ compiler (`$CXX`, else `c++`)
//! into a shared library, and loaded. Libraries are cached on disk, keyed by a hash of
//! everything that goes into them (source, `compat.h`, `ns_sim.h`, the branch, the
//! compiler's version and flags), so only the first run pays for the compile, and in
//! memory for the life of the process (a loaded library is never unloaded: its fault
//! handler stays chained).

use super::ffi::{InstallFn, RunFn};
use super::Branch;
use crate::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// The simulator's runtime, pre-included into every kernel source.
pub(super) const NS_SIM_H: &str = include_str!("../../../sim/ns_sim.h");

/// Flags every compile uses: optimized, line tables for fault reports, no FMA
/// contraction (the CPU oracle rounds every product), each library's runtime private to
/// it (`-fvisibility=hidden -fno-gnu-unique`: no symbol is shared between libraries).
const FLAGS: &[&str] = &[
    "-std=gnu++17",
    "-O2",
    "-g1",
    "-fPIC",
    "-shared",
    "-fvisibility=hidden",
    "-fno-gnu-unique",
    "-ffp-contract=off",
    "-fno-strict-aliasing",
    "-w",
];

/// Bumped when what goes into a library changes in a way the other key parts miss.
const CACHE_LAYOUT: &str = "ns-sim-4";

/// A loaded kernel library and where it lives (for `addr2line` on a fault).
pub(super) struct Library {
    lib: libloading::Library,
    pub path: PathBuf,
}

impl Library {
    /// The entry point of kernel `name`.
    pub fn entry(&self, name: &str) -> Result<RunFn> {
        // SAFETY: the symbol is the `ns_sim_run_<name>` this module appended, whose
        // signature `RunFn` mirrors.
        unsafe {
            self.lib
                .get::<RunFn>(format!("ns_sim_run_{name}\0").as_bytes())
                .map(|s| *s)
                .map_err(|e| {
                    Error::Unavailable(format!(
                        "sim: kernel {name} not in {}: {e}",
                        self.path.display()
                    ))
                })
        }
    }
}

/// The compiler: `$CXX`, else `c++`, with its `--version` first line (part of the key).
fn compiler() -> Result<&'static (String, String)> {
    static CXX: OnceLock<std::result::Result<(String, String), String>> = OnceLock::new();
    CXX.get_or_init(|| {
        let cxx = std::env::var("CXX")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "c++".into());
        match Command::new(&cxx).arg("--version").output() {
            Ok(o) if o.status.success() => {
                let v = String::from_utf8_lossy(&o.stdout);
                Ok((cxx, v.lines().next().unwrap_or("").to_string()))
            }
            Ok(o) => Err(format!(
                "the C++ compiler `{cxx}` does not run (`{cxx} --version` exited {}): \
                 --device sim compiles the kernels with it (set CXX, or install g++ or clang++)",
                o.status
            )),
            Err(e) => Err(format!(
                "no C++ compiler: `{cxx}` cannot be run ({e}); --device sim compiles the \
                 kernels with the system C++ compiler (set CXX, or install g++ or clang++)"
            )),
        }
    })
    .as_ref()
    .map_err(|e| Error::Unavailable(e.clone()))
}

/// Where compiled kernels are cached: `$NOVASTACK_SIM_CACHE`, else
/// `$NOVASTACK_CACHE/sim-kernels`, else `~/.cache/novastack/sim-kernels`, else the
/// temporary directory.
pub(super) fn cache_dir() -> PathBuf {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env("NOVASTACK_SIM_CACHE") {
        return d;
    }
    let base = env("NOVASTACK_CACHE")
        .or_else(|| env("HOME").map(|h| h.join(".cache/novastack")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("sim-kernels")
}

/// FNV-1a, 64 bits: stable across runs and Rust versions, which the cache key must be.
fn fnv(parts: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    }
    h
}

/// The library for `file` (already rewritten, entry points appended) on `branch`:
/// from memory, else from the disk cache, else compiled now.
pub(super) fn load(file: &str, source: &str, branch: Branch) -> Result<Arc<Library>> {
    static LOADED: OnceLock<Mutex<HashMap<u64, Arc<Library>>>> = OnceLock::new();
    let (cxx, version) = compiler()?;
    let key = fnv(&[
        CACHE_LAYOUT,
        file,
        source,
        crate::sources::COMPAT_H,
        NS_SIM_H,
        branch.define(),
        cxx,
        version,
        &FLAGS.join(" "),
    ]);
    // One lock over compile and load: installing the fault handlers must not race.
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(l) = loaded.get(&key) {
        return Ok(l.clone());
    }
    let stem = file.trim_end_matches(".hip");
    let dir = cache_dir().join(format!("{stem}-{key:016x}"));
    let so = dir.join(format!("{stem}.so"));
    if !so.exists() {
        build(&dir, &so, file, source, branch, cxx)?;
    }
    // SAFETY: a library this module built; loading runs no constructors of ours.
    let lib = unsafe { libloading::Library::new(&so) }
        .map_err(|e| Error::Unavailable(format!("sim: cannot load {}: {e}", so.display())))?;
    // SAFETY: `ns_sim_install` is defined by ns_sim.h in every library.
    unsafe {
        let install = lib
            .get::<InstallFn>(b"ns_sim_install\0")
            .map_err(|e| Error::Unavailable(format!("sim: {}: {e}", so.display())))?;
        install();
    }
    let l = Arc::new(Library { lib, path: so });
    loaded.insert(key, l.clone());
    Ok(l)
}

/// A file-system error on `p`, as the simulator reports it.
fn io(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::Unavailable(format!("sim: cannot {what} {}: {e}", p.display()))
}

fn build(dir: &Path, so: &Path, file: &str, source: &str, branch: Branch, cxx: &str) -> Result<()> {
    // Everything is written and compiled in a directory private to this process, and
    // only the finished library is renamed into place: two processes building the same
    // kernels at once never read each other's half-written files.
    let work = dir.join(format!("build.{}", std::process::id()));
    std::fs::create_dir_all(work.join("nv")).map_err(|e| io("create", &work, e))?;
    let result = compile_in(&work, so, file, source, branch, cxx);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn compile_in(
    dir: &Path,
    so: &Path,
    file: &str,
    source: &str,
    branch: Branch,
    cxx: &str,
) -> Result<()> {
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| io("write", &p, e))
    };
    write("compat.h", crate::sources::COMPAT_H)?;
    write("ns_sim.h", NS_SIM_H)?;
    // The NVIDIA branch includes <cuda_fp16.h>; ns_sim.h already defines __half.
    write(
        "nv/cuda_fp16.h",
        "// __half comes from ns_sim.h\n#pragma once\n",
    )?;
    let src = dir.join(file);
    std::fs::write(&src, source).map_err(|e| io("write", &src, e))?;
    let tmp = dir.join("kernels.so");
    let mut cmd = Command::new(cxx);
    cmd.args(FLAGS)
        .arg("-include")
        .arg(dir.join("ns_sim.h"))
        .arg("-I")
        .arg(dir);
    match branch {
        Branch::Amd => {
            cmd.arg("-DNS_SIM_AMD");
        }
        Branch::Nvidia => {
            cmd.arg("-I").arg(dir.join("nv"));
        }
    }
    cmd.arg("-x").arg("c++").arg(&src).arg("-o").arg(&tmp);
    let t = std::time::Instant::now();
    let out = cmd
        .output()
        .map_err(|e| Error::Unavailable(format!("sim: cannot run {cxx}: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let first: Vec<&str> = err
            .lines()
            .filter(|l| l.contains("error"))
            .take(8)
            .collect();
        return Err(Error::Unavailable(format!(
            "sim: {cxx} failed on {file}:\n{}",
            if first.is_empty() {
                err.trim().to_string()
            } else {
                first.join("\n")
            }
        )));
    }
    std::fs::rename(&tmp, so).map_err(|e| io("rename", &tmp, e))?;
    tracing::debug!(
        "sim: compiled {file} ({branch:?}) in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `file:line` of the instruction at `pc_offset` in `lib` (and the functions it was
/// inlined into), from `addr2line` when binutils are there.
pub(super) fn source_line(lib: &Path, pc_offset: u64) -> Option<String> {
    let out = Command::new("addr2line")
        .args(["-C", "-f", "-i", "-e"])
        .arg(lib)
        .arg(format!("{pc_offset:#x}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<String> = text
        .lines()
        .collect::<Vec<_>>()
        .chunks(2)
        .filter_map(|c| {
            let (func, at) = (c.first()?, c.get(1)?);
            let file = at.rsplit('/').next().unwrap_or(at);
            (!file.starts_with("??")).then(|| format!("{file} in {func}"))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join(", inlined into "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_hash_is_stable_and_separates_parts() {
        assert_eq!(fnv(&["a", "b"]), fnv(&["a", "b"]));
        assert_ne!(fnv(&["ab", ""]), fnv(&["a", "b"]));
        assert_eq!(fnv(&[]), 0xcbf2_9ce4_8422_2325);
    }
}
