//! WebSocket frames seen on an upgraded connection, for the inspector: direction, time, size,
//! kind and the first bytes of each, up to [`MAX_FRAMES`] per connection.
//!
//! The bytes are not buffered or copied on their way: [`Tapped`] reads frame headers as they
//! pass (a few bytes per frame) and copies at most [`FRAME_PREVIEW`] bytes of each payload.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    task::{Context, Poll},
    time::Instant,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Frames recorded per connection; later ones are only counted.
pub const MAX_FRAMES: usize = 200;
/// Payload bytes kept of each frame.
pub const FRAME_PREVIEW: usize = 256;

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    /// Sent by the visitor (else by the local service).
    pub from_visitor: bool,
    /// Milliseconds from the upgrade to the frame's header.
    pub at_ms: u64,
    /// RFC 6455 opcode: 0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong.
    pub opcode: u8,
    /// Whether it ends its message.
    pub fin: bool,
    /// Payload bytes.
    pub size: u64,
    /// The first payload bytes (unmasked), at most [`FRAME_PREVIEW`].
    pub head: Vec<u8>,
}

/// The frames of one connection.
#[derive(Debug)]
pub struct FrameLog {
    started: Instant,
    frames: Mutex<Vec<WsFrame>>,
    dropped: AtomicU64,
}

impl Default for FrameLog {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            frames: Mutex::new(Vec::new()),
            dropped: AtomicU64::new(0),
        }
    }
}

impl FrameLog {
    /// The frames recorded so far, in the order they passed.
    pub fn frames(&self) -> Vec<WsFrame> {
        self.frames.lock().expect("frames lock").clone()
    }

    /// Frames past [`MAX_FRAMES`], counted but not kept.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn push(&self, frame: WsFrame) {
        let mut frames = self.frames.lock().expect("frames lock");
        if frames.len() < MAX_FRAMES {
            frames.push(frame);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the parser is in the byte stream of one direction.
#[derive(Debug)]
enum State {
    /// Gathering a header: `len` bytes of it in `buf`.
    Header { buf: [u8; 14], len: usize },
    /// In a payload: `left` bytes to go.
    Payload { left: u64 },
    /// Not a WebSocket stream after all (a reserved opcode): nothing more is read.
    Lost,
}

/// Reads the frames of one direction.
#[derive(Debug)]
pub struct FrameTap {
    log: std::sync::Arc<FrameLog>,
    from_visitor: bool,
    state: State,
    frame: Option<WsFrame>,
    mask: Option<[u8; 4]>,
    offset: u64,
}

/// Bytes a header needs once its first two bytes are known.
fn header_len(b0_b1: [u8; 2]) -> usize {
    let ext = match b0_b1[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if b0_b1[1] & 0x80 != 0 { 4 } else { 0 }
}

impl FrameTap {
    /// A parser for the frames one side sends.
    pub fn new(log: std::sync::Arc<FrameLog>, from_visitor: bool) -> Self {
        Self {
            log,
            from_visitor,
            state: State::Header {
                buf: [0; 14],
                len: 0,
            },
            frame: None,
            mask: None,
            offset: 0,
        }
    }

    /// Reads the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Lost => return,
                State::Header { buf, len } => {
                    let want = if *len < 2 {
                        2
                    } else {
                        header_len([buf[0], buf[1]])
                    };
                    let n = (want - *len).min(data.len());
                    buf[*len..*len + n].copy_from_slice(&data[..n]);
                    *len += n;
                    data = &data[n..];
                    if *len == 2 && header_len([buf[0], buf[1]]) > 2 {
                        continue;
                    }
                    if *len < want.max(2) {
                        continue;
                    }
                    let buf = *buf;
                    self.start_frame(&buf);
                }
                State::Payload { left } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    let done = *left == 0;
                    if let Some(frame) = &mut self.frame {
                        let room = FRAME_PREVIEW.saturating_sub(frame.head.len()).min(n);
                        for (i, &b) in data[..room].iter().enumerate() {
                            let at = self.offset + i as u64;
                            let m = self.mask.map_or(0, |m| m[(at % 4) as usize]);
                            frame.head.push(b ^ m);
                        }
                    }
                    self.offset += n as u64;
                    data = &data[n..];
                    if done {
                        self.end_frame();
                    }
                }
            }
        }
    }

    fn start_frame(&mut self, h: &[u8; 14]) {
        let opcode = h[0] & 0x0f;
        if matches!(opcode, 3..=7 | 11..=15) {
            self.state = State::Lost;
            return;
        }
        let (size, at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => (
                u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
                10,
            ),
            n => (u64::from(n), 2),
        };
        self.mask = (h[1] & 0x80 != 0).then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        self.offset = 0;
        self.frame = Some(WsFrame {
            from_visitor: self.from_visitor,
            at_ms: self.log.started.elapsed().as_millis() as u64,
            opcode,
            fin: h[0] & 0x80 != 0,
            size,
            head: Vec::new(),
        });
        self.state = State::Payload { left: size };
        if size == 0 {
            self.end_frame();
        }
    }

    fn end_frame(&mut self) {
        if let Some(frame) = self.frame.take() {
            self.log.push(frame);
        }
        self.state = State::Header {
            buf: [0; 14],
            len: 0,
        };
    }
}

