//! The holder's side of a plain hopped request: a format-2 hop (see [`super::hop`]) whose head
//! is a plain request for a tunnel online here, from a visitor the tunnel lets in, at a rate the
//! server allows. The hop's head is read in place ([`protocol::decode_hop_raw`]), the tunnel's
//! opening head is written from it as `proxy::to_origin` makes it (hop-by-hop headers and the
//! tunnel's own credentials dropped, `X-Forwarded-For`, `-Proto` and `-Host` written), and the
//! client's answering head and frames go back on the hop's stream: the head as the client sent
//! it unless a header must go or a cookie be narrowed, the body and trailers frame by frame. No
//! header map, no router, no `Request` or `Response` is built for it.
//!
//! Everything else is the router's, as before (`hop::serve_request`), which decodes the head again
//! and answers it exactly as it always did: a head that does not decode, a visitor its trusted
//! proxies named (`proxied`), an upgrade, `TE`, a transfer coding, a `Connection` that names
//! headers, a host or target outside the plain forms, a head over [`MAX_HEAD`], a tunnel not
//! online here, a visitor the allowlist or the password refuses, a refused rate. Once the request
//! is on its way, the pages (the session closing, the client going away or answering with a
//! malformed head, a request body that failed) are the router's own, by the same functions; so
//! is the handling of an answer whose head needs the router's judgement (an informational
//! status, an upgrade or `TE` in it, a `Connection` that names headers).

use std::{
    future::poll_fn,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    time::Instant,
};

use bytes::Bytes;
use ggrok_tunnel::{
    head::{self, HeadWriter, RawRequest, RawResponse},
    http_util::{accept_wants_json, boxed, hop_by_hop},
    mux::{Item, MuxError, MuxStream},
    mux_body::RecvBody,
    protocol::{self, PageKind, HEADER_ERROR, RESET_BODY, RESET_PROTOCOL},
};
use http::Response;
use tracing::debug;

use super::hop;
use crate::{
    cookies, h1,
    policy::Policy,
    proxy::{self, Refuse, BODY_OK},
    registry::Endpoint,
    router::MAX_HEAD,
    state::Shared,
    visitor::Visitor,
};

/// Serves the format-2 hop opened with `head` on `stream` if it is a plain request (see the
/// module's documentation); `false`, with nothing read or sent, for the router's.
pub(super) async fn serve(shared: &Arc<Shared>, head: &[u8], stream: &MuxStream) -> bool {
    let Some(plain) = read(head, &shared.config.domain) else {
        return false;
    };
    let Some(route) = shared.registry.endpoint(plain.name) else {
        return false;
    };
    // Refused visitors get the router's pages, counted there.
    let policy = &route.policy;
    if !plain.authorized(policy) || !shared.request_limit.allow(&route.name) {
        return false;
    }
    let open = plain.open(policy.consumes_authorization());
    relay(shared, &route, open, plain.json(), stream).await;
    true
}

/// A plain hopped request, read in place.
pub(crate) struct Plain<'h> {
    /// The tunnel it is for (not yet looked up).
    pub(crate) name: &'h str,
    /// Its visitor, as the first node saw it.
    pub(crate) visitor: Visitor,
    request: RawRequest<'h>,
    /// Its `Host` value.
    host: &'h [u8],
    /// Its first `Authorization` value: the one the tunnel's password is checked against.
    authorization: Option<&'h [u8]>,
    /// Its first `Accept` value: the one that says whether a page is JSON.
    accept: Option<&'h [u8]>,
    /// It carries an `X-Forwarded-For` of its own.
    forwarded_for: bool,
    /// Bytes of its headers, as a head frame counts them.
    size: usize,
}

