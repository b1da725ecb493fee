//! Entry points for the fuzz targets in `fuzz/` and for the corpus regression test
//! (`server/tests/fuzz_corpus.rs`), so that both drive the real code the same way. Not an API.
//!
//! Each function takes untrusted bytes, must not panic on them, and panics when an invariant of
//! the code under test breaks. Inputs use a small length-prefixed format (see [`frames`]) rather
//! than `arbitrary`, so that `fuzz/seeds.py` can write meaningful seeds and a mutation of one
//! byte stays a meaningful change.

use std::{io, sync::OnceLock, time::Duration};

use futures_util::StreamExt;
use http_body_util::{BodyExt, Limited};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    task::JoinSet,
};
use tokio_tungstenite::{tungstenite::protocol::Role, WebSocketStream};

use crate::{
    client::{refusal_from, ConnectError},
    forward::{Forwarder, LocalTarget},
    protocol::{self, Heartbeat, Refusal, MAX_MESSAGE},
    traffic::Traffic,
    ws_io::WsIo,
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

/// Appends one WebSocket frame (RFC 6455 §5.2). Clients must mask, servers must not.
fn frame(out: &mut Vec<u8>, b0: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    out.push(b0);
    let m = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(m | n as u8),
        n if n <= 0xffff => {
            out.push(m | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(m | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
}

/// The bytes the peer writes for `op`; `None` for [`Op::Settle`].
fn encode(op: &Op, mask: Option<[u8; 4]>) -> Option<Vec<u8>> {
    const FIN: u8 = 0x80;
    let control = |p: &[u8]| p[..p.len().min(125)].to_vec();
    let mut out = Vec::new();
    match op {
        Op::Binary(p) => frame(&mut out, FIN | 0x2, p, mask),
        Op::Text(p) => frame(&mut out, FIN | 0x1, p, mask),
        Op::Ping(p) => frame(&mut out, FIN | 0x9, &control(p), mask),
        Op::Pong(p) => frame(&mut out, FIN | 0xA, &control(p), mask),
        Op::Close => frame(&mut out, FIN | 0x8, &[], mask),
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
            frame(&mut out, *b0, payload, mask)
        }
        Op::Raw(p) => out.extend_from_slice(p),
        Op::Big(n) => frame(&mut out, FIN | 0x2, &big(*n), mask),
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

/// Reads and discards what the code under test writes (pongs, yamux frames, responses), so it
/// never waits on a full pipe; ends when the other side is gone.
async fn drain<R: AsyncRead + Unpin>(mut r: R) {
    let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
}

fn runtime() -> &'static tokio::runtime::Runtime {
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
/// `[tag u8][len u16 LE][payload]`, see `Op`):
/// - `0 (mod 3)`: [`WsIo`] alone, the client's WebSocket-as-byte-stream. Checked against a
///   model: the bytes read are exactly the concatenated binary messages, up to the first text
///   message or oversized message (then `InvalidData`), Close frame (then EOF, and
///   [`crate::ws_io::Closing::peer_closed`]) or end of input (EOF, not a deliberate close).
///   After a raw frame or raw bytes only the prefix before them is checked.
/// - `1`: the whole client side: [`WsIo`] under a yamux session in the client's role, every
///   stream served by the real [`Forwarder`] towards a loopback origin.
/// - `2`: the server's session stack: [`WsIo`] in the server role (masked frames expected)
///   under yamux in the server's role, inbound streams dropped as `connect.rs` does, and one
///   request sent on a stream the server opens, as `proxy.rs` does.
///
/// In every mode the session must end once the peer's bytes run out.
pub fn frames(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let ops = decode_ops(rest);
    runtime().block_on(async {
        let run = async {
            match mode % 3 {
                0 => ws_io_model(&ops).await,
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

/// How the WebSocket model expects reading to end.
#[derive(Debug, PartialEq)]
enum End {
    /// The peer stopped sending (no Close frame).
    Eof,
    /// The peer sent Close.
    Closed,
    /// A text or oversized message.
    Invalid,
}

async fn ws_io_model(ops: &[Op]) {
    let mut expected = Vec::new();
    let mut end = Some(End::Eof);
    for op in ops {
        match op {
            Op::Binary(p) => expected.extend_from_slice(p),
            Op::Big(n) if *n <= MAX_MESSAGE => expected.extend_from_slice(&big(*n)),
            Op::Big(_) | Op::Text(_) => {
                end = Some(End::Invalid);
                break;
            }
            Op::Close => {
                end = Some(End::Closed);
                break;
            }
            Op::Ping(_) | Op::Pong(_) | Op::Settle => {}
            // Not modelled: only what came before is checked.
            Op::Frame { .. } | Op::Raw(_) => {
                end = None;
                break;
            }
        }
    }

    let (peer, ours) = tokio::io::duplex(PIPE);
    let (peer_r, peer_w) = tokio::io::split(peer);
    let ws =
        WebSocketStream::from_raw_socket(ours, Role::Client, Some(protocol::websocket_config()))
            .await;
    let mut io = WsIo::new(ws, Heartbeat::default());
    let closing = io.closing();
    let read = async move {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 8192];
        let result = loop {
            if got.len() > MAX_READ {
                break Ok(());
            }
            match io.read(&mut buf).await {
                Ok(0) => break Ok(()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Err(e),
            }
        };
        // Dropping our side ends the peer's writes and the drain.
        drop(io);
        (got, result)
    };
    let ((got, result), (), ()) = tokio::join!(read, feed(ops, peer_w, None), drain(peer_r));

    let Some(end) = end else {
        assert!(
            got.starts_with(&expected),
            "bytes before the first raw frame must arrive intact"
        );
        return;
    };
    assert!(
        got == expected,
        "read {} bytes, the peer sent {} in binary messages",
        got.len(),
        expected.len()
    );
    match end {
        End::Closed => {
            assert!(
                result.is_ok(),
                "a Close frame is an orderly end: {result:?}"
            );
            assert!(
                closing.peer_closed(),
                "a Close frame must count as deliberate"
            );
        }
        End::Invalid => {
            let kind = result.as_ref().map_err(io::Error::kind);
            assert_eq!(kind.err(), Some(io::ErrorKind::InvalidData), "{result:?}");
            assert!(!closing.peer_closed());
        }
        End::Eof => assert!(
            !closing.peer_closed(),
            "a dropped connection is not a deliberate close"
        ),
    }
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
    LocalTarget {
        host: "127.0.0.1".to_owned(),
        port,
        keep_host: false,
    }
}

async fn client_session(ops: &[Op]) {
    let (peer, ours) = tokio::io::duplex(PIPE);
    let (peer_r, peer_w) = tokio::io::split(peer);
    let client = async move {
        let ws = WebSocketStream::from_raw_socket(
            ours,
            Role::Client,
            Some(protocol::websocket_config()),
        )
        .await;
        // The client is yamux's server: it accepts the streams the ggrok server opens.
        let mut mux = tokio_yamux::Session::new_server(
            WsIo::new(ws, Heartbeat::default()),
            protocol::yamux_config(),
        );
        let forwarder = Forwarder::new(origin(), Traffic::new(8, 4096));
        let mut streams = JoinSet::new();
        while let Some(Ok(stream)) = mux.next().await {
            streams.spawn(forwarder.clone().serve(stream));
        }
        drop(mux);
        streams.shutdown().await;
    };
    tokio::join!(client, feed(ops, peer_w, None), drain(peer_r));
}

async fn server_session(ops: &[Op]) {
    let (peer, ours) = tokio::io::duplex(PIPE);
    let (peer_r, peer_w) = tokio::io::split(peer);
    let server = async move {
        let ws = WebSocketStream::from_raw_socket(
            ours,
            Role::Server,
            Some(protocol::websocket_config()),
        )
        .await;
        let mut mux = tokio_yamux::Session::new_client(
            WsIo::new(ws, Heartbeat::default()),
            protocol::yamux_config(),
        );
        let mut control = mux.control();
        let session = async move {
            // Clients have no reason to open streams: the server drops them.
            while let Some(Ok(stream)) = mux.next().await {
                drop(stream);
            }
        };
        let request = async move {
            let Ok(stream) = control.open_stream().await else {
                return;
            };
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                return;
            };
            let exchange = async move {
                let req = http::Request::get("/")
                    .header(http::header::HOST, "app.localhost")
                    .body(crate::http_util::empty())
                    .expect("static request");
                let resp = sender.send_request(req).await.ok()?;
                Limited::new(resp.into_body(), MAX_MESSAGE)
                    .collect()
                    .await
                    .ok()
            };
            tokio::select! {
                _ = conn.with_upgrades() => {}
                _ = exchange => {}
            }
        };
        tokio::join!(session, request);
    };
    tokio::join!(server, feed(ops, peer_w, Some([1, 2, 3, 4])), drain(peer_r));
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
    let resp = http::Response::builder().status(status).body(body).ok()?;
    let err = tokio_tungstenite::tungstenite::Error::Http(Box::new(resp));
    Some(match refusal_from(err) {
        ConnectError::Refused(r) => ClientVerdict::Refused(r),
        ConnectError::Network(m) => ClientVerdict::Retry(m),
    })
}
