//! Public requests through a tunnel: one stream of the tunnel's session per request, opened
//! with the request's head; the bodies follow as the stream's data.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Instant,
};

use bytes::Bytes;

use ggrok_tunnel::{
    head,
    http_util::{self, boxed, is_upgrade, strip_hop_by_hop, Body, BoxError},
    mux::{Item, MuxError},
    mux_body::{send_body, RecvBody},
    protocol::{PageKind, HEADER_ERROR, RESET_PROTOCOL},
    stop::until_stopped,
};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::{pages, registry::Endpoint, state::Shared, visitor::Visitor};

/// How long a request waits for a tunnel whose session is still starting.
const SESSION_START: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `work` until it finishes or the session ends, whichever comes first.
async fn until_ended(ended: CancellationToken, work: impl Future<Output = ()>) {
    let _ = until_stopped(ended.cancelled(), work).await;
}

pub(crate) async fn forward<B>(
    shared: &Arc<Shared>,
    visitor: Visitor,
    name: &str,
    mut req: Request<B>,
    json: bool,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let started = Instant::now();
    let refuse = Refuse { shared, name, json };
    let Some(route) = shared
        .registry
        .endpoint_when_ready(name, SESSION_START)
        .await
    else {
        return refuse.offline();
    };
    if let Some(refused) = refuse.by_policy_or_rate(&route, &visitor, req.headers()) {
        return refused;
    }
    let visitor_upgrade = is_upgrade(req.headers()).then(|| VisitorUpgrade::of(&mut req));
    let (mut parts, body) = req.into_parts();
    to_origin(&mut parts, &visitor, route.policy.consumes_authorization());

    // An upgrade's stream stays open for the bytes that follow the 101.
    let no_body = http_body::Body::is_end_stream(&body) && visitor_upgrade.is_none();
    let open = head::encode_request(&parts.method, &parts.uri, &parts.headers);
    let stream = match route.mux.open(open, no_body).await {
        Ok(stream) => stream,
        Err(MuxError::TooManyStreams) => return refuse.too_many_streams(),
        Err(e) => {
            debug!(%e, "open stream failed");
            return refuse.lost("is not answering (session closing)");
        }
    };
    let broken = Arc::new(AtomicU8::new(BODY_OK));
    if !no_body && visitor_upgrade.is_none() {
        upload(shared, &route, &stream, boxed(body), broken.clone());
    }
    let answer = match stream.recv().await {
        Some(Ok(Item::Head(answer))) => answer,
        _ if broken.load(Ordering::SeqCst) != BODY_OK => {
            return refuse.body_failed(broken.load(Ordering::SeqCst))
        }
        other => {
            debug!(?other, "request through tunnel failed");
            return refuse.lost("went away while handling the request");
        }
    };
    let Ok(answer) = head::decode_response(answer) else {
        stream.reset(RESET_PROTOCOL, "malformed response head");
        return refuse.lost("sent a malformed response");
    };
    route.metrics.request(started.elapsed());
    respond(shared, &route, name, answer, stream, visitor_upgrade)
}

/// The pages a request through tunnel `name` can get instead of the local service's answer.
pub(crate) struct Refuse<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) name: &'a str,
    pub(crate) json: bool,
}