/// Reads a hop's OPEN `head` as this path takes it, for a server of `domain`: a plain request,
/// or `None` for the router (see the module's documentation).
pub(crate) fn read<'h>(head: &'h [u8], domain: &str) -> Option<Plain<'h>> {
    let (visitor, request) = protocol::decode_hop_raw(head).ok()??;
    // The chain its trusted proxies wrote goes on as it is: the router's to write.
    if visitor.proxied {
        return None;
    }
    // The targets the visitor's node takes on its own path: all of them `http::Uri`'s too, so the
    // router's decoding would take this one.
    let target = request.target.as_bytes();
    if !target.starts_with(b"/") || !h1::all_bytes(target, h1::target_byte) {
        return None;
    }
    let mut host = None;
    let mut hosts = 0;
    let mut authorization = None;
    let mut accept = None;
    let mut forwarded_for = false;
    let mut size = 0;
    // The head's size as the router counts it against `MAX_HEAD`.
    let mut head_len = target.len();
    for &(name, value) in &request.headers {
        size += name.len() + value.len() + 6;
        head_len += name.len() + value.len() + 4;
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        match name.len() {
            2 if is("te") => return None,
            4 if is("host") => {
                hosts += 1;
                host = Some(value);
            }
            6 if is("accept") => {
                accept.get_or_insert(value);
            }
            7 if is("upgrade") => return None,
            10 if is("connection") && names_headers(value) => return None,
            13 if is("authorization") => {
                authorization.get_or_insert(value);
            }
            15 if is("x-forwarded-for") => forwarded_for = true,
            17 if is("transfer-encoding") => return None,
            _ => {}
        }
    }
    let (Some(host), 1) = (host, hosts) else {
        return None;
    };
    if head_len > MAX_HEAD {
        return None;
    }
    let name = h1::tunnel_name(host, domain)?;
    Some(Plain {
        name,
        visitor: Visitor::hopped(visitor),
        request,
        host,
        authorization,
        accept,
        forwarded_for,
        size,
    })
}

impl Plain<'_> {
    /// Whether `policy` lets its visitor in: the allowlist, then the password.
    pub(crate) fn authorized(&self, policy: &Policy) -> bool {
        policy.allows(self.visitor.ip) && policy.authorizes(self.authorization)
    }

    /// Whether its visitor wants pages in JSON, as the router decides it.
    pub(crate) fn json(&self) -> bool {
        self.accept.is_some_and(accept_wants_json)
    }

    /// The opening head of the tunnel's stream, as `proxy::to_origin` makes it from the router's
    /// request: the headers in order without the hop-by-hop ones, `X-Forwarded-*` and, when the
    /// password is the tunnel's (`consumes_authorization`), `Authorization`; then
    /// `X-Forwarded-For`, `-Proto` and `-Host`.
    pub(crate) fn open(&self, consumes_authorization: bool) -> Bytes {
        let headers = &self.request.headers;
        let ip = self.visitor.ip_value.as_bytes();
        let chain = self.forwarded_for.then(|| {
            let lines = headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(b"x-forwarded-for"))
                .map(|&(_, v)| v);
            h1::forwarded_chain(lines, ip)
        });
        let proto: &[u8] = if self.visitor.secure {
            b"https"
        } else {
            b"http"
        };
        let extra =
            chain.as_ref().map_or(ip.len(), Vec::len) + proto.len() + self.host.len() + 3 * 22;
        let method = self.request.method.as_str().as_bytes();
        let target = self.request.target.as_bytes();
        let mut open = HeadWriter::request(method, target, self.size + extra);
        for &(name, value) in headers {
            let credentials = consumes_authorization && name.eq_ignore_ascii_case(b"authorization");
            if !credentials && !hop_by_hop(name) && !h1::is_forwarded(name) {
                open.push(name, value);
            }
        }
        open.push(b"x-forwarded-for", chain.as_deref().unwrap_or(ip));
        open.push(b"x-forwarded-proto", proto);
        open.push(b"x-forwarded-host", self.host);
        open.finish()
    }
}

/// Whether a `Connection` value names headers to drop (or an upgrade): anything but
/// `keep-alive` and `close`.
fn names_headers(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .any(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case(b"close")
                && !t.eq_ignore_ascii_case(b"keep-alive")
        })
}

