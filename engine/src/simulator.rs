//! A virtual-time replay of a workload through the real scheduler: no model, no
//! threads, no clock. Each step takes the time a given device cost model says it
//! takes; the scheduler learns its own cost model from those times, exactly as it does
//! from a device's measured steps. Deterministic, and seconds of CPU for thousands of
//! requests, so policies can be compared in CI (`bench sim` on the command line).

use crate::cost_model::CostModel;
use crate::request::{Request, RequestId, RequestParams};
use crate::sampler::SamplingParams;
use crate::scheduler::{Scheduler, SchedulerConfig};
use std::collections::HashMap;

/// One request to replay.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimRequest {
    /// When it is sent, in seconds from the start.
    pub arrival: f64,
    pub prompt_len: usize,
    pub output_len: usize,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub scheduler: SchedulerConfig,
    pub num_blocks: usize,
    pub block_size: usize,
    /// The device: how long a step of each shape takes.
    pub device: CostModel,
    /// Requests in flight at most (a closed loop, like `bench serve
    /// --max-concurrency`): a request is sent at its arrival or when a slot frees.
    pub max_concurrency: Option<usize>,
    /// Goodput SLOs in seconds: time to first token and time per output token.
    pub slo_ttft: Option<f64>,
    pub slo_tpot: Option<f64>,
}

/// Per-request outcome, in simulated seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimOutcome {
    pub sent: f64,
    /// Sent to first scheduled.
    pub queued: f64,
    pub ttft: f64,
    /// `(e2e - ttft) / (output_len - 1)`, for outputs longer than one token.
    pub tpot: Option<f64>,
    pub e2e: f64,
    pub output_len: usize,
}

/// What a replay measured.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    pub policy: String,
    pub outcomes: Vec<SimOutcome>,
    /// Simulated seconds from the first send to the last token.
    pub duration: f64,
    pub steps: u64,
    pub preemptions: u64,
    /// Longest step, and the mean relative error of the scheduler's learned cost model.
    pub max_step: f64,
    pub cost_model_error: Option<f64>,
    pub requests_meeting_slo: usize,
}

