//! The hop: a visitor who reaches a node that does not hold the tunnel is served through the
//! node that does, over one persistent multiplexed session between the two nodes (the same
//! [`mux`] machinery as a tunnel's), opened by the visitor's node to the holder's
//! [`PEER_PATH`] with the cluster secret.
//!
//! Each request is one stream, in the newest hop format both nodes speak ([`HOP_VERSION`]; the
//! holder says its own in [`HEADER_HOP_VERSION`] on the session's `101`):
//! - Format 2: the OPEN head carries who the visitor is and the request head
//!   ([`HopHead::encode_request`]), the bodies go as DATA frames and the answer as a HEADERS
//!   frame: the frames `proxy.rs` exchanges with tunnel clients. The holder builds a request
//!   whose body is the stream and routes it as if the visitor had come straight to it, so no
//!   HTTP/1 is written or parsed and no connection is set up per request. After a `101` the
//!   stream is a byte pipe: the holder hands it to the proxy as the visitor's upgraded
//!   connection ([`HandOver`]). A plain request skips hyper and the header maps on both nodes:
//!   the visitor's node writes the OPEN head from the visitor's head as parsed and the answer
//!   back as HTTP/1.1 (`h1.rs`, the same bytes [`forward`] sends), and the holder reads the
//!   head in place and relays the client's answer to the stream (`super::plain`); both hand
//!   everything else to the router, which serves it here.
//! - Format 1, for nodes from before format 2: the OPEN head is a text [`HopHead`], the stream
//!   carries the request as HTTP/1.1, spoken by a hyper client here and a hyper server there.
//!   Every node serves both (the head's first byte tells them apart), so a cluster can be
//!   upgraded node by node; format 1 is kept while clusters may mix versions.
//!
//! Either way bodies stream both ways under the session's flow control, and the holder alone
//! enforces the tunnel's Basic auth and allowlist and writes `X-Forwarded-For`. A hopped request
//! is never hopped again: at most one hop, no loops. The session to a node runs on the shard
//! that opened it, and the visitors of the tunnels that node holds are placed on that shard
//! ([`Peers::shard`]), as a tunnel's visitors are on its session's.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc, Mutex,
    },
};

use bytes::Bytes;
use ggrok_tunnel::{
    head,
    http_util::{self, boxed, empty, is_upgrade, splice_upgrades, Body, BoxError},
    mux::{self, Item, MuxError, MuxStream},
    mux_body::{send_body, RecvBody},
    protocol::{
        self, HopError, HopHead, HopOpen, PageKind, HEADER_HOP_VERSION, HOP_VERSION, PEER_PATH,
        RESET_PROTOCOL,
    },
    ws,
};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, handshake::derive_accept_key};
use tracing::{debug, info, info_span, warn, Instrument};

use super::Node;
use crate::{
    pages,
    proxy::{self, IdleLimited, BODY_OK},
    router::Router,
    state::Shared,
    visitor::Visitor,
};

/// How long opening a session to another node may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The sessions this node opened to the others, by node id.
#[derive(Default)]
pub(crate) struct Peers {
    links: tokio::sync::Mutex<HashMap<String, Link>>,
}

/// A session to another node, and the hop format both speak.
#[derive(Clone)]
pub(crate) struct Link {
    pub(crate) session: mux::Session,
    pub(crate) hop_version: u32,
    /// The shard whose thread runs the session (see [`crate::shard`]).
    shard: Option<usize>,
}

impl Peers {
    /// The session to node `id` at `advertise`, opened if there is none (or it ended).
    pub(crate) async fn link(
        &self,
        shared: &Arc<Shared>,
        node: &Node,
        id: &str,
        advertise: &str,
    ) -> Result<Link, String> {
        // Held while connecting: concurrent requests for a node wait for one session.
        let mut links = self.links.lock().await;
        if let Some(link) = links.get(id).filter(|l| !l.session.is_closed()) {
            return Ok(link.clone());
        }
        let link = connect(shared, node, advertise).await?;
        info!(peer = %id, %advertise, hop_version = link.hop_version, "session to a cluster node open");
        links.insert(id.to_owned(), link.clone());
        Ok(link)
    }

