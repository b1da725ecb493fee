//! Entry points for the fuzz targets in `fuzz/` and for the corpus regression test
//! (`server/tests/fuzz_corpus.rs`), so that both drive the real code the same way. Not an API.
//!
//! Each function takes untrusted bytes, must not panic on them, and panics when an invariant of
//! the code under test breaks. Inputs use a small length-prefixed format (see [`frames`]) rather
//! than `arbitrary`, so that `fuzz/seeds.py` can write meaningful seeds and a mutation of one
//! byte stays a meaningful change.

use std::{sync::OnceLock, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    task::JoinSet,
};

use crate::{
    client::{refusal_from, ConnectError},
    forward::{Forwarder, LocalTarget},
    head, mux,
    protocol::{Refusal, MAX_MESSAGE},
    traffic::Traffic,
    ws,
};

/// Longest a single input may take before it counts as a hang. Every path ends on its own once
/// the peer's bytes run out; this only turns a hang into a crash the fuzzer can report.
const RUN_LIMIT: Duration = Duration::from_secs(10);
/// Bytes in flight between the peer and the code under test; small, so backpressure is exercised.
const PIPE: usize = 16 * 1024;
/// Operations decoded from one input.
const MAX_OPS: usize = 256;
/// Bytes all `Big` operations of one input may add up to, so inputs stay fast.
const MAX_BIG_TOTAL: usize = 4 * MAX_MESSAGE;
/// Bytes the WebSocket model reads before it stops.
const MAX_READ: usize = 8 * MAX_MESSAGE;

/// One thing the peer does, decoded from a record `[tag u8][len u16 LE][payload]`.
#[derive(Debug)]
enum Op {
    /// Tag 0: one binary message.
    Binary(Vec<u8>),
    /// Tag 1: one text message (a protocol error; invalid UTF-8 too).
    Text(Vec<u8>),
    /// Tag 2: a ping (payload cut to 125 bytes, the control frame limit).
    Ping(Vec<u8>),
    /// Tag 3: a pong.
    Pong(Vec<u8>),
    /// Tag 4: a Close frame without payload: a deliberate end.
    Close,
    /// Tag 5: any frame: payload[0] is the first header byte (FIN, RSV, opcode), payload[1]
    /// bit 0 flips the mask bit the role would use, the rest is the frame payload.
    Frame {
        b0: u8,
        flip_mask: bool,
        payload: Vec<u8>,
    },
    /// Tag 6: raw bytes on the socket, whatever they mean.
    Raw(Vec<u8>),
    /// Tag 7: a binary message of `u32 LE` bytes (mod 2 MiB + 1), for the size limits.
    Big(usize),
    /// Any other tag: give the other side a chance to run before the next operation.
    Settle,
}

fn decode_ops(mut data: &[u8]) -> Vec<Op> {
    let mut ops = Vec::new();
    let mut big_total = 0;
    while let Some((&tag, rest)) = data.split_first() {
        if ops.len() == MAX_OPS {
            break;
        }
        let len = match rest {
            [a, b, ..] => u16::from_le_bytes([*a, *b]) as usize,
            _ => 0,
        };
        let rest = rest.get(2..).unwrap_or_default();
        let (payload, tail) = rest.split_at(len.min(rest.len()));
        data = tail;
        let payload = payload.to_vec();
        ops.push(match tag % 9 {
            0 => Op::Binary(payload),
            1 => Op::Text(payload),
            2 => Op::Ping(payload),
            3 => Op::Pong(payload),
            4 => Op::Close,
            5 => Op::Frame {
                b0: payload.first().copied().unwrap_or(0x82),
                flip_mask: payload.get(1).is_some_and(|b| b & 1 == 1),
                payload: payload.get(2..).unwrap_or_default().to_vec(),
            },
            6 => Op::Raw(payload),
            7 => {
                let mut n = [0u8; 4];
                for (d, s) in n.iter_mut().zip(&payload) {
                    *d = *s;
                }
                let n = u32::from_le_bytes(n) as usize % (2 * MAX_MESSAGE + 1);
                if big_total + n > MAX_BIG_TOTAL {
                    Op::Settle
                } else {
                    big_total += n;
                    Op::Big(n)
                }
            }
            _ => Op::Settle,
        });
    }
    ops
}

