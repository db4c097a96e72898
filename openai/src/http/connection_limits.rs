//! The limits every accepted connection lives under (flags on `serve` and the gateway).

use std::time::Duration;

/// Deadlines and the connection cap of [`super::listener::serve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's headers must be complete this long after the connection starts
    /// waiting for it (at accept, and after each response), or the connection closes.
    /// The deadline is fixed: bytes trickling in do not extend it, so a slowloris client
    /// is cut off. Since it runs while a keep-alive connection waits, it also bounds idle
    /// time.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight that receives no byte for this long is
    /// closed (keep-alive idle; the shorter of this and `header_read_timeout` wins).
    pub idle_timeout: Duration,
    /// The whole request body must arrive within this long of its headers; a slower body
    /// is answered 408.
    pub request_body_timeout: Duration,
    /// Open connections at most; one more is answered 503 (OpenAI error JSON,
    /// `Connection: close`) at once and closed.
    pub max_connections: usize,
}

impl ConnectionLimits {
    pub const DEFAULT_HEADER_READ_TIMEOUT_S: u64 = 30;
    pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 15;
    pub const DEFAULT_REQUEST_BODY_TIMEOUT_S: u64 = 60;
    pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

    /// From whole seconds (the command-line flags); zero durations and a zero cap are
    /// errors naming the flag.
    pub fn from_flags(
        header_read_timeout_s: u64,
        idle_timeout_s: u64,
        request_body_timeout_s: u64,
        max_connections: usize,
    ) -> Result<Self, String> {
        for (flag, v) in [
            ("--header-read-timeout", header_read_timeout_s),
            ("--idle-timeout", idle_timeout_s),
            ("--request-body-timeout", request_body_timeout_s),
            ("--max-connections", max_connections as u64),
        ] {
            if v == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        Ok(ConnectionLimits {
            header_read_timeout: Duration::from_secs(header_read_timeout_s),
            idle_timeout: Duration::from_secs(idle_timeout_s),
            request_body_timeout: Duration::from_secs(request_body_timeout_s),
            max_connections,
        })
    }
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(Self::DEFAULT_HEADER_READ_TIMEOUT_S),
            idle_timeout: Duration::from_secs(Self::DEFAULT_IDLE_TIMEOUT_S),
            request_body_timeout: Duration::from_secs(Self::DEFAULT_REQUEST_BODY_TIMEOUT_S),
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_bound_headers_and_idle_by_a_minute() {
        let d = ConnectionLimits::default();
        assert!(d.header_read_timeout <= Duration::from_secs(60));
        assert!(d.idle_timeout <= Duration::from_secs(60));
        assert_eq!(
            ConnectionLimits::from_flags(30, 15, 60, 512).unwrap(),
            ConnectionLimits::default()
        );
        let e = ConnectionLimits::from_flags(30, 0, 60, 512).unwrap_err();
        assert!(e.contains("--idle-timeout"), "{e}");
    }
}
