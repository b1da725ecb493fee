//! TCP tunnels: a public port from `--tcp-ports` per tunnel, and a stream per visitor
//! connection.
//!
//! A client asks for a TCP tunnel with [`HEADER_TCP_PORT`] on its connect request (a port, or
//! 0 for any). The port is claimed in the [`Registry`](crate::registry::Registry) under
//! [`tcp_key`], so a TCP tunnel gets the same rules as a name: one live client per port,
//! held for the reconnect grace period, replaced by the same client, freed by revocation. The
//! listener is bound before the `101`, so a port something else on the host uses is refused
//! rather than advertised, and lives as long as the session. Each visitor connection opens one
//! stream whose head carries the visitor's address, spliced to the visitor's socket.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::BytesMut;
use ggrok_tunnel::{
    head,
    mux::MuxStream,
    protocol::{Refusal, RefusalKind, HEADER_TCP_PORT, RESET_REFUSED},
    tcp::{splice_counting, Failure},
};
use http::HeaderMap;
use rand::Rng;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::{
    listener::{ip_place, ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN},
    policy::SharedPolicy,
    registry::{tcp_key, Claim, Claimant, Endpoint},
    state::Shared,
    store::TokenId,
    visitor::behind_balancer,
};

/// The port a connect request asks for: `None` for an HTTP tunnel, `Some(None)` for any port.
pub(crate) fn wanted(h: &HeaderMap) -> Result<Option<Option<u16>>, Refusal> {
    let Some(value) = h.get(HEADER_TCP_PORT) else {
        return Ok(None);
    };
    match value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u16>().ok())
    {
        Some(0) => Ok(Some(None)),
        Some(port) => Ok(Some(Some(port))),
        None => Err(Refusal::new(
            RefusalKind::BadRequest,
            format!("{HEADER_TCP_PORT} must be a port number, or 0 for any port"),
        )),
    }
}

/// Claims a port for `who` and binds it on `ip`: `wanted`, or a free one of the range.
pub(crate) async fn claim(
    shared: &Arc<Shared>,
    ip: IpAddr,
    wanted: Option<u16>,
    who: &Claimant,
    policy: SharedPolicy,
) -> Result<(Claim, TcpListener), Refusal> {
    let Some(range) = shared.config.tcp_ports.clone() else {
        return Err(Refusal::new(
            RefusalKind::TcpDisabled,
            "this server offers no TCP tunnels (it runs without --tcp-ports)",
        ));
    };
    if policy.consumes_authorization() {
        return Err(Refusal::new(
            RefusalKind::BadRequest,
            "basic auth protects HTTP tunnels only; restrict a TCP tunnel with --allow-ip",
        ));
    }
    let (token, reserved) = reservations(shared, who).await?;
    let reserved_for_other = |port: u16| {
        reserved
            .get(&port)
            .is_some_and(|&owner| Some(owner) != token)
    };
    let max = shared.config.max_tcp_tunnels_per_token;
    if let Some(port) = wanted {
        if !range.contains(&port) {
            return Err(Refusal::new(
                RefusalKind::PortOutOfRange,
                format!(
                    "port {port} is outside this server's TCP ports ({}-{})",
                    range.start(),
                    range.end()
                ),
            ));
        }
        if reserved_for_other(port) {
            return Err(Refusal::new(
                RefusalKind::PortReserved,
                format!("port {port} is reserved for another token"),
            ));
        }
        return claim_port(shared, ip, port, who, policy, max).await;
    }
    // From a random place in the range, so that clients do not all race for its first ports.
    let len = u32::from(range.end() - range.start()) + 1;
    let first = rand::rng().random_range(0..len);
    for i in 0..len {
        let port = range.start() + ((first + i) % len) as u16;
        if reserved.contains_key(&port) {
            // Ports reserved for this token are for asking by number, not for chance.
            continue;
        }
        let elsewhere = shared.config.cluster.as_ref().is_some_and(|node| {
            matches!(
                node.place(&tcp_key(port)),
                crate::cluster::node::Place::Node { .. }
            )
        });
        if elsewhere {
            // Another node's tunnel has it.
            continue;
        }
        match claim_port(shared, ip, port, who, policy.clone(), max).await {
            Err(r) if r.error == RefusalKind::PortTaken => continue,
            done => return done,
        }
    }
    Err(Refusal::new(
        RefusalKind::NoFreePort,
        "every TCP port of this server is taken",
    ))
}

