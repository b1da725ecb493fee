//! The wire protocol: every constant, header name, frame and message shared by client and server.
//!
//! A session is one WebSocket opened with an HTTP upgrade to [`CONNECT_PATH`] (the client builds
//! it in [`crate::client`], the server checks it in its `connect` module). The upgrade request
//! carries, besides the WebSocket headers:
//! - [`HEADER_VERSION`]: [`PROTOCOL_VERSION`], which must match exactly;
//! - `Authorization: Bearer TOKEN`, when the server has tokens;
//! - [`HEADER_CLIENT_ID`]: a random id kept across reconnects;
//! - [`HEADER_SUBDOMAIN`] (optional): the name wanted;
//! - [`HEADER_BASIC_AUTH`], [`HEADER_ALLOW_IPS`] (optional): what visitors must present or where
//!   they must come from;
//! - [`HEADER_TCP_PORT`] (optional): a TCP tunnel on this public port (`0`: any);
//! - [`HEADER_WINDOW`] (optional): the most credit per stream the client accepts.
//!
//! The server either refuses it with an HTTP error whose JSON body is a [`Refusal`], or answers
//! `101 Switching Protocols` with the assigned name and public URL in [`HEADER_NAME`] /
//! [`HEADER_URL`] (and a TCP tunnel's port in [`HEADER_TCP_PORT`], and the server's
//! [`HEADER_WINDOW`]). Pages the server or client writes itself carry a [`PageKind`] code in
//! [`HEADER_ERROR`].
//!
//! After the upgrade every WebSocket binary message carries one or more whole frames of ggrok's
//! multiplexer ([`crate::mux`]): a 10-byte header ([`FRAME_HEADER_LEN`]: type, flags, stream id,
//! payload length, big-endian) and the payload. The server opens one stream per public request
//! (its [`FRAME_OPEN`] payload is the request head, [`crate::head`]), the client answers with a
//! [`FRAME_HEADERS`] frame (the response head) and both send the bodies as [`FRAME_DATA`] frames
//! under per-stream and per-session credit ([`FRAME_WINDOW`]). On a TCP tunnel the server opens one
//! stream per visitor connection instead (an [`OPEN_TCP`] head), which carries its bytes.

use std::time::Duration;

use http::HeaderName;
use serde::{Deserialize, Serialize};

/// Version of this protocol. Bumped on any incompatible change; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 2;

/// Path of the control endpoint on the server's apex domain.
pub const CONNECT_PATH: &str = "/_ggrok/connect";
/// Path of the server's health check on the apex domain: `200 ok` while it serves.
pub const HEALTH_PATH: &str = "/healthz";
/// What the health check answers (`text/plain`).
pub const HEALTH_BODY: &str = "ok\n";
/// Path of the server's metrics (OpenMetrics text) on the apex domain, for the bearer of the
/// server's metrics token.
pub const METRICS_PATH: &str = "/metrics";

/// Request header: the client's protocol version ([`PROTOCOL_VERSION`]).
pub const HEADER_VERSION: &str = "ggrok-protocol";
/// Request header: the subdomain the client wants (absent: the server picks one).
pub const HEADER_SUBDOMAIN: &str = "ggrok-subdomain";
/// Request header: a random id the client keeps across reconnects, so the server can give a
/// dropped client its name back and let it replace its own stale session.
pub const HEADER_CLIENT_ID: &str = "ggrok-client-id";
/// Request header: `user:password` that visitors must present (HTTP Basic) to use the tunnel.
/// Sent only to the server; the server keeps a hash and checks every public request.
pub const HEADER_BASIC_AUTH: &str = "ggrok-basic-auth";
/// Request header: comma-separated IP addresses or CIDR ranges; the server refuses public
/// requests from anywhere else.
pub const HEADER_ALLOW_IPS: &str = "ggrok-allow-ips";
/// Request header: the client wants a TCP tunnel on this public port, or `0` for any port the
/// server picks from its range. Response header on `101`: the port the tunnel got. Without it
/// the session is an HTTP tunnel.
pub const HEADER_TCP_PORT: &str = "ggrok-tcp-port";
/// Request header, and response header on `101`: the most credit per stream, in bytes, the
/// sender of the header accepts from the other side; the other side's readers may grow a busy
/// stream's window up to it (and up to their own value), see [`crate::mux`]. Absent (a side
/// from before growing windows), it is [`STREAM_WINDOW`], and credit beyond that breaks the
/// protocol for such a side. Read with [`window_offer`].
pub const HEADER_WINDOW: &str = "ggrok-window";
/// Response header on `101`: the subdomain assigned to this session (for a TCP tunnel, `tcp:N`).
pub const HEADER_NAME: &str = "ggrok-name";
/// Response header on `101`: the public URL of the tunnel.
pub const HEADER_URL: &str = "ggrok-url";
/// Response header on pages that ggrok itself generated (not the user's service): the error kind.
pub const HEADER_ERROR: &str = "ggrok-error";

