//! A WebSocket seen as a byte stream, with a heartbeat.
//!
//! yamux needs `AsyncRead + AsyncWrite`; a WebSocket is a stream of messages. [`WsIo`] writes each
//! chunk as one binary message (at most [`MAX_CHUNK`] bytes) and reads binary messages back as
//! bytes. It also owns liveness: it pings every `interval` and fails reads with `TimedOut` when
//! nothing at all (data, ping or pong) arrived for `timeout`, which ends the yamux session above it.

use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Buf, Bytes};
use futures_util::{task::AtomicWaker, Sink, Stream};
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

/// A WebSocket carrying a byte stream. See the module docs.
pub struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// The unread rest of the last binary message.
    pending: Bytes,
    ping: Interval,
    ping_due: bool,
    silence: Pin<Box<Sleep>>,
    timeout: Duration,
    shared: Arc<Shared>,
    close_sent: bool,
}

/// State shared with [`Closing`] handles.
#[derive(Default)]
struct Shared {
    /// Our side asked to end the session on purpose.
    close_requested: AtomicBool,
    /// The peer ended the session on purpose (sent a Close frame).
    peer_closed: AtomicBool,
    waker: AtomicWaker,
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
        self.0.waker.wake();
    }

    /// Whether the peer closed the session with a Close frame.
    pub fn peer_closed(&self) -> bool {
        self.0.peer_closed.load(Ordering::SeqCst)
    }
}

impl<S> WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Wraps an established WebSocket.
    pub fn new(ws: WebSocketStream<S>, heartbeat: Heartbeat) -> Self {
        let mut ping =
            tokio::time::interval_at(Instant::now() + heartbeat.interval, heartbeat.interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self {
            ws,
            pending: Bytes::new(),
            ping,
            ping_due: false,
            silence: Box::pin(tokio::time::sleep(heartbeat.timeout)),
            timeout: heartbeat.timeout,
            shared: Arc::default(),
            close_sent: false,
        }
    }

    /// A handle to close this session on purpose, or to see whether the peer did.
    pub fn closing(&self) -> Closing {
        Closing(self.shared.clone())
    }

    /// Sends the Close frame once it was requested and the socket can take it.
    fn poll_close_request(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        self.shared.waker.register(cx.waker());
        if self.close_sent || !self.shared.close_requested.load(Ordering::SeqCst) {
            return Ok(());
        }
        if let Poll::Ready(r) = Pin::new(&mut self.ws).poll_ready(cx) {
            r.map_err(to_io)?;
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: "stopped".into(),
            };
            Pin::new(&mut self.ws)
                .start_send(Message::Close(Some(frame)))
                .map_err(to_io)?;
            self.close_sent = true;
            if let Poll::Ready(r) = Pin::new(&mut self.ws).poll_flush(cx) {
                r.map_err(to_io)?;
            }
        }
        Ok(())
    }

    /// Sends a ping if one is due and the socket can take it; never blocks reads on it.
    fn poll_ping(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.ping.poll_tick(cx).is_ready() {
            self.ping_due = true;
        }
        if self.ping_due {
            if let Poll::Ready(r) = Pin::new(&mut self.ws).poll_ready(cx) {
                r.map_err(to_io)?;
                Pin::new(&mut self.ws)
                    .start_send(Message::Ping(Bytes::new()))
                    .map_err(to_io)?;
                self.ping_due = false;
                // Push it out now; a pending flush is retried by the next read or write.
                if let Poll::Ready(r) = Pin::new(&mut self.ws).poll_flush(cx) {
                    r.map_err(to_io)?;
                }
            }
        }
        Ok(())
    }
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
            this.poll_ping(cx)?;
            this.poll_close_request(cx)?;
            match ready!(Pin::new(&mut this.ws).poll_next(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                Some(Ok(msg)) => {
                    let deadline = Instant::now() + this.timeout;
                    this.silence.as_mut().reset(deadline);
                    match msg {
                        Message::Binary(data) => this.pending = data,
                        Message::Close(_) => {
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

use std::future::Future;

impl<S> AsyncWrite for WsIo<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ws = &mut self.ws;
        ready!(Pin::new(&mut *ws).poll_ready(cx)).map_err(to_io)?;
        let n = buf.len().min(MAX_CHUNK);
        Pin::new(ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
            .map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws).poll_flush(cx).map_err(to_io)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match ready!(Pin::new(&mut self.ws).poll_close(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(e) => match to_io(e) {
                e if e.kind() == io::ErrorKind::BrokenPipe => Poll::Ready(Ok(())),
                e => Poll::Ready(Err(e)),
            },
        }
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
