//! The client's side of a stream: forward the request that opens it to the local service,
//! record the exchange, send the response back, and splice upgraded connections.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::{
    driven::{DrivenBody, DrivenConn},
    frames::{FrameLog, FrameTap, Tapped},
    h1,
    head::{self, Open},
    http_util::{self, boxed, error_page, is_upgrade, strip_hop_by_hop, Body, BoxError},
    mux::{Item, MuxStream},
    mux_body::{send_body, RecvBody},
    protocol::{PageKind, RESET_PROTOCOL},
    traffic::{now_ms, CapturedBody, Exchange, Headers, Pending, Recorded, Side, Traffic},
    upstream::{Connector, HostHeader, Upstream},
};

/// Where requests go on the developer's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTarget {
    /// Host name or address (`localhost` by default).
    pub host: String,
    /// Port of the local service.
    pub port: u16,
    /// The `Host` the local service gets.
    pub host_header: HostHeader,
    /// TLS and HTTP version towards the local service.
    pub upstream: Upstream,
}

impl LocalTarget {
    /// Plain HTTP/1.1 to `host:port`, with `Host` rewritten to that.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            host_header: HostHeader::Rewrite,
            upstream: Upstream::default(),
        }
    }

    /// `http://host:port`, `https://...` with TLS: what the CLI says it forwards to.
    pub fn url(&self) -> String {
        let scheme = if self.upstream.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }

    /// `host:port`, bracketing IPv6 addresses.
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a captured exchange cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The exchange is no longer in the ring.
    #[error("exchange {0} is no longer in the recent traffic")]
    NotFound(u64),
    /// Only part of the request body was captured.
    #[error(
        "the request body ({0} bytes) was larger than the capture limit, so it cannot be replayed"
    )]
    BodyTruncated(u64),
    /// The capture is not a valid request (it came from the internet).
    #[error("the captured request is not valid: {0}")]
    Invalid(String),
    /// WebSocket and other upgrades are live connections, not requests.
    #[error("upgraded connections cannot be replayed")]
    Upgrade,
}

/// Changes to a captured request before it is replayed; what is `None` stays as captured.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayEdits {
    /// Request method.
    pub method: Option<String>,
    /// Path and query, starting with `/`.
    pub path: Option<String>,
    /// Every header, in order, replacing the captured ones (`Content-Length` is recomputed).
    pub headers: Option<Vec<(String, String)>>,
    /// The body, as text; replaces a captured body even one the capture limit cut.
    pub body: Option<String>,
}

/// Idle connections to the local service kept for reuse, at most.
const MAX_IDLE: usize = 64;
/// Idle connections older than this are closed rather than reused. Many local servers close an
/// idle keep-alive connection after 5 s (Node's default `keepAliveTimeout`, so Vite, webpack and
/// Next dev servers; Apache's `KeepAliveTimeout`), and a request sent at the moment they do is
/// lost; a new connection to localhost costs far less than that risk.
const MAX_IDLE_AGE: Duration = Duration::from_secs(4);

/// A request sent on a connection that sat idle at least this long may be sent again, on a new
/// connection, if that one fails before answering: the local service was closing it just as the
/// request went out (gunicorn closes idle connections after 2 s, uvicorn after 5). Only requests
/// that are safe to repeat (RFC 9110 §9.2.2) and have no body; only connections that idled this
/// long pay for the copy this takes.
const RESEND_AFTER_IDLE: Duration = Duration::from_millis(500);

/// A connection the pool can keep between requests.
trait Pooled: Send + Sized + 'static {
    /// Whether a request can go out on it now.
    fn is_idle(&mut self) -> bool;
    /// Lets go of a connection that cannot take another request.
    fn retire(self);
}

impl Pooled for DrivenConn {
    fn is_idle(&mut self) -> bool {
        DrivenConn::is_idle(self)
    }

    /// Lets it finish the exchange on its own (the local service answered before reading the
    /// whole request) and close.
    fn retire(mut self) {
        if let (Some(rest), Ok(rt)) = (self.detach(), tokio::runtime::Handle::try_current()) {
            // (Without a runtime, the process is shutting down: dropping it closes it.)
            rt.spawn(async move {
                if let Err(e) = rest.await {
                    tracing::debug!(%e, "local connection ended with an error");
                }
            });
        }
    }
}

impl Pooled for h1::Conn {
    fn is_idle(&mut self) -> bool {
        h1::Conn::is_idle(self)
    }

    fn retire(self) {}
}

/// Connections to the local service that are open and idle, most recently used last.
///
/// A request takes one (or opens one), uses it from its own task while the response comes back,
/// and puts it back once the response body has ended: no task per connection and no hand-offs
/// between tasks per request, unlike a general-purpose pool.
struct Idle<C> {
    conns: Mutex<Vec<(C, Instant)>>,
    max_age: Duration,
    /// See [`RESEND_AFTER_IDLE`].
    resend_after: Duration,
}