/// Request header the server adds for the local service, appending the visitor's address to
/// any chain already there; read from trusted proxies only. Standard, not ggrok's own, but its
/// use is part of what a tunnel promises the local service.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// Request header the server adds: `https` or `http`, how the visitor reached it (a trusted
/// proxy's value is believed).
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// Request header the server adds: the public host the visitor asked for (the client rewrites
/// `Host` to the local target).
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// WebSocket close code (in the range for applications) of a session that a newer session of
/// the same client took over: two processes share one client id. The older one stops instead of
/// taking the tunnel back, which would make the two take turns forever.
pub const CLOSE_REPLACED: u16 = 4001;
/// WebSocket close code of a session whose token was revoked.
pub const CLOSE_REVOKED: u16 = 4002;
/// WebSocket close code of a session ended by the server shutting down (or restarting): the
/// client reconnects.
pub const CLOSE_SHUTDOWN: u16 = 4003;

/// Largest WebSocket message either side accepts. Writers send at most [`MAX_CHUNK`] per
/// message, or one frame of at most [`MAX_HEAD_FRAME`]. Anything bigger is an attack or a bug.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Most bytes of frames a writer packs into one WebSocket message: the frames of many requests
/// in flight leave in one message and one `send`.
pub const MAX_CHUNK: usize = 256 * 1024;
/// Bytes the WebSocket writer may buffer before a write must wait for the socket, so a slow
/// network applies backpressure instead of growing memory.
pub const MAX_WRITE_BUFFER: usize = 4 * MAX_CHUNK;
/// Room made for one socket read of the WebSocket ([`crate::ws`]), unless the message being read
/// needs more; an idle connection keeps none. 32 KiB reads move a large body with few system
/// calls.
pub const READ_BUFFER: usize = 32 * 1024;

/// Streams one session may have open at once in each direction. A stream costs a few hundred
/// bytes of state; the data it buffers counts against [`SESSION_WINDOW`].
pub const MAX_STREAMS: usize = 4096;

/// How often each side pings. PaaS routers drop WebSockets idle for about 55 s.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Silence after which a peer is declared gone: two missed pings plus slack, so a vanished
/// client's name is freed well inside a minute.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(45);

/// Longest subdomain label DNS allows.
pub const MAX_NAME_LEN: usize = 63;

/// Why the server refused a session. Serialized as the JSON body of the refusing response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable kind.
    pub error: RefusalKind,
    /// One sentence for a human.
    pub message: String,
}

/// The kinds of [`Refusal`]. Every kind except [`RefusalKind::Unavailable`] and
/// [`RefusalKind::RateLimited`] is final: retrying the same request cannot succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// Missing or unknown token.
    Unauthorized,
    /// The name is held by another live client (or held for one that just dropped).
    NameTaken,
    /// The name is reserved for a different token.
    NameReserved,
    /// The name is not a valid DNS label.
    InvalidName,
    /// Client and server speak different protocol versions.
    VersionMismatch,
    /// The upgrade request itself was malformed.
    BadRequest,
    /// The server cannot take the session now (shutting down, database down); retry later.
    Unavailable,
    /// Too many connect attempts from this address; retry later.
    RateLimited,
    /// The token already has as many tunnels as the server allows.
    TooManyTunnels,
    /// The server offers no TCP tunnels (it was started without a TCP port range).
    TcpDisabled,
    /// The asked-for port is outside the server's TCP port range.
    PortOutOfRange,
    /// The port is held by another live client (or held for one that just dropped), or
    /// something else on the server's host listens on it.
    PortTaken,
    /// The port is reserved for a different token.
    PortReserved,
    /// Every port of the range is taken.
    NoFreePort,
}

