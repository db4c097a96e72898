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
    #[error("backend unavailable: {0}")]
    Unavailable(String),
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