/// The presenting token's id and every reserved port, read on the store's thread.
async fn reservations(
    shared: &Arc<Shared>,
    who: &Claimant,
) -> Result<(Option<TokenId>, HashMap<u16, TokenId>), Refusal> {
    let Some(store) = shared.config.store.clone() else {
        return Ok((None, HashMap::new()));
    };
    let hash = who.token;
    let look = move || -> Result<_, crate::store::StoreError> {
        let token = match hash {
            Some(hash) => store.token_by_hash(&hash)?,
            None => None,
        };
        Ok((token, store.reserved_ports()?.into_iter().collect()))
    };
    let looked = match &shared.store_thread {
        Some(thread) => thread.run(look).await,
        None => Some(look()),
    };
    match looked {
        Some(Ok(found)) => Ok(found),
        Some(Err(e)) => {
            warn!(%e, "token database error");
            Err(unavailable())
        }
        None => Err(unavailable()),
    }
}

fn unavailable() -> Refusal {
    Refusal::new(
        RefusalKind::Unavailable,
        "the server cannot check port reservations right now",
    )
}

async fn claim_port(
    shared: &Arc<Shared>,
    ip: IpAddr,
    port: u16,
    who: &Claimant,
    policy: SharedPolicy,
    max: usize,
) -> Result<(Claim, TcpListener), Refusal> {
    let key = tcp_key(port);
    // A session on the port that the claim may replace (the same client reconnecting before
    // the server noticed it had dropped, or just after) may still hold the listener for a
    // moment: a live one until it has told its client why, a dropped one until its task has
    // ended, which can come after its name is already held for the reconnect.
    let replacing = shared.registry.knows(&key)
        // In a cluster, this node may listen on the port for the node that held it.
        | shared
            .config
            .cluster
            .as_ref()
            .is_some_and(|node| node.unshadow(port));
    let claim = shared
        .registry
        .claim(Some(&key), who, policy, max)
        .map_err(|r| match r.error {
            RefusalKind::NameTaken => Refusal::new(
                RefusalKind::PortTaken,
                // The registry's sentence names a subdomain; say the same of the port.
                r.message
                    .replace(&format!("the subdomain {key:?}"), &format!("port {port}")),
            ),
            _ => r,
        })?;
    match bind(SocketAddr::new(ip, port), replacing).await {
        Ok(listener) => Ok((claim, listener)),
        Err(e) => {
            shared
                .registry
                .release(&claim.name, claim.session, false, || {});
            Err(Refusal::new(
                RefusalKind::PortTaken,
                format!("port {port} is in use on the server ({e})"),
            ))
        }
    }
}

/// How long a claim that replaced a live session waits for that session to close its listener:
/// it first tries to tell its client why (up to a second), then ends.
const REPLACED_LISTENER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Binds `addr`; when `replacing`, retries while the replaced session's listener still holds it.
async fn bind(addr: SocketAddr, replacing: bool) -> std::io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + REPLACED_LISTENER_WAIT;
    loop {
        match TcpListener::bind(addr).await {
            Err(e)
                if replacing
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            done => return done,
        }
    }
}

/// The address visitors use: the server's domain and the tunnel's port.
pub(crate) fn public_url(domain: &str, port: u16) -> String {
    format!("tcp://{domain}:{port}")
}

/// A TCP tunnel's places under `--max-conns-per-tcp-tunnel` (0: no limit).
pub(crate) fn conn_places(shared: &Shared) -> Arc<Semaphore> {
    Arc::new(Semaphore::new(
        match shared.config.max_conns_per_tcp_tunnel {
            0 => Semaphore::MAX_PERMITS,
            max => max,
        },
    ))
}

/// A place under `--max-conns-per-tcp-tunnel` for one more visitor connection of `endpoint`;
/// `None`: it has as many as allowed.
fn tunnel_place(endpoint: &Endpoint) -> Option<Option<OwnedSemaphorePermit>> {
    match &endpoint.tcp_conns {
        Some(places) => places.clone().try_acquire_owned().ok().map(Some),
        None => Some(None),
    }
}

/// A place under `--max-conns` for a visitor connection to a TCP tunnel's port; `None`: the
/// server has as many connections as allowed.
pub(crate) fn server_place(shared: &Shared) -> Option<Option<OwnedSemaphorePermit>> {
    match &shared.conn_cap {
        None => Some(None),
        Some(cap) => cap.clone().try_acquire_owned().ok().map(Some),
    }
}