/// Payload of a `Big` message: not all zeros, so a misplaced chunk shows in a comparison.
fn big(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The bytes the peer writes for `op`; `None` for [`Op::Settle`].
fn encode(op: &Op, mask: Option<[u8; 4]>) -> Option<Vec<u8>> {
    const FIN: u8 = 0x80;
    let control = |p: &[u8]| p[..p.len().min(125)].to_vec();
    let mut out = Vec::new();
    match op {
        Op::Binary(p) => ws::encode_frame(&mut out, FIN | 0x2, p, mask),
        Op::Text(p) => ws::encode_frame(&mut out, FIN | 0x1, p, mask),
        Op::Ping(p) => ws::encode_frame(&mut out, FIN | 0x9, &control(p), mask),
        Op::Pong(p) => ws::encode_frame(&mut out, FIN | 0xA, &control(p), mask),
        Op::Close => ws::encode_frame(&mut out, FIN | 0x8, &[], mask),
        Op::Frame {
            b0,
            flip_mask,
            payload,
        } => {
            let mask = match (mask, flip_mask) {
                (m, false) => m,
                (Some(_), true) => None,
                (None, true) => Some([0x5a, 0xa5, 0x0f, 0xf0]),
            };
            ws::encode_frame(&mut out, *b0, payload, mask)
        }
        Op::Raw(p) => out.extend_from_slice(p),
        Op::Big(n) => ws::encode_frame(&mut out, FIN | 0x2, &big(*n), mask),
        Op::Settle => return None,
    }
    Some(out)
}

/// Writes every operation, then ends the stream. Write errors mean the other side is gone,
/// which is an outcome, not a failure.
async fn feed<W: AsyncWrite + Unpin>(ops: &[Op], mut w: W, mask: Option<[u8; 4]>) {
    for op in ops {
        match encode(op, mask) {
            Some(bytes) => {
                if w.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            None => settle().await,
        }
    }
    settle().await;
    let _ = w.shutdown().await;
}

/// Lets every task that can make progress in memory do so.
async fn settle() {
    for _ in 0..16 {
        tokio::task::yield_now().await;
    }
}

/// Reads and discards what the code under test writes (pongs, frames, responses), so it
/// never waits on a full pipe; ends when the other side is gone.
async fn drain<R: AsyncRead + Unpin>(mut r: R) {
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
}

/// The one current-thread runtime the async entry points run on (here and in the server's).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Bytes arriving on a tunnel session, from a hostile peer.
///
/// The first byte picks the side under test; the rest is a list of operations (records
/// `[tag u8][len u16 LE][payload]`, see `Op`); binary messages carry multiplexer frames
/// ([`crate::mux`]) or anything else:
/// - `0 (mod 3)`: the multiplexer alone, accepting streams: every stream read to its end. Checked
///   against a model where one fits: a first message that is text or oversized ends the session
///   with an error, a first Close frame ends it in order ([`mux::Closing::peer_closed`]), and the
///   session ends once the input does.
/// - `1`: the whole client side: the multiplexer in the client's role, every stream served by the
///   real [`Forwarder`] towards a loopback origin.
/// - `2`: the server's side: the multiplexer in the server's role, refusing streams from the
///   peer as `connect.rs` does, with one request sent on a stream it opens, as `proxy.rs` does.
///
/// Modes `0xFE` and `0xFF` (client and server role) check the WebSocket framing alone
/// ([`crate::ws`]) against tungstenite's reading of the same bytes: the same messages in the
/// same order, and the same kind of end.
pub fn frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ops = decode_ops(rest);
    if mode >= 0xFE {
        let role = if mode == 0xFE {
            ws::Role::Client
        } else {
            ws::Role::Server
        };
        return websocket_against_tungstenite(&ops, role);
    }
    runtime().block_on(async {
        let run = async {
            match mode % 3 {
                0 => mux_model(&ops).await,
                1 => client_session(&ops).await,
                _ => server_session(&ops).await,
            }
        };
        if tokio::time::timeout(RUN_LIMIT, run).await.is_err() {
            panic!(
                "mode {}: the session did not end after its input ran out",
                mode % 3
            );
        }
    });
}

/// A local service's answer as the client reads it (`h1::check_answer`): `[mode u8][answer]`,
/// mode bit 0 set for an answer to `HEAD`, bits 1–4 the bytes per read less one (1–16).
pub fn local_answer(data: &[u8]) {
    let Some((&mode, wire)) = data.split_first() else {
        return;
    };
    crate::h1::check_answer(wire, mode & 1 == 1, usize::from(mode >> 1 & 15) + 1);
}

/// How the model expects the session to end, from the first operation that decides it.
#[derive(Debug, PartialEq)]
enum End {
    /// The peer sent Close first.
    Closed,
    /// A text or oversized message came first.
    Invalid,
}

async fn mux_model(ops: &[Op]) {
    let end = ops.iter().find_map(|op| match op {
        Op::Ping(_) | Op::Pong(_) | Op::Settle => None,
        Op::Big(n) if *n > MAX_MESSAGE => Some(Some(End::Invalid)),
        Op::Text(_) => Some(Some(End::Invalid)),
        Op::Close => Some(Some(End::Closed)),
        _ => Some(None),
    });
    let (peer, ours) = tokio::io::duplex(PIPE);
    let (peer_r, peer_w) = tokio::io::split(peer);
    let ws = ws::Socket::new(ours, ws::Role::Client);
    let (session, driver) = mux::start(ws, mux::Role::Connector, mux::Config::new(true));
    let closing = session.closing();
    let run = async move {
        let mut streams = JoinSet::new();
        let result = driver
            .run(|stream| {
                streams.spawn(async move {
                    let mut read = 0usize;
                    while let Some(Ok(item)) = stream.recv().await {
                        if let mux::Item::Data(d) = item {
                            read += d.len();
                        }
                        if read > MAX_READ {
                            break;
                        }
                    }
                });
            })
            .await;
        streams.shutdown().await;
        result
    };
    let (result, (), ()) = tokio::join!(run, feed(ops, peer_w, None), drain(peer_r));
    match end.flatten() {
        Some(End::Closed) => {
            assert!(
                result.is_ok(),
                "a Close frame is an orderly end: {result:?}"
            );
            assert!(
                closing.peer_closed(),
                "a Close frame must count as deliberate"
            );
        }
        Some(End::Invalid) => {
            assert!(result.is_err(), "a text or oversized message is an error");
            assert!(!closing.peer_closed());
        }
        None => {}
    }
}

/// What reading a WebSocket gave, as both readers can say it.
#[derive(Debug, PartialEq)]
enum Read {
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong,
    /// The last event: the bytes ran out (in or between messages).
    End,
    /// The last event: a Close frame.
    Close,
    /// The last event: a text message, which ends a session.
    Text,
    /// The last event: a protocol error.
    Broken,
}

/// Decodes the bytes `ops` make with our reader and tungstenite's and compares the two.
fn websocket_against_tungstenite(ops: &[Op], role: ws::Role) {
    use std::task::{Context, Poll};
    use tokio_tungstenite::tungstenite::{
        self, error::ProtocolError, protocol::Role as TRole, Message as TMessage,
    };

    // What a peer of `role` sends: masked towards a server.
    let mask = (role == ws::Role::Server).then_some([0x12, 0x34, 0x56, 0x78]);
    let bytes: Vec<u8> = ops
        .iter()
        .filter_map(|op| encode(op, mask))
        .flatten()
        .collect();

    let mut ours = Vec::new();
    let (mut reader, _writer) =
        ws::Socket::new(tokio::io::join(&bytes[..], tokio::io::sink()), role).split();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    loop {
        // Bytes in memory are always ready: the reader never waits.
        let Poll::Ready(next) = reader.poll_next(&mut cx) else {
            panic!("a reader of bytes in memory waited");
        };
        let event = match next {
            None => Read::End,
            Some(Err(e)) if e.contains("middle of a message") => Read::End,
            Some(Err(_)) => Read::Broken,
            Some(Ok(ws::Message::Binary(b))) => Read::Binary(b.to_vec()),
            Some(Ok(ws::Message::Ping(p))) => Read::Ping(p.to_vec()),
            Some(Ok(ws::Message::Pong)) => Read::Pong,
            Some(Ok(ws::Message::Close(_))) => Read::Close,
            Some(Ok(ws::Message::Text)) => Read::Text,
        };
        let last = matches!(event, Read::End | Read::Close | Read::Text | Read::Broken);
        ours.push(event);
        if last {
            break;
        }
    }

    /// The peer's bytes to read, and a sink for tungstenite's answers (pongs).
    struct Pipe<'a>(&'a [u8]);
    impl std::io::Read for Pipe<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            std::io::Read::read(&mut self.0, buf)
        }
    }
    impl std::io::Write for Pipe<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let trole = match role {
        ws::Role::Client => TRole::Client,
        ws::Role::Server => TRole::Server,
    };
    let mut theirs_ws = tungstenite::WebSocket::from_raw_socket(
        Pipe(&bytes),
        trole,
        Some(crate::protocol::websocket_config()),
    );
    let mut theirs = Vec::new();
    // Where tungstenite is stricter than we need to be: it checks a Close frame's code and
    // the UTF-8 of its reason, which the multiplexer never reads.
    let mut stricter = false;
    loop {
        let event = match theirs_ws.read() {
            Ok(TMessage::Binary(b)) => Read::Binary(b.to_vec()),
            Ok(TMessage::Ping(p)) => Read::Ping(p.to_vec()),
            Ok(TMessage::Pong(_)) => Read::Pong,
            Ok(TMessage::Close(_)) => Read::Close,
            Ok(TMessage::Text(_)) => Read::Text,
            Ok(TMessage::Frame(_)) => continue,
            Err(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))
            | Err(tungstenite::Error::ConnectionClosed)
            | Err(tungstenite::Error::AlreadyClosed) => Read::End,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Read::End
            }
            Err(tungstenite::Error::Utf8(_))
            | Err(tungstenite::Error::Protocol(ProtocolError::InvalidCloseSequence)) => {
                stricter = true;
                Read::Broken
            }
            Err(_) => Read::Broken,
        };
        let last = matches!(event, Read::End | Read::Close | Read::Text | Read::Broken);
        theirs.push(event);
        if last {
            break;
        }
    }
    if ours.len() == theirs.len() && ours[..ours.len() - 1] == theirs[..theirs.len() - 1] {
        let (o, t) = (ours.last().expect("an end"), theirs.last().expect("an end"));
        if stricter && matches!((o, t), (Read::Close, Read::Broken)) {
            return;
        }
        // We refuse a frame by its header; tungstenite reads the whole frame first, so when the
        // bytes end inside it, it sees only the end.
        if matches!((o, t), (Read::Broken, Read::End)) && ws::cut_short(reader.buffered()) {
            return;
        }
    }
    // A text message ends a session with an error as soon as its first frame is read;
    // tungstenite reads all of it first (and the control frames between its fragments), and
    // may find an error or the end of the bytes on the way.
    if let Some((Read::Text, before)) = ours.split_last() {
        let k = before.len();
        if theirs.get(..k) == Some(before)
            && theirs[k..].iter().all(|e| !matches!(e, Read::Binary(_)))
        {
            return;
        }
    }
    assert_eq!(
        ours, theirs,
        "our reading ({role:?}) and tungstenite's differ"
    );
}

