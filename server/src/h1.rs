//! The server's own HTTP/1.1 for the request nearly every visitor sends: a plain HTTP/1.1 request
//! for a tunnel online on this node, or in a cluster held by another node, without a body or
//! with a small one that came whole with its head (a `Content-Length` within [`MAX_HEAD`] with
//! the head, in the buffer already). The head is parsed in place by `httparse`, the stream's
//! opening head is written straight from it (the tunnel's, or the hop's to the node holding the
//! tunnel: see `cluster::hop`), and the answering head and body are written back as HTTP/1.1:
//! no header map on either side, no dispatch between a request and its connection. hyper's
//! HTTP/1.1 server with its header maps was about half of the server's instructions per request
//! (docs/benchmarks.md, "Why it is built this way").
//!
//! Everything else goes to hyper, with the connection and what was read of it, for the rest of
//! the connection's life: a chunked, larger or late body, an upgrade, `Expect`, `TE`, a
//! `Connection` that names headers, a host or target outside the plain forms, a tunnel not online
//! here (nor placed on another node by a cluster's table), or protected by a password, a refused
//! rate, HTTP/1.0, a head `httparse` refuses or that is too large, a hop to a node that speaks
//! only hop format 1, and every connection from a trusted proxy. The [`Router`] then serves it
//! exactly as before, so every page, limit and check keeps one implementation; this path only
//! ever forwards. A hopped request's password, allowlist and rate are the holder's to check, as
//! for every hop.
//!
//! [`Router`]: crate::router::Router

use std::{
    future::Future,
    mem::MaybeUninit,
    ops::Range,
    pin::{pin, Pin},
    sync::Arc,
    task::Poll,
    time::{Instant, SystemTime},
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use ggrok_tunnel::{
    head::{self, HeadWriter},
    http_util::{accept_wants_json, hop_by_hop, is_name, Body},
    mux::{Item, MuxError, MuxStream},
    protocol::{self, HopHead, PageKind, HEADER_ERROR, RESET_PROTOCOL},
    stop::StopWatch,
};
use http::{header, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use crate::{
    cluster::{hop, node::Place},
    cookies,
    proxy::Refuse,
    registry::Endpoint,
    router::MAX_HEAD,
    shard::Prefixed,
    state::Shared,
    visitor::{self, Visitor},
};

/// Headers a head may have on this path; hyper allows as many, and serves a head with more.
pub(crate) const MAX_HEADERS: usize = 100;

/// Body bytes gathered behind a head before they are written: a small answer goes out in one
/// write, a large one in writes of its own frames, not copied.
const GATHER: usize = 16 * 1024;

/// Serves the requests of `io` on this path for as long as they are plain; `None` once the
/// connection is done, or the connection with what was read of it put back in front, for hyper
/// to serve from the request this path does not take.
pub(crate) async fn serve<I>(
    shared: &Arc<Shared>,
    mut io: I,
    visitor: &Visitor,
) -> Option<Prefixed<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // A trusted proxy's requests name their visitor in headers (`Visitor::through`): the
    // router's.
    let config = &shared.config;
    if visitor::is_trusted(&config.trusted_proxies, visitor.ip) {
        return Some(Prefixed::new(Bytes::new(), io));
    }
    let mut buf = BytesMut::new();
    // Watched for all the connection's requests: set up once, not per request.
    let mut draining = StopWatch::new(shared.draining.cancelled());
    let mut timer = pin!(tokio::time::sleep(config.header_read_timeout));
    loop {
        // Like hyper, the header-read timeout runs from the moment the connection is idle, and a
        // connection idle when the server starts draining closes.
        let deadline = tokio::time::Instant::now() + config.header_read_timeout;
        let next = next_head(shared, visitor, &mut io, &mut buf);
        let plan = match draining.until(within(timer.as_mut(), deadline, next)).await {
            Ok(Some(Next::Forward(plan))) => plan,
            Ok(Some(Next::Hyper)) => return Some(Prefixed::new(buf.freeze(), io)),
            Ok(Some(Next::Closed)) | Err(()) => return None,
            Ok(None) => {
                debug!(peer = %visitor.peer, "connection sent no request head in time");
                return None;
            }
        };
        let len = plan.head_len + plan.body_len;
        match forward(shared, &mut io, &mut buf, plan).await {
            After::Next => buf.advance(len),
            After::Close => {
                let _ = io.shutdown().await;
                return None;
            }
            // Nothing was written: hyper serves the request from its first byte.
            After::Hyper => return Some(Prefixed::new(buf.freeze(), io)),
        }
    }
}

/// `work`'s output, or `None` if `deadline` passes first. `timer` lives as long as the
/// connection and is moved only when it fires (at most once per timeout), not re-armed for every
/// request: a timeout per request was a timer wheel insertion and removal each time.
async fn within<W: Future>(
    mut timer: Pin<&mut tokio::time::Sleep>,
    deadline: tokio::time::Instant,
    work: W,
) -> Option<W::Output> {
    let mut work = pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() >= deadline {
                return Poll::Ready(None);
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// What the connection holds next.
enum Next {
    /// A request this path forwards.
    Forward(Plan),
    /// A request for hyper (see the module's documentation).
    Hyper,
    /// The connection closed between requests, or failed.
    Closed,
}

/// A request this path forwards, decided from its head.
struct Plan {
    /// The head's length at the front of the buffer (the buffer keeps it until the answer is
    /// written: `accept` and `name` point into it).
    head_len: usize,
    /// The body's, after the head.
    body_len: usize,
    to: To,
    /// The stream's opening head.
    open: Bytes,
    /// Where the tunnel's name is in the buffer.
    name: Range<usize>,
    /// A `HEAD` request, whose answer has no body.
    head_request: bool,
    /// The visitor asked to close after this request.
    close: bool,
    /// Where the `Accept` value is in the buffer: only an error page needs it.
    accept: Option<Range<usize>>,
}

/// Reads until `buf` holds a whole head and decides who serves it.
async fn next_head<I>(shared: &Shared, visitor: &Visitor, io: &mut I, buf: &mut BytesMut) -> Next
where
    I: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            match plan(shared, visitor, buf) {
                Planned::Forward(plan) => return Next::Forward(plan),
                Planned::Hyper => return Next::Hyper,
                // hyper answers a head over the limit (431); a body that does not fit is
                // streamed by hyper.
                Planned::Partial if buf.len() >= MAX_HEAD => return Next::Hyper,
                Planned::Partial => {}
            }
        }
        buf.reserve(4096);
        match io.read_buf(buf).await {
            Ok(0) if buf.is_empty() => return Next::Closed,
            // A head cut off by the close: hyper says what that gets.
            Ok(0) => return Next::Hyper,
            Ok(_) => {}
            Err(e) => {
                debug!(%e, peer = %visitor.peer, "connection failed");
                return Next::Closed;
            }
        }
    }
}