impl RefusalKind {
    /// HTTP status the server answers with.
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::NameTaken => 409,
            Self::NameReserved => 403,
            Self::InvalidName | Self::BadRequest => 400,
            Self::VersionMismatch => 426,
            Self::Unavailable => 503,
            Self::RateLimited => 429,
            Self::TooManyTunnels => 403,
            Self::TcpDisabled => 501,
            Self::PortOutOfRange => 400,
            Self::PortTaken => 409,
            Self::PortReserved => 403,
            Self::NoFreePort => 503,
        }
    }

    /// The wire name (as in the JSON body).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NameTaken => "name_taken",
            Self::NameReserved => "name_reserved",
            Self::InvalidName => "invalid_name",
            Self::VersionMismatch => "version_mismatch",
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
            Self::TooManyTunnels => "too_many_tunnels",
            Self::TcpDisabled => "tcp_disabled",
            Self::PortOutOfRange => "port_out_of_range",
            Self::PortTaken => "port_taken",
            Self::PortReserved => "port_reserved",
            Self::NoFreePort => "no_free_port",
        }
    }

    /// Whether a client should give up rather than retry.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Unavailable | Self::RateLimited)
    }
}

impl Refusal {
    /// A refusal of `kind` with a human message.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            error: kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Kinds of error page ggrok generates itself, sent in [`HEADER_ERROR`] and as `error` in the JSON form of the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageKind {
    /// No tunnel holds the requested name.
    TunnelNotFound,
    /// The tunnel is online but the local service refused or failed.
    LocalUnreachable,
    /// The tunnel's session broke while the request was in flight.
    TunnelLost,
    /// The tunnel's client dropped and its name is held for it, but it is not back yet.
    TunnelReconnecting,
    /// The request itself is unusable.
    BadRequest,
    /// The visitor's address is not on the tunnel's allowlist.
    Forbidden,
    /// The tunnel needs credentials the visitor did not give.
    Unauthorized,
    /// Too many requests.
    RateLimited,
    /// Anything on the server's own endpoints that does not exist.
    NotFound,
}

impl PageKind {
    /// The code sent in the `ggrok-error` header.
    pub fn code(self) -> &'static str {
        match self {
            Self::TunnelNotFound => "tunnel_not_found",
            Self::LocalUnreachable => "local_unreachable",
            Self::TunnelLost => "tunnel_lost",
            Self::TunnelReconnecting => "tunnel_reconnecting",
            Self::BadRequest => "bad_request",
            Self::Forbidden => "forbidden",
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
        }
    }

    /// Every kind, in declaration order.
    pub const ALL: [PageKind; 9] = [
        Self::TunnelNotFound,
        Self::LocalUnreachable,
        Self::TunnelLost,
        Self::TunnelReconnecting,
        Self::BadRequest,
        Self::Forbidden,
        Self::Unauthorized,
        Self::RateLimited,
        Self::NotFound,
    ];

    /// The kind whose [`code`](Self::code) is `code`; `None` for anything else (a page from a
    /// client is untrusted: an unknown code must not become a new metric series).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.code() == code)
    }
}

/// Why a subdomain is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty string.
    #[error("subdomain is empty")]
    Empty,
    /// Longer than a DNS label may be.
    #[error("subdomain is {0} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// A character outside `[a-z0-9-]`.
    #[error("subdomain may contain only a-z, 0-9 and '-' (found {0:?})")]
    BadChar(char),
    /// An uppercase letter: names are lowercase so that one name is one URL.
    #[error("subdomain must be lowercase (found {0:?})")]
    Uppercase(char),
    /// Starts or ends with a hyphen.
    #[error("subdomain may not start or end with '-'")]
    EdgeHyphen,
}

/// Checks that `name` is a lowercase DNS label: `[a-z0-9-]`, 1–63 characters, no edge hyphens.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.chars().count()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(if c.is_ascii_uppercase() {
            NameError::Uppercase(c)
        } else {
            NameError::BadChar(c)
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen);
    }
    Ok(())
}

/// Our WebSocket limits, for tungstenite where it speaks to a session (tests, tools, fuzzing).
pub fn websocket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(MAX_CHUNK)
        .max_write_buffer_size(MAX_WRITE_BUFFER + MAX_MESSAGE)
}

