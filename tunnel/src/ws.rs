//! The WebSocket a session runs on: the client's opening handshake, and the framing (RFC 6455
//! §5) once either side's handshake is done.
//!
//! The multiplexer needs little of WebSocket: binary messages of whole frames, pings, and the
//! Close frame. This framing does that much with no copy a payload does not need:
//! - A read goes into the spare capacity of one buffer (never zeroed first), and a message's
//!   payload is a slice of that buffer, unmasked in place.
//! - A written message's payload is the outbox's own bytes (masked in place by a client), sent
//!   behind its header with one vectored write for many messages.
//! - An idle connection keeps no read buffer.
//!
//! tungstenite still serves the tests and tools that speak WebSocket from the outside, and
//! [`handshake`] uses its request helpers; the peers' interoperation is tested both ways.

use std::{
    collections::VecDeque,
    io::{self, IoSlice},
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{ready, Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf},
    net::TcpStream,
};
use tokio_rustls::client::TlsStream;
use tokio_util::{either::Either, io::poll_read_buf};

use crate::protocol::{MAX_MESSAGE, READ_BUFFER};

/// Which end of the WebSocket we are: a client masks what it sends, a server what it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Masks what it sends.
    Client,
    /// Reads masked frames only.
    Server,
}

/// A connection whose WebSocket handshake is done, with whatever was read past the handshake.
pub struct Socket<S> {
    io: S,
    role: Role,
    read: BytesMut,
}

impl<S> Socket<S> {
    /// A socket right after a handshake that read nothing past its own end (a server's, which
    /// hyper did).
    pub fn new(io: S, role: Role) -> Self {
        Self::with_read(io, role, Bytes::new())
    }

    /// A socket whose first bytes were already read, past the end of the handshake.
    pub fn with_read(io: S, role: Role, read: Bytes) -> Self {
        Self {
            io,
            role,
            read: BytesMut::from(read),
        }
    }

    /// The reading and the writing half.
    pub(crate) fn split(self) -> (Reader<ReadHalf<S>>, Writer<WriteHalf<S>>)
    where
        S: AsyncRead + AsyncWrite,
    {
        let (r, w) = tokio::io::split(self.io);
        let reader = Reader {
            io: r,
            role: self.role,
            buf: self.read,
            wanted: 0,
            fragments: None,
            eof: false,
        };
        let writer = Writer {
            vectored: w.is_write_vectored(),
            io: w,
            role: self.role,
            queue: VecDeque::new(),
            sent: 0,
        };
        (reader, writer)
    }
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;
/// Most payload of a control frame (Close, Ping, Pong).
const MAX_CONTROL: usize = 125;

/// A message read from the peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Message {
    Binary(Bytes),
    /// A text message, which the multiplexer never sends: its content is not kept.
    Text,
    Ping(Bytes),
    Pong,
    /// The peer's Close frame, with its code and reason if it gave them.
    Close(Option<(u16, String)>),
}