/// Where a planned request goes.
enum To {
    /// The tunnel's session here.
    Local(Arc<Endpoint>),
    /// The node of the cluster that holds the tunnel, over the hop.
    Hop { id: String, advertise: String },
}

enum Planned {
    Forward(Plan),
    Hyper,
    Partial,
}

/// Decides what serves the head at the front of `buf`: [`parse`], then the node the cluster's
/// table places the tunnel on, or the tunnel online here and open to this visitor at this rate.
fn plan(shared: &Shared, visitor: &Visitor, buf: &[u8]) -> Planned {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let parsed = match parse(buf, &shared.config.domain, &mut slots) {
        Read::Plain(parsed) => parsed,
        Read::Hyper => return Planned::Hyper,
        Read::Partial => return Planned::Partial,
    };
    // In a cluster, a tunnel the cluster's table places here is served here and one it places
    // on another node is hopped there; the router looks up names the table does not know yet.
    let place = match &shared.config.cluster {
        Some(node) => node.place(parsed.name),
        None => Place::Local,
    };
    let (to, open) = match place {
        Place::Local => {
            let Some(route) = shared.registry.endpoint(parsed.name) else {
                return Planned::Hyper;
            };
            // The password is checked, and the visitor told why not, by the router; so is the
            // rate.
            if route.policy.consumes_authorization()
                || !route.policy.allows(visitor.ip)
                || !shared.request_limit.allow(&route.name)
            {
                return Planned::Hyper;
            }
            (To::Local(route), parsed.open_local(visitor))
        }
        // The holder checks the password, the allowlist and the rate, as for every hop.
        Place::Node { id, advertise } => (To::Hop { id, advertise }, parsed.open_hop(visitor)),
        Place::Nowhere => return Planned::Hyper,
    };
    Planned::Forward(Plan {
        head_len: parsed.head_len,
        body_len: parsed.body_len,
        to,
        open,
        name: offset(buf, parsed.name.as_bytes()),
        head_request: parsed.head_request,
        close: parsed.close,
        accept: parsed.accept,
    })
}