impl<C: Pooled> Idle<C> {
    fn new(max_age: Duration) -> Self {
        Self {
            conns: Mutex::new(Vec::new()),
            max_age,
            resend_after: RESEND_AFTER_IDLE,
        }
    }

    /// The most recently used idle connection that is still open and young enough, and how long
    /// it has been idle.
    fn take(&self) -> Option<(C, Duration)> {
        let mut idle = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((mut conn, since)) = idle.pop() {
            let idled = since.elapsed();
            if idled < self.max_age && conn.is_idle() {
                return Some((conn, idled));
            }
        }
        None
    }

    /// Keeps `conn` for a later request if it can take one now.
    fn put(&self, mut conn: C) {
        if conn.is_idle() {
            let mut idle = self.conns.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() >= MAX_IDLE {
                idle.remove(0);
            }
            idle.push((conn, Instant::now()));
        } else {
            conn.retire();
        }
    }
}

/// Whether a request is safe to send again (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A copy of `req` to send again if it is lost, when that is safe: an idempotent method and no
/// body. (Extensions are not copied; nothing on this path uses them.)
fn repeatable(req: &Request<Body>) -> Option<Request<Body>> {
    if !idempotent(req.method()) || !http_body::Body::is_end_stream(req.body()) {
        return None;
    }
    let mut copy = Request::new(http_util::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Forwards requests to the local service and records them.
pub struct Forwarder {
    target: LocalTarget,
    /// The address of the local service that answered last. `localhost` resolves to `::1`
    /// before `127.0.0.1` and most dev servers listen on one of them only: resolving (a hop to
    /// tokio's blocking pool and a read of /etc/hosts) and trying the wrong one first cost every
    /// new connection.
    addr: Mutex<Option<std::net::SocketAddr>>,
    authority: String,
    /// The `Host` to send; `None` keeps the visitor's.
    host_header: Option<HeaderValue>,
    connector: Connector,
    /// hyper's connections (HTTP/1.1 over TLS).
    idle: Arc<Idle<DrivenConn>>,
    /// The client's own HTTP/1.1 connections (plain HTTP): see [`h1`].
    plain: Arc<Idle<h1::Conn>>,
    traffic: Traffic,
}

impl Forwarder {
    /// A forwarder to `target` that records into `traffic`.
    pub fn new(target: LocalTarget, traffic: Traffic) -> Arc<Self> {
        let authority = target.authority();
        let host_header = match &target.host_header {
            HostHeader::Rewrite => Some(
                HeaderValue::from_str(&authority)
                    .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            ),
            HostHeader::Preserve => None,
            HostHeader::Value(v) => Some(v.clone()),
        };
        let connector = Connector::new(target.upstream, &target.host);
        Arc::new(Self {
            target,
            addr: Mutex::new(None),
            authority,
            host_header,
            connector,
            idle: Arc::new(Idle::new(MAX_IDLE_AGE)),
            plain: Arc::new(Idle::new(MAX_IDLE_AGE)),
            traffic,
        })
    }

    /// The recorded traffic.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Where requests go.
    pub fn target(&self) -> &LocalTarget {
        &self.target
    }

    /// Serves one stream the server opened: forwards its request to the local service and
    /// sends the response back on it.
    pub async fn serve_stream(self: Arc<Self>, stream: MuxStream) {
        let head = match stream.recv().await {
            Some(Ok(Item::Head(head))) => head,
            _ => return stream.reset(RESET_PROTOCOL, "a stream must open with a head"),
        };
        let has_body = !stream.peer_finished();
        if self.lean() {
            let prepared = match head::decode_request_raw(&head) {
                Ok(raw) => {
                    raw.and_then(|raw| h1::prepare(raw, self.host_header.as_ref(), has_body))
                }
                Err(e) => return stream.reset(RESET_PROTOCOL, &e.to_string()),
            };
            if let Some(prepared) = prepared {
                let body = has_body.then(|| boxed(RecvBody::new(stream.clone())));
                let answer = self.forward_prepared(prepared, body).await;
                return answer_on(stream, answer, None).await;
            }
        }
        let parts = match head::decode_open(head) {
            Ok(Open::Http(parts)) => parts,
            Ok(Open::Tcp(_)) => {
                return stream.reset(RESET_PROTOCOL, "this tunnel forwards HTTP, not TCP")
            }
            Err(e) => return stream.reset(RESET_PROTOCOL, &e.to_string()),
        };
        let remote = parts
            .headers
            .get(crate::protocol::X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim().to_owned());
        let upgrade = is_upgrade(&parts.headers);
        let body = match has_body {
            true => boxed(RecvBody::new(stream.clone())),
            false => http_util::empty(),
        };
        let (_, answer, local_upgrade) =
            Box::pin(self.forward(Request::from_parts(parts, body), remote, upgrade)).await;
        answer_on(stream, answer, local_upgrade).await
    }

    /// Sends a request [prepared](h1::prepare) from the server's head with the client's own
    /// HTTP/1.1 client, and records it.
    async fn forward_prepared(&self, prepared: h1::Prepared, body: Option<Body>) -> Answer {
        let h1::Prepared {
            method,
            path,
            head,
            upload,
            recorded,
            remote,
        } = prepared;
        let (_, pending) = self.pending(&method, path, remote, recorded);
        let body = body.map(|body| {
            let body = Recorded::new(body, pending.clone(), Side::Request).boxed();
            (body, upload)
        });
        match self.send_lean(&head, &method, body).await {
            Ok(sent) => self.lean_answer(sent, pending),
            Err(e) => self.unreachable(&e, &pending),
        }
    }

    /// A new exchange, recorded once its response has ended.
    fn pending(
        &self,
        method: &Method,
        path: String,
        remote: Option<String>,
        request_headers: Headers,
    ) -> (u64, Arc<Pending>) {
        let id = self.traffic.next_id();
        let exchange = Exchange {
            id,
            started_ms: now_ms(),
            method: method.as_str().to_owned(),
            path,
            status: None,
            duration_ms: 0,
            remote_addr: remote,
            upgraded: false,
            request_headers,
            response_headers: Headers::default(),
            request_body: CapturedBody::default(),
            response_body: CapturedBody::default(),
            error: None,
            frames: None,
        };
        (id, Pending::new(self.traffic.clone(), exchange))
    }

    /// Sends `req` to the local service; returns the exchange id, the answer to give back and,
    /// when `upgrade` was asked for and the local service switched protocols, its upgraded
    /// connection.
    async fn forward(
        &self,
        req: Request<Body>,
        remote: Option<String>,
        upgrade: bool,
    ) -> (u64, Answer, Option<LocalUpgrade>) {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(host) = &self.host_header {
            parts.headers.insert(header::HOST, host.clone());
        }
        let upgrade = upgrade && is_upgrade(&parts.headers);
        let (id, pending) =
            self.pending(&parts.method, path, remote, Headers::from(&parts.headers));
        // An empty body (most requests) has nothing to record: the exchange's default says so.
        // Nor has an upgrade: what follows its head is the upgraded connection (its WebSocket
        // frames are recorded as such), which no HTTP body ever ends.
        let body = if upgrade || http_body::Body::is_end_stream(&body) {
            body
        } else {
            Recorded::new(body, pending.clone(), Side::Request).boxed()
        };

        parts.uri = http_util::origin_form(parts.uri);
        if !upgrade && self.lean() {
            let has_body = !http_body::Body::is_end_stream(&body);
            let exact = http_body::Body::size_hint(&body).exact();
            let upload = h1::upload_framing(&parts.headers, has_body, exact);
            let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let head = h1::request_head(&parts.method, target, &parts.headers, upload);
            let body = has_body.then_some((body, upload));
            let answer = match Box::pin(self.send_lean(&head, &parts.method, body)).await {
                Ok(sent) => self.lean_answer(sent, pending),
                Err(e) => self.unreachable(&e, &pending),
            };
            return (id, answer, None);
        }
        let result = self.send(Request::from_parts(parts, body), !upgrade).await;

        let (mut resp, mut conn) = match result {
            Ok(sent) => sent,
            Err(e) => return (id, self.unreachable(&e, &pending), None),
        };

        pending.update(|x| {
            x.status = Some(resp.status().as_u16());
            x.response_headers = Headers::from(resp.headers());
        });
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let mut local = None;
            if upgrade {
                // WebSocket frames are read as they pass; other protocols are bytes.
                let websocket = resp
                    .headers()
                    .get(header::UPGRADE)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
                let frames = websocket.then(|| Arc::new(FrameLog::default()));
                local = Some(LocalUpgrade {
                    io: hyper::upgrade::on(&mut resp),
                    frames: frames.clone(),
                });
                pending.update(|x| x.frames = frames);
                // The connection hands its I/O over to the upgrade once driven to its end.
                if let Some(rest) = conn.as_mut().and_then(DrivenConn::detach) {
                    tokio::spawn(async move {
                        if let Err(e) = rest.await {
                            tracing::debug!(%e, "local upgrade connection ended");
                        }
                    });
                }
                pending.update(|x| x.upgraded = true);
            }
            pending.finish();
            let answer = Answer::new(Response::from_parts(
                resp.into_parts().0,
                http_util::empty(),
            ));
            return (id, answer, local);
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = http::Version::default();
        let body = match conn {
            Some(conn) => {
                let idle = (!upgrade).then(|| self.idle.clone());
                boxed(DrivenBody::new(boxed(body), conn, move |conn| {
                    if let Some(idle) = idle {
                        idle.put(conn);
                    }
                }))
            }
            // HTTP/2: the connection has a task of its own.
            None => boxed(body),
        };
        let body = Recorded::new(body, pending, Side::Response).boxed();
        (id, Answer::new(Response::from_parts(parts, body)), None)
    }

    /// Whether requests go through the client's own HTTP/1.1 client ([`h1`]): plain HTTP/1.1.
    fn lean(&self) -> bool {
        let upstream = self.connector.upstream();
        !upstream.tls && !upstream.http2
    }

    /// The 502 page for a local service that could not be reached, recorded as the answer.
    fn unreachable(&self, e: &dyn std::fmt::Display, pending: &Pending) -> Answer {
        let message = format!(
            "The tunnel is online, but ggrok could not reach the local service at {} ({e}). \
             Is it running?",
            self.authority
        );
        pending.update(|x| {
            x.status = Some(502);
            x.error = Some(message.clone());
        });
        pending.finish();
        Answer::new(error_page(
            StatusCode::BAD_GATEWAY,
            PageKind::LocalUnreachable,
            &message,
            false,
        ))
    }

    /// Sends a request (not an upgrade) with the client's own HTTP/1.1 client, over an idle
    /// connection or a new one; returns the connection and the answer's head.
    async fn send_lean(
        &self,
        head: &[u8],
        method: &Method,
        mut body: Option<(Body, h1::Upload)>,
    ) -> Result<(h1::Conn, h1::ResponseHead), BoxError> {
        let mut reuse = true;
        loop {
            let (mut conn, idled) = match reuse.then(|| self.plain.take()).flatten() {
                Some((conn, idled)) => (conn, Some(idled)),
                None => (h1::Conn::new(self.connect_tcp().await?), None),
            };
            // See `RESEND_AFTER_IDLE`.
            let again = body.is_none()
                && idempotent(method)
                && idled.is_some_and(|d| d >= self.plain.resend_after);
            match h1::send(&mut conn, head, method, body.take()).await {
                Ok(answer) => return Ok((conn, answer)),
                Err(h1::Error::Closed(e)) if again => {
                    tracing::debug!(%e, "idle local connection closed under a request; sending it again");
                    reuse = false;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The answer [`send_lean`](Self::send_lean) got, recorded; its connection goes back to the
    /// pool once the body has ended.
    fn lean_answer(
        &self,
        (conn, mut head): (h1::Conn, h1::ResponseHead),
        pending: Arc<Pending>,
    ) -> Answer {
        pending.update(|x| {
            x.status = Some(head.status.as_u16());
            x.response_headers = std::mem::take(&mut head.recorded);
        });
        let body = if head.is_empty() {
            self.plain.put(conn);
            http_util::empty()
        } else {
            let idle = self.plain.clone();
            boxed(h1::ResponseBody::new(conn, &mut head, move |conn| {
                idle.put(conn)
            }))
        };
        Answer {
            head: head.frame,
            body: Recorded::new(body, pending, Side::Response).boxed(),
        }
    }

    /// Sends `req` to the local service over an idle connection (if `reuse`) or a new one;
    /// returns the response head and the HTTP/1.1 connection, which the response body drives.
    async fn send(
        &self,
        mut req: Request<Body>,
        mut reuse: bool,
    ) -> Result<(Response<Incoming>, Option<DrivenConn>), BoxError> {
        if self.connector.upstream().http2 {
            return Ok((Box::pin(self.send_h2(req)).await?, None));
        }
        loop {
            let (mut conn, idled) = match reuse.then(|| self.idle.take()).flatten() {
                Some((conn, idled)) => (conn, Some(idled)),
                None => (Box::pin(self.connect()).await?, None),
            };
            let again = idled
                .filter(|d| *d >= self.idle.resend_after)
                .and_then(|_| repeatable(&req));
            match conn.send(req).await {
                Ok(resp) => return Ok((resp, Some(conn))),
                Err(mut e) => match (e.take_message(), again) {
                    // An idle connection the local service closed just now: the request was
                    // not sent, so it goes out on another.
                    (Some(unsent), _) if idled.is_some() => req = unsent,
                    // Sent, but the connection closed under it: once more on a new one.
                    (None, Some(copy)) => {
                        tracing::debug!(e = %e.error(), "idle local connection closed under a request; sending it again");
                        req = copy;
                        reuse = false;
                    }
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// Sends `req` over the shared HTTP/2 connection, opening it first if there is none. HTTP/2
    /// carries the host in the request target (`:authority`), not in `Host`.
    async fn send_h2(&self, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let (mut parts, body) = req.into_parts();
        let authority = match parts.headers.remove(header::HOST) {
            Some(h) => h.to_str().map(str::to_owned).unwrap_or_default(),
            None => self.authority.clone(),
        };
        let scheme = if self.connector.upstream().tls {
            "https"
        } else {
            "http"
        };
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = format!("{scheme}://{authority}{path}")
            .parse()
            .map_err(|e| format!("the Host {authority:?} cannot be an HTTP/2 authority ({e})"))?;
        parts.version = http::Version::HTTP_2;
        let req = Request::from_parts(parts, body);
        let mut sender = match self.connector.h2_sender() {
            Some(s) => s,
            None => {
                let io = self.connect_io().await?;
                self.connector.h2_handshake(io).await?
            }
        };
        Ok(sender.send_request(req).await?)
    }

    /// Opens an HTTP/1.1 connection to the local service.
    async fn connect(&self) -> Result<DrivenConn, BoxError> {
        Ok(DrivenConn::handshake(self.connect_io().await?).await?)
    }

    /// Opens a connection to the local service (TLS if asked for).
    async fn connect_io(&self) -> Result<crate::upstream::LocalIo, BoxError> {
        self.connector.wrap(self.connect_tcp().await?).await
    }

    /// Opens a TCP connection to the local service: to the address that worked last, else to
    /// each address the host resolves to, in order.
    async fn connect_tcp(&self) -> Result<tokio::net::TcpStream, BoxError> {
        let known = *self.addr.lock().unwrap_or_else(|p| p.into_inner());
        let stream = match known {
            Some(addr) => match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => stream,
                // Down, or back on another address (a restart on IPv4 instead of IPv6).
                Err(_) => self.resolve_and_connect().await?,
            },
            None => self.resolve_and_connect().await?,
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn resolve_and_connect(&self) -> std::io::Result<tokio::net::TcpStream> {
        let mut last = None;
        for addr in tokio::net::lookup_host((self.target.host.as_str(), self.target.port)).await? {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(stream) => {
                    *self.addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                    return Ok(stream);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("the host resolves to no address")))
    }

    /// Sends a captured request to the local service again, changed as `edits` say, and records
    /// it as a new exchange.
    pub async fn replay(&self, id: u64, edits: ReplayEdits) -> Result<Arc<Exchange>, ReplayError> {
        let original = self.traffic.get(id).ok_or(ReplayError::NotFound(id))?;
        if original.upgraded {
            return Err(ReplayError::Upgrade);
        }
        let body = match edits.body {
            Some(body) => Bytes::from(body),
            None if original.request_body.truncated => {
                return Err(ReplayError::BodyTruncated(original.request_body.size))
            }
            None => Bytes::clone(&original.request_body.data),
        };
        let method = edits.method.as_deref().unwrap_or(&original.method);
        let method = Method::from_bytes(method.trim().as_bytes())
            .map_err(|e| ReplayError::Invalid(format!("method: {e}")))?;
        let path = edits.path.as_deref().unwrap_or(&original.path);
        if !path.starts_with('/') {
            return Err(ReplayError::Invalid(format!(
                "the path must start with '/': {path}"
            )));
        }
        let mut builder = Request::builder().method(method).uri(path);
        let headers: Vec<(&str, &str)> = match &edits.headers {
            Some(h) => h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            None => original.request_headers.iter().collect(),
        };
        for (k, v) in headers {
            // Framing is recomputed for the body sent.
            if k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            let name = header::HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| ReplayError::Invalid(format!("not a header name: {k:?}")))?;
            let value = HeaderValue::from_str(v.trim())
                .map_err(|_| ReplayError::Invalid(format!("not a valid value for {k}")))?;
            builder = builder.header(name, value);
        }
        let req = builder
            .body(http_util::full(body))
            .map_err(|e| ReplayError::Invalid(e.to_string()))?;
        let (new_id, answer, _) = self.forward(req, Some("replay".to_owned()), false).await;
        // Reading the body to its end publishes the exchange.
        let _ = answer.body.collect().await;
        self.traffic
            .get(new_id)
            .ok_or(ReplayError::NotFound(new_id))
    }
}

/// What goes back on the stream: the answering head, ready to send, and the body.
struct Answer {
    head: Bytes,
    body: Body,
}

impl Answer {
    fn new(resp: Response<Body>) -> Self {
        let (parts, body) = resp.into_parts();
        Self {
            head: head::encode_response(parts.status, &parts.headers),
            body,
        }
    }
}

/// Sends `answer` back on `stream`, then splices `local_upgrade` to it if there is one.
async fn answer_on(stream: MuxStream, answer: Answer, local_upgrade: Option<LocalUpgrade>) {
    let Answer { head, body } = answer;
    let end = http_body::Body::is_end_stream(&body) || local_upgrade.is_some();
    if let Err(e) = stream
        .send_head(head, false, end && local_upgrade.is_none())
        .await
    {
        return tracing::debug!(%e, "the response head could not be sent");
    }
    if let Some(local) = local_upgrade {
        // Boxed, as the rare paths below: their state would otherwise size every request's
        // future, which is moved on every spawn (it was 70% of the client's instructions).
        return Box::pin(splice_stream(local, stream)).await;
    }
    if !end {
        if let Err(e) = send_body(&stream, body).await {
            tracing::debug!(%e, "response body ended early");
        }
    }
}

/// The local service's side of an upgraded connection, and where its WebSocket frames go.
struct LocalUpgrade {
    io: hyper::upgrade::OnUpgrade,
    frames: Option<Arc<FrameLog>>,
}

/// Joins the local service's upgraded connection and the tunnel stream until either closes.
async fn splice_stream(local: LocalUpgrade, stream: MuxStream) {
    let LocalUpgrade { io: local, frames } = local;
    let local = match local.await {
        Ok(io) => io,
        Err(e) => {
            stream.reset(crate::protocol::RESET_CANCEL, "the local upgrade failed");
            return tracing::debug!(%e, "local upgrade failed");
        }
    };
    match frames {
        Some(log) => {
            let local = Tapped::new(TokioIo::new(local), FrameTap::new(log.clone(), false));
            let visitor = Tapped::new(stream.into_io(), FrameTap::new(log, true));
            http_util::splice(local, visitor).await;
        }
        None => {
            http_util::splice(TokioIo::new(local), stream.into_io()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Answer {
        fn status(&self) -> StatusCode {
            head::decode_response(self.head.clone()).unwrap().status
        }
    }

    /// An HTTP/1.1 connection over an in-memory pipe (nothing is sent on it), and the pipe's
    /// other end, which must live for the connection to stay open.
    async fn conn() -> (DrivenConn, tokio::io::DuplexStream) {
        let (io, peer) = tokio::io::duplex(1024);
        (DrivenConn::handshake(io).await.unwrap(), peer)
    }

    /// A request head read off `sock`, up to its empty line; `None` once the connection closes.
    async fn read_head(sock: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> Option<String> {
        use tokio::io::AsyncBufReadExt;
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if sock.read_line(&mut line).await.unwrap_or(0) == 0 {
                return None;
            }
            if line == "\r\n" {
                return Some(head);
            }
            head.push_str(&line);
        }
    }

    /// A local service whose every connection answers its first request and then, as if its
    /// keep-alive timeout struck just then, closes on the second without answering. Returns the
    /// address and a log of (connection, request line).
    async fn closes_on_second_request() -> (std::net::SocketAddr, Arc<Mutex<Vec<(usize, String)>>>)
    {
        use tokio::io::{AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = log.clone();
        tokio::spawn(async move {
            for n in 0.. {
                let (sock, _) = listener.accept().await.unwrap();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut sock = BufReader::new(sock);
                    for answer in [true, false] {
                        let Some(head) = read_head(&mut sock).await else {
                            return;
                        };
                        let first = head.lines().next().unwrap_or("").to_owned();
                        seen.lock().unwrap().push((n, first));
                        if answer {
                            let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{n}");
                            sock.get_mut().write_all(resp.as_bytes()).await.unwrap();
                        }
                    }
                });
            }
        });
        (addr, log)
    }

    /// What a scripted local service saw: (connection number, request head, request body).
    type Seen = Arc<Mutex<Vec<(usize, String, Vec<u8>)>>>;

    /// A local service that answers every request with the raw bytes `answer` gives for its
    /// head, so any framing can be sent; it closes the connection after answers that say so.
    /// Request bodies are read by `Content-Length` or chunked coding, except for `/early`,
    /// answered before its body is read.
    async fn scripted(
        answer: impl Fn(&str) -> (&'static str, bool) + Send + Sync + 'static,
    ) -> (std::net::SocketAddr, Seen) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let answer = Arc::new(answer);
        tokio::spawn(async move {
            for n in 0.. {
                let (sock, _) = listener.accept().await.unwrap();
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut sock = BufReader::new(sock);
                    loop {
                        let Some(head) = read_head(&mut sock).await else {
                            return;
                        };
                        let lower = head.to_ascii_lowercase();
                        let mut body = Vec::new();
                        if head.contains(" /early ") {
                        } else if let Some(n) = lower
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                        {
                            body.resize(n.trim().parse().unwrap(), 0);
                            sock.read_exact(&mut body).await.unwrap();
                        } else if lower.contains("transfer-encoding: chunked") {
                            loop {
                                let mut size = String::new();
                                sock.read_line(&mut size).await.unwrap();
                                let size = usize::from_str_radix(size.trim(), 16).unwrap();
                                let mut chunk = vec![0; size + 2];
                                if size == 0 {
                                    break;
                                }
                                sock.read_exact(&mut chunk).await.unwrap();
                                body.extend_from_slice(&chunk[..size]);
                            }
                            let mut end = String::new();
                            sock.read_line(&mut end).await.unwrap();
                        }
                        let (text, close) = answer(&head);
                        log.lock().unwrap().push((n, head, body));
                        let _ = sock.get_mut().write_all(text.as_bytes()).await;
                        if close {
                            return;
                        }
                    }
                });
            }
        });
        (addr, seen)
    }

    /// Sends `req` through `forwarder`; the status, the body (or its error) and the trailers.
    async fn exchange(
        forwarder: &Forwarder,
        req: Request<Body>,
    ) -> (StatusCode, Result<String, String>, Option<http::HeaderMap>) {
        let (_, answer, _) = forwarder.forward(req, None, false).await;
        let status = answer.status();
        match answer.body.collect().await {
            Ok(c) => {
                let trailers = c.trailers().cloned();
                let body = String::from_utf8_lossy(&c.to_bytes()).into_owned();
                (status, Ok(body), trailers)
            }
            Err(e) => (status, Err(e.to_string()), None),
        }
    }

    fn get(method: Method, path: &str) -> Request<Body> {
        let req = Request::builder().method(method).uri(path);
        req.body(http_util::empty()).unwrap()
    }

    #[tokio::test]
    async fn every_response_framing_reaches_the_visitor_and_decides_reuse() {
        let (addr, seen) = scripted(|head| match head.split(' ').nth(1).unwrap() {
            "/length" => ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false),
            "/head" => ("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", false),
            "/continue" => (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nhi",
                false,
            ),
            "/chunked" => (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n\
                 5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n",
                false,
            ),
            "/close" => ("HTTP/1.1 200 OK\r\n\r\nuntil the close", true),
            "/both" => (
                "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n\
                 2\r\nab\r\n0\r\n\r\n",
                false,
            ),
            "/short" => ("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", true),
            "/invalid" => (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
                true,
            ),
            _ => ("HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n", false),
        })
        .await;
        let forwarder = Forwarder::new(
            LocalTarget::new("127.0.0.1", addr.port()),
            Traffic::new(64, 1024),
        );
        let f = &forwarder;
        let ok = |s: &str| Ok(s.to_owned());

        let (status, body, _) = exchange(f, get(Method::GET, "/length")).await;
        assert_eq!((status, body), (StatusCode::OK, ok("ok")));
        let (status, body, _) = exchange(f, get(Method::HEAD, "/head")).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, ok("")),
            "no body after HEAD"
        );
        let (status, body, _) = exchange(f, get(Method::GET, "/continue")).await;
        assert_eq!(
            (status, body),
            (StatusCode::CREATED, ok("hi")),
            "1xx skipped"
        );
        let (status, body, trailers) = exchange(f, get(Method::GET, "/chunked")).await;
        assert_eq!((status, body), (StatusCode::OK, ok("hello world")));
        assert_eq!(trailers.unwrap()["x-sum"], "11");
        let (_, body, _) = exchange(f, get(Method::GET, "/close")).await;
        assert_eq!(body, ok("until the close"));
        let (_, body, _) = exchange(f, get(Method::GET, "/both")).await;
        assert_eq!(body, ok("ab"), "chunked coding wins over Content-Length");
        let (_, body, _) = exchange(f, get(Method::GET, "/next")).await;
        assert_eq!(body, ok(""));
        let (status, body, _) = exchange(f, get(Method::GET, "/short")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.unwrap_err().contains("before the end of the body"));
        let (status, body, _) = exchange(f, get(Method::GET, "/invalid")).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert!(body.unwrap().contains("Content-Length values disagree"));

        // Kept alive through every framing that ends on its own; a new connection after one that
        // ran to the close and after one framed both ways.
        let conns: Vec<_> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(n, h, _)| (*n, h.split(' ').nth(1).unwrap().to_owned()))
            .collect();
        let on = |path: &str| conns.iter().find(|(_, p)| p == path).unwrap().0;
        assert_eq!(on("/length"), on("/head"));
        assert_eq!(on("/head"), on("/continue"));
        assert_eq!(on("/continue"), on("/chunked"));
        assert_eq!(on("/chunked"), on("/close"));
        assert_ne!(on("/close"), on("/both"));
        assert_ne!(on("/both"), on("/next"));

        // The inspector saw each exchange as the visitor did.
        let recent = forwarder.traffic().recent();
        let chunked = recent.iter().find(|x| x.path == "/chunked").unwrap();
        assert_eq!(&chunked.response_body.data[..], b"hello world");
        assert_eq!(
            chunked.response_headers.get("transfer-encoding"),
            Some("chunked"),
            "as the local service sent it"
        );
        let short = recent.iter().find(|x| x.path == "/short").unwrap();
        assert!(short.error.is_some(), "{short:?}");
    }

    #[tokio::test]
    async fn request_bodies_are_framed_and_an_early_answer_closes_the_connection() {
        let (addr, seen) = scripted(|head| {
            if head.contains(" /early ") {
                (
                    "HTTP/1.1 413 Payload Too Large\r\ncontent-length: 0\r\n\r\n",
                    false,
                )
            } else {
                ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", false)
            }
        })
        .await;
        let forwarder = Forwarder::new(
            LocalTarget::new("127.0.0.1", addr.port()),
            Traffic::new(64, 1024),
        );
        let post = |path: &str, length: bool, body: Body| {
            let mut req = Request::post(path);
            if length {
                req = req.header(header::CONTENT_LENGTH, "11");
            }
            req.body(body).unwrap()
        };
        let (status, _, _) = exchange(
            &forwarder,
            post("/sized", true, http_util::full("hello world")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        // Known length, no header (a replay's body): sized all the same.
        let (status, _, _) = exchange(
            &forwarder,
            post("/known", false, http_util::full("hello world")),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let pieces =
            futures_util::stream::iter(["hello", " world"].map(|p| {
                Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(p.as_bytes())))
            }));
        let unknown = boxed(http_body_util::StreamBody::new(pieces));
        let (status, _, _) = exchange(&forwarder, post("/unsized", false, unknown)).await;
        assert_eq!(status, StatusCode::OK);

        // A body that has not ended when the local service answers.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
        tx.send(Ok(http_body::Frame::data(Bytes::from_static(b"part"))))
            .await
            .unwrap();
        let frames = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        let open = boxed(http_body_util::StreamBody::new(frames));
        let (status, _, _) = exchange(&forwarder, post("/early", true, open)).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        drop(tx);
        let (status, _, _) = exchange(&forwarder, get(Method::GET, "/after")).await;
        assert_eq!(status, StatusCode::OK);

        let seen = seen.lock().unwrap().clone();
        let find = |path: &str| {
            seen.iter()
                .find(|(_, h, _)| h.contains(path))
                .unwrap()
                .clone()
        };
        let (sized, unsized_, early, after) = (
            find("/sized"),
            find("/unsized"),
            find("/early"),
            find("/after"),
        );
        assert!(sized.1.contains("content-length: 11"), "{}", sized.1);
        assert_eq!(sized.2, b"hello world");
        let known = find("/known");
        assert!(known.1.contains("content-length: 11"), "{}", known.1);
        assert_eq!(known.2, b"hello world");
        assert!(
            unsized_.1.contains("transfer-encoding: chunked"),
            "{}",
            unsized_.1
        );
        assert_eq!(unsized_.2, b"hello world");
        assert_eq!(sized.0, unsized_.0, "one connection");
        assert_eq!(unsized_.0, early.0);
        assert_ne!(
            early.0, after.0,
            "not reused after an answer that came before the body"
        );
    }

    #[tokio::test]
    async fn a_request_lost_on_a_closing_idle_connection_is_sent_again_when_safe() {
        let (addr, log) = closes_on_second_request().await;
        let target = LocalTarget::new("127.0.0.1", addr.port());
        let mut forwarder = Forwarder::new(target, Traffic::new(16, 1024));
        // Every reused connection counts as long idle.
        Arc::get_mut(&mut forwarder).unwrap().plain = Arc::new(Idle {
            resend_after: Duration::ZERO,
            ..Idle::new(MAX_IDLE_AGE)
        });
        let send = |method: Method, path: &str, body: &'static str| {
            let req = Request::builder()
                .method(method)
                .uri(path)
                .body(if body.is_empty() {
                    http_util::empty()
                } else {
                    http_util::full(body)
                })
                .unwrap();
            let forwarder = forwarder.clone();
            async move {
                let (_, answer, _) = forwarder.forward(req, None, false).await;
                let status = answer.status();
                let body = answer.body.collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            }
        };

        assert_eq!(
            send(Method::GET, "/a", "").await,
            (StatusCode::OK, "0".into())
        );
        // Lost on connection 0, which closed under it; sent again on a new one.
        assert_eq!(
            send(Method::GET, "/b", "").await,
            (StatusCode::OK, "1".into())
        );
        // A POST may have taken effect: it is not repeated.
        let (status, _) = send(Method::POST, "/c", "x").await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        let log = log.lock().unwrap().clone();
        let lines = |path: &str| log.iter().filter(|(_, l)| l.contains(path)).count();
        assert_eq!(
            (lines("/a"), lines("/b"), lines("/c")),
            (1, 2, 1),
            "{log:?}"
        );
    }

    #[tokio::test]
    async fn the_address_that_answered_is_kept_for_new_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // An IPv4-only service behind `localhost`, closing after each answer, so every request
        // needs a new connection.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = sock.read(&mut buf).await;
                let _ = sock
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
        let target = LocalTarget::new("localhost", addr.port());
        let forwarder = Forwarder::new(target, Traffic::new(4, 64));
        for _ in 0..3 {
            let req = Request::get("/").body(http_util::empty()).unwrap();
            let (_, answer, _) = forwarder.forward(req, None, false).await;
            assert_eq!(answer.status(), StatusCode::OK);
            let _ = answer.body.collect().await;
            assert_eq!(
                *forwarder.addr.lock().unwrap(),
                Some(addr),
                "kept, not resolved again"
            );
        }
    }

    #[tokio::test]
    async fn idle_connections_are_reused_until_too_old_or_closed() {
        let idle = Idle::new(Duration::from_secs(60));
        let (c, _peer) = conn().await;
        idle.put(c);
        assert!(idle.take().is_some(), "a young idle connection is reused");
        assert!(idle.take().is_none());

        let (c, peer) = conn().await;
        idle.put(c);
        drop(peer);
        assert!(idle.take().is_none(), "one its peer closed is not");

        let expired = Idle::new(Duration::ZERO);
        let (c, _peer) = conn().await;
        expired.put(c);
        assert!(expired.take().is_none(), "nor an old one");
        assert!(expired.conns.lock().unwrap().is_empty(), "which is closed");

        let mut peers = Vec::new();
        for _ in 0..MAX_IDLE + 3 {
            let (c, peer) = conn().await;
            peers.push(peer);
            idle.put(c);
        }
        assert_eq!(idle.conns.lock().unwrap().len(), MAX_IDLE);
    }
}
