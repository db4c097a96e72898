//! Graceful drain: requests in flight are counted; once draining, new requests are
//! answered 503; when the drain times out, requests still running are abandoned, each
//! SSE stream ending with an error chunk and `data: [DONE]`.

use crate::ApiError;
use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Notify;

/// Server-wide: how many requests are in flight, and the drain state.
#[derive(Default)]
pub(crate) struct Drain {
    in_flight: AtomicUsize,
    draining: AtomicBool,
    abandoned: AtomicBool,
    /// Woken when `in_flight` drops to zero.
    idle: Notify,
    /// Woken when the drain times out.
    abandon: Notify,
    closing: AtomicBool,
    /// Woken when every connection is to close (once the drain ends either way).
    close: Notify,
}

impl Drain {
    pub(crate) fn start(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Gives up on the requests still running; returns how many there were.
    pub(crate) fn abandon(&self) -> usize {
        self.abandoned.store(true, Ordering::SeqCst);
        self.abandon.notify_waiters();
        self.in_flight()
    }

    /// Resolves once [`Drain::abandon`] has been called.
    pub(crate) async fn abandoned(&self) {
        wait_for(&self.abandoned, &self.abandon).await
    }

    /// Tells every connection to close once its response in flight (if any) is fully
    /// written: the drain is over and the listener is about to return.
    pub(crate) fn close_connections(&self) {
        self.closing.store(true, Ordering::SeqCst);
        self.close.notify_waiters();
    }

    /// Resolves once [`Drain::close_connections`] has been called.
    pub(crate) async fn connections_closing(&self) {
        wait_for(&self.closing, &self.close).await
    }

    /// Resolves when no request is in flight.
    pub(crate) async fn all_done(&self) {
        loop {
            let n = self.idle.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            n.await;
        }
    }

    /// Counts a request in flight until the guard (moved into its response body) drops.
    pub(crate) fn enter(self: &Arc<Self>, on_done: Box<dyn FnOnce() + Send>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            drain: self.clone(),
            on_done: Some(on_done),
        }
    }
}

/// Resolves once `flag` is set; the setter stores it, then wakes `woken`'s waiters.
async fn wait_for(flag: &AtomicBool, woken: &Notify) {
    loop {
        let n = woken.notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if flag.load(Ordering::SeqCst) {
            return;
        }
        n.await;
    }
}

/// One request in flight; dropping it (its response fully written, or the connection
/// gone) ends it.
pub(crate) struct InFlight {
    drain: Arc<Drain>,
    on_done: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            f();
        }
        if self.drain.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.drain.idle.notify_waiters();
        }
    }
}

/// An OpenAI error answer that also closes the connection.
pub(crate) fn closing(err: ApiError) -> Response {
    let mut resp = err.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The answer to a request that arrives while the server drains.
pub(crate) fn draining_response() -> Response {
    closing(
        ApiError::unavailable("the server is shutting down; retry on another instance")
            .with_code("shutting_down"),
    )
}

/// The error a request or stream cut off by the shutdown timeout gets.
pub(crate) fn abandoned_error() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server shut down before this response finished (--shutdown-timeout)",
        None,
    )
    .with_code("shutdown_timeout")
}

/// The SSE bytes that end an abandoned stream: an error chunk, then `[DONE]`.
pub(crate) fn abandoned_sse_tail() -> Bytes {
    Bytes::from(format!(
        "data: {}\n\ndata: [DONE]\n\n",
        abandoned_error().body()
    ))
}

/// A response body that holds its request's [`InFlight`] and, for an SSE stream, ends
/// it properly if the drain is abandoned. SSE bodies here yield whole events per frame
/// (axum's `Sse`), so the tail never splits an event.
pub(crate) struct DrainBody {
    inner: Body,
    sse: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    state: Tail,
    _guard: InFlight,
}

#[derive(PartialEq)]
enum Tail {
    Streaming,
    Sent,
}

impl DrainBody {
    pub(crate) fn new(inner: Body, sse: bool, drain: Arc<Drain>, guard: InFlight) -> Self {
        DrainBody {
            inner,
            sse: sse.then(|| {
                Box::pin(async move { drain.abandoned().await })
                    as Pin<Box<dyn Future<Output = ()> + Send>>
            }),
            state: Tail::Streaming,
            _guard: guard,
        }
    }
}

impl http_body::Body for DrainBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.state == Tail::Sent {
            return Poll::Ready(None);
        }
        if let Some(abandoned) = self.sse.as_mut() {
            if abandoned.as_mut().poll(cx).is_ready() {
                self.state = Tail::Sent;
                return Poll::Ready(Some(Ok(Frame::data(abandoned_sse_tail()))));
            }
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.state == Tail::Sent || (self.sse.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

/// Whether `resp` is an SSE stream.
pub(crate) fn is_sse(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A body that sends one frame, then never ends by itself (an SSE stream that stays
    /// open); the listener's tests use it too.
    pub(crate) struct Forever(pub(crate) Option<Bytes>);

    impl http_body::Body for Forever {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    async fn collect(mut b: DrainBody) -> String {
        let mut out = Vec::new();
        while let Some(f) =
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut b), cx)).await
        {
            if let Ok(d) = f.unwrap().into_data() {
                out.extend_from_slice(&d);
            }
        }
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn an_abandoned_stream_ends_with_an_error_chunk_and_done() {
        let drain = Arc::new(Drain::default());
        let guard = drain.enter(Box::new(|| {}));
        assert_eq!(drain.in_flight(), 1);
        let first = Bytes::from_static(b"data: {\"x\":1}\n\n");
        let body = DrainBody::new(Body::new(Forever(Some(first))), true, drain.clone(), guard);
        let d2 = drain.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(d2.abandon(), 1);
        });
        let text = collect(body).await;
        assert!(text.starts_with("data: {\"x\":1}\n\n"), "{text}");
        let tail = text.strip_prefix("data: {\"x\":1}\n\n").unwrap();
        let (chunk, done) = tail.split_once("\n\n").unwrap();
        let err: serde_json::Value =
            serde_json::from_str(chunk.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(err["error"]["code"], "shutdown_timeout", "{text}");
        assert_eq!(done, "data: [DONE]\n\n");
        // The body is gone: the request is no longer in flight.
        assert_eq!(drain.in_flight(), 0);
        drain.all_done().await;
    }

    #[tokio::test]
    async fn a_plain_body_is_passed_through_untouched_on_abandon() {
        let drain = Arc::new(Drain::default());
        drain.abandon();
        let guard = drain.enter(Box::new(|| {}));
        let body = DrainBody::new(Body::from("{\"ok\":true}"), false, drain.clone(), guard);
        assert_eq!(collect(body).await, "{\"ok\":true}");
        assert_eq!(drain.in_flight(), 0);
    }
}