/// What [`parse`] makes of the bytes at the front of a connection's buffer.
#[derive(Debug)]
pub(crate) enum Read<P> {
    /// A plain request.
    Plain(P),
    /// A request for hyper.
    Hyper,
    /// Not a whole head yet.
    Partial,
}

/// A plain request's head, parsed in place: what [`Parsed::open_local`] and
/// [`Parsed::open_hop`] write opening heads from.
pub(crate) struct Parsed<'h, 'b> {
    req: httparse::Request<'h, 'b>,
    /// The tunnel it is for (not yet looked up).
    pub(crate) name: &'b str,
    /// Its `Host` value.
    host: &'b [u8],
    /// Bytes of its headers, as a head frame counts them.
    size: usize,
    /// It carries an `X-Forwarded-For` of its own.
    forwarded_for: bool,
    /// Its head's length at the front of the buffer.
    pub(crate) head_len: usize,
    /// Its body's, after the head (all in the buffer).
    pub(crate) body_len: usize,
    /// A `HEAD` request.
    pub(crate) head_request: bool,
    /// The visitor asked to close after it.
    pub(crate) close: bool,
    /// Where its `Accept` value is in the buffer.
    pub(crate) accept: Option<Range<usize>>,
}

/// Reads the head at the front of `buf` for a server of `domain` with `slots` for its headers:
/// a plain request, or one for hyper.
pub(crate) fn parse<'h, 'b>(
    buf: &'b [u8],
    domain: &str,
    slots: &'h mut [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS],
) -> Read<Parsed<'h, 'b>> {
    let mut req = httparse::Request::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_request_with_uninit_headers(&mut req, buf, slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Read::Partial,
        Err(_) => return Read::Hyper,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Read::Hyper;
    };
    // A head frame carries a method of at most 255 bytes; the router refuses a longer one.
    if method == "CONNECT"
        || method.len() > u8::MAX as usize
        || !target.starts_with('/')
        || !all_bytes(target.as_bytes(), target_byte)
    {
        return Read::Hyper;
    }

    let mut host = None;
    let mut hosts = 0;
    let mut close = false;
    let mut accept = None;
    let mut forwarded_for = false;
    let mut body_len = 0;
    let mut lengths = 0;
    let mut size = 0;
    for h in req.headers.iter() {
        let (name, value) = (h.name, h.value);
        size += name.len() + value.len() + 6;
        let is = |n: &str| is_name(name.as_bytes(), n.as_bytes());
        match name.len() {
            2 if is("te") => return Read::Hyper,
            4 if is("host") => {
                hosts += 1;
                host = Some(value);
            }
            6 if is("expect") => return Read::Hyper,
            6 if is("accept") => accept = Some(offset(buf, value)),
            7 if is("upgrade") => return Read::Hyper,
            10 if is("connection") => {
                for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                        // An upgrade, or headers named to be dropped.
                        return Read::Hyper;
                    }
                }
            }
            14 if is("content-length") => {
                lengths += 1;
                match decimal(value.trim_ascii()) {
                    Some(n) if n <= MAX_HEAD as u64 => body_len = n as usize,
                    _ => return Read::Hyper,
                }
            }
            15 if is("x-forwarded-for") => forwarded_for = true,
            17 if is("transfer-encoding") => return Read::Hyper,
            _ => {}
        }
    }
    let (Some(host), 1) = (host, hosts) else {
        return Read::Hyper;
    };
    if lengths > 1 || head_len + body_len > MAX_HEAD {
        return Read::Hyper;
    }
    if buf.len() < head_len + body_len {
        // A body that did not come with its head may be slow or stall: hyper streams it, under
        // the body idle limit (`proxy::IdleLimited`), instead of it being waited for here.
        return Read::Hyper;
    }
    let Some(name) = tunnel_name(host, domain) else {
        return Read::Hyper;
    };
    Read::Plain(Parsed {
        head_request: method == "HEAD",
        req,
        name,
        host,
        size,
        forwarded_for,
        head_len,
        body_len,
        close,
        accept,
    })
}

impl Parsed<'_, '_> {
    fn method(&self) -> &[u8] {
        self.req.method.unwrap_or_default().as_bytes()
    }

    fn target(&self) -> &[u8] {
        self.req.path.unwrap_or_default().as_bytes()
    }

