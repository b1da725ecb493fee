//! The client's own HTTP/1.1 client for plain-HTTP local services: the request head written
//! straight from the parsed head the server sent, the response head parsed with `httparse`
//! straight into the answering head frame and the inspector's record, the body framed by
//! `Content-Length`, chunked coding or the connection's close.
//!
//! hyper's client did the same work through a header map for the response, its own request
//! encoder and a dispatch state machine between a request handle and the connection; for a small
//! request that was about a third of the client's instructions (docs/benchmarks.md). hyper stays
//! for what this does not do: TLS and HTTP/2 to the local service, and upgrades (WebSocket), whose
//! connection becomes a byte pipe.
//!
//! Framing follows RFC 9112 §6: a response to `HEAD`, a `204` or a `304` has no body; a
//! `Transfer-Encoding` ending in `chunked` is chunked (and wins over `Content-Length`), any other
//! `Transfer-Encoding` reads to the close; a `Content-Length` must be one valid number (repeats
//! that agree are allowed); otherwise the body runs to the close. `1xx` answers before the final
//! one are skipped. A connection goes back to the pool only when both messages ended exactly on
//! their framing and the local service did not ask to close it, so no byte of one exchange can be
//! read as part of the next.

use std::{
    io,
    mem::MaybeUninit,
    pin::Pin,
    task::{ready, Context, Poll},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body::{Body as _, Frame};
use tokio::{
    io::AsyncWriteExt,
    net::{
        tcp::{OwnedReadHalf, OwnedWriteHalf},
        TcpStream,
    },
};

use crate::{
    head::ResponseHeadWriter,
    http_util::{hop_by_hop, is_name, Body, BoxError},
    traffic::Headers,
};

/// Headers in a response head, at most (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Bytes of a response head or of trailers, at most.
const MAX_HEAD: usize = 256 * 1024;
/// Bytes of a chunk-size line (with extensions), at most.
const MAX_CHUNK_LINE: usize = 4096;
/// What a read asks the socket for while reading a head.
const HEAD_READ: usize = 8 * 1024;
/// What a read asks the socket for while reading a body: large bodies cross in few reads.
const BODY_READ: usize = 64 * 1024;
/// Data up to this size is copied out of the read buffer; larger data is split off it.
const COPY_BELOW: usize = 4 * 1024;

/// Why an exchange with the local service failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The connection closed (or broke) before any byte of an answer: on a reused connection,
    /// the local service closed it as the request went out.
    #[error("the connection closed before an answer ({0})")]
    Closed(io::Error),
    /// The connection failed after the answer began.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The local service's answer is not valid HTTP/1.1.
    #[error("invalid response from the local service: {0}")]
    Invalid(String),
    /// The request body failed while it was being sent.
    #[error("the request body failed: {0}")]
    Body(BoxError),
}

/// A connection to the local service.
pub(crate) struct Conn {
    rd: OwnedReadHalf,
    /// `None` while (or after) a request body that outlived its answer is sent from a task of
    /// its own: the connection then closes once done.
    wr: Option<OwnedWriteHalf>,
    buf: BytesMut,
    /// Whether the exchange so far allows another on this connection.
    reusable: bool,
}

impl Conn {
    pub(crate) fn new(tcp: TcpStream) -> Self {
        let (rd, wr) = tcp.into_split();
        Self {
            rd,
            wr: Some(wr),
            buf: BytesMut::new(),
            reusable: true,
        }
    }

