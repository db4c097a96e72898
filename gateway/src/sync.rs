//! Locking shared state. The gateway's mutexes guard small updates that leave the data
//! consistent at every step, so a lock whose holder panicked is still taken.

use std::sync::{Mutex, MutexGuard};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