    /// The opening head of the tunnel's stream: the visitor's headers in order without the
    /// hop-by-hop ones, then `X-Forwarded-For`, `-Proto` and `-Host`, as [`crate::proxy`] writes
    /// them.
    pub(crate) fn open_local(&self, visitor: &Visitor) -> Bytes {
        let headers = &*self.req.headers;
        let chain = self.forwarded_for.then(|| {
            let lines = headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
                .map(|h| h.value);
            forwarded_chain(lines, visitor.ip_value.as_bytes())
        });
        let ip = visitor.ip_value.as_bytes();
        let proto: &[u8] = if visitor.secure { b"https" } else { b"http" };
        let host = self.host;
        let extra = chain.as_ref().map_or(ip.len(), Vec::len) + proto.len() + host.len() + 3 * 22;
        let mut open = HeadWriter::request(self.method(), self.target(), self.size + extra);
        for h in headers {
            if !is_forwarded(h.name.as_bytes()) && !hop_by_hop(h.name.as_bytes()) {
                open.push(h.name.as_bytes(), h.value);
            }
        }
        open.push(b"x-forwarded-for", chain.as_deref().unwrap_or(ip));
        open.push(b"x-forwarded-proto", proto);
        // The host the visitor reached; `Host` itself goes on unchanged (the client rewrites it
        // for the local service).
        open.push(b"x-forwarded-host", host);
        open.finish()
    }

    /// The opening head of the hop's stream to the node that holds the tunnel: who the visitor
    /// is, then the head as the visitor sent it, every header kept (the holder drops the
    /// hop-by-hop ones and writes `X-Forwarded-*`): the bytes `hop::forward` writes for the
    /// same head (`HopHead::encode_request`), but for headers of one name that the visitor did
    /// not send together, which a header map would have put together.
    pub(crate) fn open_hop(&self, visitor: &Visitor) -> Bytes {
        let hop = HopHead {
            ip: visitor.ip,
            secure: visitor.secure,
            proxied: visitor.proxied,
            tcp_port: None,
        };
        let mut open = hop.request_writer(self.method(), self.target(), self.size);
        for h in &*self.req.headers {
            open.push(h.name.as_bytes(), h.value);
        }
        open.finish()
    }
}

/// The tunnel a plain `Host` value names (`name.DOMAIN`, lowercase, perhaps with a port and a
/// trailing dot): any other form of host, valid or not, is left to the router's parsing.
pub(crate) fn tunnel_name<'a>(host: &'a [u8], domain: &str) -> Option<&'a str> {
    let (name, port) = match host.iter().position(|b| *b == b':') {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    };
    if port.is_some_and(|p| decimal(p).is_none_or(|p| p > u16::MAX as u64)) {
        return None;
    }
    // One label before the domain, valid as a name (`protocol::validate_name`), checked here
    // byte by byte rather than parsed: this runs for every request.
    let name = name.strip_suffix(b".").unwrap_or(name);
    let label = name.strip_suffix(domain.as_bytes())?.strip_suffix(b".")?;
    let valid = (1..=protocol::MAX_NAME_LEN).contains(&label.len())
        && all_bytes(label, |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'-'))
        && label.first() != Some(&b'-')
        && label.last() != Some(&b'-');
    valid.then(|| std::str::from_utf8(label).ok()).flatten()
}

/// `X-Forwarded-For` as the local service gets it from a visitor at `ip` that sent these `lines`
/// of it itself: the lines as one list, then the visitor, as [`crate::proxy`] appends it.
pub(crate) fn forwarded_chain<'a>(lines: impl Iterator<Item = &'a [u8]>, ip: &[u8]) -> Vec<u8> {
    let lines: Vec<&[u8]> = lines.collect();
    // A value that is not visible ASCII counts as no chain at all, as a header map's text does.
    let text = lines
        .iter()
        .all(|l| all_bytes(l, |b| (b == b'\t') | (0x20..0x7f).contains(&b)));
    let prev = if text {
        lines.join(&b", "[..])
    } else {
        Vec::new()
    };
    match prev.trim_ascii() {
        [] => ip.to_vec(),
        prev => [prev, b", ", ip].concat(),
    }
}

/// `X-Forwarded-For`, `-Proto` or `-Host`: the names this server writes itself.
pub(crate) fn is_forwarded(name: &[u8]) -> bool {
    let Some(rest) = name
        .get(..12)
        .filter(|p| p.eq_ignore_ascii_case(b"x-forwarded-"))
        .map(|_| &name[12..])
    else {
        return false;
    };
    [&b"for"[..], b"proto", b"host"]
        .iter()
        .any(|n| rest.eq_ignore_ascii_case(n))
}

