//! The accept loop both servers run (in place of `axum::serve`): `TCP_NODELAY` on every
//! socket, the connection cap, per-connection deadlines, and the drain on shutdown.
//!
//! Over `max_connections`, a new connection is answered 503 (OpenAI error JSON,
//! `Connection: close`) without reading its request, its write side is shut, and it is
//! closed after at most a second of discarding what the client still sends (so the
//! client reads the answer instead of a reset). After the shutdown signal the listener
//! stays open: every new request, on a new or a kept-alive connection, is answered 503
//! with `Connection: close`, while the requests in flight finish. When the drain
//! timeout passes, the ones still running are abandoned: an SSE stream gets an error
//! chunk and `data: [DONE]`, a request not yet answered gets a 503, and `serve` reports
//! how many were abandoned.

use super::connection::serve_connection;
use super::connection_limits::ConnectionLimits;
use super::drain::Drain;
use super::metrics::{HttpMetrics, Refusal};
use crate::ApiError;
use axum::Router;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every request in flight finished.
    Finished,
    /// The drain timed out with this many requests still running.
    Abandoned { requests: usize },
}

/// How long abandoned streams get to write their last chunks before their connections
/// are closed.
const ABANDON_GRACE: Duration = Duration::from_secs(2);
/// How long connections get to flush their last response and close once the drain
/// is over.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long an over-cap connection is read (and discarded) after its 503.
const REJECT_LINGER: Duration = Duration::from_secs(1);

