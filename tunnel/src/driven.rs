//! HTTP/1.1 client connections driven by the task that uses them.
//!
//! hyper's client splits a connection into a [`SendRequest`] handle and a connection future that
//! must be polled for anything to move. The usual way to poll it is a task per connection; on the
//! request path that costs two task hand-offs per request (to the connection's task and back),
//! which on a busy runtime are wake-ups and, across threads, context switches. Here the task that
//! sends a request polls the connection itself: while it waits for the response head
//! ([`DrivenConn::send`]), then while the response body is read ([`DrivenBody`]), which hands the
//! connection back for the next request once the body has ended.
//!
//! The client uses this for its connections to the local service. See docs/benchmarks.md for
//! what it saved.

use std::{
    future::{poll_fn, Future},
    pin::{pin, Pin},
    sync::Mutex,
    task::{ready, Context, Poll, Waker},
};

use bytes::Bytes;
use http::{Request, Response};
use hyper::{
    body::{Frame, Incoming},
    client::conn::{http1::SendRequest, TrySendError},
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http_util::{Body, BoxError};

/// An HTTP/1.1 connection's future (hyper does not name the type `with_upgrades` returns).
pub type ConnFuture = dyn Future<Output = hyper::Result<()>> + Send;

/// An HTTP/1.1 client connection whose holder drives it.
pub struct DrivenConn {
    sender: SendRequest<Body>,
    /// The connection, unless it has ended or was [detached](Self::detach).
    conn: Option<Pin<Box<ConnFuture>>>,
}

impl std::fmt::Debug for DrivenConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrivenConn")
            .field("driven_here", &self.conn.is_some())
            .finish()
    }
}

impl AsMut<DrivenConn> for DrivenConn {
    fn as_mut(&mut self) -> &mut DrivenConn {
        self
    }
}

impl DrivenConn {
    /// Starts HTTP/1.1 (upgrades allowed) on `io`; sends nothing yet.
    pub async fn handshake<T>(io: T) -> hyper::Result<Self>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        Ok(Self {
            sender,
            conn: Some(Box::pin(conn.with_upgrades())),
        })
    }

    /// Polls the connection if it is driven here; `false` once it has ended.
    pub fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = self.conn.as_mut() else {
            return !self.sender.is_closed();
        };
        match conn.as_mut().poll(cx) {
            Poll::Pending => true,
            Poll::Ready(r) => {
                if let Err(e) = r {
                    tracing::debug!(%e, "HTTP/1.1 connection ended with an error");
                }
                self.conn = None;
                false
            }
        }
    }

    /// Waits until the connection can take the next request, driving it meanwhile (the previous
    /// exchange may still be finishing); `false` if it has ended instead.
    pub async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            let alive = self.drive(cx);
            match self.sender.poll_ready(cx) {
                Poll::Ready(r) => Poll::Ready(r.is_ok()),
                Poll::Pending if alive => Poll::Pending,
                Poll::Pending => Poll::Ready(false),
            }
        })
        .await
    }

    /// Whether the connection could take a request right now: nothing in flight and not closed.
    /// Polls it once (without a waker), so a connection closed by its peer is seen as closed.
    pub fn is_idle(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        self.drive(&mut cx) && matches!(self.sender.poll_ready(&mut cx), Poll::Ready(Ok(())))
    }

    /// Takes the connection's future out, for a task to drive it to its end (an exchange that
    /// must finish without us, an upgrade that needs the connection to hand over its I/O).
    pub fn detach(&mut self) -> Option<Pin<Box<ConnFuture>>> {
        self.conn.take()
    }

    /// Sends `req` and drives the connection until the response head arrives. A request that the
    /// connection never took (it had closed) comes back inside the error, to be sent elsewhere.
    pub async fn send(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, TrySendError<Request<Body>>> {
        let mut sending = pin!(self.sender.try_send_request(req));
        let mut conn = self.conn.take();
        let sent = poll_fn(|cx| {
            if let Some(c) = conn.as_mut() {
                if let Poll::Ready(r) = c.as_mut().poll(cx) {
                    if let Err(e) = r {
                        tracing::debug!(%e, "HTTP/1.1 connection ended with an error");
                    }
                    conn = None;
                }
            }
            sending.as_mut().poll(cx)
        })
        .await;
        self.conn = conn;
        sent
    }
}

/// Called with the connection once its response body has ended.
type Done<K> = Box<dyn FnOnce(K) + Send>;

/// A response body that drives its connection while it is read and gives the connection (`K`,
/// which holds a [`DrivenConn`]) to `done` once the body has ended: read to its end, or dropped
/// right after its last byte. A body dropped before its end drops the connection, which is then
/// mid-message and cannot be reused.
pub struct DrivenBody<K> {
    inner: Body,
    /// Only ever used through `&mut` (`get_mut`, no locking): the mutex makes the body `Sync`, as
    /// boxed bodies must be, which the connection future is not.
    held: Mutex<Option<(K, Done<K>)>>,
}

impl<K: AsMut<DrivenConn>> DrivenBody<K> {
    /// Wraps `inner`, the body of a response that came over `conn`.
    pub fn new(inner: Body, conn: K, done: impl FnOnce(K) + Send + 'static) -> Self {
        let mut body = Self {
            inner,
            held: Mutex::new(Some((conn, Box::new(done)))),
        };
        if http_body::Body::is_end_stream(&body.inner) {
            // Nothing to read (HEAD, 204, 304, empty): hyper may never poll this body.
            body.finish();
        }
        body
    }

    fn held(&mut self) -> &mut Option<(K, Done<K>)> {
        self.held.get_mut().unwrap_or_else(|p| p.into_inner())
    }

    fn finish(&mut self) {
        if let Some((conn, done)) = self.held().take() {
            done(conn);
        }
    }
}

impl<K: AsMut<DrivenConn> + Unpin> http_body::Body for DrivenBody<K> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some((conn, _)) = this.held().as_mut() {
            conn.as_mut().drive(cx);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if frame.is_none() || this.inner.is_end_stream() {
            this.finish();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl<K> Drop for DrivenBody<K> {
    fn drop(&mut self) {
        // Read to its end but not seen ending (hyper stops at the length it knew): reusable.
        if http_body::Body::is_end_stream(&self.inner) {
            if let Some((conn, done)) = self.held.get_mut().ok().and_then(Option::take) {
                done(conn);
            }
        }
    }
}