/// Says in `headers` that we accept `window` bytes of credit per stream ([`HEADER_WINDOW`]);
/// says nothing for [`STREAM_WINDOW`], as a side from before growing windows.
pub fn offer_window(headers: &mut http::HeaderMap, window: u32) {
    if window > STREAM_WINDOW {
        headers.insert(HEADER_WINDOW, http::HeaderValue::from(window));
    }
}

/// The stream credit the sender of `headers` accepts ([`HEADER_WINDOW`]): [`STREAM_WINDOW`]
/// when it says nothing, something unreadable, or less.
pub fn window_offer(headers: &http::HeaderMap) -> u32 {
    headers
        .get(HEADER_WINDOW)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u32>().ok())
        .map_or(STREAM_WINDOW, |w| w.max(STREAM_WINDOW))
}

// ---- Between the nodes of a server cluster ----

/// Path on a node's apex where another node of its cluster opens the session that carries its
/// hops (`Authorization: Bearer CLUSTER_SECRET` on the upgrade). Each stream of that session is
/// one visitor's request (or upgraded connection) for a tunnel the accepting node holds, in the
/// hop format both nodes speak ([`HOP_VERSION`]), or one visitor connection of a TCP tunnel: a
/// text [`HopHead`] with its port, then the connection's bytes.
pub const PEER_PATH: &str = "/_ggrok/peer";

/// Response header on the `101` that opens a session at [`PEER_PATH`]: the newest hop format
/// the accepting node serves. Nodes from before format 2 send none, which means format 1.
pub const HEADER_HOP_VERSION: &str = "ggrok-hop";

/// The newest hop format. A node serves every format up to its own, telling them apart by the
/// first byte of a stream's OPEN head, and sends the newest both nodes speak, so that a
/// cluster can be upgraded node by node:
/// - 1: the OPEN head is a text [`HopHead`]; the stream carries the request as HTTP/1.1.
/// - 2: the OPEN head is [`HopHead::encode_request`]'s (the visitor, then the request head as
///   [`crate::head`] writes it), the bodies are DATA frames and the answer a HEADERS frame:
///   the frames a server and a client exchange. After a `101` the stream is a byte pipe.
pub const HOP_VERSION: u32 = 2;

/// First byte of a format-2 hop head: a text [`HopHead`] starts with an address, never with it.
pub const HOP_HTTP: u8 = 0;

/// Who the visitor of a hopped request is, as the node it reached saw it: the holder enforces
/// the tunnel's allowlist and writes `X-Forwarded-For` from it, so a hop changes neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopHead {
    /// The visitor's address.
    pub ip: std::net::IpAddr,
    /// Came over TLS (to the first node, or to a proxy it trusts).
    pub secure: bool,
    /// Came through a proxy the first node trusts, whose `X-Forwarded-For` already names the
    /// visitor.
    pub proxied: bool,
    /// A connection to this public port of a TCP tunnel, rather than an HTTP request.
    pub tcp_port: Option<u16>,
}

impl HopHead {
    /// `IP SECURE PROXIED`, the flags as `0`/`1`, then ` PORT` for a TCP connection.
    pub fn encode(&self) -> bytes::Bytes {
        let flag = |b: bool| if b { '1' } else { '0' };
        let head = format!("{} {} {}", self.ip, flag(self.secure), flag(self.proxied));
        match self.tcp_port {
            Some(port) => format!("{head} {port}").into(),
            None => head.into(),
        }
    }

    /// Reads what [`HopHead::encode`] wrote; `None` for anything else.
    pub fn decode(head: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(head).ok()?;
        let mut parts = text.split(' ');
        let ip = parts.next()?.parse().ok()?;
        let flag = |p: Option<&str>| match p? {
            "0" => Some(false),
            "1" => Some(true),
            _ => None,
        };
        let secure = flag(parts.next())?;
        let proxied = flag(parts.next())?;
        let tcp_port = match parts.next() {
            Some(port) => Some(port.parse().ok().filter(|&p: &u16| p > 0)?),
            None => None,
        };
        parts.next().is_none().then_some(Self {
            ip,
            secure,
            proxied,
            tcp_port,
        })
    }
}

/// What the OPEN head of a stream between nodes asks for.
#[derive(Debug)]
// Decoded once per hop and unpacked at once: boxing the request would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum HopOpen {
    /// Format 2: an HTTP request from this visitor; its body follows as DATA frames.
    Request(HopHead, http::request::Parts),
    /// Format 1 ([`HopHead::encode`]): a TCP connection when `tcp_port` is set, else a request
    /// as HTTP/1.1 on the stream.
    Text(HopHead),
}

