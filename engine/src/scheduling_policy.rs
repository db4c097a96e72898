//! How the scheduler fills a step: the order of prefills and the per-step time budget.
//! Running decodes always get their token in every step; the policy decides what the
//! prefills get of the rest.

use std::fmt;
use std::str::FromStr;

/// The order in which prefills (new, preempted, or part-way prompts) get a step's room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefillOrder {
    /// First come, first served.
    Fcfs,
    /// Shortest remaining prefill first: short prompts do not queue behind long ones.
    /// Requests waiting more than `max_wait_steps` steps go first (oldest first), so a
    /// long prompt is never starved.
    ShortestFirst,
}

/// How long a step with running decodes may take.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepTime {
    /// No time budget: prefills take the token budget's rest.
    Off,
    /// At most this many times the predicted time of the step's decodes alone, so the
    /// streams' inter-token latency stays within that factor of a pure-decode step.
    DecodeRatio(f64),
    /// At most this many seconds (or the decodes' own time, if longer).
    Seconds(f64),
}

/// The scheduling policy. Parsed from `ORDER-BUDGET`: `srpf-time` (the default; `srpf:5s`
/// sets the prefill aging age, `srpf:inf` turns it off),
/// `fcfs-time`, `srpf-tokens`, `fcfs-tokens` (first come first served within the
/// token budget: the policy before the time budget). `-time` takes an optional ratio or
/// milliseconds: `srpf-time:3` (3x the decode step), `srpf-time:150ms`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulingPolicy {
    pub prefill_order: PrefillOrder,
    pub step_time: StepTime,
    /// Prompt tokens a step computes even when the time budget has no room, so prefills
    /// always progress.
    pub min_prefill_chunk: usize,
    /// Seconds from arrival within which a prompt should get its first token: prefills
    /// that would miss it at the time budget's pace stretch steps past the budget (see
    /// the scheduler). `inf`: the budget always holds.
    pub ttft_target: f64,
    /// Seconds after arrival from which a prefill goes before younger ones, oldest first
    /// (`srpf:10s`): shortest-first then delays a long prompt by at most about this long
    /// before it gets every step's room. `inf`: never (plain shortest-first, whose aging
    /// is only `max_wait_steps`). Meaningless for FCFS, which is oldest first anyway.
    pub prefill_aging: f64,
}

/// The default step time ratio: a step with prefill work may take this many times as
/// long as its decodes alone.
pub const DEFAULT_DECODE_RATIO: f64 = 4.0;

/// The default time-to-first-token target, seconds.
pub const DEFAULT_TTFT_TARGET: f64 = 1.0;

/// The default age, seconds, from which shortest-first serves a prefill oldest first.
/// Chosen with `bench sim` on ShareGPT at 0.2-0.25 requests/s (2 cores): 3, 6 and 10 s
/// all cut TTFT p99 from 23-29 s to 21 s; 10 s keeps the most of shortest-first's
/// median. The Azure conversation trace never reaches it.
pub const DEFAULT_PREFILL_AGING: f64 = 10.0;

impl Default for SchedulingPolicy {
    fn default() -> Self {
        SchedulingPolicy {
            prefill_order: PrefillOrder::ShortestFirst,
            step_time: StepTime::DecodeRatio(DEFAULT_DECODE_RATIO),
            min_prefill_chunk: 32,
            ttft_target: DEFAULT_TTFT_TARGET,
            prefill_aging: DEFAULT_PREFILL_AGING,
        }
    }
}

impl SchedulingPolicy {
    /// The policies `bench sim` compares by default.
    pub fn presets() -> Vec<SchedulingPolicy> {
        ["fcfs-tokens", "fcfs-time", "srpf-tokens", "srpf-time"]
            .iter()
            .map(|s| s.parse().expect("preset"))
            .collect()
    }
}

impl fmt::Display for SchedulingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let order = match self.prefill_order {
            PrefillOrder::Fcfs => "fcfs".to_string(),
            PrefillOrder::ShortestFirst if self.prefill_aging == DEFAULT_PREFILL_AGING => {
                "srpf".to_string()
            }
            PrefillOrder::ShortestFirst => format!("srpf:{}", seconds(self.prefill_aging)),
        };
        match self.step_time {
            StepTime::Off => write!(f, "{order}-tokens")?,
            StepTime::DecodeRatio(r) => write!(f, "{order}-time:{r}")?,
            StepTime::Seconds(s) => write!(f, "{order}-time:{}ms", s * 1e3)?,
        }
        if self.step_time != StepTime::Off && self.ttft_target != DEFAULT_TTFT_TARGET {
            write!(f, ":{}", seconds(self.ttft_target))?;
        }
        Ok(())
    }
}

/// `10s`, or `inf`.
fn seconds(v: f64) -> String {
    if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v}s")
    }
}

/// Parses `10s` or `inf`: a positive number of seconds.
fn parse_seconds(s: &str) -> Option<f64> {
    if s == "inf" {
        return Some(f64::INFINITY);
    }
    match s.strip_suffix('s')?.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Some(v),
        _ => None,
    }
}

