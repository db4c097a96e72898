//! Host memory a new allocation can still take, for checking `--kv-cache-mb` before the
//! KV cache is allocated: the kernel's `MemAvailable`, capped by the headroom of the
//! process's memory cgroup (v2 `memory.max` - `memory.current`, v1
//! `memory.limit_in_bytes` - `memory.usage_in_bytes`, the tightest over its ancestors).
//! Read after the weights are loaded, so they are already counted as used.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// Bytes the process can still allocate, or `None` where the system does not say
/// (not Linux, no `/proc`).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let avail = mem_available(&meminfo)?;
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let headroom = cgroup_dirs(&cgroup, Path::new("/sys/fs/cgroup"))
        .iter()
        .filter_map(|(dir, v)| headroom_of(dir, *v))
        .min();
    Some(headroom.map_or(avail, |h| h.min(avail)))
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut it = line["MemAvailable:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let unit = match it.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    n.checked_mul(unit)
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Version {
    V1,
    V2,
}

/// The memory cgroup directories of this process and of every ancestor, from
/// `/proc/self/cgroup` (`0::/path` for v2, `N:memory:/path` or `N:...,memory,...:/path`
/// for v1), under the mount `root`.
fn cgroup_dirs(proc_self_cgroup: &str, root: &Path) -> Vec<(PathBuf, Version)> {
    let mut dirs = Vec::new();
    for line in proc_self_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (base, version) = if controllers.is_empty() {
            (root.to_path_buf(), Version::V2)
        } else if controllers.split(',').any(|c| c == "memory") {
            (root.join("memory"), Version::V1)
        } else {
            continue;
        };
        // In a cgroup namespace the path may not exist below the mount; the mount's
        // own root is then this process's cgroup, which the loop also visits.
        let mut p = Path::new(path.trim_start_matches('/'));
        loop {
            dirs.push((base.join(p), version));
            match p.parent() {
                Some(parent) => p = parent,
                None => break,
            }
        }
    }
    dirs.dedup();
    dirs
}

/// A cgroup directory's limit minus its usage; `None` when it has no limit (or none
/// that can bind: v1 writes "no limit" as a number near `i64::MAX`).
fn headroom_of(dir: &Path, version: Version) -> Option<u64> {
    let (limit, usage) = match version {
        Version::V2 => ("memory.max", "memory.current"),
        Version::V1 => ("memory.limit_in_bytes", "memory.usage_in_bytes"),
    };
    let read = |f| std::fs::read_to_string(dir.join(f)).ok();
    headroom(&read(limit)?, &read(usage)?)
}

fn headroom(limit: &str, usage: &str) -> Option<u64> {
    let limit: u64 = limit.trim().parse().ok()?; // "max": no limit
    if limit >= 1 << 60 {
        return None;
    }
    let usage: u64 = usage.trim().parse().ok()?;
    Some(limit.saturating_sub(usage))
}

/// `bytes` in the largest binary unit that keeps it at or above 1, one decimal:
/// "9.5 TiB", "20.1 GiB", "512.0 MiB".
pub fn format_bytes(bytes: u128) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// `--kv-cache-mb` fits the memory `available` (in bytes; `None`: unknown, not
/// checked).
pub fn check_kv_cache_fits(kv_cache_mb: usize, available: Option<u64>) -> Result<()> {
    let asked = (kv_cache_mb as u128) << 20;
    match available {
        Some(avail) if asked > avail as u128 => bail!(
            "--kv-cache-mb {kv_cache_mb} ({}) does not fit: {} of memory available",
            format_bytes(asked),
            format_bytes(avail as u128)
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available_in_bytes() {
        let text = "MemTotal:       24683652 kB\nMemFree:        18752272 kB\nMemAvailable:   22126120 kB\n";
        assert_eq!(mem_available(text), Some(22126120 * 1024));
        assert_eq!(mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn finds_the_memory_cgroup_and_its_ancestors() {
        let root = Path::new("/sys/fs/cgroup");
        let v1 = "9:name=systemd:/\n4:memory:/process_api/abc\n3:cpuset:/\n0::/\n";
        let dirs = cgroup_dirs(v1, root);
        let v1_dirs: Vec<_> = dirs.iter().filter(|d| d.1 == Version::V1).collect();
        assert_eq!(
            v1_dirs.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
            vec![
                root.join("memory/process_api/abc"),
                root.join("memory/process_api"),
                root.join("memory"),
            ]
        );
        let v2 = cgroup_dirs("0::/user.slice/session-1.scope\n", root);
        assert_eq!(
            v2,
            vec![
                (root.join("user.slice/session-1.scope"), Version::V2),
                (root.join("user.slice"), Version::V2),
                (root.to_path_buf(), Version::V2),
            ]
        );
        let combined = cgroup_dirs("5:cpu,memory:/a\n", root);
        assert_eq!(combined[0], (root.join("memory/a"), Version::V1));
    }

    #[test]
    fn headroom_is_limit_minus_usage_and_none_without_a_limit() {
        assert_eq!(headroom("1073741824\n", "73741824\n"), Some(1_000_000_000));
        assert_eq!(headroom("100", "200"), Some(0));
        assert_eq!(headroom("max\n", "5"), None);
        assert_eq!(headroom("9223372036854771712", "5"), None);
    }

    #[test]
    fn reads_a_cgroup_directory() {
        let dir = std::env::temp_dir().join(format!("ns-cgroup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.max"), "2147483648\n").unwrap();
        std::fs::write(dir.join("memory.current"), "1073741824\n").unwrap();
        assert_eq!(headroom_of(&dir, Version::V2), Some(1 << 30));
        assert_eq!(headroom_of(&dir, Version::V1), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn this_machine_reports_some_memory() {
        if cfg!(target_os = "linux") {
            assert!(available_bytes().is_some_and(|b| b > 0));
        }
    }

    #[test]
    fn a_kv_cache_over_the_available_memory_is_refused_with_sizes() {
        let e = check_kv_cache_fits(10_000_000, Some(20_100 << 20))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--kv-cache-mb 10000000 (9.5 TiB) does not fit: 19.6 GiB of memory available"
        );
        assert!(check_kv_cache_fits(1024, Some(1 << 31)).is_ok());
        assert!(check_kv_cache_fits(2048, Some(1 << 31)).is_ok());
        assert!(check_kv_cache_fits(2049, Some(1 << 31)).is_err());
        assert!(check_kv_cache_fits(usize::MAX, None).is_ok());
        let e = check_kv_cache_fits(usize::MAX, Some(1 << 30)).unwrap_err();
        assert!(e.to_string().contains("EiB"), "{e}");
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(1536), "1.5 KiB");
    }
}