/// Why the OPEN head of a stream between nodes does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    /// Neither format's visitor part.
    #[error("a hop starts with who its visitor is")]
    Visitor,
    /// A format-2 head whose request part names a TCP connection.
    #[error("a hop's request head must be an HTTP request")]
    NotHttp,
    /// A format-2 head whose request part does not decode.
    #[error("the hop's request head: {0}")]
    Head(#[from] crate::head::HeadError),
}

impl HopHead {
    /// The OPEN head of a format-2 hop ([`HOP_VERSION`]): [`HOP_HTTP`], flags (`u8`: 1 secure,
    /// 2 proxied), the address (`u8` length, 4 or 16, then its bytes), then the request head as
    /// [`crate::head::encode_request`] writes it. `tcp_port` plays no part: TCP connections
    /// hop with [`HopHead::encode`].
    pub fn encode_request(
        &self,
        method: &http::Method,
        uri: &http::Uri,
        headers: &http::HeaderMap,
    ) -> bytes::Bytes {
        use bytes::BufMut;
        let request = crate::head::encode_request(method, uri, headers);
        let mut out = bytes::BytesMut::with_capacity(MAX_HOP_VISITOR + request.len());
        self.put_visitor(&mut out);
        out.put_slice(&request);
        out.freeze()
    }

    /// The OPEN head of a format-2 hop written header by header, as they are parsed off the
    /// visitor's connection: for the same method, target and headers in the same order, the
    /// bytes [`encode_request`](Self::encode_request) writes. `size`: room for the headers
    /// (with their lengths).
    pub fn request_writer(
        &self,
        method: &[u8],
        target: &[u8],
        size: usize,
    ) -> crate::head::HeadWriter {
        let mut prefix = [0u8; MAX_HOP_VISITOR];
        let mut rest = &mut prefix[..];
        self.put_visitor(&mut rest);
        let n = MAX_HOP_VISITOR - rest.len();
        crate::head::HeadWriter::request_after(&prefix[..n], method, target, size)
    }

    /// The visitor part of a format-2 head: [`HOP_HTTP`], flags, address.
    fn put_visitor(&self, out: &mut impl bytes::BufMut) {
        out.put_u8(HOP_HTTP);
        out.put_u8(u8::from(self.secure) | u8::from(self.proxied) << 1);
        match self.ip {
            std::net::IpAddr::V4(ip) => {
                out.put_u8(4);
                out.put_slice(&ip.octets());
            }
            std::net::IpAddr::V6(ip) => {
                out.put_u8(16);
                out.put_slice(&ip.octets());
            }
        }
    }
}

/// The longest visitor part of a format-2 hop head: an IPv6 address's.
const MAX_HOP_VISITOR: usize = 3 + 16;

/// The visitor part of a format-2 hop head, and where the request head after it starts.
fn hop_visitor(head: &[u8]) -> Result<(HopHead, usize), HopError> {
    let (flags, len) = match head.get(..3) {
        Some(&[HOP_HTTP, flags, len]) if flags <= 3 => (flags, usize::from(len)),
        _ => return Err(HopError::Visitor),
    };
    let ip: std::net::IpAddr = match head.get(3..3 + len) {
        Some(b) if len == 4 => <[u8; 4]>::try_from(b)
            .map_err(|_| HopError::Visitor)?
            .into(),
        Some(b) if len == 16 => <[u8; 16]>::try_from(b)
            .map_err(|_| HopError::Visitor)?
            .into(),
        _ => return Err(HopError::Visitor),
    };
    let visitor = HopHead {
        ip,
        secure: flags & 1 != 0,
        proxied: flags & 2 != 0,
        tcp_port: None,
    };
    Ok((visitor, 3 + len))
}

/// Reads a hop's OPEN head in either format (see [`HOP_VERSION`]).
pub fn decode_hop(head: bytes::Bytes) -> Result<HopOpen, HopError> {
    if head.first() != Some(&HOP_HTTP) {
        return HopHead::decode(&head)
            .map(HopOpen::Text)
            .ok_or(HopError::Visitor);
    }
    let (visitor, at) = hop_visitor(&head)?;
    match crate::head::decode_open(head.slice(at..))? {
        crate::head::Open::Http(parts) => Ok(HopOpen::Request(visitor, parts)),
        crate::head::Open::Tcp(_) => Err(HopError::NotHttp),
    }
}

