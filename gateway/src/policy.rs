//! Gateway policies as pure state machines with the clock passed in: which failures are
//! retryable, how long to back off, when a model cools down, token buckets for RPM/TPM,
//! and the AIMD concurrency limit per upstream.

use crate::config::{CooldownConfig, RetryConfig, RetryOn};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why an attempt failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureKind {
    /// The upstream answered with this HTTP status.
    Status(u16),
    /// No answer (or no next chunk) within the model's timeout.
    Timeout,
    /// Could not connect, or the connection was reset.
    Connect,
    /// The upstream's answer could not be understood, or it ended early.
    Protocol,
}

impl FailureKind {
    /// The label used in metrics.
    pub fn class(&self) -> String {
        match self {
            FailureKind::Status(s) => format!("http_{s}"),
            FailureKind::Timeout => "timeout".into(),
            FailureKind::Connect => "connect_error".into(),
            FailureKind::Protocol => "protocol_error".into(),
        }
    }

    /// Overload signals cut the adaptive concurrency limit.
    pub fn is_overload(&self) -> bool {
        matches!(self, FailureKind::Status(429) | FailureKind::Timeout)
    }
}

/// Retryable per `retry_on`. A stream that broke before any byte reached the client
/// (protocol error) is retried like a 502.
pub fn is_retryable(kind: &FailureKind, cfg: &RetryConfig) -> bool {
    cfg.retry_on.iter().any(|r| match (r, kind) {
        (RetryOn::Status(s), FailureKind::Status(k)) => s == k,
        (RetryOn::Status(502), FailureKind::Protocol) => true,
        (RetryOn::Class(c), FailureKind::Timeout) => c == "timeout",
        (RetryOn::Class(c), FailureKind::Connect) => c == "connect_error",
        _ => false,
    })
}

/// The wait before retry number `attempt` (0 = the first retry): the upstream's
/// `Retry-After` when given (capped), else exponential backoff capped at
/// `max_backoff_ms`, with "equal jitter" (half fixed, half random; `rand` in [0, 1)).
pub fn backoff(
    cfg: &RetryConfig,
    attempt: u32,
    retry_after: Option<Duration>,
    rand: f64,
) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(Duration::from_secs_f64(cfg.max_retry_after_s));
    }
    let exp = cfg
        .initial_backoff_ms
        .saturating_mul(1u64 << attempt.min(30))
        .min(cfg.max_backoff_ms);
    let ms = if cfg.jitter {
        exp as f64 / 2.0 + rand.clamp(0.0, 1.0) * exp as f64 / 2.0
    } else {
        exp as f64
    };
    Duration::from_secs_f64(ms / 1000.0)
}

/// Failures in a sliding window; enough of them cool the model down.
#[derive(Debug, Default)]
pub struct Cooldown {
    failures: VecDeque<Instant>,
    until: Option<Instant>,
}

impl Cooldown {
    /// Records a failure; true when this one started a cooldown.
    pub fn failure(&mut self, cfg: &CooldownConfig, now: Instant) -> bool {
        let window = Duration::from_secs_f64(cfg.window_s.max(0.0));
        while self
            .failures
            .front()
            .is_some_and(|&t| now.duration_since(t) > window)
        {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() >= cfg.failures && self.remaining(now).is_none() {
            self.until = Some(now + Duration::from_secs_f64(cfg.cooldown_s.max(0.0)));
            self.failures.clear();
            return true;
        }
        false
    }

    pub fn success(&mut self) {
        self.failures.clear();
    }

    /// Time left cooling down, if any.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.until
            .filter(|&u| u > now)
            .map(|u| u.duration_since(now))
    }
}

/// A token bucket: `capacity` tokens, refilled at `capacity` per minute.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    pub capacity: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn per_minute(capacity: f64, now: Instant) -> Self {
        TokenBucket {
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.capacity / 60.0).min(self.capacity);
        self.last = now;
    }

    /// Takes `n` tokens, or says how long until they are there. A request larger than
    /// the whole bucket may take it when full (and goes into debt), so it is never
    /// refused forever.
    pub fn take(&mut self, n: f64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        if self.tokens >= n || (self.tokens >= self.capacity && n > self.capacity) {
            self.tokens -= n;
            Ok(())
        } else {
            let need = n.min(self.capacity) - self.tokens;
            Err(Duration::from_secs_f64(need * 60.0 / self.capacity))
        }
    }

    /// Settles a reservation: returns `n` tokens (negative: takes more).
    pub fn give_back(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.tokens = (self.tokens + n).min(self.capacity);
    }

    pub fn remaining(&mut self, now: Instant) -> f64 {
        self.refill(now);
        self.tokens.max(0.0)
    }

    /// Seconds until the bucket is full again.
    pub fn reset_s(&mut self, now: Instant) -> f64 {
        self.refill(now);
        (self.capacity - self.tokens).max(0.0) * 60.0 / self.capacity
    }
}