/// A decimal number of at most 19 digits, nothing else (no sign, no space).
pub(crate) fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !all_bytes(digits, |b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Where `value`, a slice of `buf`, lies in it.
fn offset(buf: &[u8], value: &[u8]) -> Range<usize> {
    let start = value.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + value.len()
}

pub(crate) fn all_bytes(bytes: &[u8], ok: impl Fn(u8) -> bool) -> bool {
    bytes.iter().fold(true, |all, &b| all & ok(b))
}

/// The bytes of an origin-form target taken on this path: RFC 3986's path and query characters,
/// all of which `http::Uri` accepts too; anything else (a fragment, raw non-ASCII) is the
/// router's to accept or refuse.
pub(crate) fn target_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'%'
                | b'/'
                | b'?'
        )
}

/// How the answer's body is framed for the visitor.
enum Framing {
    /// No body (`HEAD`, 204, 304).
    None,
    /// `Content-Length`: this many bytes still to come.
    Length(u64),
    Chunked,
}

/// What the connection does after a request.
enum After {
    /// Reads the next one.
    Next,
    /// Closes.
    Close,
    /// Goes to hyper from this request on: nothing of it was answered.
    Hyper,
}

impl After {
    fn keep_alive(keep_alive: bool) -> Self {
        if keep_alive {
            Self::Next
        } else {
            Self::Close
        }
    }
}

/// Forwards one request and writes its answer.
async fn forward<I>(shared: &Arc<Shared>, io: &mut I, buf: &mut BytesMut, plan: Plan) -> After
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Plan {
        head_len,
        body_len,
        to,
        open,
        name,
        head_request,
        close,
        accept,
    } = plan;
    let request = Request {
        body: head_len..head_len + body_len,
        head_request,
        // A draining server answers the request in flight and then closes, as hyper does.
        close: close || shared.draining.is_cancelled(),
        accept,
    };
    match to {
        To::Local(route) => forward_local(shared, io, buf, &route, open, request).await,
        To::Hop { id, advertise } => {
            let to = (id.as_str(), advertise.as_str());
            forward_hop(shared, io, buf, to, name, open, request).await
        }
    }
}

/// What the forwarding of a request needs of its plan besides where it goes.
struct Request {
    /// Where its body is in the buffer.
    body: Range<usize>,
    head_request: bool,
    close: bool,
    accept: Option<Range<usize>>,
}

impl Request {
    /// Whether the visitor wants an error page in JSON: read only for a page, which is rare.
    fn json(&self, buf: &[u8]) -> bool {
        self.accept
            .clone()
            .is_some_and(|r| accept_wants_json(&buf[r]))
    }
}

/// Forwards a request to the tunnel's session here.
async fn forward_local<I>(
    shared: &Shared,
    io: &mut I,
    buf: &mut BytesMut,
    route: &Endpoint,
    open: Bytes,
    req: Request,
) -> After
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut close = req.close;
    let refuse = |buf: &BytesMut| Refuse {
        shared,
        name: &route.name,
        json: req.json(buf),
    };
    let stream = match route.mux.open(open, req.body.is_empty()).await {
        Ok(stream) => stream,
        Err(MuxError::TooManyStreams) => {
            let page = refuse(buf).too_many_streams();
            return write_page(io, page, close, req.head_request).await;
        }
        Err(e) => {
            debug!(%e, "open stream failed");
            let page = refuse(buf).lost("is not answering (session closing)");
            return write_page(io, page, close, req.head_request).await;
        }
    };
    if !req.body.is_empty() {
        let body = &buf[req.body.clone()];
        route.metrics.count_bytes(body.len() as u64, 0);
        // An answer may come before the body is taken (a refusal): it is read all the same.
        if let Err(e) = stream.send_last(body).await {
            debug!(%e, "request body not sent whole");
        }
    }
    let answer = match next_item(&stream, io, buf).await {
        Some(Some(Ok(Item::Head(answer)))) => answer,
        None => return After::Close,
        other => {
            debug!(?other, "request through tunnel failed");
            let page = refuse(buf).lost("went away while handling the request");
            return write_page(io, page, close, req.head_request).await;
        }
    };
    let mut out = BytesMut::with_capacity(answer.len() + 128);
    let from = Source::Local(shared, route);
    let framing = match answer_head(
        from,
        &answer,
        req.head_request,
        &mut close,
        &stream,
        &mut out,
    ) {
        Ok(framing) => framing,
        Err(why) => {
            stream.reset(RESET_PROTOCOL, why);
            let page = refuse(buf).lost("sent a malformed response");
            return write_page(io, page, close, req.head_request).await;
        }
    };
    route.metrics.request(started.elapsed());
    drop(answer);
    After::keep_alive(body(io, buf, Some(route), &stream, framing, out).await && !close)
}

