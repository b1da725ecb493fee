//! The control endpoint: a client asks for a tunnel, gets a name, and its WebSocket carries a
//! multiplexer session until it ends.

use std::{net::SocketAddr, sync::Arc};

use ggrok_tunnel::{
    http_util::{empty, full, Body},
    mux,
    protocol::{self, Refusal, RefusalKind},
    stop::until_stopped,
    ws,
};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::{info, info_span, warn, Instrument};

use crate::{
    config::hash_token,
    policy::Policy,
    registry::{Claim, Claimant},
    state::Shared,
    store::StoreError,
    visitor::Visitor,
};

/// How long a session the server ends on purpose waits for the client to acknowledge the close.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// Answers a connect request: `101` and a session task, or a refusal.
pub(crate) async fn accept<B>(
    shared: &Arc<Shared>,
    visitor: Visitor,
    mut req: Request<B>,
) -> Response<Body> {
    let peer = visitor.peer;
    let client_window = protocol::window_offer(req.headers());
    let Admitted { claim, key, tcp } = match admit(shared, &visitor, req.headers()).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(shared, peer, &refusal),
    };
    let tcp_port = tcp
        .as_ref()
        .and_then(|l| l.local_addr().ok())
        .map(|a| a.port());
    let url = match tcp_port {
        Some(port) => crate::tcp::public_url(&shared.config.domain, port),
        None => public_url(
            req.headers(),
            visitor.secure,
            &claim.name,
            &shared.config.domain,
        ),
    };
    let name = claim.name.clone();
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span = info_span!("session", name = %claim.name, %peer);
    // Not `shared.spawn`, which would drop the session at shutdown: it ends itself then, with a
    // Close frame that tells the client why.
    shared
        .tasks
        .spawn(session(shared.clone(), claim, tcp, on_upgrade, client_window).instrument(span));
    let mut resp = switching_protocols(&key, &name, &url, tcp_port);
    protocol::offer_window(resp.headers_mut(), shared.config.stream_window);
    resp
}

/// A connect that passed every check and holds its name (or port).
struct Admitted {
    claim: Claim,
    /// The WebSocket key, for the `101`.
    key: String,
    /// A TCP tunnel's public port, bound: see `tcp`.
    tcp: Option<TcpListener>,
}

/// Every check a connect passes before its name is claimed: the connect rate, the handshake
/// ([`check`]), the tunnel's visitor policy, then the claim of a name, or of a TCP tunnel's
/// port (which is bound here).
async fn admit(
    shared: &Arc<Shared>,
    visitor: &Visitor,
    headers: &HeaderMap,
) -> Result<Admitted, Refusal> {
    if !shared.connect_limit.allow(&visitor.ip) {
        return Err(Refusal::new(
            RefusalKind::RateLimited,
            "too many connect attempts from this address; retry later",
        ));
    }
    let (who, wanted, key) = match &shared.store_thread {
        // SQLite may wait for the disk or another process's lock: not on this thread, which
        // serves the traffic of every tunnel on its shard. Connects are rare; the copy is cheap.
        Some(thread) => {
            let (checker, headers) = (shared.clone(), headers.clone());
            thread
                .run(move || check(&checker, &headers))
                .await
                .unwrap_or_else(|| Err(store_unavailable()))?
        }
        None => check(shared, headers)?,
    };
    let policy = Arc::new(Policy::from_headers(headers)?);
    // A TCP tunnel claims a port instead of a name, and binds it: see `tcp`.
    let (claim, tcp) = match crate::tcp::wanted(headers)? {
        None => {
            let max = shared.config.max_tunnels_per_token;
            let claim = shared
                .registry
                .claim(wanted.as_deref(), &who, policy, max)?;
            (claim, None)
        }
        Some(port) => {
            let (claim, listener) =
                crate::tcp::claim(shared, shared.tcp_ip, port, &who, policy).await?;
            (claim, Some(listener))
        }
    };
    if let Some(node) = &shared.config.cluster {
        // Held here; now across the cluster.
        if let Err(mut refusal) = node.claim(&claim.name, &who, claim.session).await {
            shared
                .registry
                .release(&claim.name, claim.session, false, || {});
            if let (RefusalKind::NameTaken, Some(port)) =
                (refusal.error, claim.name.strip_prefix("tcp:"))
            {
                refusal = Refusal::new(
                    RefusalKind::PortTaken,
                    format!("port {port} is in use by another client"),
                );
            }
            return Err(refusal);
        }
    }
    Ok(Admitted { claim, key, tcp })
}