/// Reads messages: whole frames from one growing buffer, fragments joined.
pub(crate) struct Reader<R> {
    io: R,
    role: Role,
    buf: BytesMut,
    /// Bytes the frame at the front of `buf` needs in all, once known.
    wanted: usize,
    /// The parts so far of a fragmented binary message.
    fragments: Option<BytesMut>,
    eof: bool,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// The next message, `None` at a clean end of the connection (between messages).
    pub(crate) fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Message, String>>> {
        loop {
            match self.parse() {
                Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(e))),
            }
            if self.eof {
                return Poll::Ready(if self.buf.is_empty() && self.fragments.is_none() {
                    None
                } else {
                    Some(Err(
                        "the connection closed in the middle of a message".to_owned()
                    ))
                });
            }
            // One read may complete the frame at the front and bring the next one's header.
            let missing = self.wanted.saturating_sub(self.buf.len());
            self.buf.reserve(missing.max(READ_BUFFER));
            match poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf) {
                Poll::Pending => {
                    if self.buf.is_empty() {
                        // Idle: an idle session keeps no read buffer.
                        self.buf = BytesMut::new();
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Some(Err(format!("connection error: {e}"))))
                }
            }
        }
    }

    /// What was read and not yet taken: after an error, the frame that broke the protocol.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the next whole message out of the buffer, if it is all there.
    fn parse(&mut self) -> Result<Option<Message>, String> {
        loop {
            let Some(frame) = parse_header(&self.buf, self.role)? else {
                self.wanted = 14;
                return Ok(None);
            };
            let total = frame.header_len + frame.len;
            if self.buf.len() < total {
                self.wanted = total;
                return Ok(None);
            }
            self.wanted = 0;
            self.buf.advance(frame.header_len);
            let mut payload = self.buf.split_to(frame.len);
            if let Some(key) = frame.mask {
                apply_mask(&mut payload, key);
            }
            match frame.opcode {
                OP_BINARY | OP_CONTINUATION => {
                    let whole = match (frame.opcode, self.fragments.as_mut()) {
                        (OP_BINARY, Some(_)) => {
                            return Err("a new message began inside a fragmented one".into())
                        }
                        (OP_BINARY, None) if frame.fin => payload,
                        (OP_BINARY, None) => {
                            self.fragments = Some(payload);
                            continue;
                        }
                        (_, None) => {
                            return Err("a continuation frame with no message to continue".into())
                        }
                        (_, Some(parts)) => {
                            if parts.len() + payload.len() > MAX_MESSAGE {
                                return Err(too_long());
                            }
                            parts.extend_from_slice(&payload);
                            if !frame.fin {
                                continue;
                            }
                            self.fragments.take().expect("fragments")
                        }
                    };
                    return Ok(Some(Message::Binary(whole.freeze())));
                }
                OP_TEXT => return Ok(Some(Message::Text)),
                OP_CLOSE => {
                    return match payload.len() {
                        0 => Ok(Some(Message::Close(None))),
                        1 => Err("a Close frame with a one-byte payload".into()),
                        _ => {
                            let code = u16::from_be_bytes([payload[0], payload[1]]);
                            let reason = String::from_utf8_lossy(&payload[2..]).into_owned();
                            Ok(Some(Message::Close(Some((code, reason)))))
                        }
                    }
                }
                OP_PING => return Ok(Some(Message::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Message::Pong)),
                other => unreachable!("opcode {other} passed parse_header"),
            }
        }
    }
}

fn too_long() -> String {
    format!("a WebSocket message of more than {MAX_MESSAGE} bytes")
}

/// A frame's header, as far as the buffer holds it.
struct Header {
    fin: bool,
    opcode: u8,
    mask: Option<[u8; 4]>,
    header_len: usize,
    len: usize,
}

/// Decodes the frame header at the front of `buf`: `None` until it is all there, an error for
/// a header that breaks the protocol or a payload over our limits.
fn parse_header(buf: &[u8], role: Role) -> Result<Option<Header>, String> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        return Err("a WebSocket frame with reserved bits set (no extension was agreed)".into());
    }
    let opcode = b0 & 0x0f;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(format!(
            "a WebSocket frame with the unknown opcode {opcode}"
        ));
    }
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err("an unmasked frame from the client".into()),
        (Role::Client, true) => return Err("a masked frame from the server".into()),
        _ => {}
    }
    let Some((len, header_len)) = announced(buf) else {
        return Ok(None);
    };
    if opcode & 0x08 != 0 {
        if len > MAX_CONTROL as u64 || !fin {
            return Err("a WebSocket control frame that is fragmented or too long".into());
        }
    } else if len > MAX_MESSAGE as u64 {
        return Err(too_long());
    }
    let mask = masked.then(|| buf[header_len - 4..header_len].try_into().expect("4 bytes"));
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len,
        len: len as usize,
    }))
}

