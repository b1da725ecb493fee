//! A WebSocket seen as a byte stream, with a heartbeat.
//!
//! yamux needs `AsyncRead + AsyncWrite`; a WebSocket is a stream of messages. [`WsIo`] reads
//! binary messages back as bytes, and hands written bytes to a writer task that sends whatever
//! has piled up as one binary message (at most [`MAX_CHUNK`] bytes each) and one flush.
//!
//! The writer task is what makes many streams cheap: yamux flushes after every frame, so writing
//! inline would cost one message and one `send` per frame. With the hand-off, frames of all the
//! requests in flight that arrive while the previous batch is on its way leave together, and
//! the peer reads them with one `recv`. Bytes handed over are bounded by [`MAX_OUTBOX`]; a
//! writer past it waits.
//!
//! It also owns liveness: it pings every `interval` and fails reads with `TimedOut` when nothing
//! at all (data, ping or pong) arrived for `timeout`, which ends the yamux session above it.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{ready, Context, Poll, Waker},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{
    stream::{SplitSink, SplitStream},
    task::AtomicWaker,
    SinkExt, Stream, StreamExt,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Interval, MissedTickBehavior, Sleep},
};
use tokio_tungstenite::{
    tungstenite::{
        protocol::{frame::coding::CloseCode, CloseFrame},
        Message,
    },
    WebSocketStream,
};

use crate::protocol::{Heartbeat, MAX_CHUNK};

/// Bytes written but not yet taken by the writer task. Past it, writes wait; with the batch
/// the task is sending, a session holds at most twice this in our buffers.
pub const MAX_OUTBOX: usize = MAX_CHUNK;

/// A WebSocket carrying a byte stream. See the module docs.
pub struct WsIo<S> {
    read: SplitStream<WebSocketStream<S>>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    ping: Interval,
    silence: Pin<Box<Sleep>>,
    timeout: Duration,
    shared: Arc<Shared>,
}

/// State shared with [`Closing`] handles and the writer task.
#[derive(Default)]
struct Shared {
    /// Our side asked to end the session on purpose.
    close_requested: AtomicBool,
    /// The code and reason our Close frame carries (`None`: normal, "stopped").
    close_frame: Mutex<Option<(u16, String)>>,
    /// The peer ended the session on purpose (sent a Close frame).
    peer_closed: AtomicBool,
    /// The code and reason of the peer's Close frame, if it gave them.
    peer_close: Mutex<Option<(u16, String)>>,
    outbox: Mutex<Outbox>,
    /// The writer task, when it waits for work.
    writer: AtomicWaker,
}

/// Work for the writer task, and what it tells writers back.
#[derive(Default)]
struct Outbox {
    data: BytesMut,
    ping: bool,
    /// `poll_shutdown` was called, or the [`WsIo`] was dropped (`dropped`).
    shutdown: bool,
    dropped: bool,
    /// The writer task has ended; later writes fail.
    finished: bool,
    /// Why the writer task ended, if it failed.
    error: Option<(io::ErrorKind, String)>,
    /// A writer waiting for room, or for the shutdown to complete.
    blocked: Option<Waker>,
}

impl Outbox {
    fn failure(&self) -> io::Error {
        match &self.error {
            Some((kind, msg)) => io::Error::new(*kind, msg.clone()),
            None => io::ErrorKind::BrokenPipe.into(),
        }
    }

    fn wake_blocked(&mut self) {
        if let Some(w) = self.blocked.take() {
            w.wake();
        }
    }
}

/// A handle to end a [`WsIo`] deliberately and to learn whether the peer did.
///
/// A deliberate end is a WebSocket Close frame; a dropped connection is not. The server uses the
/// difference to free a stopped tunnel's name at once instead of holding it for a reconnect.
#[derive(Clone)]
pub struct Closing(Arc<Shared>);

impl Closing {
    /// Sends a Close frame at the next chance; reads then end once the peer answers.
    pub fn close(&self) {
        self.0.close_requested.store(true, Ordering::SeqCst);
        self.0.writer.wake();
    }

    /// Like [`close`](Self::close), with a close code (4000–4999, see
    /// [`protocol`](crate::protocol)) and a reason for the peer to show. The reason is cut to
    /// the 123 bytes a Close frame holds.
    pub fn close_with(&self, code: u16, reason: &str) {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        *self.0.close_frame.lock().expect("close lock") = Some((code, reason[..end].to_owned()));
        self.close();
    }

    /// Whether the peer closed the session with a Close frame.
    pub fn peer_closed(&self) -> bool {
        self.0.peer_closed.load(Ordering::SeqCst)
    }

    /// The code and reason of the peer's Close frame, if it sent one with them.
    pub fn peer_close(&self) -> Option<(u16, String)> {
        self.0.peer_close.lock().expect("close lock").clone()
    }
}