/// A loopback origin answering every request with a small `200`, for the client's forwarder.
fn origin() -> LocalTarget {
    static PORT: OnceLock<u16> = OnceLock::new();
    let port = *PORT.get_or_init(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind origin");
        let port = listener.local_addr().expect("origin address").port();
        listener.set_nonblocking(true).expect("nonblocking origin");
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("origin runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("origin");
                while let Ok((mut conn, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 4096];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                    });
                }
            });
        });
        port
    });
    LocalTarget::new("127.0.0.1", port)
}

async fn client_session(ops: &[Op]) {
    let (peer, ours) = tokio::io::duplex(PIPE);
    let (peer_r, peer_w) = tokio::io::split(peer);
    let client = async move {
        let ws = ws::Socket::new(ours, ws::Role::Client);
        let (_session, driver) = mux::start(ws, mux::Role::Connector, mux::Config::new(true));
        let forwarder = Forwarder::new(origin(), Traffic::new(8, 4096));
        let mut streams = JoinSet::new();
        let _ = driver
            .run(|stream| {
                streams.spawn(forwarder.clone().serve_stream(stream));
            })
            .await;
        streams.shutdown().await;
    };
    tokio::join!(client, feed(ops, peer_w, None), drain(peer_r));
}

async fn server_session(ops: &[Op]) {
    let (peer, ours) = tokio::io::duplex(PIPE);
    let (peer_r, peer_w) = tokio::io::split(peer);
    let server = async move {
        let ws = ws::Socket::new(ours, ws::Role::Server);
        let (session, driver) = mux::start(ws, mux::Role::Acceptor, mux::Config::new(false));
        let request = async move {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::HOST,
                http::HeaderValue::from_static("app.localhost"),
            );
            let head =
                head::encode_request(&http::Method::GET, &"/".parse().expect("uri"), &headers);
            let Ok(stream) = session.open(head, true).await else {
                return;
            };
            let Some(Ok(mux::Item::Head(h))) = stream.recv().await else {
                return;
            };
            let raw = head::decode_response_raw(&h).map(|r| agreed_head(&r));
            let decoded = head::decode_response(h);
            // The server's two readings of an answer (`proxy.rs` and `h1.rs`) accept the same.
            assert_eq!(
                raw.as_ref().ok(),
                decoded
                    .as_ref()
                    .ok()
                    .map(|p| (p.status, listed(&p.headers)))
                    .as_ref(),
                "the raw and the mapped reading of an answering head disagree"
            );
            if decoded.is_err() {
                return;
            }
            let body = crate::mux_body::RecvBody::new(stream);
            let _ = Limited::new(body, MAX_MESSAGE).collect().await;
        };
        let (_, ()) = tokio::join!(driver.run(|_| {}), request);
    };
    tokio::join!(server, feed(ops, peer_w, Some([1, 2, 3, 4])), drain(peer_r));
}