    /// The shard that runs the open session to node `id`, if there is one (and no one is
    /// opening a session at this moment): the shard for visitors whose tunnel that node holds,
    /// so that the hop's streams and the visitor's connection keep to one thread, as a
    /// tunnel's visitors keep to its session's.
    pub(crate) fn shard(&self, id: &str) -> Option<usize> {
        let links = self.links.try_lock().ok()?;
        links
            .get(id)
            .filter(|l| !l.session.is_closed())
            .and_then(|l| l.shard)
    }

    /// How many sessions to other nodes are open.
    pub(crate) fn open(&self) -> usize {
        self.links.try_lock().map_or(0, |links| {
            links.values().filter(|l| !l.session.is_closed()).count()
        })
    }
}

/// Opens the session to the node at `advertise`. Over `https://` the node's certificate is the
/// one visitors get, for the server's domain (not for the node's address): so the connection
/// goes to the advertised address, and TLS and the request name the apex domain, where the
/// node serves [`PEER_PATH`]. The certificate must be valid for that name and chain to the
/// system's roots or `--cluster-ca` ([`Node::peer_tls`]): the request carries the cluster
/// secret.
async fn connect(shared: &Arc<Shared>, node: &Node, advertise: &str) -> Result<Link, String> {
    let (tls, authority) = match advertise.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        _ => return Err(format!("bad node address {advertise:?}")),
    };
    let authority = authority.trim_end_matches('/');
    let ws_url = match tls {
        true => format!("wss://{}{PEER_PATH}", shared.config.domain),
        false => format!("ws://{authority}{PEER_PATH}"),
    };
    let mut req = ws_url.into_client_request().map_err(|e| e.to_string())?;
    let bearer = format!("Bearer {}", node.secret().expose());
    let h = req.headers_mut();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::try_from(bearer).map_err(|e| e.to_string())?,
    );
    h.insert(
        protocol::HEADER_VERSION,
        HeaderValue::from(protocol::PROTOCOL_VERSION),
    );
    protocol::offer_window(h, shared.config.stream_window);
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        ws::connect_on(tcp, req, tls.then(|| node.peer_tls()))
            .await
            .map_err(|e| e.to_string())
    };
    let (ws, resp) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| "no answer in time".to_owned())??;
    let hop_version = peer_hop_version(resp.headers()).min(shared.config.hop_version);
    let config = peer_config(shared, false, protocol::window_offer(resp.headers()));
    let (session, driver) = mux::start(ws, mux::Role::Connector, config);
    shared.spawn(async move {
        if let Err(e) = driver.run(|_| {}).await {
            debug!(%e, "session to a cluster node ended");
        }
    });
    Ok(Link {
        session,
        hop_version,
        // `shared.spawn` runs the driver here.
        shard: crate::shard::current(),
    })
}

/// The hop format a node says it serves on its `101`: 1 when it says nothing (it predates the
/// header) or something unreadable.
fn peer_hop_version(headers: &http::HeaderMap) -> u32 {
    headers
        .get(HEADER_HOP_VERSION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1)
}

/// The settings of a session between nodes; `peer_window` is the stream credit the other node
/// said it accepts (see [`protocol::HEADER_WINDOW`]).
fn peer_config(shared: &Shared, accept_streams: bool, peer_window: u32) -> mux::Config {
    mux::Config {
        heartbeat: shared.config.heartbeat,
        stall_timeout: shared.config.body_idle_timeout,
        ..mux::Config::new(accept_streams)
    }
    .windows(shared.config.stream_window, peer_window)
}