impl Refuse<'_> {
    fn page(&self, status: StatusCode, kind: PageKind, message: &str) -> Response<Body> {
        pages::error(self.shared, status, kind, message, self.json)
    }

    /// No session holds the name: it is reconnecting (held for its client) or unknown.
    fn offline(&self) -> Response<Body> {
        let name = self.name;
        if self.shared.registry.is_held(name) {
            let message = format!(
                "The tunnel {name} is reconnecting: its client dropped and has not come back yet. \
                 Try again in a moment."
            );
            let mut resp = self.page(
                StatusCode::SERVICE_UNAVAILABLE,
                PageKind::TunnelReconnecting,
                &message,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            return resp;
        }
        let domain = &self.shared.config.domain;
        let message = format!("No tunnel is online at {name}.{domain}.");
        self.page(StatusCode::NOT_FOUND, PageKind::TunnelNotFound, &message)
    }

    /// The tunnel's own protection (basic auth, allowlist), then the server's request rate.
    fn by_policy_or_rate(
        &self,
        route: &Endpoint,
        visitor: &Visitor,
        headers: &http::HeaderMap,
    ) -> Option<Response<Body>> {
        if let Some(refused) = route
            .policy
            .check(self.name, visitor.ip, headers, self.json)
        {
            self.shared
                .metrics
                .error(if refused.status() == StatusCode::FORBIDDEN {
                    PageKind::Forbidden
                } else {
                    PageKind::Unauthorized
                });
            return Some(refused);
        }
        if !self.shared.request_limit.allow(&route.name) {
            let message = format!(
                "The tunnel {} gets more requests than this server allows. Slow down.",
                self.name
            );
            return Some(self.page(
                StatusCode::TOO_MANY_REQUESTS,
                PageKind::RateLimited,
                &message,
            ));
        }
        None
    }

    pub(crate) fn too_many_streams(&self) -> Response<Body> {
        let message = format!(
            "The tunnel {} has as many requests in flight as it may. Try again in a moment.",
            self.name
        );
        let mut resp = self.page(
            StatusCode::SERVICE_UNAVAILABLE,
            PageKind::TunnelLost,
            &message,
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        resp
    }

    /// The client did `what` instead of answering.
    pub(crate) fn lost(&self, what: &str) -> Response<Body> {
        let message = format!(
            "The tunnel {} is registered but its client {what}. Try again in a moment.",
            self.name
        );
        self.page(StatusCode::BAD_GATEWAY, PageKind::TunnelLost, &message)
    }

    pub(crate) fn body_failed(&self, why: u8) -> Response<Body> {
        body_failed(self.shared, why, self.json)
    }
}

/// The visitor's body stalled or broke (`why`, see [`IdleLimited`]) before an answer came: the
/// visitor's fault.
pub(crate) fn body_failed(shared: &Shared, why: u8, json: bool) -> Response<Body> {
    let (status, message) = if why == BODY_STALLED {
        let secs = shared.config.body_idle_timeout.as_secs_f64();
        let message = format!("The request body stalled for {secs} s; the request was abandoned.");
        (StatusCode::REQUEST_TIMEOUT, message)
    } else {
        let message = "The request body was malformed or cut off.".to_owned();
        (StatusCode::BAD_REQUEST, message)
    };
    let mut resp = pages::error(shared, status, PageKind::BadRequest, &message, json);
    // The rest of the body may still come: it must not be read as a new request.
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// The visitor's side of an upgraded connection: its own connection, or for a request another
/// node hopped here, the hop's stream, handed over by `cluster::hop` once the `101` is on it.
pub(crate) enum VisitorUpgrade {
    Connection(hyper::upgrade::OnUpgrade),
    Hop(crate::cluster::hop::HandOver),
}

impl VisitorUpgrade {
    /// The upgrade `req` will get if it is answered with a `101`.
    fn of<B>(req: &mut Request<B>) -> Self {
        match crate::cluster::hop::HandOver::take(req) {
            Some(hop) => Self::Hop(hop),
            None => Self::Connection(hyper::upgrade::on(req)),
        }
    }

    /// Joins the visitor's side to `stream` until either closes.
    async fn splice(self, stream: ggrok_tunnel::mux::MuxStream) {
        match self {
            Self::Connection(on_upgrade) => match on_upgrade.await {
                Ok(io) => {
                    http_util::splice(TokioIo::new(io), stream.into_io()).await;
                }
                Err(e) => debug!(%e, "visitor upgrade failed"),
            },
            Self::Hop(hop) => match hop.wait().await {
                Some(hop) => crate::cluster::hop::splice_streams(hop, stream).await,
                None => debug!("the hop ended before its upgrade"),
            },
        }
    }
}

/// The visitor's request head as the local service gets it: hop-by-hop headers and the
/// tunnel's own credentials removed, `X-Forwarded-*` added, the target in origin form.
pub(crate) fn to_origin(
    parts: &mut http::request::Parts,
    visitor: &Visitor,
    consumes_authorization: bool,
) {
    // The host the request was routed by: the URI authority (HTTP/2, absolute-form targets)
    // before `Host`, so the origin sees the name the visitor actually reached.
    let public_host = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        .or_else(|| parts.headers.get(header::HOST).cloned());
    strip_hop_by_hop(&mut parts.headers);
    if consumes_authorization {
        // The tunnel's password is for ggrok, not for the local service.
        parts.headers.remove(header::AUTHORIZATION);
    }
    add_forwarded(&mut parts.headers, visitor, public_host);
    parts.uri = http_util::origin_form(std::mem::take(&mut parts.uri));
}

/// Sends the visitor's body into `stream` from a task of its own, so the answer can come
/// before the upload ends; `broken` says why, if the visitor's side failed it.
pub(crate) fn upload(
    shared: &Arc<Shared>,
    route: &Endpoint,
    stream: &ggrok_tunnel::mux::MuxStream,
    body: Body,
    broken: Arc<AtomicU8>,
) {
    let body = IdleLimited::new(
        route.metrics.count_body(true, body),
        shared.config.body_idle_timeout,
        broken,
    );
    let upload = stream.clone();
    shared.spawn(until_ended(route.ended.clone(), async move {
        if let Err(e) = send_body(&upload, boxed(body)).await {
            debug!(%e, "request body not sent whole");
        }
    }));
}

/// The client's answer as the visitor gets it: cookies narrowed to the tunnel's host, a 101
/// spliced to the visitor's upgraded connection, the body read from the stream.
pub(crate) fn respond(
    shared: &Arc<Shared>,
    route: &Endpoint,
    name: &str,
    mut answer: http::response::Parts,
    stream: ggrok_tunnel::mux::MuxStream,
    visitor_upgrade: Option<VisitorUpgrade>,
) -> Response<Body> {
    // As a `HeaderName`: a `&str` is parsed again on every lookup.
    const ERROR: http::HeaderName = http::HeaderName::from_static(HEADER_ERROR);
    crate::cookies::narrow(&mut answer.headers, name, &shared.config.domain);
    if let Some(kind) = answer
        .headers
        .get(ERROR)
        .and_then(|v| v.to_str().ok())
        .and_then(PageKind::from_code)
    {
        shared.metrics.error(kind);
    }
    if answer.status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(visitor_io) = visitor_upgrade {
            // Ending with the session closes the visitor's side too, so it sees the end.
            shared.spawn(until_ended(route.ended.clone(), visitor_io.splice(stream)));
        }
        return Response::from_parts(answer, http_util::empty());
    }
    strip_hop_by_hop(&mut answer.headers);
    let body = if stream.peer_finished() {
        http_util::empty()
    } else {
        boxed(RecvBody::new(stream))
    };
    Response::from_parts(answer, route.metrics.count_body(false, body))
}

/// A visitor's request body that fails once the visitor sends nothing for `limit` while the
/// tunnel waits for more, so a slow sender cannot hold a visitor connection, a tunnel stream
/// and an origin connection forever. Only time spent waiting on the visitor counts: while the
/// origin is slow to read, the body is not polled and the clock is stopped.
pub(crate) struct IdleLimited {
    inner: Body,
    limit: std::time::Duration,
    /// Made the first time the body waits: most bodies never do (a GET's is empty).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The last poll found no data: the clock runs.
    waiting: bool,
    /// Why the body failed, if it did: the visitor's fault, not the tunnel's.
    broken: Arc<AtomicU8>,
}

pub(crate) const BODY_OK: u8 = 0;
/// Nothing arrived for the idle limit.
const BODY_STALLED: u8 = 1;
/// Bad chunked framing, or the visitor hung up mid-body.
const BODY_BROKEN: u8 = 2;

impl IdleLimited {
    /// `inner`, failing after `limit` without data; `broken` learns why it failed, if it does.
    pub(crate) fn new(inner: Body, limit: std::time::Duration, broken: Arc<AtomicU8>) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
            waiting: false,
            broken,
        }
    }
}