/// Reads a format-2 hop's OPEN head in place ([`crate::head::decode_request_raw`]), for a holder
/// that writes the tunnel's opening head from it without building a header map; `Ok(None)` for a
/// format-1 head. It refuses what [`decode_hop`] refuses (not always for the same reason), except
/// targets that `http::Uri` would not take: a caller that relies on [`decode_hop`]'s judgement of
/// the target checks it itself.
pub fn decode_hop_raw(
    head: &[u8],
) -> Result<Option<(HopHead, crate::head::RawRequest<'_>)>, HopError> {
    if head.first() != Some(&HOP_HTTP) {
        return Ok(None);
    }
    let (visitor, at) = hop_visitor(head)?;
    match crate::head::decode_request_raw(&head[at..])? {
        Some(request) => Ok(Some((visitor, request))),
        None => Err(HopError::NotHttp),
    }
}

// ---- Multiplexer frames (see `crate::mux`) ----

/// Bytes of a frame header: type (u8), flags (u8), stream id (u32), payload length (u32).
pub const FRAME_HEADER_LEN: usize = 10;
/// Frame type: stream data. Counts against the stream's and the session's credit.
pub const FRAME_DATA: u8 = 0;
/// Frame type: opens a stream; the payload is the opening head (an HTTP request head, or a TCP
/// connection's). Stream ids of the side that accepted the WebSocket (the server) are odd, those
/// of the side that opened it even; each side's ids only grow.
pub const FRAME_OPEN: u8 = 1;
/// Frame type: the answering head on a stream the peer opened (an HTTP response head), or with
/// [`FLAG_TRAILERS`] the trailers that end a body.
pub const FRAME_HEADERS: u8 = 2;
/// Frame type: the stream is aborted in both directions; payload: code (u32, `RESET_*`) and a
/// UTF-8 reason of at most [`MAX_RESET_REASON`] bytes.
pub const FRAME_RESET: u8 = 3;
/// Frame type: credit; payload: increment (u32). Stream id 0 grants session credit.
pub const FRAME_WINDOW: u8 = 4;

/// First byte of an [`FRAME_OPEN`] payload: the stream carries an HTTP request (its head
/// follows, see [`crate::head`]).
pub const OPEN_HTTP: u8 = 1;
/// First byte of an [`FRAME_OPEN`] payload: the stream carries a TCP connection (the
/// visitor's address follows).
pub const OPEN_TCP: u8 = 2;

/// Flag: the sender's half of the stream ends with this frame.
pub const FLAG_FIN: u8 = 1;
/// Flag on [`FRAME_HEADERS`]: these are trailers (and the sender's half ends).
pub const FLAG_TRAILERS: u8 = 2;

/// Largest payload of one DATA frame. Writers split larger writes; a frame of 16 KiB or more
/// travels in a WebSocket message of its own, so the reader keeps it without copying.
pub const MAX_DATA_FRAME: usize = 64 * 1024;
/// Largest payload of an OPEN or HEADERS frame: a 64 KiB request head plus what the server adds.
pub const MAX_HEAD_FRAME: usize = 128 * 1024;
/// Longest reason a RESET frame carries.
pub const MAX_RESET_REASON: usize = 256;
/// Credit each stream starts with in each direction: the most unread data a stream can make its
/// reader hold. A full window in flight keeps one large transfer at loopback speed.
pub const STREAM_WINDOW: u32 = 256 * 1024;
/// The largest window a busy stream grows to, offered in [`HEADER_WINDOW`]. One download
/// through a TCP tunnel on loopback went from 0.64–0.72× to 0.77–0.81× bore's throughput with
/// a fixed window of this size (`docs/benchmarks.md`); four downloads together lost with it,
/// which the session's budget for grown windows (one stream's growth) prevents.
pub const MAX_STREAM_WINDOW: u32 = 1024 * 1024;
/// Credit a session starts with in each direction, shared by its streams: DATA, OPEN and HEADERS
/// payloads all count, so this bounds what a peer can make us buffer, however many streams.
pub const SESSION_WINDOW: u32 = 16 * 1024 * 1024;