/// Serves a visitor's request for tunnel `name` through node `id`, which holds it.
pub(crate) async fn forward<B>(
    shared: &Arc<Shared>,
    node: &Arc<Node>,
    visitor: &Visitor,
    (id, advertise): (&str, &str),
    name: &str,
    mut req: Request<B>,
    json: bool,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    let unreachable = |why: &str| self::unreachable(shared, id, name, why, json);
    let link = match node.peers.link(shared, node, id, advertise).await {
        Ok(link) => link,
        Err(e) => return unreachable(&e),
    };
    let visitor_hop = HopHead {
        ip: visitor.ip,
        secure: visitor.secure,
        proxied: visitor.proxied,
        tcp_port: None,
    };
    let visitor_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // HTTP/2 carries the host in the target only, and an absolute target's host wins over
    // `Host` (see `router::request_host`): the holder routes by `Host` as this node did.
    if let Some(host) = parts
        .uri
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        parts.headers.insert(header::HOST, host);
    }
    if link.hop_version < 2 {
        let req = Request::from_parts(parts, boxed(body));
        return match Box::pin(forward_http1(
            shared,
            &link.session,
            visitor_hop,
            req,
            visitor_upgrade,
        ))
        .await
        {
            Ok(resp) => resp,
            Err(e) => unreachable(&e),
        };
    }

    // An upgrade's stream stays open for the bytes that follow the 101.
    let no_body = http_body::Body::is_end_stream(&body) && visitor_upgrade.is_none();
    let open = visitor_hop.encode_request(&parts.method, &parts.uri, &parts.headers);
    let stream = match link.session.open(open, no_body).await {
        Ok(stream) => stream,
        Err(e) => return unreachable(&e.to_string()),
    };
    let broken = Arc::new(AtomicU8::new(BODY_OK));
    if !no_body && visitor_upgrade.is_none() {
        // The holder has the same limit; this one also frees the stream when it fires first.
        let body = IdleLimited::new(boxed(body), shared.config.body_idle_timeout, broken.clone());
        let upload = stream.clone();
        shared.spawn(async move {
            if let Err(e) = send_body(&upload, boxed(body)).await {
                debug!(%e, "hopped request body not sent whole");
            }
        });
    }
    let answer = match stream.recv().await {
        Some(Ok(Item::Head(answer))) => answer,
        _ if broken.load(Ordering::SeqCst) != BODY_OK => {
            return proxy::body_failed(shared, broken.load(Ordering::SeqCst), json)
        }
        Some(Err(MuxError::Reset {
            code: RESET_PROTOCOL,
            reason,
        })) => {
            warn!(peer = %id, %reason, "the node holding the tunnel refused the hop");
            return unreachable(&reason);
        }
        other => return unreachable(&format!("no answer: {other:?}")),
    };
    let Ok(answer) = head::decode_response(answer) else {
        stream.reset(RESET_PROTOCOL, "malformed response head");
        return unreachable("a malformed response head");
    };
    shared.metrics.hop();
    if answer.status == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(visitor_io) = visitor_upgrade {
            shared.spawn(async move {
                match visitor_io.await {
                    Ok(io) => {
                        http_util::splice(TokioIo::new(io), stream.into_io()).await;
                    }
                    Err(e) => debug!(%e, "visitor upgrade failed"),
                }
            });
        }
        return Response::from_parts(answer, empty());
    }
    let body = if stream.peer_finished() {
        empty()
    } else {
        boxed(RecvBody::new(stream))
    };
    Response::from_parts(answer, body)
}

/// The page of a hop to node `id`, for tunnel `name`, that failed (`why`, for the log): the node
/// cannot be reached, refused the hop, or did not answer.
pub(crate) fn unreachable(
    shared: &Shared,
    id: &str,
    name: &str,
    why: &str,
    json: bool,
) -> Response<Body> {
    debug!(peer = %id, why, "hop failed");
    let message = format!(
        "The tunnel {name} is served by another node of this cluster, which cannot be reached right now. Try again in a moment."
    );
    pages::error(
        shared,
        StatusCode::BAD_GATEWAY,
        PageKind::TunnelLost,
        &message,
        json,
    )
}

/// [`forward`] to a node that speaks hop format 1 only: the request as HTTP/1.1 on the stream.
async fn forward_http1(
    shared: &Arc<Shared>,
    session: &mux::Session,
    visitor: HopHead,
    mut req: Request<Body>,
    visitor_upgrade: Option<hyper::upgrade::OnUpgrade>,
) -> Result<Response<Body>, String> {
    let stream = session
        .open(visitor.encode(), false)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream.into_io()))
        .await
        .map_err(|e| e.to_string())?;
    shared.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%e, "hopped request ended early");
        }
    });
    *req.version_mut() = http::Version::HTTP_11;
    let mut resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    shared.metrics.hop();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(visitor_io) = visitor_upgrade {
            let holder_io = hyper::upgrade::on(&mut resp);
            shared.spawn(splice_upgrades(visitor_io, holder_io));
        }
        return Ok(resp.map(|_| empty()));
    }
    Ok(resp.map(boxed))
}