    /// Whether a request can go out on this connection now: the last exchange ended cleanly and
    /// the local service has neither closed it nor sent anything since.
    pub(crate) fn is_idle(&mut self) -> bool {
        if !self.reusable || self.wr.is_none() || !self.buf.is_empty() {
            return false;
        }
        // Costs no system call unless the runtime saw the socket become readable.
        let mut probe = [0u8; 1];
        matches!(self.rd.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// How the request body is framed on the wire.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Upload {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked coding (no length known, as from an HTTP/2 visitor or a chunked one).
    Chunked,
}

/// Writes the request head: `method target HTTP/1.1`, then `headers` (hop-by-hop ones already
/// removed), framed as `upload` says (any `Content-Length` in `headers` is left out for a chunked
/// body and replaced by `0` for none). The method, target and headers were validated when the
/// server's head was decoded: none can carry a line break.
pub(crate) fn request_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    upload: Upload,
) -> BytesMut {
    let size = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(method.as_str().len() + target.len() + size + 64);
    out.put_slice(method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (k, v) in headers {
        if k == header::CONTENT_LENGTH && !matches!(upload, Upload::Length(_)) {
            continue;
        }
        out.put_slice(k.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(v.as_bytes());
        out.put_slice(b"\r\n");
    }
    match upload {
        Upload::Length(n) if !headers.contains_key(header::CONTENT_LENGTH) => {
            out.put_slice(format!("content-length: {n}\r\n").as_bytes())
        }
        Upload::Length(_) => {}
        Upload::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        // A request without framing has no body; a `Content-Length` the head carried for a body
        // that did not come would make the local service wait for it.
        Upload::None if headers.contains_key(header::CONTENT_LENGTH) => {
            out.put_slice(b"content-length: 0\r\n")
        }
        Upload::None => {}
    }
    out.put_slice(b"\r\n");
    out
}

/// A request ready to send: its HTTP/1.1 head and what the inspector records of it.
pub(crate) struct Prepared {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) head: Bytes,
    pub(crate) upload: Upload,
    pub(crate) recorded: Headers,
    /// The visitor's address, from the last `X-Forwarded-For` entry.
    pub(crate) remote: Option<String>,
}

/// Writes the HTTP/1.1 head of the request the server sent, read in place: the hop-by-hop
/// headers left out, `Host` replaced by `host` if given, framed for a body if `has_body`. `None`
/// for what the general path (a header map, and hyper for upgrades) handles: an upgrade, a
/// `Connection` naming headers to drop, more than one `Content-Length`.
pub(crate) fn prepare(
    raw: crate::head::RawRequest<'_>,
    host: Option<&HeaderValue>,
    has_body: bool,
) -> Option<Prepared> {
    let size = raw
        .headers
        .iter()
        .map(|(k, v)| k.len() + v.len() + 4)
        .sum::<usize>();
    let mut out = BytesMut::with_capacity(raw.method.as_str().len() + raw.target.len() + size + 64);
    out.put_slice(raw.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(raw.target.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    let put = |out: &mut BytesMut, name: &[u8], value: &[u8]| {
        out.put_slice(name);
        out.put_slice(b": ");
        out.put_slice(value);
        out.put_slice(b"\r\n");
    };
    let mut host_written = false;
    let mut length = None;
    let mut remote = None;
    for &(name, value) in &raw.headers {
        if name.len() == 4 && name.eq_ignore_ascii_case(b"host") {
            if let Some(host) = host {
                if !host_written {
                    put(&mut out, b"host", host.as_bytes());
                }
                host_written = true;
                continue;
            }
        } else if name.len() == 14 && name.eq_ignore_ascii_case(b"content-length") {
            if length.is_some() {
                return None;
            }
            length = Some(content_length(std::iter::once(value)).ok().flatten());
            if !has_body || length == Some(None) {
                continue;
            }
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            let last = value.rsplit(|b| *b == b',').next().unwrap_or(b"");
            remote = std::str::from_utf8(last.trim_ascii())
                .ok()
                .map(str::to_owned);
        } else if hop_by_hop(name) {
            if name.eq_ignore_ascii_case(b"upgrade") {
                return None;
            }
            if name.eq_ignore_ascii_case(b"connection") {
                let plain = value.split(|b| *b == b',').all(|t| {
                    let t = t.trim_ascii();
                    t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
                });
                if !plain {
                    return None;
                }
            }
            // `TE: trailers` passes (gRPC needs it; see `strip_hop_by_hop`).
            let trailers = name.eq_ignore_ascii_case(b"te")
                && value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
            if trailers {
                put(&mut out, b"te", b"trailers");
            }
            continue;
        }
        put(&mut out, name, value);
    }
    if let (Some(host), false) = (host, host_written) {
        put(&mut out, b"host", host.as_bytes());
    }
    let upload = match (has_body, length) {
        (false, _) => Upload::None,
        (true, Some(Some(n))) => Upload::Length(n),
        (true, _) => Upload::Chunked,
    };
    match upload {
        Upload::Length(_) => {}
        Upload::Chunked => out.put_slice(b"transfer-encoding: chunked\r\n"),
        Upload::None if length.is_some() => put(&mut out, b"content-length", b"0"),
        Upload::None => {}
    }
    out.put_slice(b"\r\n");
    let head = out.freeze();
    Some(Prepared {
        method: raw.method,
        path: raw.target.to_owned(),
        // The inspector shows the request as the local service got it, framing included.
        recorded: Headers::of_head(head.clone()),
        head,
        upload,
        remote,
    })
}

/// How a request with `headers` and a body (or none) is framed: its `Content-Length` if it has
/// one valid length, else the body's own length if it is known (`exact`, a replayed body), else
/// chunked.
pub(crate) fn upload_framing(headers: &HeaderMap, has_body: bool, exact: Option<u64>) -> Upload {
    if !has_body {
        return Upload::None;
    }
    match content_length(
        headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .map(|v| v.as_bytes()),
    ) {
        Ok(Some(n)) => Upload::Length(n),
        _ => exact.map_or(Upload::Chunked, Upload::Length),
    }
}

/// The one length that every `Content-Length` value says (comma lists included); `None` without
/// any, an error if they disagree or one is not a number.
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, String> {
    let mut length = None;
    for value in values {
        for part in value.split(|b| *b == b',') {
            let part = part.trim_ascii();
            let digits = (!part.is_empty()).then_some(part);
            let n = digits
                .and_then(|d| {
                    d.iter().try_fold(0u64, |n, b| {
                        let digit = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
                        n.checked_mul(10)?.checked_add(digit)
                    })
                })
                .ok_or_else(|| {
                    format!(
                        "Content-Length {:?} is not a length",
                        String::from_utf8_lossy(part)
                    )
                })?;
            if length.is_some_and(|l| l != n) {
                return Err("Content-Length values disagree".to_owned());
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// The final answer's head, ready to send on: the answering head frame (without hop-by-hop
/// headers) and the inspector's copy of the headers as the local service sent them.
pub(crate) struct ResponseHead {
    pub(crate) status: StatusCode,
    pub(crate) frame: Bytes,
    pub(crate) recorded: Headers,
    framing: Framing,
}

impl ResponseHead {
    /// Whether the answer has no body at all.
    pub(crate) fn is_empty(&self) -> bool {
        matches!(self.framing, Framing::Length(0))
    }
}

/// Sends a request whose head is `head` on `conn` and reads the answer's head. A request body
/// (framed as `upload` says) is sent while the answer is awaited: a local service may answer
/// before reading all of it, and the rest then goes on from a task of its own.
pub(crate) async fn send(
    conn: &mut Conn,
    head: &[u8],
    method: &Method,
    body: Option<(Body, Upload)>,
) -> Result<ResponseHead, Error> {
    let Some(mut wr) = conn.wr.take() else {
        return Err(Error::Closed(io::ErrorKind::NotConnected.into()));
    };
    if let Err(e) = wr.write_all(head).await {
        return Err(Error::Closed(e));
    }
    let head_request = *method == Method::HEAD;
    let Some((body, framing)) = body else {
        conn.wr = Some(wr);
        return read_head(conn, head_request).await;
    };
    let mut upload = Box::pin(upload(wr, body, framing));
    enum First<A, S> {
        Answer(A),
        Sent(S),
    }
    let first = {
        let answer = read_head(conn, head_request);
        tokio::pin!(answer);
        tokio::select! {
            biased;
            answer = &mut answer => First::Answer(answer),
            sent = &mut upload => First::Sent(sent),
        }
    };
    match first {
        // The body went out first (the usual case): the answer follows.
        First::Sent((wr, Ok(()))) => {
            conn.wr = Some(wr);
            read_head(conn, head_request).await
        }
        First::Sent((_, Err(e))) => {
            conn.reusable = false;
            Err(e)
        }
        // Answered before the whole body was read: the rest goes on beside the answer, and the
        // connection closes after both.
        First::Answer(answer) => {
            conn.reusable = false;
            if answer.is_ok() {
                tokio::spawn(async move {
                    if let (_, Err(e)) = upload.await {
                        tracing::debug!(%e, "request body after an early answer");
                    }
                });
            }
            answer
        }
    }
}

/// Sends `body` on `wr` framed as `framing`; hands `wr` back.
async fn upload(
    mut wr: OwnedWriteHalf,
    mut body: Body,
    framing: Upload,
) -> (OwnedWriteHalf, Result<(), Error>) {
    let mut left = match framing {
        Upload::Length(n) => Some(n),
        _ => None,
    };
    let mut chunk = BytesMut::new();
    let result = loop {
        let frame = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        let frame = match frame {
            None => break end_upload(&mut wr, left).await,
            Some(Err(e)) => break Err(Error::Body(e)),
            Some(Ok(frame)) => frame,
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                let trailers = frame.into_trailers().ok();
                break match (left, trailers) {
                    // Chunked coding carries trailers; a sized body cannot.
                    (None, Some(trailers)) => {
                        chunk.clear();
                        chunk.put_slice(b"0\r\n");
                        for (k, v) in &trailers {
                            chunk.put_slice(k.as_str().as_bytes());
                            chunk.put_slice(b": ");
                            chunk.put_slice(v.as_bytes());
                            chunk.put_slice(b"\r\n");
                        }
                        chunk.put_slice(b"\r\n");
                        wr.write_all(&chunk).await.map_err(Error::Io)
                    }
                    _ => end_upload(&mut wr, left).await,
                };
            }
        };
        if data.is_empty() {
            continue;
        }
        let written = match &mut left {
            Some(left) => {
                if data.len() as u64 > *left {
                    break Err(Error::Body(
                        "the request body is longer than its Content-Length".into(),
                    ));
                }
                *left -= data.len() as u64;
                wr.write_all(&data).await
            }
            None => {
                chunk.clear();
                chunk.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
                chunk.put_slice(&data);
                chunk.put_slice(b"\r\n");
                wr.write_all(&chunk).await
            }
        };
        if let Err(e) = written {
            break Err(Error::Io(e));
        }
    };
    (wr, result)
}

/// Ends a request body: the last chunk, or a check that the whole length went out.
async fn end_upload(wr: &mut OwnedWriteHalf, left: Option<u64>) -> Result<(), Error> {
    match left {
        None => wr.write_all(b"0\r\n\r\n").await.map_err(Error::Io),
        Some(0) => Ok(()),
        Some(n) => Err(Error::Body(
            format!("the request body ended {n} bytes short of its Content-Length").into(),
        )),
    }
}

/// Reads the final answer's head (skipping `1xx` answers) and decides the body's framing.
async fn read_head(conn: &mut Conn, head_request: bool) -> Result<ResponseHead, Error> {
    // (A first call may have read part of the head before the request body was sent.)
    let mut received = !conn.buf.is_empty();
    loop {
        if !conn.buf.is_empty() {
            match parse_head(&conn.buf, head_request)? {
                Parsed::Partial if conn.buf.len() >= MAX_HEAD => {
                    return Err(Error::Invalid(format!(
                        "the response head is larger than {} KiB",
                        MAX_HEAD / 1024
                    )))
                }
                Parsed::Partial => {}
                Parsed::Informational(n) => {
                    conn.buf.advance(n);
                    continue;
                }
                Parsed::Final(n, head, keep_alive) => {
                    conn.buf.advance(n);
                    conn.reusable &= keep_alive;
                    return Ok(head);
                }
            }
        }
        conn.buf.reserve(HEAD_READ);
        let read = tokio::io::AsyncReadExt::read_buf(&mut conn.rd, &mut conn.buf).await;
        match read {
            Ok(0) | Err(_) if !received => {
                let e = read
                    .err()
                    .unwrap_or_else(|| io::ErrorKind::UnexpectedEof.into());
                return Err(Error::Closed(e));
            }
            Ok(0) => {
                return Err(Error::Invalid(
                    "the connection closed in the middle of the response head".to_owned(),
                ))
            }
            Ok(_) => received = true,
            Err(e) => return Err(Error::Io(e)),
        }
    }
}

enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A `1xx` answer of this many bytes, to skip.
    Informational(usize),
    /// The final answer's head of this many bytes, and whether the connection may be reused.
    Final(usize, ResponseHead, bool),
}

fn parse_head(buf: &[u8], head_request: bool) -> Result<Parsed, Error> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let n = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Invalid(format!(
                "more than {MAX_HEADERS} headers in the response head"
            )))
        }
        Err(e) => return Err(Error::Invalid(e.to_string())),
    };
    let code = resp.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| Error::Invalid(format!("status {code} is not a status")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::Invalid(
            "it switched protocols, which the request did not ask for".to_owned(),
        ));
    }
    if status.is_informational() {
        return Ok(Parsed::Informational(n));
    }
    let headers = resp.headers;

    // What framing and reuse depend on.
    let mut keep_alive = resp.version == Some(1);
    let mut chunked = None;
    let mut named = false;
    let mut lengths = 0;
    let mut length = &b""[..];
    for h in headers.iter() {
        let name = h.name.as_bytes();
        if is_name(name, b"content-length") {
            lengths += 1;
            length = h.value;
        } else if is_name(name, b"connection") {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    named = true;
                }
            }
        } else if is_name(name, b"transfer-encoding") {
            let last = h.value.rsplit(|b| *b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        Framing::Length(0)
    } else {
        match chunked {
            Some(true) => Framing::Chunked(Chunk::Size),
            Some(false) => Framing::Close,
            None if lengths == 0 => Framing::Close,
            // One value (nearly always) is the one seen above, not looked for again.
            None if lengths == 1 => {
                match content_length(std::iter::once(length)).map_err(Error::Invalid)? {
                    Some(n) => Framing::Length(n),
                    None => Framing::Close,
                }
            }
            None => match content_length(
                headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| h.value),
            )
            .map_err(Error::Invalid)?
            {
                Some(n) => Framing::Length(n),
                None => Framing::Close,
            },
        }
    };
    // A body that runs to the close ends the connection; so does a message framed both by
    // `Transfer-Encoding` and `Content-Length`, which may be a smuggling attempt (RFC 9112 §6.1).
    let both = chunked.is_some() && lengths > 0;
    if matches!(framing, Framing::Close) || both {
        keep_alive = false;
    }

