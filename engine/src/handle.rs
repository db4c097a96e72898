//! The engine on its own thread: an inbox of requests, one event stream per request.
//! A dropped stream receiver means the client left: the request is aborted and its
//! blocks freed at the next step.

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
    Add(
        Submission,
        UnboundedSender<TokenEvent>,
        mpsc::Sender<Result<Vec<RequestId>>>,
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
        std::thread::Builder::new()
            .name("novastack-engine".into())
            .spawn(move || {
                run(engine, rx, &s);
                a.store(false, std::sync::atomic::Ordering::SeqCst);
            })
            .expect("spawn engine thread");
        EngineHandle {
            inbox: tx,
            stats,
            alive,
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
        self.inbox
            .send(Command::Add(sub, events, rtx))
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

fn run<B: Backend>(mut engine: Engine<B>, rx: mpsc::Receiver<Command>, stats: &Mutex<EngineStats>) {
    let start = Instant::now();
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
        while let Ok(c) = rx.try_recv() {
            cmds.push(c);
        }
        let now = start.elapsed().as_secs_f64();
        for c in cmds {
            match c {
                Command::Add(sub, events, reply) => {
                    let r = engine.add_request(sub.prompt, sub.params, now);
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
        // Clients that left: abort their requests, freeing blocks.
        let gone: Vec<RequestId> = streams
            .iter()
            .filter(|(_, s)| s.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            streams.remove(&id);
            engine.abort(id);
        }
        match engine.step(now) {
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