impl<S> WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Wraps an established WebSocket and spawns its writer task on the current runtime.
    pub fn new(ws: WebSocketStream<S>, heartbeat: Heartbeat) -> Self {
        let mut ping =
            tokio::time::interval_at(Instant::now() + heartbeat.interval, heartbeat.interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let (sink, read) = ws.split();
        let shared = Arc::<Shared>::default();
        tokio::spawn(write_task(sink, shared.clone()));
        Self {
            read,
            pending: Bytes::new(),
            ping,
            silence: Box::pin(tokio::time::sleep(heartbeat.timeout)),
            timeout: heartbeat.timeout,
            shared,
        }
    }
}

impl<S> WsIo<S> {
    /// A handle to close this session on purpose, or to see whether the peer did.
    pub fn closing(&self) -> Closing {
        Closing(self.shared.clone())
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.shared.outbox.lock().expect("outbox lock")
    }
}

impl<S> Drop for WsIo<S> {
    fn drop(&mut self) {
        let mut out = self.outbox();
        out.dropped = true;
        out.shutdown = true;
        drop(out);
        self.shared.writer.wake();
    }
}

/// What the writer task takes from the [`Outbox`] in one go.
struct Batch {
    data: Bytes,
    ping: bool,
    close: bool,
    shutdown: bool,
    dropped: bool,
}

/// Sends what writers hand over, in batches, until the session is shut down or fails.
async fn write_task<S>(mut sink: SplitSink<WebSocketStream<S>, Message>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut close_sent = false;
    let result: Result<(), tokio_tungstenite::tungstenite::Error> = async {
        loop {
            // Take whatever piled up since the last send. The wake-up that brings us here waits
            // its turn in the runtime's queue, so frames written meanwhile join the batch; a
            // `yield_now` here to gather more would wait for the whole runtime to run dry, which
            // under load stalls every stream in lockstep and leaves cores idle (docs/benchmarks.md).
            let batch = std::future::poll_fn(|cx| {
                shared.writer.register(cx.waker());
                let close = !close_sent && shared.close_requested.load(Ordering::SeqCst);
                let mut out = shared.outbox.lock().expect("outbox lock");
                if out.data.is_empty() && !out.ping && !out.shutdown && !close {
                    return Poll::Pending;
                }
                let batch = Batch {
                    data: std::mem::take(&mut out.data).freeze(),
                    ping: std::mem::take(&mut out.ping),
                    close,
                    shutdown: out.shutdown,
                    dropped: out.dropped,
                };
                // Room again: a writer blocked on a full outbox can go on.
                out.wake_blocked();
                Poll::Ready(batch)
            })
            .await;
            if batch.dropped {
                // Nobody reads or writes any more: closing the socket is all that is left.
                return Ok(());
            }
            let mut data = batch.data;
            while !data.is_empty() {
                let n = data.len().min(MAX_CHUNK);
                sink.feed(Message::Binary(data.split_to(n))).await?;
            }
            if batch.ping {
                sink.feed(Message::Ping(Bytes::new())).await?;
            }
            if batch.close {
                let given = shared.close_frame.lock().expect("close lock").take();
                let frame = match given {
                    Some((code, reason)) => CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    },
                    None => CloseFrame {
                        code: CloseCode::Normal,
                        reason: "stopped".into(),
                    },
                };
                sink.feed(Message::Close(Some(frame))).await?;
                close_sent = true;
            }
            sink.flush().await?;
            if batch.shutdown {
                return sink.close().await;
            }
        }
    }
    .await;
    let mut out = shared.outbox.lock().expect("outbox lock");
    out.finished = true;
    if let Err(e) = result {
        let e = to_io(e);
        // A session already closed is not worth reporting to the next writer as a failure.
        out.error = Some((e.kind(), e.to_string()));
    }
    out.wake_blocked();
}

fn to_io(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    use tokio_tungstenite::tungstenite::Error;
    match e {
        Error::Io(e) => e,
        Error::ConnectionClosed | Error::AlreadyClosed => io::ErrorKind::BrokenPipe.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<S> AsyncRead for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.silence.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("peer silent for {:?}", this.timeout),
                )));
            }
            if this.ping.poll_tick(cx).is_ready() {
                this.outbox().ping = true;
                this.shared.writer.wake();
            }
            match ready!(Pin::new(&mut this.read).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(msg)) => {
                    let deadline = Instant::now() + this.timeout;
                    this.silence.as_mut().reset(deadline);
                    match msg {
                        Message::Binary(data) => this.pending = data,
                        Message::Close(frame) => {
                            if let Some(f) = frame {
                                *this.shared.peer_close.lock().expect("close lock") =
                                    Some((u16::from(f.code), f.reason.to_string()));
                            }
                            this.shared.peer_closed.store(true, Ordering::SeqCst);
                            return Poll::Ready(Ok(()));
                        }
                        Message::Text(_) => {
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "unexpected text message on a ggrok session",
                            )))
                        }
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                    }
                }
            }
        }
    }
}

