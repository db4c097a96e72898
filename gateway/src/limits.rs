//! Requests-per-minute and tokens-per-minute limits, one algorithm for both places they
//! apply: a client key (`api_keys[].rpm/tpm`, answered with `x-ratelimit-*` headers)
//! and an upstream (`models[].limits.rpm/tpm`, which moves the request along the chain).

use crate::config::ApiKeyConfig;
use crate::policy::TokenBucket;
use crate::sync::lock;
use novastack_openai::ApiError;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An RPM and a TPM bucket (each optional). A request reserves one request and its
/// estimated tokens up front, then settles the tokens once its usage is known.
#[derive(Debug, Default)]
pub struct RateLimits {
    rpm: Option<TokenBucket>,
    tpm: Option<TokenBucket>,
}

impl RateLimits {
    pub fn new(rpm: Option<f64>, tpm: Option<f64>, now: Instant) -> Self {
        RateLimits {
            rpm: rpm.map(|c| TokenBucket::per_minute(c, now)),
            tpm: tpm.map(|c| TokenBucket::per_minute(c, now)),
        }
    }

    /// Takes one request and `tokens`, or says how long to wait (taking nothing).
    pub fn reserve(&mut self, tokens: f64, now: Instant) -> Result<(), Duration> {
        if let Some(b) = self.rpm.as_mut() {
            b.take(1.0, now)?;
        }
        if let Some(b) = self.tpm.as_mut() {
            if let Err(w) = b.take(tokens, now) {
                if let Some(r) = self.rpm.as_mut() {
                    r.give_back(1.0, now);
                }
                return Err(w);
            }
        }
        Ok(())
    }

    /// Settles a reservation of `reserved` tokens that used `actual`.
    pub fn settle(&mut self, reserved: f64, actual: f64, now: Instant) {
        if let Some(b) = self.tpm.as_mut() {
            b.give_back(reserved - actual, now);
        }
    }

    /// OpenAI's `x-ratelimit-*` headers for the buckets there are.
    pub fn headers(&mut self, now: Instant) -> Vec<(&'static str, String)> {
        let snap = |b: &mut TokenBucket| (b.capacity, b.remaining(now), b.reset_s(now));
        rate_headers(self.rpm.as_mut().map(snap), self.tpm.as_mut().map(snap))
    }
}

/// OpenAI's `x-ratelimit-*` headers from (capacity, remaining, seconds to full) of the
/// request and token buckets there are.
pub(crate) fn rate_headers(
    rpm: Option<(f64, f64, f64)>,
    tpm: Option<(f64, f64, f64)>,
) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    let names = [
        (
            rpm,
            [
                "x-ratelimit-limit-requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
            ],
        ),
        (
            tpm,
            [
                "x-ratelimit-limit-tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
            ],
        ),
    ];
    for (b, [limit, remaining, reset]) in names {
        if let Some((cap, left, reset_s)) = b {
            headers.push((limit, format!("{cap}")));
            headers.push((remaining, format!("{}", left.max(0.0).floor())));
            headers.push((reset, format!("{reset_s:.3}s")));
        }
    }
    headers
}

/// The 429 for a client key whose RPM/TPM is spent.
pub(crate) fn key_refused(
    name: &str,
    wait: Duration,
    headers: Vec<(&'static str, String)>,
) -> ApiError {
    ApiError::too_many(format!(
        "rate limit of API key {name:?} reached; retry in {:.1}s",
        wait.as_secs_f64()
    ))
    .with_headers(headers)
    .with_header("retry-after", retry_after_secs(wait))
}

/// The client keys' limits, by key name.
#[derive(Default)]
pub(crate) struct ClientLimits(Mutex<HashMap<String, RateLimits>>);

impl ClientLimits {
    /// Takes the keys' limits from a new config (buckets start full).
    pub fn configure(&self, keys: &[ApiKeyConfig], now: Instant) {
        let mut map = lock(&self.0);
        map.clear();
        for k in keys {
            map.insert(k.name.clone(), RateLimits::new(k.rpm, k.tpm, now));
        }
    }

    /// Reserves one request and `tokens` for key `name`; returns the rate-limit
    /// headers, or a 429 carrying them and `retry-after`.
    pub fn reserve(
        &self,
        name: &str,
        tokens: f64,
    ) -> Result<Vec<(&'static str, String)>, ApiError> {
        let now = Instant::now();
        let mut map = lock(&self.0);
        let Some(k) = map.get_mut(name) else {
            return Ok(Vec::new());
        };
        let taken = k.reserve(tokens, now);
        let headers = k.headers(now);
        match taken {
            Ok(()) => Ok(headers),
            Err(w) => Err(key_refused(name, w, headers)),
        }
    }

    pub fn settle(&self, name: &str, reserved: f64, actual: f64) {
        if let Some(k) = lock(&self.0).get_mut(name) {
            k.settle(reserved, actual, Instant::now());
        }
    }
}

/// A `Retry-After` value: whole seconds, at least 1.
pub(crate) fn retry_after_secs(d: Duration) -> String {
    d.as_secs_f64().ceil().max(1.0).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_tpm_gives_the_request_back() {
        let t0 = Instant::now();
        let mut l = RateLimits::new(Some(2.0), Some(100.0), t0);
        assert!(l.reserve(80.0, t0).is_ok());
        // TPM refuses: the request taken from RPM comes back, so one is still left.
        assert!(l.reserve(80.0, t0).is_err());
        l.settle(80.0, 10.0, t0);
        assert!(l.reserve(80.0, t0).is_ok());
        assert!(l.reserve(1.0, t0).is_err(), "RPM of 2 spent");
        let h = l.headers(t0);
        assert_eq!(h[0], ("x-ratelimit-limit-requests", "2".to_string()));
        assert_eq!(h[1], ("x-ratelimit-remaining-requests", "0".to_string()));
        assert!(RateLimits::default().reserve(1e9, t0).is_ok());
    }
}