impl SimReport {
    fn values(&self, f: impl Fn(&SimOutcome) -> Option<f64>) -> Vec<f64> {
        let mut v: Vec<f64> = self.outcomes.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    /// Percentile `q` in [0, 1] of a per-request metric, by the rule `bench serve`
    /// reports with ([`novastack_metrics::percentile`]), so the two compare.
    pub fn percentile(&self, q: f64, f: impl Fn(&SimOutcome) -> Option<f64>) -> f64 {
        novastack_metrics::percentile(&self.values(f), q)
    }

    pub fn ttft(&self, q: f64) -> f64 {
        self.percentile(q, |o| Some(o.ttft))
    }

    pub fn tpot(&self, q: f64) -> f64 {
        self.percentile(q, |o| o.tpot)
    }

    pub fn queued(&self, q: f64) -> f64 {
        self.percentile(q, |o| Some(o.queued))
    }

    pub fn output_tokens_per_s(&self) -> f64 {
        let n: usize = self.outcomes.iter().map(|o| o.output_len).sum();
        n as f64 / self.duration.max(1e-12)
    }

    /// Requests per second that met every SLO.
    pub fn goodput(&self) -> f64 {
        self.requests_meeting_slo as f64 / self.duration.max(1e-12)
    }
}

/// Replays `reqs` (any order; sent by arrival) under `cfg`; `policy` names the run.
pub fn simulate(reqs: &[SimRequest], cfg: &SimConfig) -> SimReport {
    let mut sched = Scheduler::new(cfg.scheduler.clone(), cfg.num_blocks, cfg.block_size);
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by(|&a, &b| reqs[a].arrival.total_cmp(&reqs[b].arrival).then(a.cmp(&b)));
    let cap = cfg.max_concurrency.unwrap_or(usize::MAX).max(1);
    let mut next = 0; // into `order`
    let mut in_flight = 0usize;
    let mut t = 0.0f64;
    let mut live: HashMap<RequestId, (SimOutcome, bool)> = HashMap::new();
    let mut report = SimReport {
        policy: cfg.scheduler.policy.to_string(),
        ..Default::default()
    };
    let t0 = order.first().map_or(0.0, |&i| reqs[i].arrival);
    loop {
        // Send what has arrived, within the concurrency cap.
        while next < order.len() && in_flight < cap && reqs[order[next]].arrival <= t {
            let i = order[next];
            next += 1;
            let r = &reqs[i];
            let id = RequestId(i as u64);
            let params = RequestParams {
                max_tokens: r.output_len.max(1),
                sampling: SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            };
            // Distinct tokens per request: no prefix-cache hits between requests.
            let prompt = (0..r.prompt_len.max(1) as u64)
                .map(|k| ((i as u64 * 7919 + k) % 50_000 + 10) as u32)
                .collect();
            let req = Request::new(id, prompt, params, t, 0);
            match sched.add(req) {
                Ok(()) => {
                    in_flight += 1;
                    let o = SimOutcome {
                        sent: t,
                        ..Default::default()
                    };
                    live.insert(id, (o, false));
                }
                // A request that can never fit is dropped, as a server refuses it.
                Err(_) => continue,
            }
        }
        if !sched.has_work() {
            if next >= order.len() {
                break;
            }
            if in_flight < cap {
                t = t.max(reqs[order[next]].arrival);
            }
            continue;
        }
        let out = sched.schedule(t);
        if out.is_empty() {
            // Work that cannot run (should not happen): stop rather than spin.
            break;
        }
        let dt = cfg.device.predict(&out.shape).unwrap_or(0.0).max(1e-9);
        for s in &out.seqs {
            if let Some((o, started)) = live.get_mut(&s.id) {
                if !*started {
                    o.queued = t - o.sent;
                    *started = true;
                }
            }
        }
        t += dt;
        report.steps += 1;
        report.max_step = report.max_step.max(dt);
        sched.observe_step(&out.shape, dt);
        let sampled = out
            .seqs
            .iter()
            .filter(|s| s.sample)
            .map(|s| (s.id, 7u32))
            .collect();
        for u in sched.update(&out, &sampled, &[]) {
            let Some((o, _)) = live.get_mut(&u.id) else {
                continue;
            };
            if u.num_output_tokens == 1 {
                o.ttft = t - o.sent;
            }
            if u.finished.is_some() {
                let (mut o, _) = live.remove(&u.id).expect("live");
                o.e2e = t - o.sent;
                o.output_len = u.num_output_tokens;
                o.tpot = (o.output_len > 1).then(|| (o.e2e - o.ttft) / (o.output_len - 1) as f64);
                let ok = cfg.slo_ttft.is_none_or(|s| o.ttft <= s)
                    && cfg.slo_tpot.is_none_or(|s| o.tpot.is_none_or(|v| v <= s));
                report.requests_meeting_slo += usize::from(ok);
                report.outcomes.push(o);
                in_flight -= 1;
            }
        }
    }
    report.duration = t - t0;
    report.preemptions = sched.num_preemptions;
    report.cost_model_error = sched.cost.mean_relative_error();
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduling_policy::SchedulingPolicy;

    /// A CPU-like device: 25 ms a step, 1 ms a prompt token, 0.5 ms a decode.
    fn device() -> CostModel {
        CostModel::fixed(0.025, 0.001, 0.0005, 1e-8)
    }

    /// A bursty mix of short and long prompts (deterministic).
    fn workload(n: usize) -> Vec<SimRequest> {
        let mut x = 42u64;
        let mut rnd = move |m: u64| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) % m
        };
        let mut t = 0.0;
        (0..n)
            .map(|_| {
                t += rnd(400) as f64 / 1000.0;
                let long = rnd(5) == 0;
                SimRequest {
                    arrival: t,
                    prompt_len: if long {
                        600 + rnd(900) as usize
                    } else {
                        20 + rnd(200) as usize
                    },
                    output_len: 5 + rnd(120) as usize,
                }
            })
            .collect()
    }

    fn config(policy: &str) -> SimConfig {
        SimConfig {
            scheduler: SchedulerConfig {
                max_num_batched_tokens: 512,
                max_num_seqs: 16,
                max_model_len: 4096,
                buckets: crate::Buckets::off(),
                max_wait_steps: 8,
                policy: policy.parse::<SchedulingPolicy>().unwrap(),
            },
            num_blocks: 4096,
            block_size: 16,
            device: device(),
            max_concurrency: Some(16),
            slo_ttft: Some(2.0),
            slo_tpot: Some(0.1),
        }
    }

    #[test]
    fn replays_are_deterministic_and_account_for_every_request() {
        let w = workload(150);
        let a = simulate(&w, &config("srpf-time"));
        let b = simulate(&w, &config("srpf-time"));
        assert_eq!(a.outcomes, b.outcomes);
        assert_eq!(a.outcomes.len(), 150);
        assert_eq!(
            a.outcomes.iter().map(|o| o.output_len).sum::<usize>(),
            w.iter().map(|r| r.output_len).sum::<usize>()
        );
        for o in &a.outcomes {
            assert!(o.queued <= o.ttft && o.ttft <= o.e2e, "{o:?}");
        }
        // The scheduler's own cost model learned the device.
        assert!(
            a.cost_model_error.unwrap() < 0.05,
            "{:?}",
            a.cost_model_error
        );
    }

    /// The time budget trades the time to first token for the streams' latency: held
    /// strictly (no TTFT target), it must cut the TPOT tail well below the token
    /// budget's at the same throughput; shortest-first must cut the TTFT tail where
    /// prompts queue.
    #[test]
    fn the_time_budget_cuts_the_tpot_tail() {
        let w: Vec<SimRequest> = workload(300)
            .into_iter()
            .map(|r| SimRequest {
                arrival: r.arrival * 4.0,
                ..r
            })
            .collect();
        let old = simulate(&w, &config("fcfs-tokens"));
        let strict = simulate(&w, &config("srpf-time:2:inf"));
        let show = |r: &SimReport| {
            format!(
                "{}: ttft p50 {:.3} p99 {:.3} tpot p99 {:.4} out/s {:.1} goodput {:.2}",
                r.policy,
                r.ttft(0.5),
                r.ttft(0.99),
                r.tpot(0.99),
                r.output_tokens_per_s(),
                r.goodput()
            )
        };
        let all = [&old, &strict].map(show).join("\n");
        assert!(strict.tpot(0.99) < 0.7 * old.tpot(0.99), "{all}");
        assert!(
            strict.output_tokens_per_s() >= 0.97 * old.output_tokens_per_s(),
            "{all}"
        );
        // Where prompts queue (the workload at full speed, past capacity), shortest-
        // first keeps short prompts from queueing behind long ones: a shorter TTFT tail
        // (here 2.7 s against 4.3 s; the medians tie).
        let burst = workload(300);
        let (fcfs, srpf) = (
            simulate(&burst, &config("fcfs-tokens")),
            simulate(&burst, &config("srpf-tokens")),
        );
        let all = [&old, &strict, &srpf, &fcfs].map(show).join("\n");
        assert!(srpf.ttft(0.99) < 0.8 * fcfs.ttft(0.99), "{all}");
    }
}