/// Accepts one connection, with `TCP_NODELAY` set: answers are written as soon as
/// they are ready instead of waiting for the client's ACK (Nagle's algorithm against
/// delayed ACKs costs ~40 ms per streamed response).
pub async fn accept(listener: &TcpListener) -> io::Result<TcpStream> {
    let (stream, _) = listener.accept().await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains for up to
/// `drain_timeout` (see the module docs). Open connections and the 503s given here
/// (not by the router) go to `http`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    http: Arc<HttpMetrics>,
    shutdown: impl Future<Output = ()>,
    drain_timeout: Duration,
) -> DrainOutcome {
    let drain = Arc::new(Drain::default());
    let open = Arc::new(AtomicUsize::new(0));
    let rejecting = Arc::new(AtomicUsize::new(0));
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            accepted = accept(&listener) => {
                let stream = match accepted {
                    Ok(s) => s,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if open.load(Ordering::SeqCst) >= limits.max_connections {
                    http.refused(Refusal::ConnectionCap, 1);
                    if rejecting.fetch_add(1, Ordering::SeqCst) < limits.max_connections {
                        let r = rejecting.clone();
                        http.listener_503();
                        conns.spawn(async move {
                            reject(stream).await;
                            r.fetch_sub(1, Ordering::SeqCst);
                        });
                    } else {
                        rejecting.fetch_sub(1, Ordering::SeqCst);
                    }
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                http.connection(1);
                let (router, drain, open, http) =
                    (router.clone(), drain.clone(), open.clone(), http.clone());
                conns.spawn(async move {
                    serve_connection(stream, router, limits, drain, &http).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    http.connection(-1);
                });
            }
            _ = &mut shutdown, if deadline.is_none() => {
                drain.start();
                deadline = Some(tokio::time::Instant::now() + drain_timeout);
            }
            _ = drain.all_done(), if deadline.is_some() => {
                close_all(&drain, &mut conns).await;
                return DrainOutcome::Finished;
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)),
                if deadline.is_some() => {
                let requests = drain.abandon();
                http.refused(Refusal::ShutdownTimeout, requests as u64);
                tracing::warn!("shutdown timeout: abandoning {requests} requests in flight");
                let _ = tokio::time::timeout(ABANDON_GRACE, drain.all_done()).await;
                close_all(&drain, &mut conns).await;
                return DrainOutcome::Abandoned { requests };
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

/// Ends every connection: each finishes writing what its last response left in its
/// buffers, then closes; whatever is still open after [`CLOSE_GRACE`] is aborted (by
/// dropping `conns`). A response body that has ended is not yet on the wire, so
/// returning as soon as the requests are done would cut their last bytes.
async fn close_all(drain: &Drain, conns: &mut JoinSet<()>) {
    drain.close_connections();
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

/// The over-cap answer: written at once, then the connection lingers briefly.
async fn reject(mut stream: TcpStream) {
    let err = ApiError::unavailable("too many open connections; retry shortly")
        .with_code("too_many_connections");
    let body = err.body().to_string();
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        err.status.as_u16(),
        err.status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let _ = tokio::time::timeout(REJECT_LINGER, async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, io::Error>(())
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body_bytes;
    use axum::body::{Body, Bytes};
    use axum::extract::rejection::BytesRejection;
    use axum::http::header;
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use std::net::SocketAddr;
    use tokio::sync::oneshot;
    use tokio::task::JoinHandle;
    use tokio::time::{sleep, timeout, Instant};

    use crate::http::drain::tests::Forever;

    fn router() -> Router {
        Router::new()
            .route("/health", get(|| async { "ok" }))
            .route(
                "/echo",
                post(|body: Result<Bytes, BytesRejection>| async move {
                    match body_bytes(body) {
                        Ok(b) => b.into_response(),
                        Err(e) => e.into_response(),
                    }
                }),
            )
            .route(
                "/stream",
                get(|| async {
                    Response::builder()
                        .header(header::CONTENT_TYPE, "text/event-stream")
                        .body(Body::new(Forever(Some(Bytes::from_static(
                            b"data: {\"n\":1}\n\n",
                        )))))
                        .unwrap()
                }),
            )
            .route("/hang", get(std::future::pending::<&'static str>))
            .route("/big", get(|| async { vec![b'x'; BIG] }))
    }

    /// Larger than the loopback socket buffers on both ends, so a client that does not
    /// read leaves most of the answer in the server's write buffer after the body ended.
    const BIG: usize = 48 << 20;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            request_body_timeout: Duration::from_secs(30),
            max_connections: 64,
        }
    }

    struct Server {
        addr: SocketAddr,
        http: Arc<HttpMetrics>,
        stop: Option<oneshot::Sender<()>>,
        done: JoinHandle<DrainOutcome>,
    }

    impl Server {
        async fn start(limits: ConnectionLimits, drain: Duration) -> Server {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let (tx, rx) = oneshot::channel::<()>();
            let http = Arc::new(HttpMetrics::default());
            let done = tokio::spawn(serve(
                l,
                router(),
                limits,
                http.clone(),
                async move {
                    let _ = rx.await;
                },
                drain,
            ));
            Server {
                addr,
                http,
                stop: Some(tx),
                done,
            }
        }

        fn shutdown(&mut self) {
            let _ = self.stop.take().unwrap().send(());
        }
    }

    /// Reads until the peer closes; `None` if it is still open after `within`.
    async fn until_closed(s: &mut TcpStream, within: Duration) -> Option<String> {
        let mut out = Vec::new();
        let r = timeout(within, async {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(k) => out.extend_from_slice(&buf[..k]),
                }
            }
        })
        .await;
        r.ok().map(|_| String::from_utf8_lossy(&out).into_owned())
    }

    /// Reads one response with a `content-length` body; returns (head, body).
    async fn response(s: &mut TcpStream) -> (String, String) {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        timeout(Duration::from_secs(10), async {
            loop {
                let text = String::from_utf8_lossy(&out).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        return (head.to_ascii_lowercase(), body.to_string());
                    }
                }
                let k = s.read(&mut buf).await.unwrap();
                assert!(k > 0, "closed mid-response: {text}");
                out.extend_from_slice(&buf[..k]);
            }
        })
        .await
        .expect("a response within 10 s")
    }

    async fn send_get(s: &mut TcpStream, path: &str) -> (String, String) {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        response(s).await
    }

    #[tokio::test]
    async fn a_finished_answer_is_flushed_in_full_before_the_listener_returns() {
        let mut srv = Server::start(limits(), Duration::from_secs(10)).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 16];
        s.read_exact(&mut head).await.unwrap();
        // The body (one frame) has ended and its request is done, but the bytes are
        // still in the server's buffers when the drain finishes.
        sleep(Duration::from_millis(200)).await;
        srv.shutdown();
        sleep(Duration::from_millis(200)).await;
        let all = until_closed(&mut s, Duration::from_secs(10)).await.unwrap();
        let body = all.split_once("\r\n\r\n").unwrap().1;
        assert_eq!(body.len(), BIG);
        assert!(matches!(srv.done.await.unwrap(), DrainOutcome::Finished));
    }

    #[tokio::test]
    async fn accepted_sockets_have_nodelay() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(TcpStream::connect(addr));
        let s = accept(&l).await.unwrap();
        assert!(s.nodelay().unwrap());
        client.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn slowloris_headers_are_cut_off_at_the_header_timeout() {
        let lim = ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            ..limits()
        };
        let srv = Server::start(lim, Duration::from_secs(1)).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let t = Instant::now();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        // One header byte every 100 ms, for up to 10 s: each byte is activity, but the
        // header deadline is fixed.
        let mut closed = false;
        while t.elapsed() < Duration::from_secs(10) {
            if s.write_all(b"a").await.is_err() {
                closed = true;
                break;
            }
            if until_closed(&mut s, Duration::from_millis(100))
                .await
                .is_some()
            {
                closed = true;
                break;
            }
        }
        assert!(
            closed,
            "a byte-a-100ms header kept the connection open 10 s"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(900),
            "{:?}",
            t.elapsed()
        );
    }

    #[tokio::test]
    async fn idle_keep_alive_connections_are_closed() {
        let lim = ConnectionLimits {
            idle_timeout: Duration::from_secs(1),
            ..limits()
        };
        let srv = Server::start(lim, Duration::from_secs(1)).await;
        // After a request on a kept-alive connection.
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let (head, body) = send_get(&mut s, "/health").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert_eq!(body, "ok");
        let t = Instant::now();
        let rest = until_closed(&mut s, Duration::from_secs(10)).await;
        assert_eq!(
            rest.as_deref(),
            Some(""),
            "still open 10 s after its request"
        );
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // A connection that never sends anything.
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        assert!(until_closed(&mut s, Duration::from_secs(10))
            .await
            .is_some());
    }

    #[tokio::test]
    async fn a_slow_body_is_answered_408() {
        let lim = ConnectionLimits {
            request_body_timeout: Duration::from_secs(1),
            ..limits()
        };
        let srv = Server::start(lim, Duration::from_secs(1)).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            .await
            .unwrap();
        let t = Instant::now();
        let mut answer = None;
        while t.elapsed() < Duration::from_secs(10) {
            let _ = s.write_all(b" ").await;
            if let Some(a) = until_closed(&mut s, Duration::from_millis(100)).await {
                answer = Some(a);
                break;
            }
        }
        let answer = answer.expect("a byte-a-100ms body was still being read after 10 s");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn over_the_cap_connections_get_503_and_a_freed_slot_serves_again() {
        let lim = ConnectionLimits {
            max_connections: 2,
            ..limits()
        };
        let srv = Server::start(lim, Duration::from_secs(1)).await;
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(srv.addr).await.unwrap();
            assert!(send_get(&mut s, "/health")
                .await
                .0
                .starts_with("http/1.1 200"));
            held.push(s);
        }
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let answer = until_closed(&mut s, Duration::from_secs(10)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("connection: close"), "{answer}");
        let json: serde_json::Value =
            serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
        // Free a slot: a new connection is served again.
        drop(held.pop());
        let t = Instant::now();
        loop {
            let mut s = TcpStream::connect(srv.addr).await.unwrap();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let a = until_closed(&mut s, Duration::from_secs(10)).await.unwrap();
            if a.starts_with("HTTP/1.1 200") {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "{a}");
            sleep(Duration::from_millis(50)).await;
        }
        // The one still held works too.
        assert!(send_get(&mut held[0], "/health")
            .await
            .0
            .starts_with("http/1.1 200"));
    }

    #[tokio::test]
    async fn while_draining_new_requests_get_503_and_in_flight_ones_finish() {
        let mut srv = Server::start(limits(), Duration::from_secs(30)).await;
        // A kept-alive connection from before the drain.
        let mut kept = TcpStream::connect(srv.addr).await.unwrap();
        assert!(send_get(&mut kept, "/health")
            .await
            .0
            .starts_with("http/1.1 200"));
        // A request in flight: its body is half sent.
        let mut busy = TcpStream::connect(srv.addr).await.unwrap();
        busy.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nab")
            .await
            .unwrap();
        sleep(Duration::from_millis(200)).await;
        srv.shutdown();
        sleep(Duration::from_millis(200)).await;
        for mut s in [TcpStream::connect(srv.addr).await.unwrap(), kept] {
            let (head, body) = send_get(&mut s, "/health").await;
            assert!(head.starts_with("http/1.1 503"), "{head}");
            assert!(head.contains("connection: close"), "{head}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["error"]["code"], "shutting_down", "{body}");
            assert_eq!(json["error"]["type"], "service_unavailable", "{body}");
        }
        assert!(
            !srv.done.is_finished(),
            "the drain ended with a request in flight"
        );
        busy.write_all(b"cd").await.unwrap();
        let (head, body) = response(&mut busy).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(head.contains("connection: close"), "{head}");
        assert_eq!(body, "abcd");
        let outcome = timeout(Duration::from_secs(10), srv.done).await.unwrap();
        assert_eq!(outcome.unwrap(), DrainOutcome::Finished);
        assert_eq!(srv.http.refusals(Refusal::Draining), 2);
        assert_eq!(
            srv.http
                .snapshot()
                .get(&(crate::http::LISTENER_ROUTE.into(), 503)),
            Some(&2)
        );
    }

    #[tokio::test]
    async fn past_the_drain_timeout_streams_end_with_an_error_chunk_and_done() {
        let mut srv = Server::start(limits(), Duration::from_millis(300)).await;
        let mut stream = TcpStream::connect(srv.addr).await.unwrap();
        stream
            .write_all(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 1024];
        let k = stream.read(&mut first).await.unwrap();
        assert!(String::from_utf8_lossy(&first[..k]).starts_with("HTTP/1.1 200"));
        let mut hung = TcpStream::connect(srv.addr).await.unwrap();
        hung.write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        sleep(Duration::from_millis(200)).await;
        srv.shutdown();
        let rest = until_closed(&mut stream, Duration::from_secs(10))
            .await
            .unwrap();
        let all = String::from_utf8_lossy(&first[..k]).into_owned() + &rest;
        let err_at = all.find("data: {\"error\":").expect(&all);
        let done_at = all.find("data: [DONE]").expect(&all);
        assert!(err_at < done_at, "{all}");
        assert!(all.contains("\"code\":\"shutdown_timeout\""), "{all}");
        let (head, body) = response(&mut hung).await;
        assert!(head.starts_with("http/1.1 503"), "{head}");
        assert!(body.contains("\"code\":\"shutdown_timeout\""), "{body}");
        let outcome = timeout(Duration::from_secs(10), srv.done).await.unwrap();
        assert_eq!(outcome.unwrap(), DrainOutcome::Abandoned { requests: 2 });
        // Both were cut; only the one not yet answered could still get a 503.
        assert_eq!(srv.http.refusals(Refusal::ShutdownTimeout), 2);
        assert_eq!(
            srv.http
                .snapshot()
                .get(&(crate::http::LISTENER_ROUTE.into(), 503)),
            Some(&1)
        );
    }
}