    // Names that `Connection` lists go too (rare: only then is the list built).
    let listed: Vec<&[u8]> = if named {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii))
            .collect()
    } else {
        Vec::new()
    };
    let size: usize = headers.iter().map(|h| h.name.len() + h.value.len()).sum();
    let mut frame = ResponseHeadWriter::new(status, size + 6 * headers.len());
    for h in headers.iter() {
        let hop = hop_by_hop(h.name.as_bytes())
            || listed
                .iter()
                .any(|n| n.eq_ignore_ascii_case(h.name.as_bytes()));
        // A `Content-Length` beside chunked coding is wrong and ignored (RFC 9112 §6.3).
        let ignored = chunked.is_some() && is_name(h.name.as_bytes(), b"content-length");
        if !hop && !ignored {
            frame.push(h.name.as_bytes(), h.value);
        }
    }
    let head = ResponseHead {
        status,
        frame: frame.finish(),
        // The inspector shows what the local service sent, framing headers included.
        recorded: Headers::of_head(Bytes::copy_from_slice(&buf[..n])),
        framing,
    };
    Ok(Parsed::Final(n, head, keep_alive))
}

/// How the answer's body ends.
#[derive(Debug)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// With the last chunk (and trailers).
    Chunked(Chunk),
    /// When the local service closes the connection.
    Close,
}

