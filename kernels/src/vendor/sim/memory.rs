//! The simulated device's memory: host memory that kernels address directly (a device
//! pointer is the host address), one private mapping per allocation with an
//! inaccessible guard page on each side and the data placed to end exactly at the
//! upper guard. A kernel that reads or writes one byte past the end of a buffer faults
//! at once, and the fault is reported against the allocation it overran (the registry
//! of live allocations). A freed allocation is made inaccessible and kept in a bounded
//! quarantine before it is unmapped (as AddressSanitizer does), so that a use after
//! free faults and is named, instead of reading whatever reused the address.

use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Live allocations by data address (their bytes), and the quarantine of freed ones.
#[derive(Default)]
pub(super) struct Registry {
    live: Mutex<BTreeMap<u64, usize>>,
    /// Bytes held by live allocations, for `mem_info`.
    used: Mutex<usize>,
    quarantine: Mutex<Quarantine>,
}

/// Freed mappings, inaccessible, oldest first: (data address, bytes, mapping, mapping bytes).
#[derive(Default)]
struct Quarantine {
    freed: std::collections::VecDeque<(u64, usize, usize, usize)>,
    bytes: usize,
}

impl Quarantine {
    /// Mapping bytes kept before the oldest freed allocation is unmapped.
    const BYTES: usize = 256 << 20;
    const COUNT: usize = 4096;
}

impl Registry {
    /// A description of `addr` relative to the nearest live allocation, for fault reports.
    pub fn describe(&self, addr: u64) -> String {
        {
            let q = self.quarantine.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(&(start, len, ..)) = q
                .freed
                .iter()
                .rev()
                .find(|&&(start, len, ..)| addr >= start && addr < start + len as u64)
            {
                return format!(
                    "inside a freed {len}-byte allocation at {start:#x} (+{}): a use after free",
                    addr - start
                );
            }
        }
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let page = page_size() as u64;
        if let Some((&start, &len)) = live.range(..=addr).next_back() {
            let end = start + len as u64;
            if addr < end {
                return format!(
                    "inside a live {len}-byte allocation at {start:#x} (+{})",
                    addr - start
                );
            }
            if addr < end + page {
                return format!(
                    "{} bytes after the end of a {len}-byte allocation at {start:#x} (0: the \
                     first byte past it)",
                    addr - end
                );
            }
        }
        if let Some((&start, &len)) = live.range(addr + 1..).next() {
            if start - addr <= 2 * page {
                return format!(
                    "{} bytes before the start of a {len}-byte allocation at {start:#x}",
                    start - addr
                );
            }
        }
        "not in or next to any live allocation (freed memory or a wild address)".into()
    }

    pub fn used(&self) -> usize {
        *self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// One allocation: `len` bytes at `ptr`, inside a mapping of `map_len` bytes at `map`.
pub struct SimMem {
    ptr: *mut u8,
    len: usize,
    map: *mut libc::c_void,
    map_len: usize,
    registry: Arc<Registry>,
}

// SAFETY: the mapping is owned by this value; the device serializes kernel access.
unsafe impl Send for SimMem {}
unsafe impl Sync for SimMem {}

impl SimMem {
    /// `len` (at least 1) bytes, zero-filled (fresh anonymous pages are zero).
    pub(super) fn new(len: usize, registry: &Arc<Registry>) -> Result<SimMem> {
        let len = len.max(1);
        let page = page_size();
        let data_pages = len.div_ceil(page);
        let map_len = (data_pages + 2) * page;
        // SAFETY: a fresh private anonymous mapping; the guards are made inaccessible
        // before any pointer into the mapping escapes.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(Error::Unavailable(format!(
                "sim: cannot map {map_len} bytes of device memory"
            )));
        }
        let base = map as *mut u8;
        // SAFETY: both guards lie inside the mapping just made.
        unsafe {
            libc::mprotect(base as *mut _, page, libc::PROT_NONE);
            libc::mprotect(
                base.add((data_pages + 1) * page) as *mut _,
                page,
                libc::PROT_NONE,
            );
        }
        // SAFETY: the data ends at the upper guard: [ptr, ptr + len) is inside the
        // accessible pages.
        let ptr = unsafe { base.add((data_pages + 1) * page - len) };
        registry
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ptr as u64, len);
        *registry.used.lock().unwrap_or_else(|e| e.into_inner()) += len;
        Ok(SimMem {
            ptr,
            len,
            map,
            map_len,
            registry: registry.clone(),
        })
    }

    pub fn addr(&self) -> u64 {
        self.ptr as u64
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: [ptr, ptr + len) is mapped readable for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is the only host view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for SimMem {
    fn drop(&mut self) {
        self.registry
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(self.ptr as u64));
        *self.registry.used.lock().unwrap_or_else(|e| e.into_inner()) -= self.len;
        // SAFETY: the mapping made in `new`: made inaccessible (its pages given back),
        // and unmapped once, when it leaves the quarantine.
        unsafe {
            libc::madvise(self.map, self.map_len, libc::MADV_DONTNEED);
            libc::mprotect(self.map, self.map_len, libc::PROT_NONE);
        }
        let mut q = self
            .registry
            .quarantine
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        q.freed
            .push_back((self.ptr as u64, self.len, self.map as usize, self.map_len));
        q.bytes += self.map_len;
        while q.bytes > Quarantine::BYTES || q.freed.len() > Quarantine::COUNT {
            let Some((_, _, map, map_len)) = q.freed.pop_front() else {
                break;
            };
            q.bytes -= map_len;
            // SAFETY: a quarantined mapping, unmapped exactly once.
            unsafe {
                libc::munmap(map as *mut libc::c_void, map_len);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ends_at_the_guard_and_faults_are_described() {
        let reg = Arc::new(Registry::default());
        let mut m = SimMem::new(10, &reg).unwrap();
        assert_eq!(m.bytes(), &[0u8; 10]);
        m.bytes_mut()[9] = 7;
        assert_eq!((m.addr() + 10) % page_size() as u64, 0);
        assert_eq!(reg.used(), 10);
        let d = reg.describe(m.addr() + 12);
        assert!(
            d.contains("2 bytes after the end of a 10-byte allocation"),
            "{d}"
        );
        let d = reg.describe(m.addr() + 3);
        assert!(d.contains("inside"), "{d}");
        let a = m.addr();
        drop(m);
        assert_eq!(reg.used(), 0);
        let d = reg.describe(a + 4);
        assert!(
            d.contains("freed 10-byte allocation") && d.contains("use after free"),
            "{d}"
        );
        assert!(reg.describe(8).contains("not in or next to"));
    }
}