impl FromStr for SchedulingPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "unknown scheduling policy {s:?}: expected srpf-time, fcfs-time, srpf-tokens or \
                 fcfs-tokens (srpf may take :AGEs, e.g. srpf:5s-time; -time may take :RATIO or \
                 :MSms and then :TTFTs, e.g. srpf-time:3, srpf-time:150ms:2s)"
            )
        };
        let (order, budget) = s.trim().split_once('-').ok_or_else(bad)?;
        let (order, aging) = match order.split_once(':') {
            Some((o, a)) => (o, Some(a)),
            None => (order, None),
        };
        let prefill_order = match order {
            "fcfs" => PrefillOrder::Fcfs,
            "srpf" => PrefillOrder::ShortestFirst,
            _ => return Err(bad()),
        };
        let prefill_aging = match (prefill_order, aging) {
            (_, None) => DEFAULT_PREFILL_AGING,
            (PrefillOrder::Fcfs, Some(_)) => {
                return Err(format!(
                    "scheduling policy {s:?}: fcfs is oldest first already and takes no age"
                ))
            }
            (PrefillOrder::ShortestFirst, Some(a)) => parse_seconds(a).ok_or_else(|| {
                format!(
                    "scheduling policy {s:?}: the age after which a prompt goes oldest first is \
                     seconds, e.g. srpf:10s, or srpf:inf"
                )
            })?,
        };
        let mut parts = budget.split(':');
        let kind = parts.next().unwrap_or("");
        let (arg, horizon) = (parts.next(), parts.next());
        if parts.next().is_some() {
            return Err(bad());
        }
        let step_time = match (kind, arg) {
            ("tokens", None) => StepTime::Off,
            ("time", None) => StepTime::DecodeRatio(DEFAULT_DECODE_RATIO),
            ("time", Some(a)) => match a.strip_suffix("ms") {
                Some(ms) => match ms.parse::<f64>() {
                    Ok(v) if v.is_finite() && v > 0.0 => StepTime::Seconds(v / 1e3),
                    _ => return Err(bad()),
                },
                None => match a.parse::<f64>() {
                    Ok(v) if v.is_finite() && v >= 1.0 => StepTime::DecodeRatio(v),
                    _ => {
                        return Err(format!(
                            "scheduling policy {s:?}: the ratio must be a number >= 1"
                        ))
                    }
                },
            },
            _ => return Err(bad()),
        };
        let ttft_target = match horizon {
            None => DEFAULT_TTFT_TARGET,
            Some(h) => parse_seconds(h).ok_or_else(|| {
                format!(
                    "scheduling policy {s:?}: the time-to-first-token target is seconds, e.g. 5s, or inf"
                )
            })?,
        };
        Ok(SchedulingPolicy {
            prefill_order,
            step_time,
            ttft_target,
            prefill_aging,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_preset() {
        for p in SchedulingPolicy::presets() {
            assert_eq!(p.to_string().parse::<SchedulingPolicy>().unwrap(), p);
        }
        let p: SchedulingPolicy = "srpf-time:3".parse().unwrap();
        assert_eq!(p.step_time, StepTime::DecodeRatio(3.0));
        let p: SchedulingPolicy = "fcfs-time:150ms".parse().unwrap();
        assert_eq!(p.step_time, StepTime::Seconds(0.15));
        assert_eq!(p.to_string(), "fcfs-time:150ms");
        let p: SchedulingPolicy = "srpf-time:3:inf".parse().unwrap();
        assert_eq!(p.ttft_target, f64::INFINITY);
        assert_eq!(p.to_string(), "srpf-time:3:inf");
        let p: SchedulingPolicy = "srpf-time:3:5s".parse().unwrap();
        assert_eq!(p.ttft_target, 5.0);
        assert_eq!(p.to_string().parse::<SchedulingPolicy>().unwrap(), p);
        let p: SchedulingPolicy = "srpf:5s-time:3:2s".parse().unwrap();
        assert_eq!((p.prefill_aging, p.ttft_target), (5.0, 2.0));
        assert_eq!(p.to_string(), "srpf:5s-time:3:2s");
        let p: SchedulingPolicy = "srpf:inf-tokens".parse().unwrap();
        assert_eq!(p.prefill_aging, f64::INFINITY);
        assert_eq!(p.to_string(), "srpf:inf-tokens");
        assert_eq!(
            "srpf-time"
                .parse::<SchedulingPolicy>()
                .unwrap()
                .prefill_aging,
            10.0
        );
        for bad in [
            "",
            "srpf",
            "fcfs:5s-time",
            "srpf:0s-time",
            "srpf:5-time",
            "srpf:5s:2s-time",
            "lifo-time",
            "srpf-time:0.5",
            "srpf-time:-3ms",
            "srpf-tokens:2",
        ] {
            assert!(bad.parse::<SchedulingPolicy>().is_err(), "{bad}");
        }
    }
}