/// Where a chunked body's decoding stands.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: expecting trailers and the final CRLF.
    Trailers,
}

/// What the buffered bytes hold next.
enum Decoded {
    /// This many bytes at the front of the buffer are body data.
    Data(usize),
    /// The body has ended (with these trailers).
    End(Option<HeaderMap>),
    /// More bytes are needed.
    More,
}

impl Framing {
    /// Decodes the next piece of body at the front of `buf`, consuming framing bytes.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, Error> {
        match self {
            Framing::Length(0) => Ok(Decoded::End(None)),
            Framing::Length(left) => {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let n = (*left).min(buf.len() as u64);
                *left -= n;
                Ok(Decoded::Data(n as usize))
            }
            Framing::Close => Ok(if buf.is_empty() {
                Decoded::More
            } else {
                Decoded::Data(buf.len())
            }),
            Framing::Chunked(state) => loop {
                match *state {
                    Chunk::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((n, size))) => {
                            buf.advance(n);
                            *state = if size == 0 {
                                Chunk::Trailers
                            } else {
                                Chunk::Data(size)
                            };
                        }
                        Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => {
                            return Ok(Decoded::More)
                        }
                        _ => return Err(Error::Invalid("a malformed chunk size".to_owned())),
                    },
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Decoded::More);
                        }
                        let n = left.min(buf.len() as u64);
                        *state = if n == left {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - n)
                        };
                        return Ok(Decoded::Data(n as usize));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Decoded::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(Error::Invalid("a chunk longer than its size".to_owned()));
                        }
                        buf.advance(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                        let (n, fields) = match httparse::parse_headers(buf, &mut slots) {
                            Ok(httparse::Status::Complete(done)) => done,
                            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {
                                return Ok(Decoded::More)
                            }
                            _ => return Err(Error::Invalid("malformed trailers".to_owned())),
                        };
                        let mut trailers = HeaderMap::new();
                        for f in fields {
                            if let (Ok(k), Ok(v)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(k, v);
                            }
                        }
                        buf.advance(n);
                        *self = Framing::Length(0);
                        return Ok(Decoded::End((!trailers.is_empty()).then_some(trailers)));
                    }
                }
            },
        }
    }
}