/// Whether `req` presents this cluster's secret. Compared as hashes, so the time taken says
/// nothing about how much of it matched.
fn authenticated<B>(node: &Node, req: &Request<B>) -> bool {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    Sha256::digest(presented.as_bytes()) == Sha256::digest(node.secret().expose().as_bytes())
}

/// Answers another node's request for a session at [`PEER_PATH`]: `101` and the session, or
/// 401 (wrong secret), 429 (too many attempts) or 400.
pub(crate) fn accept<B>(
    shared: &Arc<Shared>,
    peer: &Visitor,
    mut req: Request<B>,
) -> Response<Body> {
    let refuse = |status: StatusCode| {
        Response::builder()
            .status(status)
            .body(empty())
            .expect("valid refusal")
    };
    let Some(node) = &shared.config.cluster else {
        return refuse(StatusCode::NOT_FOUND);
    };
    // Secret guessing gets the connect endpoint's rate limit.
    if !shared.connect_limit.allow(&peer.ip) {
        return refuse(StatusCode::TOO_MANY_REQUESTS);
    }
    if !authenticated(node, &req) {
        warn!(peer = %peer.peer, "refused a cluster session: wrong cluster secret");
        return refuse(StatusCode::UNAUTHORIZED);
    }
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return refuse(StatusCode::BAD_REQUEST);
    };
    let peer_window = protocol::window_offer(req.headers());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = info_span!("peer", peer = %peer.peer);
    let served = shared.clone();
    shared.spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    debug!(%e, "peer upgrade failed");
                    return;
                }
            };
            let ws = ws::Socket::new(TokioIo::new(upgraded), ws::Role::Server);
            let (_session, driver) = mux::start(
                ws,
                mux::Role::Acceptor,
                peer_config(&served, true, peer_window),
            );
            let result = driver
                .run(|stream| {
                    let shared = served.clone();
                    served.spawn(serve_hop(shared, stream));
                })
                .await;
            debug!(?result, "session from a cluster node ended");
        }
        .instrument(span),
    );
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, key);
    // Format 1 is what a node without the header speaks: say nothing, as such a node would.
    if shared.config.hop_version >= 2 {
        resp = resp.header(
            HEADER_HOP_VERSION,
            shared.config.hop_version.min(HOP_VERSION),
        );
    }
    let mut resp = resp.body(empty()).expect("valid 101 response");
    protocol::offer_window(resp.headers_mut(), shared.config.stream_window);
    resp
}

/// Serves one stream of a session another node opened: a hopped request in either format, or
/// a hopped TCP connection.
async fn serve_hop(shared: Arc<Shared>, stream: MuxStream) {
    let head = match stream.recv().await {
        Some(Ok(Item::Head(head))) => head,
        _ => return refuse_hop(&stream, &HopError::Visitor),
    };
    // A plain request is relayed as it is; the router serves the rest.
    if shared.config.hop_version >= 2 && super::plain::serve(&shared, &head, &stream).await {
        return;
    }
    match protocol::decode_hop(head) {
        Ok(HopOpen::Request(visitor, parts)) if shared.config.hop_version >= 2 => {
            serve_request(shared, visitor, parts, stream).await
        }
        Ok(HopOpen::Text(visitor)) => match visitor.tcp_port {
            Some(port) => crate::tcp::serve_hopped(&shared, port, visitor.ip, stream).await,
            None => serve_http1(shared, visitor, stream).await,
        },
        // A node held to format 1 refuses format 2 as nodes from before it do.
        Ok(HopOpen::Request(..)) => refuse_hop(&stream, &HopError::Visitor),
        Err(e) => refuse_hop(&stream, &e),
    }
}

fn refuse_hop(stream: &MuxStream, why: &HopError) {
    warn!(%why, "a hop from another node does not decode: refused");
    stream.reset(RESET_PROTOCOL, &why.to_string());
}