/// Forwards a request over the hop to node `id` at `advertise`, which holds tunnel `name`, as
/// `hop::forward` does: the holder answers as if the visitor had come to it, with the password,
/// the allowlist, the rate, the cookies and the forwarding headers its own to deal with.
async fn forward_hop<I>(
    shared: &Arc<Shared>,
    io: &mut I,
    buf: &mut BytesMut,
    (id, advertise): (&str, &str),
    name: Range<usize>,
    open: Bytes,
    req: Request,
) -> After
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let node = shared
        .config
        .cluster
        .as_ref()
        .expect("only a cluster's node plans a hop");
    let mut close = req.close;
    let unreachable = |buf: &BytesMut, why: &str| {
        let name = std::str::from_utf8(&buf[name.clone()]).unwrap_or_default();
        hop::unreachable(shared, id, name, why, req.json(buf))
    };
    let link = match node.peers.link(shared, node, id, advertise).await {
        Ok(link) if link.hop_version >= 2 => link,
        // A node that speaks only hop format 1 is spoken to by hyper, inside the stream.
        Ok(_) => return After::Hyper,
        Err(e) => {
            let page = unreachable(buf, &e);
            return write_page(io, page, close, req.head_request).await;
        }
    };
    let stream = match link.session.open(open, req.body.is_empty()).await {
        Ok(stream) => stream,
        Err(e) => {
            let page = unreachable(buf, &e.to_string());
            return write_page(io, page, close, req.head_request).await;
        }
    };
    if !req.body.is_empty() {
        if let Err(e) = stream.send_last(&buf[req.body.clone()]).await {
            debug!(%e, "hopped request body not sent whole");
        }
    }
    let answer = match next_item(&stream, io, buf).await {
        Some(Some(Ok(Item::Head(answer)))) => answer,
        None => return After::Close,
        Some(Some(Err(MuxError::Reset {
            code: RESET_PROTOCOL,
            reason,
        }))) => {
            warn!(peer = %id, %reason, "the node holding the tunnel refused the hop");
            let page = unreachable(buf, &reason);
            return write_page(io, page, close, req.head_request).await;
        }
        Some(other) => {
            let page = unreachable(buf, &format!("no answer: {other:?}"));
            return write_page(io, page, close, req.head_request).await;
        }
    };
    let mut out = BytesMut::with_capacity(answer.len() + 128);
    let framing = match answer_head(
        Source::Hop,
        &answer,
        req.head_request,
        &mut close,
        &stream,
        &mut out,
    ) {
        Ok(framing) => framing,
        Err(why) => {
            stream.reset(RESET_PROTOCOL, why);
            let page = unreachable(buf, "a malformed response head");
            return write_page(io, page, close, req.head_request).await;
        }
    };
    shared.metrics.hop();
    drop(answer);
    After::keep_alive(body(io, buf, None, &stream, framing, out).await && !close)
}

/// The stream's next item, watching the visitor meanwhile, as hyper does: what it sends is kept
/// for the requests after this one (up to a bound), and its close (`None`) abandons this one.
async fn next_item<I>(
    stream: &MuxStream,
    io: &mut I,
    buf: &mut BytesMut,
) -> Option<Option<Result<Item, MuxError>>>
where
    I: AsyncRead + Unpin,
{
    loop {
        let watch = buf.len() < 2 * MAX_HEAD;
        tokio::select! {
            biased;
            item = stream.recv() => return Some(item),
            read = io.read_buf(buf), if watch => match read {
                Ok(0) | Err(_) => {
                    debug!("the visitor left before its answer");
                    return None;
                }
                Ok(_) => {}
            },
        }
    }
}

/// Whose answering head [`answer_head`] writes.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// The tunnel's client, here: its cookies are narrowed to the tunnel and ggrok's error pages
    /// counted, as [`crate::proxy`] does.
    Local(&'a Shared, &'a Endpoint),
    /// The node that holds the tunnel, over the hop: it did both. Its `Connection: close` (a
    /// page refusing the request) closes the visitor's connection, as hyper does.
    Hop,
}

