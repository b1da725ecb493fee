//! The hop: a visitor who reaches a node that does not hold the tunnel is served through the
//! node that does, over one persistent multiplexed session between the two nodes (the same
//! [`mux`] machinery as a tunnel's), opened by the visitor's node to the holder's
//! [`PEER_PATH`] with the cluster secret.
//!
//! Each request is one stream: its OPEN head is a [`HopHead`] (who the visitor is), its data
//! the request as HTTP/1.1, spoken by a hyper client here and served by the holder's router as
//! if the visitor had come straight to it. So bodies stream both ways under the session's flow
//! control, upgrades (WebSocket) become a byte pipe, and the holder alone enforces the tunnel's
//! Basic auth and allowlist and writes `X-Forwarded-For`. A hopped request is never hopped
//! again: at most one hop, no loops.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use ggrok_tunnel::{
    http_util::{boxed, empty, is_upgrade, splice_upgrades, Body, BoxError},
    mux,
    protocol::{self, HopHead, PageKind, PEER_PATH},
};
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio_tungstenite::{
    tungstenite::{
        client::IntoClientRequest, handshake::derive_accept_key, protocol::Role as WsRole,
    },
    WebSocketStream,
};
use tracing::{debug, info, info_span, warn, Instrument};

use super::Node;
use crate::{pages, router::Router, state::Shared, visitor::Visitor};

/// How long opening a session to another node may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The sessions this node opened to the others, by node id.
#[derive(Default)]
pub(crate) struct Peers {
    links: tokio::sync::Mutex<HashMap<String, mux::Session>>,
}

impl Peers {
    /// The session to node `id` at `advertise`, opened if there is none (or it ended).
    pub(crate) async fn link(
        &self,
        shared: &Arc<Shared>,
        node: &Node,
        id: &str,
        advertise: &str,
    ) -> Result<mux::Session, String> {
        // Held while connecting: concurrent requests for a node wait for one session.
        let mut links = self.links.lock().await;
        if let Some(session) = links.get(id).filter(|s| !s.is_closed()) {
            return Ok(session.clone());
        }
        let session = connect(shared, node, advertise).await?;
        info!(peer = %id, %advertise, "session to a cluster node open");
        links.insert(id.to_owned(), session.clone());
        Ok(session)
    }

    /// How many sessions to other nodes are open.
    pub(crate) fn open(&self) -> usize {
        self.links
            .try_lock()
            .map_or(0, |links| links.values().filter(|s| !s.is_closed()).count())
    }
}

/// Opens the session to the node at `advertise`. Over `https://` the node's certificate is the
/// one visitors get, for the server's domain (not for the node's address): so the connection
/// goes to the advertised address, and TLS and the request name the apex domain, where the
/// node serves [`PEER_PATH`]. The certificate must be valid for that name and chain to the
/// system's roots or `--cluster-ca` ([`Node::peer_tls`]): the request carries the cluster
/// secret.
async fn connect(
    shared: &Arc<Shared>,
    node: &Node,
    advertise: &str,
) -> Result<mux::Session, String> {
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
    let handshake = async {
        let tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let connector = tls.then(|| tokio_tungstenite::Connector::Rustls(node.peer_tls()));
        tokio_tungstenite::client_async_tls_with_config(
            req,
            tcp,
            Some(protocol::websocket_config()),
            connector,
        )
        .await
        .map_err(|e| e.to_string())
    };
    let (ws, _) = tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| "no answer in time".to_owned())??;
    let (session, driver) = mux::start(ws, mux::Role::Connector, peer_config(shared, false));
    shared.spawn(async move {
        if let Err(e) = driver.run(|_| {}).await {
            debug!(%e, "session to a cluster node ended");
        }
    });
    Ok(session)
}

fn peer_config(shared: &Shared, accept_streams: bool) -> mux::Config {
    mux::Config {
        heartbeat: shared.config.heartbeat,
        stall_timeout: shared.config.body_idle_timeout,
        ..mux::Config::new(accept_streams)
    }
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
    let unreachable = |why: &str| {
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
    };
    let session = match node.peers.link(shared, node, id, advertise).await {
        Ok(session) => session,
        Err(e) => return unreachable(&e),
    };
    let head = HopHead {
        ip: visitor.ip,
        secure: visitor.secure,
        proxied: visitor.proxied,
        tcp_port: None,
    };
    let stream = match session.open(head.encode(), false).await {
        Ok(stream) => stream,
        Err(e) => return unreachable(&e.to_string()),
    };
    let (mut sender, conn) =
        match hyper::client::conn::http1::handshake(TokioIo::new(stream.into_io())).await {
            Ok(pair) => pair,
            Err(e) => return unreachable(&e.to_string()),
        };
    shared.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%e, "hopped request ended early");
        }
    });
    let visitor_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // HTTP/2 carries the host in the target only; the holder routes by it either way.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(host) = parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        {
            parts.headers.insert(header::HOST, host);
        }
    }
    parts.version = http::Version::HTTP_11;
    let mut resp = match sender
        .send_request(Request::from_parts(parts, boxed(body)))
        .await
    {
        Ok(resp) => resp,
        Err(e) => return unreachable(&e.to_string()),
    };
    shared.metrics.hop();
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(visitor_io) = visitor_upgrade {
            let holder_io = hyper::upgrade::on(&mut resp);
            shared.spawn(splice_upgrades(visitor_io, holder_io));
        }
        return resp.map(|_| empty());
    }
    resp.map(boxed)
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
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                WsRole::Server,
                Some(protocol::websocket_config()),
            )
            .await;
            let (_session, driver) =
                mux::start(ws, mux::Role::Acceptor, peer_config(&served, true));
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
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, key)
        .body(empty())
        .expect("valid 101 response")
}

/// Serves one hopped request: HTTP/1.1 on the stream, routed as if its visitor had come here.
async fn serve_hop(shared: Arc<Shared>, stream: mux::MuxStream) {
    let head = match stream.recv().await {
        Some(Ok(mux::Item::Head(head))) => HopHead::decode(&head),
        _ => None,
    };
    let Some(head) = head else {
        stream.reset(
            protocol::RESET_PROTOCOL,
            "a hop starts with who its visitor is",
        );
        return;
    };
    if let Some(port) = head.tcp_port {
        return crate::tcp::serve_hopped(&shared, port, head.ip, stream).await;
    }
    let router = Router::hopped(shared, Visitor::hopped(head));
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
