//! The whole-request deadline on reading a request body: a body still arriving when it
//! passes fails with [`RequestBodyTimeout`], which `body_bytes` answers 408.

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The body did not arrive within `--request-body-timeout`.
#[derive(Debug, Clone, Copy)]
pub struct RequestBodyTimeout {
    pub after: Duration,
}

impl std::fmt::Display for RequestBodyTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body did not arrive within {} s (--request-body-timeout)",
            self.after.as_secs_f64()
        )
    }
}

impl std::error::Error for RequestBodyTimeout {}

impl RequestBodyTimeout {
    /// Finds this error anywhere in `err`'s source chain (extractors wrap body errors).
    pub fn find(err: &(dyn std::error::Error + 'static)) -> Option<RequestBodyTimeout> {
        let mut e = Some(err);
        while let Some(cur) = e {
            if let Some(t) = cur.downcast_ref::<RequestBodyTimeout>() {
                return Some(*t);
            }
            e = cur.source();
        }
        None
    }
}

/// `inner` with a deadline `after` from now for its last byte. The timer is only made
/// the first time the body has to wait: most bodies (empty, or already read with the
/// headers) never do, so most requests allocate no timer.
pub struct DeadlineBody<B> {
    inner: B,
    after: Duration,
    due: Instant,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<B> DeadlineBody<B> {
    pub fn new(inner: B, after: Duration) -> Self {
        DeadlineBody {
            inner,
            after,
            due: Instant::now() + after,
            deadline: None,
        }
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Bytes already here win over the deadline.
        if let Poll::Ready(f) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(f.map(|r| r.map_err(Into::into)));
        }
        let due = self.due;
        let deadline = self
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(RequestBodyTimeout {
                after: self.after,
            }))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
