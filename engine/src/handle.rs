//! The engine on its own thread: an inbox of requests, one event stream per request.
//! A dropped stream receiver means the client left: the request is aborted and its
//! blocks freed at the next step, and it counts as finished with reason `abort`.
//! Times are seconds since the handle was spawned; a request's arrival is when
//! [`EngineHandle::submit_to`] was called, not when the engine thread got to it.

use crate::engine::{Engine, EngineStats, TokenEvent};
use crate::error::{Error, Result};
use crate::request::{RequestId, RequestParams};
use novastack_kernels::Backend;
use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// A prompt submitted to the engine thread.
pub struct Submission {
    pub prompt: Vec<u32>,
    pub params: RequestParams,
}

enum Command {
    /// A submission, its event stream, the reply channel and its arrival time.
    Add(
        Box<Submission>,
        UnboundedSender<TokenEvent>,
        mpsc::Sender<Result<Vec<RequestId>>>,
        f64,
    ),
    Abort(RequestId),
    Shutdown,
}

/// Talks to the engine thread. Cloneable; the thread stops when every handle is
/// dropped or `shutdown` is called.
#[derive(Clone)]
pub struct EngineHandle {
    inbox: mpsc::Sender<Command>,
    stats: Arc<Mutex<EngineStats>>,
    alive: Arc<std::sync::atomic::AtomicBool>,
    /// Time zero of the engine's clock.
    epoch: Instant,
}

impl EngineHandle {
    /// Starts `engine` on a new thread.
    pub fn spawn<B: Backend + 'static>(engine: Engine<B>) -> Self
    where
        B::Buf: 'static,
    {
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Mutex::new(engine.stats.clone()));
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (s, a) = (stats.clone(), alive.clone());
        let epoch = Instant::now();
        std::thread::Builder::new()
            .name("novastack-engine".into())
            .spawn(move || {
                run(engine, rx, &s, epoch);
                a.store(false, std::sync::atomic::Ordering::SeqCst);
            })
            .expect("spawn engine thread");
        EngineHandle {
            inbox: tx,
            stats,
            alive,
            epoch,
        }
    }

    /// Submits a prompt; returns its sequence ids and the stream of their events
    /// (all `n` sequences share the stream; events carry `index`).
    pub fn submit(
        &self,
        sub: Submission,
    ) -> Result<(Vec<RequestId>, UnboundedReceiver<TokenEvent>)> {
        let (etx, erx) = unbounded_channel();
        let ids = self.submit_to(sub, etx)?;
        Ok((ids, erx))
    }

    /// Submits a prompt whose events go to an existing stream (several prompts of one
    /// API request share a stream).
    pub fn submit_to(
        &self,
        sub: Submission,
        events: UnboundedSender<TokenEvent>,
    ) -> Result<Vec<RequestId>> {
        let (rtx, rrx) = mpsc::channel();
        let arrival = self.epoch.elapsed().as_secs_f64();
        self.inbox
            .send(Command::Add(Box::new(sub), events, rtx, arrival))
            .map_err(|_| Error::Stopped)?;
        rrx.recv().map_err(|_| Error::Stopped)?
    }

    /// Stops one sequence (e.g. a stop string matched) and frees its blocks; its stream
    /// gets no more events for it.
    pub fn abort(&self, id: RequestId) {
        let _ = self.inbox.send(Command::Abort(id));
    }

    pub fn stats(&self) -> EngineStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Requests waiting to be scheduled (as of the last step), without copying the stats.
    pub fn num_waiting(&self) -> usize {
        self.stats.lock().map_or(0, |s| s.num_waiting)
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn shutdown(&self) {
        let _ = self.inbox.send(Command::Shutdown);
    }
}