/// Reads `wire` as a local service's answer to a GET (a HEAD if `head_request`), fed `step`
/// bytes at a time, the way the client does, and panics where an invariant breaks (for the fuzz
/// target `local_answer` and the unit tests):
/// - the answering head frame the client writes decodes on the server, with the same status;
/// - the inspector's copy of the head reads as every header parsed;
/// - the body decoder hands out only bytes that arrived, in their order, and always progresses.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn check_answer(wire: &[u8], head_request: bool, step: usize) {
    let mut rest = wire;
    let (n, mut head) = loop {
        match parse_head(rest, head_request) {
            Ok(Parsed::Informational(n)) => rest = &rest[n..],
            Ok(Parsed::Final(n, head, _)) => break (n, head),
            Ok(Parsed::Partial) | Err(_) => return,
        }
    };
    let parts = crate::head::decode_response(head.frame.clone())
        .unwrap_or_else(|e| panic!("the server refuses the head the client wrote: {e}"));
    assert_eq!(parts.status, head.status);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    assert!(parsed.parse(&rest[..n]).is_ok_and(|s| s.is_complete()));
    assert_eq!(
        head.recorded.len(),
        parsed.headers.len(),
        "the inspector's copy"
    );
    assert!(parts.headers.len() <= parsed.headers.len());

    let body = &rest[n..];
    let (mut buf, mut fed, mut out) = (BytesMut::new(), 0, Vec::new());
    // Each step feeds bytes, hands some out or ends: a bound turns a decoder that stops
    // progressing into a finding instead of a hang.
    let mut steps = 2 * body.len() + 8;
    loop {
        steps = steps
            .checked_sub(1)
            .expect("the body decoder stopped progressing");
        match head.framing.decode(&mut buf) {
            Ok(Decoded::Data(k)) => {
                assert!(k > 0 && k <= buf.len(), "{k} of {} bytes", buf.len());
                out.extend_from_slice(&buf[..k]);
                buf.advance(k);
            }
            Ok(Decoded::More) if fed < body.len() => {
                let end = (fed + step.max(1)).min(body.len());
                buf.extend_from_slice(&body[fed..end]);
                fed = end;
            }
            Ok(Decoded::End(_) | Decoded::More) | Err(_) => break,
        }
    }
    let mut left = body.iter();
    assert!(
        out.iter().all(|b| left.any(|x| x == b)),
        "the body is not made of the bytes that came, in order"
    );
}

