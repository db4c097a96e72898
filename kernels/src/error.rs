//! The kernels' one error type: every op checks its arguments and returns one of these
//! rather than panicking or reading outside a buffer. Callers match on the variant; the
//! messages are what users see (`models` wraps this type, the server prints it).

use crate::Dtype;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },
    #[error("{op}: index {index} out of range (limit {limit})")]
    OutOfRange {
        op: &'static str,
        index: usize,
        limit: usize,
    },
    /// A buffer whose storage type is not the one the op's kernels were loaded for.
    #[error("{op}: {arg} is {found}, the kernels take {expected}")]
    Dtype {
        op: &'static str,
        arg: &'static str,
        found: Dtype,
        expected: Dtype,
    },
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// A kernel failed on the device (the simulated device's checks: a divergent
    /// barrier, an out-of-bounds access, ...), with the kernel, block and line.
    #[error("{0}")]
    Kernel(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Fails with a shape error unless `cond` holds.
pub(crate) fn ensure(cond: bool, op: &'static str, msg: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(Error::Shape { op, msg: msg() })
    }
}
