//! One accepted connection: HTTP/1.1 over hyper with the header-read deadline, the idle
//! keep-alive timeout, the request-body deadline, and the drain rules on every request.

use super::body_deadline::DeadlineBody;
use super::connection_limits::ConnectionLimits;
use super::drain::{abandoned_error, closing, draining_response, is_sse, Drain, DrainBody};
use super::metrics::{HttpMetrics, Refusal};
use axum::body::Body;
use axum::http::{header, HeaderValue, Request};
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt;

/// When the connection last did something: received a byte or finished a response.
struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
    /// Woken when a request finishes.
    done: Notify,
}

impl Activity {
    fn touch(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn last(&self) -> Instant {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once the connection has had no request in flight and received nothing
    /// for `idle`.
    async fn idle_for(&self, idle: std::time::Duration) {
        loop {
            let n = self.done.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) > 0 {
                n.await;
                continue;
            }
            let deadline = self.last() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = n => {}
            }
        }
    }
}

/// The socket, noting every read that brings bytes.
struct Tracked {
    io: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 on `stream` until the client closes, a deadline passes, or the
/// drain ends the connection.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: ConnectionLimits,
    drain: Arc<Drain>,
    http: &Arc<HttpMetrics>,
) {
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: Mutex::new(Instant::now()),
        done: Notify::new(),
    });
    let io = TokioIo::new(Tracked {
        io: stream,
        activity: activity.clone(),
    });
    let (act, dr, http) = (activity.clone(), drain.clone(), http.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (router, activity, drain, http) =
            (router.clone(), act.clone(), dr.clone(), http.clone());
        async move { Ok::<_, Infallible>(handle(req, router, limits, activity, drain, &http).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection closed: {e}");
            }
            return;
        }
        _ = activity.idle_for(limits.idle_timeout) => {
            tracing::debug!("closing a connection idle for {:?}", limits.idle_timeout);
        }
        _ = drain.connections_closing() => {}
    }
    // Hyper closes it at once if idle; a response in flight is finished and flushed
    // first (a body that has ended may still have bytes in hyper's write buffer).
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

/// One request: 503 while draining; otherwise the router, with the body deadline, the
/// request counted in flight until its response body is done, and a 503 (or, for a
/// stream, an error chunk and `[DONE]`) if the drain is abandoned first.
async fn handle(
    req: Request<Incoming>,
    router: Router,
    limits: ConnectionLimits,
    activity: Arc<Activity>,
    drain: Arc<Drain>,
    http: &HttpMetrics,
) -> Response {
    if drain.is_draining() {
        http.refused(Refusal::Draining, 1);
        http.listener_503();
        return draining_response();
    }
    activity.in_flight.fetch_add(1, Ordering::SeqCst);
    let act = activity.clone();
    let guard = drain.enter(Box::new(move || {
        act.touch();
        act.in_flight.fetch_sub(1, Ordering::SeqCst);
        act.done.notify_waiters();
    }));
    let req = req.map(|b| Body::new(DeadlineBody::new(b, limits.request_body_timeout)));
    let mut resp = tokio::select! {
        r = router.oneshot(req) => match r {
            Ok(r) => r,
            Err(e) => match e {},
        },
        _ = drain.abandoned() => {
            // Counted by reason when the drain was abandoned; this one still gets a 503.
            http.listener_503();
            closing(abandoned_error())
        }
    };
    if drain.is_draining() {
        // The last answer on this connection.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let sse = is_sse(&resp);
    resp.map(|b| Body::new(DrainBody::new(b, sse, drain, guard)))
}