/// The answer's body, read from the connection; the connection goes back to the pool through
/// `release` when the body ended cleanly.
pub(crate) struct ResponseBody<F: FnOnce(Conn) + Send + Unpin> {
    conn: Option<Conn>,
    framing: Framing,
    release: Option<F>,
}

impl<F: FnOnce(Conn) + Send + Unpin> ResponseBody<F> {
    /// The body of `head`, read from `conn`.
    pub(crate) fn new(conn: Conn, head: &mut ResponseHead, release: F) -> Self {
        Self {
            conn: Some(conn),
            framing: std::mem::replace(&mut head.framing, Framing::Length(0)),
            release: Some(release),
        }
    }

    fn end(&mut self) {
        if let (Some(conn), Some(release)) = (self.conn.take(), self.release.take()) {
            if conn.reusable && conn.wr.is_some() && conn.buf.is_empty() {
                release(conn);
            }
        }
    }
}

impl<F: FnOnce(Conn) + Send + Unpin> http_body::Body for ResponseBody<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let decoded = match this.framing.decode(&mut conn.buf) {
                Ok(decoded) => decoded,
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            };
            match decoded {
                Decoded::Data(n) => {
                    let data = if n < COPY_BELOW {
                        let data = Bytes::copy_from_slice(&conn.buf[..n]);
                        conn.buf.advance(n);
                        data
                    } else {
                        conn.buf.split_to(n).freeze()
                    };
                    // The last bytes of a body of known length: ended now, so that the
                    // connection is free and `is_end_stream` says so (the answer's last data
                    // then carries the stream's FIN).
                    if matches!(this.framing, Framing::Length(0)) {
                        this.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Decoded::End(trailers) => {
                    this.end();
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                Decoded::More => {}
            }
            conn.buf.reserve(BODY_READ);
            let read = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut conn.rd),
                cx,
                &mut conn.buf
            ));
            match read {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(
                        "the local service closed the connection before the end of the body".into(),
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str, head_request: bool) -> (ResponseHead, bool) {
        match parse_head(text.as_bytes(), head_request) {
            Ok(Parsed::Final(n, head, keep_alive)) => {
                assert_eq!(n, text.len());
                (head, keep_alive)
            }
            Ok(_) => panic!("not a final head: {text:?}"),
            Err(e) => panic!("{e}: {text:?}"),
        }
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                false,
                "Length(5)",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                false,
                "Length(5)",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                true,
                "Length(0)",
                true,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, "Length(0)", true),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                false,
                "Length(0)",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                "Chunked(Size)",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
                false,
                "Chunked(Size)",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, gzip\r\n\r\n",
                false,
                "Close",
                false,
            ),
            // Both: chunked wins, the connection is not reused.
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
                "Chunked(Size)",
                false,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, "Close", false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\nconnection: close\r\n\r\n",
                false,
                "Length(1)",
                false,
            ),
            (
                "HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\n",
                false,
                "Length(1)",
                false,
            ),
        ];
        for (text, head_request, framing, keep_alive) in cases {
            let (head, reuse) = parsed(text, head_request);
            assert_eq!(format!("{:?}", head.framing), framing, "{text:?}");
            assert_eq!(reuse, keep_alive, "{text:?}");
        }
        for bad in [
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 0x10\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: \r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        ] {
            assert!(parse_head(bad.as_bytes(), false).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200", false),
            Ok(Parsed::Informational(25))
        ));
        assert!(matches!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le", false),
            Ok(Parsed::Partial)
        ));
    }

    #[test]
    fn hop_by_hop_headers_stay_here() {
        let (head, _) = parsed(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\n\
             Content-Type: text/plain\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
            false,
        );
        let parts = crate::head::decode_response(head.frame).unwrap();
        let names: Vec<_> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            names,
            [
                ("content-type", "text/plain"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("content-length", "0")
            ]
        );
        let recorded: Vec<_> = head.recorded.iter().collect();
        assert_eq!(
            recorded,
            [
                ("connection", "keep-alive, X-Hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("content-type", "text/plain"),
                ("set-cookie", "a=1"),
                ("set-cookie", "b=2"),
                ("content-length", "0")
            ],
            "the inspector sees what the local service sent"
        );
    }

    #[test]
    fn values_that_are_not_utf8_pass_unchanged_and_are_recorded_lossily() {
        let wire = b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 0\r\n\r\n";
        let Ok(Parsed::Final(_, head, _)) = parse_head(wire, false) else {
            panic!("not parsed");
        };
        let parts = crate::head::decode_response(head.frame).unwrap();
        assert_eq!(parts.headers["x-name"].as_bytes(), b"caf\xe9");
        assert_eq!(head.recorded.get("x-name"), Some("caf\u{fffd}"));
        assert_eq!(head.recorded.get("content-length"), Some("0"));
    }

    /// Decodes `wire` fed in pieces of `step` bytes; returns the data and the trailers.
    fn decode_all(wire: &[u8], step: usize) -> Result<(Vec<u8>, Option<HeaderMap>), Error> {
        let mut framing = Framing::Chunked(Chunk::Size);
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut data = Vec::new();
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Data(n) => {
                    data.extend_from_slice(&buf[..n]);
                    buf.advance(n);
                }
                Decoded::End(trailers) => {
                    assert!(buf.is_empty(), "nothing read past the end");
                    return Ok((data, trailers));
                }
                Decoded::More => {
                    assert!(fed < wire.len(), "wants more than the message");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    /// Mutated answers: parsing and decoding never panic and never hand out bytes that are not
    /// there.
    #[test]
    fn mutated_answers_neither_panic_nor_overrun() {
        use rand::{Rng, SeedableRng};
        let seeds: [&[u8]; 3] = [
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0\r\nx: 1\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: x, close\r\n\r\nabc",
            b"HTTP/1.0 404 Not Found\r\n\r\nuntil the close",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20_000 {
            let mut wire = seeds[rng.random_range(0..seeds.len())].to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..wire.len());
                match rng.random_range(0..3) {
                    0 => wire[at] = rng.random(),
                    1 => drop(wire.remove(at)),
                    _ => wire.insert(at, b"0123456789abcdef\r\n;: "[rng.random_range(0..21)]),
                }
            }
            check_answer(&wire, rng.random_range(0..8) == 0, rng.random_range(1..9));
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 9\r\n\r\n";
        for step in [1, 2, 3, 7, 64] {
            let (data, trailers) = decode_all(wire, step).unwrap();
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
            assert_eq!(trailers.unwrap()["x-sum"], "9");
        }
        let (data, trailers) = decode_all(b"0\r\n\r\n", 1).unwrap();
        assert!(data.is_empty() && trailers.is_none());
        for bad in [
            &b"5\r\nhello!!\r\n0\r\n\r\n"[..],
            b"zz\r\n",
            b"5\r\nhello\r\n0\r\nbad trailer\r\n\r\n",
        ] {
            assert!(
                decode_all(bad, 4).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// The request the server would send for `headers`, prepared.
    fn prepared(headers: &[(&str, &str)], host: Option<&str>, has_body: bool) -> Option<Prepared> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let uri: http::Uri = "/p?q=1".parse().unwrap();
        let frame = crate::head::encode_request(&Method::POST, &uri, &h);
        let raw = crate::head::decode_request_raw(&frame).unwrap().unwrap();
        prepare(
            raw,
            host.map(HeaderValue::from_str)
                .transpose()
                .unwrap()
                .as_ref(),
            has_body,
        )
    }

    #[test]
    fn requests_from_the_server_are_written_as_the_header_map_path_wrote_them() {
        let headers = [
            ("user-agent", "ua"),
            ("host", "app.example.com"),
            ("connection", "keep-alive"),
            ("te", "trailers"),
            ("keep-alive", "timeout=5"),
            ("content-length", "3"),
            ("x-forwarded-for", "203.0.113.9, 198.51.100.7"),
        ];
        let p = prepared(&headers, Some("localhost:3000"), true).unwrap();
        assert_eq!(
            String::from_utf8(p.head.to_vec()).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\nuser-agent: ua\r\nhost: localhost:3000\r\nte: trailers\r\n\
             content-length: 3\r\nx-forwarded-for: 203.0.113.9, 198.51.100.7\r\n\r\n"
        );
        assert!(matches!(p.upload, Upload::Length(3)));
        assert_eq!((p.method, p.path.as_str()), (Method::POST, "/p?q=1"));
        assert_eq!(p.remote.as_deref(), Some("198.51.100.7"));
        let recorded: Vec<_> = p
            .recorded
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        assert_eq!(
            recorded,
            [
                "user-agent: ua",
                "host: localhost:3000",
                "te: trailers",
                "content-length: 3",
                "x-forwarded-for: 203.0.113.9, 198.51.100.7"
            ]
        );

        // The visitor's Host kept; one added where there was none.
        let p = prepared(&headers, None, true).unwrap();
        assert!(String::from_utf8_lossy(&p.head).contains("host: app.example.com\r\n"));
        let p = prepared(&[("accept", "*/*")], Some("localhost:3000"), false).unwrap();
        assert_eq!(
            String::from_utf8(p.head.to_vec()).unwrap(),
            "POST /p?q=1 HTTP/1.1\r\naccept: */*\r\nhost: localhost:3000\r\n\r\n"
        );
        // Framing: chunked without a usable length; a length without a body is 0.
        let p = prepared(&[("content-length", "x")], None, true).unwrap();
        assert!(matches!(p.upload, Upload::Chunked));
        assert!(
            String::from_utf8_lossy(&p.head).ends_with("\r\ntransfer-encoding: chunked\r\n\r\n")
        );
        let p = prepared(&[("content-length", "3")], None, false).unwrap();
        assert!(String::from_utf8_lossy(&p.head).ends_with("\r\ncontent-length: 0\r\n\r\n"));

        // Left to the general path.
        for general in [
            &[("connection", "upgrade"), ("upgrade", "websocket")][..],
            &[("connection", "x-private"), ("x-private", "1")],
            &[("content-length", "3"), ("content-length", "3")],
        ] {
            assert!(prepared(general, None, true).is_none(), "{general:?}");
        }
    }

    #[test]
    fn request_heads_are_framed_for_their_body() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("localhost:3000"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("12"));
        let text = |upload| {
            let head = request_head(&Method::POST, "/a?b=1", &h, upload);
            String::from_utf8(head.to_vec()).unwrap()
        };
        assert_eq!(
            text(upload_framing(&h, true, None)),
            "POST /a?b=1 HTTP/1.1\r\nhost: localhost:3000\r\ncontent-length: 12\r\n\r\n"
        );
        assert_eq!(
            text(Upload::Chunked),
            "POST /a?b=1 HTTP/1.1\r\nhost: localhost:3000\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            text(Upload::None),
            "POST /a?b=1 HTTP/1.1\r\nhost: localhost:3000\r\ncontent-length: 0\r\n\r\n"
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("1, 2"));
        assert!(matches!(upload_framing(&h, true, None), Upload::Chunked));
        h.remove(header::CONTENT_LENGTH);
        assert!(matches!(upload_framing(&h, true, None), Upload::Chunked));
        assert!(matches!(upload_framing(&h, false, None), Upload::None));
        // A body of known length without the header (a replay) is sent with one.
        assert!(matches!(
            upload_framing(&h, true, Some(5)),
            Upload::Length(5)
        ));
        assert_eq!(
            &request_head(&Method::POST, "/a?b=1", &h, Upload::Length(5))[..],
            b"POST /a?b=1 HTTP/1.1\r\nhost: localhost:3000\r\ncontent-length: 5\r\n\r\n"
        );
    }
}