/// RESET code: the sender no longer wants the stream (a visitor left, a body was dropped).
pub const RESET_CANCEL: u32 = 0;
/// RESET code: the stream was not accepted (too many streams, or opening is not allowed).
pub const RESET_REFUSED: u32 = 1;
/// RESET code: the stream's head or framing was malformed.
pub const RESET_PROTOCOL: u32 = 2;
/// RESET code: the stream's reader read nothing for the stall timeout while data waited.
pub const RESET_STALLED: u32 = 3;
/// RESET code: the local service could not be reached (TCP tunnels); the reason says why.
pub const RESET_UNREACHABLE: u32 = 4;
/// RESET code: the request body failed (malformed, cut off, or stalled at the visitor).
pub const RESET_BODY: u32 = 5;

/// WebSocket close code of a session that broke the framing rules.
pub const CLOSE_PROTOCOL: u16 = 1002;

/// Liveness settings for one side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often to ping.
    pub interval: Duration,
    /// Silence after which the peer is declared gone.
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval: PING_INTERVAL,
            timeout: PEER_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_heads_round_trip_and_refuse_anything_else() {
        for head in [
            HopHead {
                ip: "203.0.113.5".parse().unwrap(),
                secure: true,
                proxied: false,
                tcp_port: None,
            },
            HopHead {
                ip: "2001:db8::1".parse().unwrap(),
                secure: false,
                proxied: true,
                tcp_port: Some(2222),
            },
        ] {
            assert_eq!(HopHead::decode(&head.encode()), Some(head));
        }
        for bad in [
            "",
            "1.2.3.4",
            "1.2.3.4 1",
            "1.2.3.4 1 2",
            "x 1 1",
            "1.2.3.4 1 1 0",
            "1.2.3.4 1 1 x",
            "1.2.3.4 1 1 22 1",
        ] {
            assert_eq!(HopHead::decode(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn format_2_hop_heads_round_trip_and_both_formats_decode() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, "app.example.com".parse().unwrap());
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        let uri: http::Uri = "/p?q=1".parse().unwrap();
        for (ip, secure, proxied) in [
            ("203.0.113.5", true, false),
            ("2001:db8::1", false, true),
            ("127.0.0.1", true, true),
        ] {
            let visitor = HopHead {
                ip: ip.parse().unwrap(),
                secure,
                proxied,
                tcp_port: None,
            };
            let head = visitor.encode_request(&http::Method::POST, &uri, &headers);
            let Ok(HopOpen::Request(got, parts)) = decode_hop(head) else {
                panic!("{ip}: not a format-2 request");
            };
            assert_eq!(got, visitor);
            assert_eq!(
                (parts.method, parts.uri, &parts.headers),
                (http::Method::POST, uri.clone(), &headers)
            );
        }
        // Format 1 still decodes: TCP hops, and nodes from before format 2.
        let tcp = HopHead {
            ip: "192.0.2.7".parse().unwrap(),
            secure: false,
            proxied: false,
            tcp_port: Some(2222),
        };
        match decode_hop(tcp.encode()) {
            Ok(HopOpen::Text(got)) => assert_eq!(got, tcp),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn format_2_hop_heads_written_header_by_header_and_read_in_place_are_the_mapped_ones() {
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::HOST, "app.example.com".parse().unwrap());
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        for ip in ["203.0.113.5", "2001:db8::1"] {
            let visitor = HopHead {
                ip: ip.parse().unwrap(),
                secure: true,
                proxied: ip.contains(':'),
                tcp_port: None,
            };
            let mapped =
                visitor.encode_request(&http::Method::PUT, &"/p?q".parse().unwrap(), &headers);
            let mut w = visitor.request_writer(b"PUT", b"/p?q", 0);
            w.push(b"Host", b"app.example.com");
            w.push(b"x-a", b"1");
            w.push(b"X-A", b"2");
            assert_eq!(w.finish(), mapped, "{ip}");

            let (got, raw) = decode_hop_raw(&mapped).unwrap().unwrap();
            assert_eq!(got, visitor);
            assert_eq!((raw.method, raw.target), (http::Method::PUT, "/p?q"));
            let want: Vec<(&[u8], &[u8])> = vec![
                (b"host", b"app.example.com"),
                (b"x-a", b"1"),
                (b"x-a", b"2"),
            ];
            assert_eq!(raw.headers, want);
            // Whatever the mapped decoding refuses, so does this one (nothing at all is no
            // format-2 head: format 1's to refuse).
            assert!(decode_hop_raw(&[]).unwrap().is_none());
            for n in 1..mapped.len() {
                assert!(decode_hop(mapped.slice(..n)).is_err());
                assert!(decode_hop_raw(&mapped[..n]).is_err(), "cut at {n}");
            }
        }
        let text = HopHead {
            ip: "192.0.2.7".parse().unwrap(),
            secure: false,
            proxied: false,
            tcp_port: Some(2222),
        };
        assert!(decode_hop_raw(&text.encode()).unwrap().is_none());
        let mut tcp = vec![HOP_HTTP, 0, 4, 1, 2, 3, 4];
        tcp.extend_from_slice(&crate::head::encode_tcp("192.0.2.1:1"));
        assert_eq!(decode_hop_raw(&tcp).unwrap_err(), HopError::NotHttp);
    }

    #[test]
    fn malformed_hop_heads_are_refused_with_a_reason() {
        let visitor = HopHead {
            ip: "203.0.113.5".parse().unwrap(),
            secure: true,
            proxied: false,
            tcp_port: None,
        };
        let good = visitor.encode_request(
            &http::Method::GET,
            &"/".parse().unwrap(),
            &http::HeaderMap::new(),
        );
        // Every truncation fails cleanly: in the visitor part, then in the request head.
        for n in 0..good.len() {
            let err = decode_hop(good.slice(..n)).unwrap_err();
            let want_visitor = n < 7;
            assert_eq!(matches!(err, HopError::Visitor), want_visitor, "cut at {n}");
        }
        let mut extra = good.to_vec();
        extra.push(0);
        assert!(matches!(decode_hop(extra.into()), Err(HopError::Head(_))));
        // Unknown flags, address lengths other than 4 and 16.
        for bad in [
            &[HOP_HTTP, 4, 4, 1, 2, 3, 4][..],
            &[HOP_HTTP, 0, 5, 1, 2, 3, 4, 5],
            &[HOP_HTTP, 0, 0],
        ] {
            let mut bad = bad.to_vec();
            bad.extend_from_slice(&good[7..]);
            assert_eq!(decode_hop(bad.into()).unwrap_err(), HopError::Visitor);
        }
        // A TCP connection's head where a request's belongs.
        let mut tcp = good[..7].to_vec();
        tcp.extend_from_slice(&crate::head::encode_tcp("192.0.2.1:1"));
        assert_eq!(decode_hop(tcp.into()).unwrap_err(), HopError::NotHttp);
        // Neither format.
        for bad in [&b""[..], b"\x01GET /", b"hello"] {
            assert_eq!(
                decode_hop(bytes::Bytes::copy_from_slice(bad)).unwrap_err(),
                HopError::Visitor
            );
        }
    }

    #[test]
    fn names() {
        assert_eq!(validate_name("myapp"), Ok(()));
        assert_eq!(validate_name("a-1"), Ok(()));
        assert_eq!(validate_name(&"a".repeat(63)), Ok(()));
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"a".repeat(64)), Err(NameError::TooLong(64)));
        assert_eq!(validate_name("My"), Err(NameError::Uppercase('M')));
        assert_eq!(validate_name("a_b"), Err(NameError::BadChar('_')));
        assert_eq!(validate_name("a.b"), Err(NameError::BadChar('.')));
        assert_eq!(validate_name("-a"), Err(NameError::EdgeHyphen));
        assert_eq!(validate_name("a-"), Err(NameError::EdgeHyphen));
    }

    #[test]
    fn page_codes_round_trip() {
        for kind in PageKind::ALL {
            assert_eq!(PageKind::from_code(kind.code()), Some(kind));
        }
        assert_eq!(PageKind::from_code("made_up"), None);
    }

    #[test]
    fn refusal_json_round_trip() {
        let r = Refusal::new(RefusalKind::NameTaken, "taken");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"error":"name_taken","message":"taken"}"#);
        assert_eq!(serde_json::from_str::<Refusal>(&json).unwrap(), r);
        for kind in [
            RefusalKind::Unauthorized,
            RefusalKind::VersionMismatch,
            RefusalKind::Unavailable,
            RefusalKind::TcpDisabled,
            RefusalKind::PortOutOfRange,
            RefusalKind::PortTaken,
            RefusalKind::PortReserved,
            RefusalKind::NoFreePort,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