/// The session's life, from the upgrade to the release of its name. A TCP tunnel's listener
/// accepts visitors once the session is attached, and closes when it ends.
async fn session(
    shared: Arc<Shared>,
    claim: Claim,
    tcp: Option<TcpListener>,
    on_upgrade: OnUpgrade,
    client_window: u32,
) {
    // However this task ends, work still running on the session's streams stops too.
    let _ended = claim.ended.clone().drop_guard();
    let upgraded = match on_upgrade.await {
        Ok(u) => u,
        Err(e) => {
            warn!(%e, "upgrade failed");
            shared
                .registry
                .release(&claim.name, claim.session, true, || {});
            if let Some(node) = &shared.config.cluster {
                node.release(
                    &claim.name,
                    claim.session,
                    Some(shared.config.reconnect_grace),
                );
            }
            return;
        }
    };
    let ws = ws::Socket::new(TokioIo::new(upgraded), ws::Role::Server);
    let config = mux::Config {
        heartbeat: shared.config.heartbeat,
        // A stream whose reader stopped (an upload the local service does not read, a visitor
        // that stopped reading) gives its credit back after this long.
        stall_timeout: shared.config.body_idle_timeout,
        // Clients have no reason to open streams: one that does breaks the protocol.
        ..mux::Config::new(false)
    }
    .windows(shared.config.stream_window, client_window);
    let (handle, driver) = mux::start(ws, mux::Role::Acceptor, config);
    let closing = handle.closing();
    let metrics = shared.metrics.tunnel(&claim.name);
    let tcp_conns = tcp.as_ref().map(|_| crate::tcp::conn_places(&shared));
    shared
        .registry
        .attach(&claim.name, claim.session, handle, metrics, tcp_conns);
    if let (Some(listener), Some(endpoint)) = (tcp, shared.registry.endpoint(&claim.name)) {
        shared.spawn(crate::tcp::serve(shared.clone(), listener, endpoint));
    }
    info!("tunnel online");
    let serve = driver.run(|_| {});
    tokio::pin!(serve);
    // The driver wakes for every batch of frames: see `until_stopped`.
    let reason = match until_stopped(ended_by_server(&shared, &claim), serve.as_mut()).await {
        Ok(Ok(())) => "closed".to_owned(),
        Ok(Err(e)) => e,
        Err((code, why)) => {
            // Ending on purpose, the server says why in a Close frame and drives the session
            // until the client answers (it only sends while polled), or for at most a second.
            closing.close_with(code, why);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, serve).await;
            why.to_owned()
        }
    };
    // A client that stopped on purpose gives its name up; one that dropped keeps it for the
    // grace period. Its series go with it, unless a newer session of the tunnel already counts
    // there.
    let hold = !closing.peer_closed();
    shared
        .registry
        .release(&claim.name, claim.session, hold, || {
            shared.metrics.forget(&claim.name)
        });
    if let Some(node) = &shared.config.cluster {
        let grace = hold.then_some(shared.config.reconnect_grace);
        node.release(&claim.name, claim.session, grace);
    }
    info!(%reason, "tunnel offline");
}