/// Additive-increase / multiplicative-decrease concurrency limit: halve on overload
/// (429, timeout), grow by 1/limit per success (about +1 per limit's worth of
/// successes), within [1, max].
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: f64,
    max: f64,
    pub in_flight: usize,
}

impl Aimd {
    pub fn new(max: usize) -> Self {
        Aimd {
            limit: max as f64,
            max: max as f64,
            in_flight: 0,
        }
    }

    pub fn limit(&self) -> usize {
        self.limit.floor().max(1.0) as usize
    }

    pub fn try_acquire(&mut self) -> bool {
        if self.in_flight < self.limit() {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    pub fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn on_success(&mut self) {
        self.limit = (self.limit + 1.0 / self.limit.max(1.0)).min(self.max);
    }

    /// Takes a limit decided elsewhere (the shared one), within [1, max].
    pub fn set_limit(&mut self, limit: f64) {
        if limit.is_finite() {
            self.limit = limit.clamp(1.0, self.max);
        }
    }

    pub fn on_overload(&mut self) {
        self.limit = (self.limit / 2.0).max(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryability_follows_retry_on() {
        let cfg = RetryConfig::default();
        for k in [
            FailureKind::Status(429),
            FailureKind::Status(503),
            FailureKind::Timeout,
            FailureKind::Connect,
            FailureKind::Protocol,
        ] {
            assert!(is_retryable(&k, &cfg), "{k:?}");
        }
        for k in [
            FailureKind::Status(400),
            FailureKind::Status(401),
            FailureKind::Status(404),
        ] {
            assert!(!is_retryable(&k, &cfg), "{k:?}");
        }
        let only = RetryConfig {
            retry_on: vec![RetryOn::Status(429)],
            ..Default::default()
        };
        assert!(!is_retryable(&FailureKind::Timeout, &only));
    }

    #[test]
    fn backoff_grows_caps_jitters_and_honours_retry_after() {
        let cfg = RetryConfig {
            jitter: false,
            ..Default::default()
        };
        let ms = |a| backoff(&cfg, a, None, 0.5).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(5), ms(40)],
            [200, 400, 800, 5000, 5000]
        );
        let j = RetryConfig::default();
        assert_eq!(backoff(&j, 1, None, 0.0).as_millis(), 200);
        assert_eq!(backoff(&j, 1, None, 0.999_999).as_millis(), 399);
        assert_eq!(
            backoff(&j, 0, Some(Duration::from_secs(2)), 0.3),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(&j, 0, Some(Duration::from_secs(600)), 0.3),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn cooldown_after_n_failures_in_the_window() {
        let cfg = CooldownConfig {
            failures: 3,
            window_s: 10.0,
            cooldown_s: 30.0,
        };
        let t0 = Instant::now();
        let mut c = Cooldown::default();
        assert!(!c.failure(&cfg, t0));
        assert!(!c.failure(&cfg, t0 + Duration::from_secs(20))); // first one expired
        assert!(!c.failure(&cfg, t0 + Duration::from_secs(21)));
        assert!(c.remaining(t0 + Duration::from_secs(21)).is_none());
        assert!(c.failure(&cfg, t0 + Duration::from_secs(22)));
        assert_eq!(
            c.remaining(t0 + Duration::from_secs(32)),
            Some(Duration::from_secs(20))
        );
        assert!(c.remaining(t0 + Duration::from_secs(52)).is_none());
        c.success();
        assert!(!c.failure(&cfg, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn token_bucket_refills_per_minute_and_settles() {
        let t0 = Instant::now();
        let mut b = TokenBucket::per_minute(60.0, t0);
        for _ in 0..60 {
            b.take(1.0, t0).unwrap();
        }
        assert_eq!(b.take(1.0, t0), Err(Duration::from_secs(1)));
        assert!(b.take(1.0, t0 + Duration::from_secs(1)).is_ok());
        b.give_back(10.0, t0 + Duration::from_secs(1));
        assert!((b.remaining(t0 + Duration::from_secs(1)) - 10.0).abs() < 1e-9);
        // Bigger than the bucket: allowed only from full, then in debt.
        let mut big = TokenBucket::per_minute(100.0, t0);
        assert!(big.take(500.0, t0).is_ok());
        assert!(big.take(1.0, t0 + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn aimd_halves_on_overload_and_recovers_slowly() {
        let mut a = Aimd::new(16);
        assert_eq!(a.limit(), 16);
        a.on_overload();
        a.on_overload();
        assert_eq!(a.limit(), 4);
        for _ in 0..4 {
            assert!(a.try_acquire());
        }
        assert!(!a.try_acquire());
        a.release();
        assert!(a.try_acquire());
        for _ in 0..10 {
            a.on_overload();
        }
        assert_eq!(a.limit(), 1);
        let mut n = 0;
        while a.limit() < 16 {
            a.on_success();
            n += 1;
        }
        // 1 + 1/1 + ... : roughly limit^2 / 2 successes to climb back.
        assert!((100..200).contains(&n), "{n}");
    }
}