/// Forwards the request to `route`'s client with the opening head `open` and relays its answer
/// on `hop`, as `proxy::forward` and `hop::serve_request` would.
async fn relay(shared: &Arc<Shared>, route: &Endpoint, open: Bytes, json: bool, hop: &MuxStream) {
    let started = Instant::now();
    let refuse = Refuse {
        shared,
        name: &route.name,
        json,
    };
    let page = |page: Response<_>| hop::answer(hop.clone(), page, None);
    let no_body = hop.peer_finished();
    let tunnel = match route.mux.open(open, no_body).await {
        Ok(stream) => stream,
        Err(MuxError::TooManyStreams) => return page(refuse.too_many_streams()).await,
        Err(e) => {
            debug!(%e, "open stream failed");
            return page(refuse.lost("is not answering (session closing)")).await;
        }
    };
    let broken = Arc::new(AtomicU8::new(BODY_OK));
    if !no_body {
        let body = boxed(RecvBody::new(hop.clone()));
        proxy::upload(shared, route, &tunnel, body, broken.clone());
    }
    let answer = match tunnel.recv().await {
        Some(Ok(Item::Head(answer))) => answer,
        _ if broken.load(Ordering::SeqCst) != BODY_OK => {
            return page(refuse.body_failed(broken.load(Ordering::SeqCst))).await
        }
        other => {
            debug!(?other, "request through tunnel failed");
            return page(refuse.lost("went away while handling the request")).await;
        }
    };
    let relayed = match head::decode_response_raw(&answer) {
        Ok(raw) => relayed_head(shared, route, &answer, raw),
        Err(_) => {
            tunnel.reset(RESET_PROTOCOL, "malformed response head");
            return page(refuse.lost("sent a malformed response")).await;
        }
    };
    route.metrics.request(started.elapsed());
    let Some(head) = relayed else {
        // The router's handling of the answer, on the head decoded into a map.
        let resp = match head::decode_response(answer) {
            Ok(parts) => proxy::respond(shared, route, &route.name, parts, tunnel, None),
            Err(_) => {
                tunnel.reset(RESET_PROTOCOL, "malformed response head");
                refuse.lost("sent a malformed response")
            }
        };
        return page(resp).await;
    };
    let end = tunnel.peer_finished();
    if let Err(e) = hop.send_head(head, false, end).await {
        return debug!(%e, "the hopped response head could not be sent");
    }
    if !end {
        relay_body(route, tunnel, hop).await;
    }
}

/// The answering head `answer` (read in place as `raw`) as the hop passes it on, as
/// `proxy::respond` would leave it: without hop-by-hop headers, with cookies narrowed to the
/// tunnel, ggrok's error page counted. The head itself when nothing changes; `None` for one that
/// needs the router's judgement.
fn relayed_head(
    shared: &Shared,
    route: &Endpoint,
    answer: &Bytes,
    raw: RawResponse<'_>,
) -> Option<Bytes> {
    if raw.status.is_informational() {
        return None;
    }
    let cookie_host = std::cell::OnceCell::new();
    let cookie_host =
        || cookie_host.get_or_init(|| format!("{}.{}", route.name, shared.config.domain));
    let mut rewrite = false;
    let mut error = None;
    for &(name, value) in &raw.headers {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        if hop_by_hop(name) {
            if is("te") || is("upgrade") || (is("connection") && names_headers(value)) {
                return None;
            }
            rewrite = true;
        } else if is("set-cookie") {
            rewrite |= cookies::narrowed_bytes(value, cookie_host()).is_some();
        } else if is(HEADER_ERROR) && error.is_none() {
            error = Some(value);
        }
    }
    // The first value, as a header map's `get` finds it.
    let kind = error
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(PageKind::from_code);
    if let Some(kind) = kind {
        shared.metrics.error(kind);
    }
    if !rewrite {
        return Some(answer.clone());
    }
    let mut out = HeadWriter::new(raw.status, answer.len());
    for &(name, value) in &raw.headers {
        if hop_by_hop(name) {
            continue;
        }
        let narrowed = name
            .eq_ignore_ascii_case(b"set-cookie")
            .then(|| cookies::narrowed_bytes(value, cookie_host()))
            .flatten();
        out.push(name, narrowed.as_deref().unwrap_or(value));
    }
    Some(out.finish())
}

/// Passes the client's body and trailers from `tunnel` on to `hop`, as `mux_body::send_body`
/// passes on a body read from a stream: a failure resets `hop` with its reason.
async fn relay_body(route: &Endpoint, tunnel: MuxStream, hop: &MuxStream) {
    let broken = |why: &str| hop.reset(RESET_BODY, why);
    loop {
        // Held: the client's credit comes back once the hop's stream has taken the data.
        let item = poll_fn(|cx| tunnel.poll_recv_held(cx)).await;
        let sent = match item {
            None => hop.finish(),
            Some(Ok(Item::Data(data))) => {
                route.metrics.count_bytes(0, data.len() as u64);
                match hop.send(&data).await {
                    Ok(()) => continue,
                    Err(e) => Err(e),
                }
            }
            Some(Ok(Item::Trailers(trailers))) => {
                // Checked as the router's body checks them.
                if let Err(e) = head::decode_trailers(trailers.clone()) {
                    return broken(&e.to_string());
                }
                hop.send_head(trailers, true, true).await
            }
            Some(Ok(Item::Head(_))) => return broken("a second head inside a body"),
            Some(Err(e)) => return broken(&e.to_string()),
        };
        if let Err(e) = sent {
            debug!(%e, "hopped response body ended early");
        }
        return;
    }
}