/// Completes when the server ends the session on purpose: the close code and reason it sends.
async fn ended_by_server(shared: &Shared, claim: &Claim) -> (u16, &'static str) {
    tokio::select! {
        _ = claim.cancel.cancelled() => (
            protocol::CLOSE_REPLACED,
            "replaced by a new session of the same client",
        ),
        // The client's reconnect is then refused for the token.
        _ = claim.revoked.cancelled() => (protocol::CLOSE_REVOKED, "its token was revoked"),
        // After the drain: clients reconnect, to this server's successor.
        _ = shared.cancel.cancelled() => (protocol::CLOSE_SHUTDOWN, "the server is shutting down"),
        // Fenced: the client reconnects, through the load balancer, to a node that can serve.
        _ = lease_lost(shared) => (protocol::CLOSE_SHUTDOWN, "this node lost its cluster lease"),
    }
}

/// Completes when this server is a cluster node that stopped holding its lease.
async fn lease_lost(shared: &Shared) {
    match &shared.config.cluster {
        Some(node) => node.lease_lost().await,
        None => std::future::pending().await,
    }
}

/// The `101` that opens the session, naming the tunnel, its public URL and, for a TCP tunnel,
/// its port.
fn switching_protocols(key: &str, name: &str, url: &str, tcp_port: Option<u16>) -> Response<Body> {
    let mut resp = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(
            header::SEC_WEBSOCKET_ACCEPT,
            derive_accept_key(key.as_bytes()),
        );
    if let (Ok(name), Ok(url)) = (HeaderValue::from_str(name), HeaderValue::from_str(url)) {
        resp = resp
            .header(protocol::HEADER_NAME, name)
            .header(protocol::HEADER_URL, url);
    }
    if let Some(port) = tcp_port {
        resp = resp.header(protocol::HEADER_TCP_PORT, port);
    }
    resp.body(empty()).expect("valid 101 response")
}