/// Writes the answering head as HTTP/1.1 into `out`, as hyper writes the router's answer:
/// hop-by-hop headers dropped, and for the client's answer, cookies narrowed to the tunnel and
/// ggrok's error pages counted. `close` is whether the connection closes after it.
fn answer_head(
    from: Source<'_>,
    answer: &[u8],
    head_request: bool,
    close: &mut bool,
    stream: &MuxStream,
    out: &mut BytesMut,
) -> Result<Framing, &'static str> {
    let raw = head::decode_response_raw(answer).map_err(|_| "malformed response head")?;
    let status = raw.status;
    if status.is_informational() {
        // No request on this path asked to switch protocols.
        return Err("an informational status as the answer");
    }
    status_line(out, status);
    // Names a `Connection` lists are hop-by-hop too (an old client may leave them in).
    let listed: Vec<&[u8]> = raw
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|b| *b == b',').map(<[u8]>::trim_ascii))
        .collect();
    let mut length = None;
    let mut date = false;
    let mut cookie_host = None;
    for &(name, value) in &raw.headers {
        if hop_by_hop(name) || listed.iter().any(|l| l.eq_ignore_ascii_case(name)) {
            if matches!(from, Source::Hop) && name.eq_ignore_ascii_case(b"connection") {
                let mut tokens = value.split(|b| *b == b',').map(<[u8]>::trim_ascii);
                *close |= tokens.any(|t| t.eq_ignore_ascii_case(b"close"));
            }
            continue;
        }
        let is = |n: &str| is_name(name, n.as_bytes());
        match name.len() {
            4 if is("date") => date = true,
            10 if is("set-cookie") => {
                if let Source::Local(shared, route) = from {
                    let host = cookie_host
                        .get_or_insert_with(|| format!("{}.{}", route.name, shared.config.domain));
                    if let Some(narrowed) = cookies::narrowed_bytes(value, host) {
                        put_header(out, name, &narrowed);
                        continue;
                    }
                }
            }
            14 if is("content-length") => {
                let n = decimal(value.trim_ascii()).ok_or("a malformed Content-Length")?;
                if length.is_some_and(|l| l != n) {
                    return Err("two lengths");
                }
                if length.replace(n).is_some() {
                    continue;
                }
            }
            _ if is(HEADER_ERROR) => {
                let kind = std::str::from_utf8(value)
                    .ok()
                    .and_then(PageKind::from_code);
                if let (Some(kind), Source::Local(shared, _)) = (kind, from) {
                    shared.metrics.error(kind);
                }
            }
            _ => {}
        }
        put_header(out, name, value);
    }
    let no_body =
        head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    let framing = match length {
        _ if no_body => Framing::None,
        Some(n) => Framing::Length(n),
        None if stream.peer_finished() => {
            out.put_slice(b"content-length: 0\r\n");
            Framing::Length(0)
        }
        None => {
            out.put_slice(b"transfer-encoding: chunked\r\n");
            Framing::Chunked
        }
    };
    if !date {
        put_date(out);
    }
    if *close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    Ok(framing)
}

/// Writes the answer's body after its head (in `out`): gathered while the stream has more at
/// once, written when it has to wait. Whether the body went out whole.
async fn body<I>(
    io: &mut I,
    buf: &mut BytesMut,
    route: Option<&Endpoint>,
    stream: &MuxStream,
    mut framing: Framing,
    mut out: BytesMut,
) -> bool
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let item = match std::future::poll_fn(|cx| Poll::Ready(stream.poll_recv(cx))).await {
            Poll::Ready(item) => item,
            Poll::Pending => {
                if io.write_all_buf(&mut out).await.is_err() {
                    return false;
                }
                match next_item(stream, io, buf).await {
                    Some(item) => item,
                    None => return false,
                }
            }
        };
        let data = match item {
            None => break,
            Some(Ok(Item::Data(data))) => data,
            // No request on this path sent `TE: trailers`: they are dropped, as hyper does.
            Some(Ok(Item::Trailers(_))) => continue,
            Some(Ok(Item::Head(_))) => {
                stream.reset(RESET_PROTOCOL, "a second head");
                return false;
            }
            Some(Err(e)) => {
                // Cut off: closing the connection is all that tells the visitor.
                debug!(%e, "answer cut off");
                return false;
            }
        };
        if let Some(route) = route {
            route.metrics.count_bytes(0, data.len() as u64);
        }
        match &mut framing {
            Framing::None => continue,
            Framing::Length(left) => match left.checked_sub(data.len() as u64) {
                Some(rest) => *left = rest,
                None => {
                    stream.reset(RESET_PROTOCOL, "more body than its length");
                    return false;
                }
            },
            Framing::Chunked => {
                out.put_slice(format!("{:x}\r\n", data.len()).as_bytes());
            }
        }
        if out.len() + data.len() <= GATHER {
            out.put_slice(&data);
        } else if io.write_all_buf(&mut (&mut out).chain(data)).await.is_err() {
            return false;
        }
        if matches!(framing, Framing::Chunked) {
            out.put_slice(b"\r\n");
        }
    }
    match framing {
        Framing::Length(left) if left > 0 => {
            debug!(left, "answer shorter than its length");
            return false;
        }
        Framing::Chunked => out.put_slice(b"0\r\n\r\n"),
        _ => {}
    }
    io.write_all_buf(&mut out).await.is_ok()
}