/// Accepts visitors on `listener` until the session of `endpoint` ends.
///
/// A visitor takes a place under `--max-conns` (shared with the main listener) and under the
/// tunnel's `--max-conns-per-tcp-tunnel`; past either it is reset at once, as a tunnel's port
/// has no backlog of its own worth waiting in. Behind a `--trusted-proxy` with
/// `--proxy-protocol`, the visitor is the one the PROXY header names, as on the main listener:
/// that address is checked against `--allow-ip`, counted under `--max-conns-per-ip` and sent
/// to the client as the connection's origin.
pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener, endpoint: Arc<Endpoint>) {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let accepted = tokio::select! {
            _ = endpoint.ended.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(a) => {
                backoff = ACCEPT_BACKOFF_MIN;
                a
            }
            Err(e) => {
                warn!(%e, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Some(server_slot) = server_place(&shared) else {
            warn!(%peer, max = shared.config.max_conns, "the server has as many connections as allowed (--max-conns): closed");
            refuse(socket);
            continue;
        };
        let Some(slot) = tunnel_place(&endpoint) else {
            let max = shared.config.max_conns_per_tcp_tunnel;
            warn!(%peer, max, "the tunnel has as many connections as allowed: closed");
            refuse(socket);
            continue;
        };
        let endpoint = endpoint.clone();
        let conn_shared = shared.clone();
        let span = info_span!("tcp visitor", %peer);
        shared.spawn(
            async move {
                let _held = (server_slot, slot);
                visit(conn_shared, socket, peer, endpoint).await
            }
            .instrument(span),
        );
    }
    info!("TCP listener closed");
}

/// Serves one visitor connection of a TCP tunnel, from its PROXY header (if any) to its close.
async fn visit(
    shared: Arc<Shared>,
    mut socket: TcpStream,
    peer: SocketAddr,
    endpoint: Arc<Endpoint>,
) {
    let mut early = BytesMut::new();
    let Some(visitor) = behind_balancer(&shared, &mut socket, &mut early, peer).await else {
        return refuse(socket);
    };
    if !endpoint.policy.allows(visitor.ip().to_canonical()) {
        debug!(%visitor, "visitor not on the allowlist: closed");
        return refuse(socket);
    }
    let Ok(_per_ip) = ip_place(&shared, visitor) else {
        debug!(%visitor, "too many connections from this address: closed");
        return refuse(socket);
    };
    let _open = endpoint.metrics.tcp_connection();
    let _ = socket.set_nodelay(true);
    let stream = match endpoint
        .mux
        .open(head::encode_tcp(&visitor.to_string()), false)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            debug!(%e, "cannot open a stream");
            return refuse(socket);
        }
    };
    // What came in behind the PROXY header with it is the visitor's first bytes.
    if !early.is_empty() {
        endpoint.metrics.count_bytes(early.len() as u64, 0);
        if let Err(e) = stream.send(&early).await {
            debug!(%e, "the client's side ended the connection");
            return refuse(socket);
        }
    }
    let (up, down) = (endpoint.metrics.clone(), endpoint.metrics.clone());
    let spliced = splice_counting(
        socket,
        stream,
        move |n| up.count_bytes(n, 0),
        move |n| down.count_bytes(0, n),
    )
    .await;
    match spliced.failure {
        None => debug!(
            up = spliced.from_tcp,
            down = spliced.to_tcp,
            "connection closed"
        ),
        Some(Failure::Stream(reason)) => {
            debug!(%reason, "the client's side ended the connection")
        }
        Some(Failure::Tcp(reason)) => debug!(%reason, "the visitor's side failed"),
    }
}

/// Serves a TCP visitor connection that another node of the cluster hopped here, for the
/// tunnel on `port` this node holds: the tunnel's allowlist judges the visitor's address, and
/// the connection takes a place under the tunnel's `--max-conns-per-tcp-tunnel` as one to the
/// port here would, so the limit counts the tunnel's connections through every node. (The node
/// the visitor reached counted it under its own `--max-conns` and `--max-conns-per-ip`.)
pub(crate) async fn serve_hopped(shared: &Shared, port: u16, ip: IpAddr, visitor: MuxStream) {
    let endpoint = shared.registry.endpoint(&tcp_key(port));
    let Some(endpoint) = endpoint.filter(|e| e.policy.allows(ip)) else {
        visitor.reset(
            RESET_REFUSED,
            "no such TCP tunnel here, or not for this visitor",
        );
        return;
    };
    let Some(_place) = tunnel_place(&endpoint) else {
        let max = shared.config.max_conns_per_tcp_tunnel;
        warn!(%ip, max, port, "the tunnel has as many connections as allowed: closed");
        visitor.reset(
            RESET_REFUSED,
            "the tunnel has as many connections as allowed",
        );
        return;
    };
    let _open = endpoint.metrics.tcp_connection();
    let peer = SocketAddr::new(ip, 0);
    match endpoint
        .mux
        .open(head::encode_tcp(&peer.to_string()), false)
        .await
    {
        Ok(stream) => {
            let ended = endpoint.ended.clone();
            let _ = ggrok_tunnel::stop::until_stopped(
                ended.cancelled(),
                crate::cluster::hop::splice_streams(visitor, stream),
            )
            .await;
        }
        Err(e) => {
            debug!(%e, "cannot open a stream");
            visitor.reset(RESET_REFUSED, "the tunnel's client is not answering");
        }
    }
}

/// Closes a visitor's connection with a reset, at once: nothing will be forwarded.
fn refuse(socket: TcpStream) {
    let _ = socket.set_zero_linger();
    drop(socket);
}