/// The payload length the frame header at the front of `buf` announces, and the header's own
/// length, once the whole header is there.
fn announced(buf: &[u8]) -> Option<(u64, usize)> {
    let [_, b1, ..] = *buf else {
        return None;
    };
    let (len, at) = match b1 & 0x7f {
        126 => {
            let n = buf.get(2..4)?;
            (u64::from(u16::from_be_bytes([n[0], n[1]])), 4)
        }
        127 => (u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    let at = at + if b1 & 0x80 != 0 { 4 } else { 0 };
    (buf.len() >= at).then_some((len, at))
}

/// Whether `buf` holds less than the whole frame its header announces (or less than a header).
#[cfg(feature = "fuzzing")]
pub(crate) fn cut_short(buf: &[u8]) -> bool {
    announced(buf).is_none_or(|(len, at)| (buf.len() as u64) < at as u64 + len)
}

/// XORs `buf` with the repeated 4-byte `key`, eight bytes at a time.
fn apply_mask(buf: &mut [u8], key: [u8; 4]) {
    let [a, b, c, d] = key;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_ne_bytes(w.try_into().expect("8 bytes")) ^ wide;
        w.copy_from_slice(&x.to_ne_bytes());
    }
    // The words covered a multiple of 4 bytes, so the key starts over here.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

/// Payloads shorter than this are copied behind their header when the connection cannot take
/// vectored writes, so that a message is one write.
const COALESCE: usize = 16 * 1024;

/// A frame header: at most 2 + 8 bytes of length + 4 of mask key.
struct Head {
    bytes: [u8; 14],
    len: u8,
}

impl Head {
    /// The header of a frame whose first byte is `b0` (FIN, reserved bits, opcode), with `len`
    /// bytes of payload masked with `mask`.
    fn new(b0: u8, len: usize, mask: Option<[u8; 4]>) -> Self {
        let mut head = Head {
            bytes: [0; 14],
            len: 2,
        };
        head.bytes[0] = b0;
        if len < 126 {
            head.bytes[1] = len as u8;
        } else if let Ok(n) = u16::try_from(len) {
            head.bytes[1] = 126;
            head.bytes[2..4].copy_from_slice(&n.to_be_bytes());
            head.len = 4;
        } else {
            head.bytes[1] = 127;
            head.bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            head.len = 10;
        }
        if let Some(key) = mask {
            head.bytes[1] |= 0x80;
            let at = usize::from(head.len);
            head.bytes[at..at + 4].copy_from_slice(&key);
            head.len += 4;
        }
        head
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// Appends a whole frame to `out`, any first byte allowed: for tests and fuzzing, which play a
/// peer that may break the protocol.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn encode_frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.extend_from_slice(Head::new(b0, payload.len(), mask).bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[start..], key);
    }
}

enum Chunk {
    Head(Head),
    Data(Bytes),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Head(h) => h.bytes(),
            Chunk::Data(d) => d,
        }
    }
}

/// Writes messages: queued as headers and payloads, sent with vectored writes.
pub(crate) struct Writer<W> {
    io: W,
    role: Role,
    vectored: bool,
    queue: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    sent: usize,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Queues a binary message.
    pub(crate) fn binary(&mut self, payload: BytesMut) {
        self.frame(OP_BINARY, payload);
    }

    pub(crate) fn ping(&mut self) {
        self.frame(OP_PING, BytesMut::new());
    }

    /// Answers a ping with its payload.
    pub(crate) fn pong(&mut self, payload: &[u8]) {
        self.frame(OP_PONG, BytesMut::from(payload));
    }

    /// Queues a Close frame; `reason` is cut to what a control frame holds.
    pub(crate) fn close(&mut self, code: u16, reason: &str) {
        let mut payload = BytesMut::with_capacity(MAX_CONTROL);
        payload.extend_from_slice(&code.to_be_bytes());
        let mut end = reason.len().min(MAX_CONTROL - 2);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.frame(OP_CLOSE, payload);
    }

    fn frame(&mut self, opcode: u8, mut payload: BytesMut) {
        let n = payload.len();
        // A client masks with a fresh key per frame (RFC 6455 §5.3).
        let mask = (self.role == Role::Client).then(rand::random::<[u8; 4]>);
        let head = Head::new(0x80 | opcode, n, mask);
        if let Some(key) = mask {
            apply_mask(&mut payload, key);
        }
        if !self.vectored && n < COALESCE {
            let mut one = BytesMut::with_capacity(usize::from(head.len) + n);
            one.extend_from_slice(head.bytes());
            one.extend_from_slice(&payload);
            self.queue.push_back(Chunk::Data(one.freeze()));
            return;
        }
        self.queue.push_back(Chunk::Head(head));
        if n > 0 {
            self.queue.push_back(Chunk::Data(payload.freeze()));
        }
    }

    /// Writes everything queued, then flushes the connection.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.queue.is_empty() {
            let n = if self.vectored {
                let mut slices = [IoSlice::new(&[]); 64];
                let mut count = 0;
                for (i, chunk) in self.queue.iter().take(slices.len()).enumerate() {
                    let bytes = chunk.bytes();
                    slices[i] = IoSlice::new(if i == 0 { &bytes[self.sent..] } else { bytes });
                    count += 1;
                }
                ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count]))?
            } else {
                let front = self.queue.front().expect("not empty").bytes();
                ready!(Pin::new(&mut self.io).poll_write(cx, &front[self.sent..]))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let left = self
                .queue
                .front()
                .expect("written bytes were queued")
                .bytes()
                .len()
                - self.sent;
            if n < left {
                self.sent += n;
                return;
            }
            n -= left;
            self.sent = 0;
            self.queue.pop_front();
        }
    }
}