/// Serves a format-2 hopped request: routed as if its visitor had come here, its body read from
/// the stream, the answer written back on it.
async fn serve_request(
    shared: Arc<Shared>,
    visitor: HopHead,
    parts: http::request::Parts,
    stream: MuxStream,
) {
    let upgrade = is_upgrade(&parts.headers);
    // An upgrade's stream carries the bytes after the 101, never a body before it.
    let body = if upgrade || stream.peer_finished() {
        empty()
    } else {
        boxed(RecvBody::new(stream.clone()))
    };
    let mut req = Request::from_parts(parts, body);
    let handover = upgrade.then(|| HandOver::offer(&mut req));
    let resp = Router::hopped(shared, Visitor::hopped(visitor))
        .handle(req)
        .await;
    answer(stream, resp, handover).await;
}

/// Writes `resp`, the answer to a format-2 hopped request, on its `stream`: its head, then its
/// body; after a `101`, hands the stream over to the upgrade that waits for it.
pub(super) async fn answer(stream: MuxStream, resp: Response<Body>, handover: Option<Giver>) {
    let (mut parts, body) = resp.into_parts();
    let switched = parts.status == StatusCode::SWITCHING_PROTOCOLS;
    let end = switched || http_body::Body::is_end_stream(&body);
    if !end && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        // A page made here has a known length, which hyper would have written: keep it.
        if let Some(n) = http_body::Body::size_hint(&body).exact() {
            let bodiless = parts.status.is_informational()
                || matches!(
                    parts.status,
                    StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
                );
            if !bodiless {
                parts.headers.insert(header::CONTENT_LENGTH, n.into());
            }
        }
    }
    let head = head::encode_response(parts.status, &parts.headers);
    if let Err(e) = stream.send_head(head, false, end && !switched).await {
        return debug!(%e, "the hopped response head could not be sent");
    }
    if switched {
        match handover {
            Some(handover) => handover.give(stream),
            None => stream.reset(protocol::RESET_CANCEL, "a 101 for no upgrade"),
        }
        return;
    }
    if !end {
        // A body that fails resets the stream: the visitor's node fails its response too.
        if let Err(e) = send_body(&stream, body).await {
            debug!(%e, "hopped response body ended early");
        }
    }
}