/// Validates a connect request; returns who asks, for which name, and the WebSocket key.
pub(crate) fn check(
    shared: &Shared,
    h: &HeaderMap,
) -> Result<(Claimant, Option<String>, String), Refusal> {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let bad = |m: &str| Refusal::new(RefusalKind::BadRequest, m);

    let websocket =
        get(header::UPGRADE.as_str()).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = get(header::SEC_WEBSOCKET_KEY.as_str());
    let (true, Some(key)) = (websocket, key) else {
        return Err(bad(
            "this endpoint opens ggrok tunnels over WebSocket; use the ggrok client",
        ));
    };
    if h.contains_key(header::ORIGIN) {
        // Browsers always send Origin; ggrok clients never do. A page must not open tunnels
        // with a visitor's ambient credentials.
        return Err(bad("browser pages may not open tunnels"));
    }
    let version = get(protocol::HEADER_VERSION)
        .ok_or_else(|| bad("missing ggrok-protocol header; use the ggrok client"))?;
    if version != protocol::PROTOCOL_VERSION.to_string() {
        return Err(Refusal::new(
            RefusalKind::VersionMismatch,
            format!(
                "this server speaks ggrok protocol {}, the client speaks {version:?}; use matching versions",
                protocol::PROTOCOL_VERSION
            ),
        ));
    }
    let unavailable = |e: StoreError| {
        warn!(%e, "token database error");
        store_unavailable()
    };
    let store = shared.config.store.as_deref();
    let open = shared.config.tokens.is_open()
        && !store
            .map(|s| s.has_tokens())
            .transpose()
            .map_err(unavailable)?
            .unwrap_or(false);
    let (token, token_id) = if open {
        (None, None)
    } else {
        let presented = get(header::AUTHORIZATION.as_str())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                Refusal::new(RefusalKind::Unauthorized, "this server requires a token")
            })?;
        match shared.config.tokens.check(presented) {
            Some(hash) => (Some(hash), None),
            None => {
                let hash = hash_token(presented);
                let id = store
                    .map(|s| s.token_by_hash(&hash))
                    .transpose()
                    .map_err(unavailable)?
                    .flatten();
                let Some(id) = id else {
                    // Only a holder of the token learns it was revoked, and it tells them
                    // why their tunnel stopped.
                    let revoked = store
                        .map(|s| s.is_revoked(&hash))
                        .transpose()
                        .map_err(unavailable)?
                        .unwrap_or(false);
                    let message = if revoked {
                        "the token was revoked"
                    } else {
                        "the token was not accepted"
                    };
                    return Err(Refusal::new(RefusalKind::Unauthorized, message));
                };
                (Some(hash), Some(id))
            }
        }
    };
    let wanted = match h.get(protocol::HEADER_SUBDOMAIN) {
        Some(name) => {
            // Not "no name": a client that asked for one must not get a random one instead.
            let name = name.to_str().map_err(|_| {
                Refusal::new(
                    RefusalKind::InvalidName,
                    "the subdomain must be ASCII: write international names in their xn-- form",
                )
            })?;
            let name = name.trim().to_ascii_lowercase();
            protocol::validate_name(&name)
                .map_err(|e| Refusal::new(RefusalKind::InvalidName, e.to_string()))?;
            Some(name)
        }
        None => None,
    };
    if let Some(name) = wanted
        .as_deref()
        .filter(|n| open && shared.config.is_reserved(n))
    {
        return Err(Refusal::new(
            RefusalKind::NameReserved,
            format!("the subdomain {name:?} is reserved on this server"),
        ));
    }
    if let (Some(name), Some(store)) = (&wanted, store) {
        match store.reserved_for(name).map_err(unavailable)? {
            Some(owner) if Some(owner) != token_id => {
                return Err(Refusal::new(
                    RefusalKind::NameReserved,
                    format!("the subdomain {name:?} is reserved for another token"),
                ));
            }
            _ => {}
        }
    }
    let client_id = match get(protocol::HEADER_CLIENT_ID) {
        Some(id) if !id.is_empty() && id.len() <= 128 => id.to_owned(),
        // No id: a fresh random one, so this client can never take over anyone's session.
        _ => format!("anon-{:032x}", rand::random::<u128>()),
    };
    Ok((Claimant { client_id, token }, wanted, key.to_owned()))
}

fn store_unavailable() -> Refusal {
    Refusal::new(
        RefusalKind::Unavailable,
        "the server cannot check tokens right now",
    )
}

/// The URL visitors use: the scheme and port the client itself reached the server with.
pub(crate) fn public_url(h: &HeaderMap, secure: bool, name: &str, domain: &str) -> String {
    let host = h
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let port = host
        .rsplit_once(':')
        .map(|(_, p)| p)
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()));
    // `secure` already believes X-Forwarded-Proto from trusted proxies (and nobody else).
    let https = secure;
    let scheme = if https { "https" } else { "http" };
    match port {
        Some(p) if !((https && p == "443") || (!https && p == "80")) => {
            format!("{scheme}://{name}.{domain}:{p}")
        }
        _ => format!("{scheme}://{name}.{domain}"),
    }
}

pub(crate) fn refuse(shared: &Shared, peer: SocketAddr, refusal: &Refusal) -> Response<Body> {
    warn!(%peer, kind = refusal.error.as_str(), "refused a session: {}", refusal.message);
    shared.metrics.connect_failure(refusal.error);
    let status = StatusCode::from_u16(refusal.error.status()).unwrap_or(StatusCode::BAD_REQUEST);
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(full(
            serde_json::to_string(refusal).expect("refusal serializes"),
        ))
        .expect("valid refusal response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_urls_follow_how_the_client_came_in() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert_eq!(
            public_url(&h, false, "app", "localhost"),
            "http://app.localhost:8080"
        );
        h.insert(header::HOST, HeaderValue::from_static("tunnel.example.com"));
        assert_eq!(
            public_url(&h, true, "app", "tunnel.example.com"),
            "https://app.tunnel.example.com"
        );
    }
}