/// An I/O object whose reads go through a [`FrameTap`]; writes pass as they are.
pub struct Tapped<T> {
    inner: T,
    tap: FrameTap,
}

impl<T> Tapped<T> {
    /// `inner`, its reads parsed by `tap`.
    pub fn new(inner: T, tap: FrameTap) -> Self {
        Self { inner, tap }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tapped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.tap.feed(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tapped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A frame as a client (masked) or a server sends it.
    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        crate::ws::encode_frame(&mut out, 0x80 | opcode, payload, mask);
        out
    }

    #[test]
    fn frames_are_read_whatever_the_read_sizes() {
        let big = vec![b'x'; 70_000];
        let mut stream = frame(1, b"hello <b>", Some([1, 2, 3, 4]));
        stream.extend(frame(2, &[0, 1, 2], Some([9, 9, 9, 9])));
        stream.extend(frame(9, b"", Some([5, 6, 7, 8])));
        stream.extend(frame(2, &big, Some([7, 0, 7, 0])));
        stream.extend(frame(8, &[0x03, 0xe8], Some([1, 1, 1, 1])));
        for chunk in [1, 3, 7, 4096, stream.len()] {
            let log = Arc::new(FrameLog::default());
            let mut tap = FrameTap::new(log.clone(), true);
            for c in stream.chunks(chunk) {
                tap.feed(c);
            }
            let frames = log.frames();
            let summary: Vec<(u8, u64, &[u8])> = frames
                .iter()
                .map(|f| (f.opcode, f.size, &f.head[..f.head.len().min(9)]))
                .collect();
            assert_eq!(
                summary,
                [
                    (1, 9, &b"hello <b>"[..]),
                    (2, 3, &[0, 1, 2][..]),
                    (9, 0, &[][..]),
                    (2, 70_000, &b"xxxxxxxxx"[..]),
                    (8, 2, &[0x03, 0xe8][..]),
                ],
                "read {chunk} bytes at a time"
            );
            assert_eq!(frames[3].head.len(), FRAME_PREVIEW);
            assert!(frames.iter().all(|f| f.from_visitor && f.fin));
        }
    }

    #[test]
    fn frames_past_the_cap_are_counted_not_kept() {
        let log = Arc::new(FrameLog::default());
        let mut tap = FrameTap::new(log.clone(), false);
        for i in 0..MAX_FRAMES + 5 {
            tap.feed(&frame(1, i.to_string().as_bytes(), None));
        }
        assert_eq!(log.frames().len(), MAX_FRAMES);
        assert_eq!(log.dropped(), 5);
    }

    #[test]
    fn a_stream_that_is_not_websocket_stops_the_parser() {
        let log = Arc::new(FrameLog::default());
        let mut tap = FrameTap::new(log.clone(), false);
        tap.feed(b"GET / HTTP/1.1\r\n\r\n");
        tap.feed(&frame(1, b"later", None));
        assert!(log.frames().len() <= 1, "{:?}", log.frames());
    }
}