impl<S> AsyncWrite for WsIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut out = self.outbox();
        if out.finished || out.shutdown {
            return Poll::Ready(Err(out.failure()));
        }
        let room = MAX_OUTBOX.saturating_sub(out.data.len());
        if room == 0 {
            out.blocked = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(room);
        let was_empty = out.data.is_empty();
        out.data.extend_from_slice(&buf[..n]);
        drop(out);
        if was_empty {
            self.shared.writer.wake();
        }
        Poll::Ready(Ok(n))
    }

    /// Written bytes are the writer task's from here on: they leave with its next batch.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let out = self.outbox();
        if out.finished && out.error.is_some() {
            return Poll::Ready(Err(out.failure()));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut out = self.outbox();
        if out.finished {
            // A session that ended before or during the close is closed all the same.
            return match &out.error {
                Some((io::ErrorKind::BrokenPipe, _)) | None => Poll::Ready(Ok(())),
                Some(_) => Poll::Ready(Err(out.failure())),
            };
        }
        out.shutdown = true;
        out.blocked = Some(cx.waker().clone());
        drop(out);
        self.shared.writer.wake();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::protocol::Role;

    async fn pair(hb: Heartbeat) -> (WsIo<tokio::io::DuplexStream>, WsIo<tokio::io::DuplexStream>) {
        // A tiny duplex buffer checks correctness under constant backpressure.
        let (a, b) = tokio::io::duplex(64);
        let cfg = Some(crate::protocol::websocket_config());
        let a = WebSocketStream::from_raw_socket(a, Role::Client, cfg).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, cfg).await;
        (WsIo::new(a, hb), WsIo::new(b, hb))
    }

    #[tokio::test]
    async fn bytes_cross_in_both_directions() {
        let (mut a, mut b) = pair(Heartbeat::default()).await;
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let expect = data.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&data).await.unwrap();
            a.flush().await.unwrap();
            a.shutdown().await.unwrap();
            a
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, expect);
        writer.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let hb = Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        };
        let (_a, mut b) = pair(hb).await;
        // `_a` is never polled, so it never answers pings: `b` must give up on its own.
        let err = b.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn pings_keep_a_quiet_session_alive() {
        let hb = Heartbeat {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        };
        let (mut a, mut b) = pair(hb).await;
        // Both sides read (and so answer pings) but nobody sends data for 10 timeouts.
        let (mut ba, mut bb) = ([0u8; 1], [0u8; 1]);
        let quiet = tokio::time::timeout(Duration::from_secs(30), async {
            tokio::join!(a.read(&mut ba), b.read(&mut bb))
        })
        .await;
        assert!(
            quiet.is_err(),
            "a session with a live peer must not time out"
        );
    }

    #[tokio::test]
    async fn a_deliberate_close_is_told_apart_from_a_drop() {
        let (mut a, mut b) = pair(Heartbeat::default()).await;
        let (ca, cb) = (a.closing(), b.closing());
        ca.close();
        // `a` sends its Close frame while it reads.
        let closer = tokio::spawn(async move {
            let _ = a.read(&mut [0u8; 16]).await;
        });
        let mut buf = Vec::new();
        b.read_to_end(&mut buf).await.unwrap();
        drop(b);
        closer.await.unwrap();
        assert!(cb.peer_closed(), "b saw a deliberate close");
        assert!(!ca.peer_closed());

        let (a, mut b) = pair(Heartbeat::default()).await;
        let cb = b.closing();
        drop(a);
        let _ = b.read(&mut [0u8; 16]).await;
        assert!(
            !cb.peer_closed(),
            "a dropped connection is no deliberate close"
        );
    }

    #[tokio::test]
    async fn text_message_is_rejected() {
        let (a, b) = tokio::io::duplex(1024);
        let cfg = Some(crate::protocol::websocket_config());
        let mut a = WebSocketStream::from_raw_socket(a, Role::Client, cfg).await;
        let b = WebSocketStream::from_raw_socket(b, Role::Server, cfg).await;
        let mut b = WsIo::new(b, Heartbeat::default());
        futures_util::SinkExt::send(&mut a, Message::text("hello"))
            .await
            .unwrap();
        let err = b.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn oversized_message_is_rejected() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut big = crate::protocol::websocket_config();
        big = big.max_message_size(None).max_frame_size(None);
        let mut a = WebSocketStream::from_raw_socket(a, Role::Client, Some(big)).await;
        let b = WebSocketStream::from_raw_socket(
            b,
            Role::Server,
            Some(crate::protocol::websocket_config()),
        )
        .await;
        let mut b = WsIo::new(b, Heartbeat::default());
        let sender = tokio::spawn(async move {
            let _ = futures_util::SinkExt::send(
                &mut a,
                Message::binary(vec![0u8; 2 * crate::protocol::MAX_MESSAGE]),
            )
            .await;
        });
        let err = b.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        sender.abort();
    }
}