impl http_body::Body for IdleLimited {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                if let Some(Err(_)) = &frame {
                    this.broken.store(BODY_BROKEN, Ordering::SeqCst);
                }
                Poll::Ready(frame)
            }
            Poll::Pending => {
                let deadline = match &mut this.deadline {
                    Some(d) if this.waiting => d,
                    Some(d) => {
                        d.as_mut().reset(tokio::time::Instant::now() + this.limit);
                        d
                    }
                    None => this
                        .deadline
                        .insert(Box::pin(tokio::time::sleep(this.limit))),
                };
                this.waiting = true;
                ready!(deadline.as_mut().poll(cx));
                this.broken.store(BODY_STALLED, Ordering::SeqCst);
                Poll::Ready(Some(Err("the request body stalled".into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Adds `X-Forwarded-For/-Proto/-Host` the way common proxies do (appending to a visitor's
/// `X-Forwarded-For` rather than trusting or discarding it).
fn add_forwarded(h: &mut http::HeaderMap, visitor: &Visitor, public_host: Option<HeaderValue>) {
    use ggrok_tunnel::protocol::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};
    // The chain so far is every line in order (HAProxy adds a line of its own), as one.
    let lines: Option<Vec<&str>> = h
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.to_str().ok())
        .collect();
    let prev = lines.map(|l| l.join(", ")).unwrap_or_default();
    let xff = match prev.trim() {
        // Trusted proxies already appended the visitor (see `Visitor::through`).
        prev if visitor.proxied => HeaderValue::try_from(prev).ok(),
        "" => Some(visitor.ip_value.clone()),
        prev => HeaderValue::try_from(format!("{prev}, {}", visitor.ip)).ok(),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    let proto = if visitor.secure { "https" } else { "http" };
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = public_host {
        h.insert(X_FORWARDED_HOST, host.clone());
        // The client rewrites Host for the local service; it needs one to start from.
        h.insert(header::HOST, host);
    }
}