/// A client's connection to a server: TCP, or TLS on TCP.
pub type ClientStream = Either<TcpStream, TlsStream<TcpStream>>;

/// Why a client's opening handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// The server answered, but not with a WebSocket: its answer, body included (at most 64 KiB).
    Refused(Response<Bytes>),
    /// Anything else: the connection, TLS, or an answer that is not a valid `101`.
    Failed(String),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Refused(resp) => write!(f, "the server answered {}", resp.status()),
            HandshakeError::Failed(why) => f.write_str(why),
        }
    }
}

fn failed(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Failed(e.to_string())
}

/// The system's root certificates, loaded once.
pub fn native_roots() -> Arc<rustls::ClientConfig> {
    static ROOTS: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

/// Connects to the `ws://` or `wss://` URL of `req` (TLS with `tls`, or the system's roots) and
/// opens the WebSocket. `req` is a client request as tungstenite's `IntoClientRequest` makes it:
/// the URL and every handshake header.
pub async fn connect(
    req: Request<()>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Socket<ClientStream>, Response<()>), HandshakeError> {
    let uri = req.uri();
    let host = uri.host().ok_or_else(|| failed("the URL has no host"))?;
    let secure = uri.scheme_str() == Some("wss");
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| failed(format!("cannot connect to {host}:{port}: {e}")))?;
    connect_on(tcp, req, secure.then(|| tls.unwrap_or_else(native_roots))).await
}

/// Opens the WebSocket of `req` on an established TCP connection, in TLS when `tls` is given
/// (the server's name is the URL's host).
pub async fn connect_on(
    tcp: TcpStream,
    req: Request<()>,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(Socket<ClientStream>, Response<()>), HandshakeError> {
    let _ = tcp.set_nodelay(true);
    let io = match tls {
        None => Either::Left(tcp),
        Some(config) => {
            let host = req.uri().host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(failed)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| failed(format!("TLS: {e}")))?;
            Either::Right(tls)
        }
    };
    handshake(io, req).await
}