/// Serves a format-1 hopped request: HTTP/1.1 on the stream, routed as if its visitor had come
/// here.
async fn serve_http1(shared: Arc<Shared>, visitor: HopHead, stream: MuxStream) {
    let router = Router::hopped(shared, Visitor::hopped(visitor));
    let service = hyper::service::service_fn(move |req| {
        let router = router.clone();
        async move { Ok::<_, std::convert::Infallible>(router.handle(req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream.into_io()), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        debug!(%e, "hopped request ended early");
    }
}

/// Joins two streams that carry bytes (a hop's and a tunnel's: a hopped TCP connection, or a
/// hopped upgrade) until both directions have ended or either fails. Data passes as the
/// multiplexer delivered it, with no buffer of our own, so an idle pair holds no memory (a
/// byte-stream copy holds two 64 KiB buffers from the start); in flight, each direction holds
/// at most one frame (64 KiB) beyond what the streams' credit bounds. A failure on one stream
/// resets the other with the same code and reason, so neither end takes a broken connection
/// for a whole one.
pub(crate) async fn splice_streams(a: MuxStream, b: MuxStream) {
    async fn pass(from: &MuxStream, to: &MuxStream) -> Result<(), (u32, String)> {
        let cancel = |e: MuxError| (protocol::RESET_CANCEL, e.to_string());
        loop {
            match from.recv().await {
                None => return to.finish().map_err(cancel),
                Some(Ok(Item::Data(data))) => to.send(&data).await.map_err(cancel)?,
                Some(Ok(_)) => {
                    return Err((
                        RESET_PROTOCOL,
                        "a head on a stream that carries bytes".into(),
                    ))
                }
                Some(Err(MuxError::Reset { code, reason })) => return Err((code, reason)),
                Some(Err(e)) => return Err(cancel(e)),
            }
        }
    }
    // The first failure ends both directions; resetting a stream that already failed is a no-op.
    if let Err((code, reason)) = tokio::try_join!(pass(&a, &b), pass(&b, &a)) {
        a.reset(code, &reason);
        b.reset(code, &reason);
    }
}

/// A format-2 hop's stream, handed to the proxy as the hopped visitor's upgraded connection
/// once the `101` is on it: what `hyper::upgrade::on` is for a visitor's own connection.
pub(crate) struct HandOver(oneshot::Receiver<MuxStream>);

/// The giving end of a [`HandOver`].
pub(super) struct Giver(oneshot::Sender<MuxStream>);

/// Where the request carries its [`HandOver`]: request extensions must be `Clone`.
#[derive(Clone)]
struct Offered(Arc<Mutex<Option<HandOver>>>);

impl HandOver {
    /// Puts a hand-over in `req`, for the proxy to [`take`](Self::take).
    fn offer<B>(req: &mut Request<B>) -> Giver {
        let (tx, rx) = oneshot::channel();
        req.extensions_mut()
            .insert(Offered(Arc::new(Mutex::new(Some(HandOver(rx))))));
        Giver(tx)
    }

    /// The hand-over `req` carries: only requests that came through a format-2 hop do.
    pub(crate) fn take<B>(req: &mut Request<B>) -> Option<Self> {
        let offered = req.extensions_mut().remove::<Offered>()?;
        let mut slot = offered.0.lock().unwrap_or_else(|p| p.into_inner());
        slot.take()
    }

    /// The stream, once the `101` is on it; `None` if the hop ended first.
    pub(crate) async fn wait(self) -> Option<MuxStream> {
        self.0.await.ok()
    }
}

impl Giver {
    /// Hands `stream` over, its `101` sent; dropped (so reset) if nobody waits for it.
    fn give(self, stream: MuxStream) {
        let _ = self.0.send(stream);
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    /// A stream opened on a fresh in-memory session, and its other end as the peer gets it.
    async fn stream_pair() -> (MuxStream, MuxStream) {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let a = ws::Socket::new(a, ws::Role::Client);
        let b = ws::Socket::new(b, ws::Role::Server);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (opener, driver) = mux::start(a, mux::Role::Connector, mux::Config::new(false));
        tokio::spawn(driver.run(|_| {}));
        let (_accepter, driver) = mux::start(b, mux::Role::Acceptor, mux::Config::new(true));
        tokio::spawn(driver.run(move |s| {
            let _ = tx.send(s);
        }));
        let ours = opener
            .open(Bytes::from_static(b"head"), false)
            .await
            .unwrap();
        let theirs = rx.recv().await.unwrap();
        assert!(matches!(theirs.recv().await, Some(Ok(Item::Head(_)))));
        (ours, theirs)
    }

    async fn data(stream: &MuxStream) -> Option<Result<Item, MuxError>> {
        stream.recv().await
    }

    #[tokio::test]
    async fn spliced_streams_pass_bytes_and_ends_both_ways() {
        let (visitor, hop) = stream_pair().await;
        let (tunnel, client) = stream_pair().await;
        let splice = tokio::spawn(splice_streams(hop, tunnel));
        visitor.send(b"ping").await.unwrap();
        assert_eq!(
            data(&client).await,
            Some(Ok(Item::Data(Bytes::from_static(b"ping"))))
        );
        client.send(b"pong").await.unwrap();
        assert_eq!(
            data(&visitor).await,
            Some(Ok(Item::Data(Bytes::from_static(b"pong"))))
        );
        // One half ends; the other still carries bytes, then ends too.
        visitor.finish().unwrap();
        assert_eq!(data(&client).await, None);
        client.send(b"late").await.unwrap();
        assert_eq!(
            data(&visitor).await,
            Some(Ok(Item::Data(Bytes::from_static(b"late"))))
        );
        client.finish().unwrap();
        assert_eq!(data(&visitor).await, None);
        splice.await.unwrap();
    }

    #[tokio::test]
    async fn a_failure_on_one_spliced_stream_resets_the_other_with_its_reason() {
        let (visitor, hop) = stream_pair().await;
        let (tunnel, client) = stream_pair().await;
        let splice = tokio::spawn(splice_streams(hop, tunnel));
        client.reset(protocol::RESET_UNREACHABLE, "connection refused");
        match data(&visitor).await {
            Some(Err(MuxError::Reset { code, reason })) => {
                assert_eq!(
                    (code, reason.as_str()),
                    (protocol::RESET_UNREACHABLE, "connection refused")
                );
            }
            other => panic!("expected the reset passed on, got {other:?}"),
        }
        splice.await.unwrap();
    }
}