fn run<B: Backend>(
    mut engine: Engine<B>,
    rx: mpsc::Receiver<Command>,
    stats: &Mutex<EngineStats>,
    epoch: Instant,
) {
    let clock = || epoch.elapsed().as_secs_f64();
    let mut streams: HashMap<RequestId, UnboundedSender<TokenEvent>> = HashMap::new();
    loop {
        // Block for work when idle; otherwise drain whatever arrived.
        let mut cmds = Vec::new();
        if !engine.has_work() {
            match rx.recv() {
                Ok(c) => cmds.push(c),
                Err(_) => return,
            }
        }
        // Clients that left, seen before the inbox is drained: an abort sent before
        // the stream was dropped (a stop string matched) is in the inbox by now and
        // wins, so only sequences nobody asked to stop count as cancelled.
        let gone: Vec<RequestId> = streams
            .iter()
            .filter(|(_, s)| s.is_closed())
            .map(|(id, _)| *id)
            .collect();
        while let Ok(c) = rx.try_recv() {
            cmds.push(c);
        }
        for c in cmds {
            match c {
                Command::Add(sub, events, reply, arrival) => {
                    let r = engine.add_request(sub.prompt, sub.params, arrival);
                    if let Ok(ids) = &r {
                        for id in ids {
                            streams.insert(*id, events.clone());
                        }
                    }
                    let _ = reply.send(r);
                }
                Command::Abort(id) => {
                    streams.remove(&id);
                    engine.abort(id);
                }
                Command::Shutdown => return,
            }
        }
        // Abort their requests, freeing blocks.
        for id in gone {
            if streams.remove(&id).is_some() {
                engine.cancel(id);
            }
        }
        match engine.step_clocked(&clock) {
            Ok(events) => {
                for ev in events {
                    let done = ev.finished.is_some();
                    if let Some(s) = streams.get(&ev.id) {
                        let _ = s.send(ev.clone());
                    }
                    if done {
                        streams.remove(&ev.id);
                    }
                }
            }
            Err(e) => {
                // Should not happen (step turns model errors into request errors); fail all.
                for (id, s) in streams.drain() {
                    let _ = s.send(TokenEvent {
                        id,
                        index: 0,
                        token: None,
                        logprobs: None,
                        finished: Some(crate::request::FinishReason::Error),
                        num_prompt_tokens: 0,
                        num_output_tokens: 0,
                        num_cached_tokens: 0,
                        error: Some(e.to_string()),
                    });
                    engine.abort(id);
                }
            }
        }
        if let Ok(mut s) = stats.lock() {
            *s = engine.stats.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::tests::{fixture_engine, greedy};
    use std::time::Duration;

    /// Polls the handle's stats until `done` holds (the stats are published after the
    /// step's events are sent).
    fn wait_for(h: &EngineHandle, done: impl Fn(&EngineStats) -> bool) -> EngineStats {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let s = h.stats();
            if done(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "stats never got there: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The time to first token the engine records lies between 0 (exclusive: it
    /// includes the step that computed the prompt) and what the submitter saw from
    /// calling `submit` to receiving the token. It used to be exactly 0 on an idle
    /// engine (timed at the start of that step, which was also the arrival).
    #[test]
    fn time_to_first_token_is_positive_and_at_most_what_the_client_saw() {
        let h = EngineHandle::spawn(fixture_engine());
        let start = Instant::now();
        let sub = Submission {
            prompt: (1..300).collect(),
            params: greedy(2),
        };
        let (_, mut rx) = h.submit(sub).unwrap();
        let first = rx.blocking_recv().unwrap();
        let client = start.elapsed().as_secs_f64();
        assert!(first.token.is_some());
        let s = wait_for(&h, |s| s.ttft.count == 1);
        assert!(
            s.ttft.sum > 0.0 && s.ttft.sum <= client,
            "engine TTFT {} s, client TTFT {client} s",
            s.ttft.sum
        );
        h.shutdown();
    }

    /// A client that drops its stream has its sequences cancelled: each counts once as
    /// finished with reason abort and its blocks come back. A sequence stopped on
    /// request (a stop string) before its stream is dropped is not a cancel.
    #[test]
    fn dropped_streams_count_as_cancelled() {
        let h = EngineHandle::spawn(fixture_engine());
        let total = h.stats().kv_blocks_total;
        let sub = || Submission {
            prompt: (1..30).collect(),
            params: RequestParams {
                n: 2,
                ..greedy(500)
            },
        };
        let (_, mut rx) = h.submit(sub()).unwrap();
        rx.blocking_recv().unwrap();
        drop(rx);
        let s = wait_for(&h, |s| s.num_cancelled == 2 && s.kv_blocks_free == total);
        assert_eq!(s.num_running + s.num_waiting, 0);
        let (ids, mut rx) = h.submit(sub()).unwrap();
        rx.blocking_recv().unwrap();
        for id in ids {
            h.abort(id);
        }
        drop(rx);
        // A request after them ends after the engine has seen the aborts and the drop.
        let (_, mut rx) = h
            .submit(Submission {
                prompt: vec![1, 2, 3],
                params: greedy(1),
            })
            .unwrap();
        while rx.blocking_recv().is_some_and(|ev| ev.finished.is_none()) {}
        let s = wait_for(&h, |s| s.e2e.count == 1 && s.kv_blocks_free == total);
        assert_eq!(s.num_cancelled, 2);
        h.shutdown();
    }
}