/// Writes one of the server's own pages.
async fn write_page<I>(io: &mut I, page: Response<Body>, close: bool, head_request: bool) -> After
where
    I: AsyncWrite + Unpin,
{
    let (parts, body) = page.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let close = close
        || parts
            .headers
            .get(header::CONNECTION)
            .is_some_and(|v| v == "close");
    let mut out = BytesMut::with_capacity(256 + body.len());
    status_line(&mut out, parts.status);
    for (name, value) in &parts.headers {
        if name != header::CONNECTION && name != header::CONTENT_LENGTH {
            put_header(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    put_header(
        &mut out,
        b"content-length",
        body.len().to_string().as_bytes(),
    );
    put_date(&mut out);
    if close {
        out.put_slice(b"connection: close\r\n");
    }
    out.put_slice(b"\r\n");
    if !head_request {
        out.put_slice(&body);
    }
    After::keep_alive(io.write_all(&out).await.is_ok() && !close)
}

fn status_line(out: &mut BytesMut, status: StatusCode) {
    out.put_slice(b"HTTP/1.1 ");
    out.put_slice(status.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.put_slice(b"\r\n");
}

fn put_header(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    out.put_slice(name);
    out.put_slice(b": ");
    out.put_slice(value);
    out.put_slice(b"\r\n");
}

/// `date: ...` of the current second, formatted once per second per thread, as hyper does.
fn put_date(out: &mut BytesMut) {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        put_header(out, b"date", text.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_hosts_name_their_tunnel_and_the_rest_go_to_the_router() {
        fn name(host: &str) -> Option<&str> {
            tunnel_name(host.as_bytes(), "localhost")
        }
        assert_eq!(name("app.localhost"), Some("app"));
        assert_eq!(name("app.localhost:8080"), Some("app"));
        assert_eq!(name("app.localhost.:80"), Some("app"));
        let longest = "a".repeat(protocol::MAX_NAME_LEN);
        assert_eq!(name(&format!("{longest}.localhost")), Some(&longest[..]));
        assert_eq!(name(&format!("{longest}a.localhost")), None);
        for other in [
            "localhost",
            "127.0.0.1",
            "a.b.localhost",
            "App.localhost",
            "app.localhost:99999",
            "app.localhost:",
            "app.localhost:+80",
            "app.localhost..",
            "-app.localhost",
            "app-.localhost",
            ".localhost",
            "[::1]:80",
            "user@app.localhost",
            "evil.example",
        ] {
            assert_eq!(name(other), None, "{other}");
        }
    }

    #[test]
    fn the_forwarded_names_are_known_in_any_case() {
        for name in ["x-forwarded-for", "X-Forwarded-Proto", "x-forwarded-HOST"] {
            assert!(is_forwarded(name.as_bytes()), "{name}");
        }
        for name in [
            "x-forwarded",
            "x-forwarded-port",
            "x-forwarded-fort",
            "host",
            "forwarded",
        ] {
            assert!(!is_forwarded(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn a_visitors_own_forwarded_chain_gets_the_visitor_appended() {
        let chain = |values: &[&[u8]]| {
            String::from_utf8(forwarded_chain(values.iter().copied(), b"192.0.2.7")).unwrap()
        };
        assert_eq!(chain(&[b"203.0.113.9"]), "203.0.113.9, 192.0.2.7");
        assert_eq!(
            chain(&[b"10.0.0.1", b" 10.0.0.2 "]),
            "10.0.0.1,  10.0.0.2, 192.0.2.7"
        );
        assert_eq!(chain(&[b"  "]), "192.0.2.7");
        assert_eq!(chain(&[b"caf\xc3\xa9"]), "192.0.2.7", "not text: no chain");
    }

    #[test]
    fn targets_outside_the_plain_characters_go_to_the_router() {
        assert!(all_bytes(
            b"/a/b-c_d.e~f?x=1&y=%20;z=(1)*,+!$'@:",
            target_byte
        ));
        for other in [
            &b"/a#frag"[..],
            b"/caf\xc3\xa9",
            b"/a b",
            b"/a\"b",
            b"/{x}",
            b"/a\\b",
        ] {
            assert!(!all_bytes(other, target_byte), "{other:?}");
        }
    }
}
