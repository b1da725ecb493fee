//! TCP tunnels held by other nodes, served here too: every node listens on the ports of the
//! cluster's TCP tunnels (from `--tcp-ports`), so a visitor that the load balancer sends to any
//! node reaches the tunnel. The node holding a port binds it for its own session (see
//! `crate::tcp`); the others bind it as a *shadow* that hops each visitor connection to the
//! holder, and drop it when the port's holder changes to them or goes away.

use std::{collections::HashSet, net::SocketAddr, ops::RangeInclusive, sync::Arc, time::Duration};

use bytes::BytesMut;
use ggrok_tunnel::{protocol::HopHead, tcp::splice};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{node::Place, Node};
use crate::{
    listener::ip_place, registry::tcp_key, state::Shared, tcp::server_place,
    visitor::behind_balancer,
};

/// How often the listeners are checked against the table besides its changes: a port that
/// could not be bound (its previous listener still closing) is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Keeps a shadow listener on every port of `range` that another node's TCP tunnel holds.
pub(crate) async fn keep(shared: Arc<Shared>, node: Arc<Node>, range: RangeInclusive<u16>) {
    let mut changes = node.names_changes();
    loop {
        let wanted: HashSet<u16> = node.tcp_held_elsewhere(&range).into_iter().collect();
        {
            let mut shadows = node.shadows.lock().expect("shadows lock");
            shadows.retain(|port, cancel| {
                let keep = wanted.contains(port) && !cancel.is_cancelled();
                if !keep {
                    cancel.cancel();
                }
                keep
            });
            for &port in &wanted {
                if shadows.contains_key(&port) {
                    continue;
                }
                match bind(SocketAddr::new(shared.tcp_ip, port)) {
                    Ok(listener) => {
                        let cancel = CancellationToken::new();
                        shadows.insert(port, cancel.clone());
                        let (s, n) = (shared.clone(), node.clone());
                        shared.spawn(serve(s, n, port, listener, cancel));
                    }
                    Err(e) => {
                        debug!(%e, port, "cannot listen for another node's TCP tunnel yet")
                    }
                }
            }
        }
        // Also now and then: a port that could not be bound, or whose shadow this node's own
        // claim closed and then lost, is looked at again.
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(RETRY) => {}
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// Accepts visitors of `port` and hops each connection to the port's holder.
///
/// A visitor is taken in here as on the holder's own port: a place under this node's
/// `--max-conns`, the PROXY header of a trusted balancer, a place under this node's
/// `--max-conns-per-ip`, each refused with a reset. The tunnel's `--allow-ip` and
/// `--max-conns-per-tcp-tunnel` are the holder's to apply (see `crate::tcp::serve_hopped`),
/// whose refusal resets the connection the same way.
async fn serve(
    shared: Arc<Shared>,
    node: Arc<Node>,
    port: u16,
    listener: TcpListener,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(%e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(server_slot) = server_place(&shared) else {
            warn!(%peer, max = shared.config.max_conns, "the server has as many connections as allowed (--max-conns): closed");
            refuse(socket);
            continue;
        };
        let Place::Node { id, advertise } = node.place(&tcp_key(port)) else {
            refuse(socket);
            continue;
        };
        let (s, n) = (shared.clone(), node.clone());
        shared.spawn(async move {
            let _held = server_slot;
            hop(s, n, (id, advertise), port, socket, peer).await
        });
    }
}

/// Hops one visitor connection of `port` to node `id` at `advertise`, which holds the tunnel.
async fn hop(
    shared: Arc<Shared>,
    node: Arc<Node>,
    (id, advertise): (String, String),
    port: u16,
    mut socket: TcpStream,
    peer: SocketAddr,
) {
    let mut early = BytesMut::new();
    let Some(visitor) = behind_balancer(&shared, &mut socket, &mut early, peer).await else {
        return refuse(socket);
    };
    let Ok(_per_ip) = ip_place(&shared, visitor) else {
        debug!(%visitor, "too many connections from this address: closed");
        return refuse(socket);
    };
    let session = match node.peers.link(&shared, &node, &id, &advertise).await {
        // Format 1's text head: every node serves TCP hops with it.
        Ok(link) => link.session,
        Err(e) => {
            debug!(%e, port, "cannot reach the node holding a TCP tunnel");
            return refuse(socket);
        }
    };
    let head = HopHead {
        ip: visitor.ip().to_canonical(),
        secure: false,
        proxied: visitor != peer,
        tcp_port: Some(port),
    };
    let stream = match session.open(head.encode(), false).await {
        Ok(stream) => stream,
        Err(e) => {
            debug!(%e, "cannot open a hop");
            return refuse(socket);
        }
    };
    shared.metrics.hop();
    let _ = socket.set_nodelay(true);
    // What came in behind the PROXY header with it is the visitor's first bytes.
    if !early.is_empty() {
        if let Err(e) = stream.send(&early).await {
            debug!(%e, "the hop ended");
            return refuse(socket);
        }
    }
    // A reset from the holder (a refusal, or the client's side failing) resets the visitor's
    // connection, as on the holder's own port.
    splice(socket, stream).await;
}

/// Closes a visitor's connection with a reset: nothing will be forwarded.
fn refuse(socket: TcpStream) {
    let _ = socket.set_zero_linger();
}