/// A head's status and headers by name (lowercase), each name's values in order: what a raw
/// reading and a header map must agree on.
type Agreed = (http::StatusCode, Vec<(String, Vec<Vec<u8>>)>);

fn agreed_head(raw: &head::RawResponse<'_>) -> Agreed {
    let mut names: Vec<(String, Vec<Vec<u8>>)> = Vec::new();
    for (name, value) in &raw.headers {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        match names.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value.to_vec()),
            None => names.push((name, vec![value.to_vec()])),
        }
    }
    names.sort();
    (raw.status, names)
}

fn listed(headers: &http::HeaderMap) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut names: Vec<(String, Vec<Vec<u8>>)> = headers
        .keys()
        .map(|k| {
            let values = headers.get_all(k).iter().map(|v| v.as_bytes().to_vec());
            (k.as_str().to_owned(), values.collect())
        })
        .collect();
    names.sort();
    names
}

/// What the client engine concludes from a refused handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientVerdict {
    /// It reports this refusal (and gives up if the kind is final).
    Refused(Refusal),
    /// It counts the attempt as a network failure and retries.
    Retry(String),
}

/// The client's reading of a non-`101` answer to its connect request, through the same
/// function the engine uses. `None` when `status` is not an HTTP status code.
pub fn client_reads_refusal(status: u16, body: Option<Vec<u8>>) -> Option<ClientVerdict> {
    let resp = http::Response::builder()
        .status(status)
        .body(body.map(Bytes::from).unwrap_or_default())
        .ok()?;
    let err = crate::ws::HandshakeError::Refused(resp);
    Some(match refusal_from(err) {
        ConnectError::Refused(r) => ClientVerdict::Refused(r),
        ConnectError::Network(m) => ClientVerdict::Retry(m),
    })
}