/// The client's opening handshake on `io` (RFC 6455 §4.1), spoken by hyper: the bytes the
/// server sent past its `101` stay with the returned socket.
pub async fn handshake<S>(
    io: S,
    req: Request<()>,
) -> Result<(Socket<S>, Response<()>), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| failed("the request has no Sec-WebSocket-Key"))?
        .clone();
    let (mut parts, ()) = req.into_parts();
    // Origin form on the wire, as every WebSocket client sends it.
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .map_err(failed)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(failed)?;
    let conn = tokio::spawn(conn.with_upgrades());
    let mut resp = sender
        .send_request(Request::from_parts(parts, Empty::<Bytes>::new()))
        .await
        .map_err(|e| failed(format!("the handshake failed: {e}")))?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(HandshakeError::Refused(Response::from_parts(parts, body)));
    }
    let has = |name: header::HeaderName, token: &str| {
        resp.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has(header::UPGRADE, "websocket") || !has(header::CONNECTION, "upgrade") {
        return Err(failed("the server's 101 does not upgrade to WebSocket"));
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    if resp
        .headers()
        .get(header::SEC_WEBSOCKET_ACCEPT)
        .map(|v| v.as_bytes())
        != Some(accept.as_bytes())
    {
        return Err(failed(
            "the server's Sec-WebSocket-Accept does not match the key",
        ));
    }
    let upgraded = hyper::upgrade::on(&mut resp).await.map_err(failed)?;
    drop(conn);
    let parts = upgraded
        .downcast::<TokioIo<S>>()
        .map_err(|_| failed("the upgraded connection is not the one we opened"))?;
    Ok((
        Socket::with_read(parts.io.into_inner(), Role::Client, parts.read_buf),
        resp.map(|_| ()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::future::poll_fn;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::{
        tungstenite::{protocol::Role as TRole, Message as TMessage},
        WebSocketStream,
    };

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    async fn next<R: AsyncRead + Unpin>(r: &mut Reader<R>) -> Option<Result<Message, String>> {
        poll_fn(|cx| r.poll_next(cx)).await
    }

    async fn flush<W: AsyncWrite + Unpin>(w: &mut Writer<W>) {
        poll_fn(|cx| w.poll_flush(cx)).await.unwrap();
    }

    /// Our end in `ours` against tungstenite in the other role, on a pipe of `pipe` bytes.
    async fn against_tungstenite(
        ours: Role,
        pipe: usize,
    ) -> (
        Reader<ReadHalf<tokio::io::DuplexStream>>,
        Writer<WriteHalf<tokio::io::DuplexStream>>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(pipe);
        let theirs = match ours {
            Role::Client => TRole::Server,
            Role::Server => TRole::Client,
        };
        let config = crate::protocol::websocket_config();
        let peer = WebSocketStream::from_raw_socket(b, theirs, Some(config)).await;
        let (r, w) = Socket::new(a, ours).split();
        (r, w, peer)
    }

    const SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536, 300_000];

    #[tokio::test]
    async fn our_messages_reach_tungstenite_in_both_roles() {
        for role in [Role::Client, Role::Server] {
            let (_r, mut w, mut peer) = against_tungstenite(role, 4096).await;
            let send = async {
                for n in SIZES {
                    w.binary(BytesMut::from(&pattern(n)[..]));
                    flush(&mut w).await;
                }
                w.ping();
                w.pong(b"unasked");
                w.close(4001, "done here");
                flush(&mut w).await;
            };
            let receive = async {
                let mut got = Vec::new();
                while let Some(msg) = peer.next().await {
                    match msg.unwrap() {
                        TMessage::Binary(b) => got.push(b.to_vec()),
                        TMessage::Ping(_) | TMessage::Pong(_) => got.push(b"control".to_vec()),
                        TMessage::Close(frame) => {
                            let frame = frame.unwrap();
                            assert_eq!(u16::from(frame.code), 4001);
                            assert_eq!(frame.reason.as_str(), "done here");
                            break;
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                got
            };
            let ((), got) = tokio::join!(send, receive);
            let mut want: Vec<Vec<u8>> = SIZES.iter().map(|&n| pattern(n)).collect();
            want.extend([b"control".to_vec(), b"control".to_vec()]);
            assert!(got == want, "{role:?} to tungstenite: the messages differ");
        }
    }

    #[tokio::test]
    async fn tungstenite_s_messages_reach_us_in_both_roles() {
        for role in [Role::Client, Role::Server] {
            let (mut r, _w, mut peer) = against_tungstenite(role, 4096).await;
            let send = async {
                for n in SIZES {
                    peer.send(TMessage::Binary(pattern(n).into()))
                        .await
                        .unwrap();
                }
                peer.send(TMessage::Ping(Bytes::from_static(b"hi")))
                    .await
                    .unwrap();
                peer.send(TMessage::Text("no".into())).await.unwrap();
                peer.send(TMessage::Close(None)).await.unwrap();
            };
            let receive = async {
                let mut got = Vec::new();
                loop {
                    match next(&mut r).await.unwrap().unwrap() {
                        Message::Binary(b) => got.push(b.to_vec()),
                        Message::Ping(p) => assert_eq!(&p[..], b"hi"),
                        Message::Text => got.push(b"text".to_vec()),
                        Message::Close(c) => {
                            assert_eq!(c, None);
                            break;
                        }
                        Message::Pong => panic!("no pong was asked for"),
                    }
                }
                got
            };
            let ((), got) = tokio::join!(send, receive);
            let mut want: Vec<Vec<u8>> = SIZES.iter().map(|&n| pattern(n)).collect();
            want.push(b"text".to_vec());
            assert!(got == want, "tungstenite to {role:?}: the messages differ");
        }
    }

    /// Raw frame bytes, masked with `key` when given.
    fn raw(fin: bool, opcode: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, if fin { 0x80 } else { 0 } | opcode, payload, key);
        out
    }

    async fn read_raw(role: Role, bytes: Vec<u8>) -> Vec<Result<Message, String>> {
        // A tiny pipe for small inputs: every frame arrives in pieces.
        let (a, mut b) = tokio::io::duplex(if bytes.len() < 4096 { 7 } else { 64 * 1024 });
        let (mut r, _w) = Socket::new(a, role).split();
        // The reader may stop early, at an error: the writer must not wait for it.
        let feed = tokio::spawn(async move {
            let _ = b.write_all(&bytes).await;
        });
        let read = async {
            let mut out = Vec::new();
            while let Some(m) = next(&mut r).await {
                let stop = m.is_err();
                out.push(m);
                if stop {
                    break;
                }
            }
            out
        };
        let out = read.await;
        feed.abort();
        out
    }

    #[tokio::test]
    async fn fragments_join_and_control_frames_pass_between_them() {
        let k = Some([1, 2, 3, 4]);
        let mut bytes = raw(false, OP_BINARY, b"he", k);
        bytes.extend(raw(true, OP_PING, b"p", k));
        bytes.extend(raw(false, OP_CONTINUATION, b"ll", k));
        bytes.extend(raw(true, OP_CONTINUATION, b"o", k));
        bytes.extend(raw(true, OP_CLOSE, &[0x03, 0xe8, b'o', b'k'], k));
        let got = read_raw(Role::Server, bytes).await;
        assert_eq!(
            got,
            vec![
                Ok(Message::Ping(Bytes::from_static(b"p"))),
                Ok(Message::Binary(Bytes::from_static(b"hello"))),
                Ok(Message::Close(Some((1000, "ok".into())))),
            ]
        );
    }

    #[tokio::test]
    async fn frames_that_break_the_protocol_end_the_read_with_a_reason() {
        let k = Some([9, 8, 7, 6]);
        let cases: Vec<(Role, Vec<u8>, &str)> = vec![
            (Role::Server, raw(true, OP_BINARY, b"x", None), "unmasked"),
            (
                Role::Client,
                raw(true, OP_BINARY, b"x", k),
                "masked frame from the server",
            ),
            (Role::Client, vec![0xC2, 0x00], "reserved bits"),
            (Role::Client, raw(true, 0x3, b"", None), "unknown opcode 3"),
            (
                Role::Client,
                raw(false, OP_PING, b"", None),
                "control frame",
            ),
            (
                Role::Client,
                raw(true, OP_PING, &[0; 126], None),
                "control frame",
            ),
            (
                Role::Client,
                raw(true, OP_CONTINUATION, b"x", None),
                "no message to continue",
            ),
            (
                Role::Client,
                [
                    raw(false, OP_BINARY, b"a", None),
                    raw(true, OP_BINARY, b"b", None),
                ]
                .concat(),
                "new message began",
            ),
            (Role::Client, raw(true, OP_CLOSE, b"x", None), "one-byte"),
            (
                Role::Client,
                vec![0x82, 127, 0, 0, 0, 0, 0x7f, 0, 0, 0],
                "more than",
            ),
            (
                Role::Client,
                raw(true, OP_BINARY, b"abc", None)[..4].to_vec(),
                "middle of a message",
            ),
        ];
        for (role, bytes, want) in cases {
            let got = read_raw(role, bytes).await;
            let err = got.last().unwrap().as_ref().unwrap_err();
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        // Fragments together beyond the limit.
        let part = vec![0u8; MAX_MESSAGE / 2 + 1];
        let bytes = [
            raw(false, OP_BINARY, &part, None),
            raw(true, OP_CONTINUATION, &part, None),
        ]
        .concat();
        let got = read_raw(Role::Client, bytes).await;
        assert!(got
            .last()
            .unwrap()
            .as_ref()
            .unwrap_err()
            .contains("more than"));
    }

    #[tokio::test]
    async fn an_idle_reader_keeps_no_buffer_and_bytes_read_past_the_handshake_come_first() {
        let (a, mut b) = tokio::io::duplex(1024);
        let first = raw(true, OP_BINARY, b"early", None);
        let (mut r, _w) = Socket::with_read(a, Role::Client, Bytes::from(first)).split();
        assert_eq!(
            next(&mut r).await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"early"))
        );
        let pending = poll_fn(|cx| Poll::Ready(r.poll_next(cx).is_pending())).await;
        assert!(pending);
        assert_eq!(r.buf.capacity(), 0);
        b.write_all(&raw(true, OP_BINARY, b"later", None))
            .await
            .unwrap();
        assert_eq!(
            next(&mut r).await.unwrap().unwrap(),
            Message::Binary(Bytes::from_static(b"later"))
        );
    }

    #[test]
    fn masking_twice_gives_the_bytes_back_at_every_length() {
        for n in 0..40 {
            let data = pattern(n);
            let mut masked = data.clone();
            apply_mask(&mut masked, [0xde, 0xad, 0xbe, 0xef]);
            for (i, (m, d)) in masked.iter().zip(&data).enumerate() {
                assert_eq!(m ^ d, [0xde, 0xad, 0xbe, 0xef][i % 4]);
            }
            apply_mask(&mut masked, [0xde, 0xad, 0xbe, 0xef]);
            assert_eq!(masked, data);
        }
    }
}
