//! ggrok-server: routes `NAME.DOMAIN` to the client holding NAME.
//!
//! One listener serves everything. Requests for the apex domain (or an IP address) reach the
//! server's own endpoints: the control endpoint
//! [`CONNECT_PATH`](ggrok_tunnel::protocol::CONNECT_PATH) where clients open their
//! session, `/healthz`, `/metrics` and a landing page. Requests for `NAME.DOMAIN` are forwarded
//! over NAME's session, each on a stream opened with the request's head.
//!
//! A request's path through the crate: **listener → router → {connect, proxy, pages}**.
//!
//! Layout:
//! - `listener`: accept loop, connection caps, accept backoff, shard hand-off, TLS/ALPN,
//!   serving HTTP on a connection, and the drain at shutdown.
//! - `visitor`: who is on the other end: the peer, or the visitor a trusted proxy names
//!   (`X-Forwarded-For`, the PROXY protocol).
//! - `router`: Host parsing and classification, the checks every request passes (400, 431,
//!   501), dispatch; a `hyper` `Service`, testable without a socket.
//! - `connect`: the control endpoint: handshake checks, name claim, the session's life.
//! - `proxy`: public requests through a tunnel's session.
//! - `pages`: the server's own pages: errors, landing, `/healthz`, `/metrics`.
//! - `state`: what every connection and task of one server shares.
//! - `revocation`: ends the sessions of tokens revoked while they are open.
//! - `cookies`: keeps a tunnel's `Set-Cookie` to its own host.
//! - `proxy_protocol`: the PROXY protocol header from trusted TCP load balancers.
//! - `tcp`: TCP tunnels: public ports from `--tcp-ports`, a stream per visitor connection.
//! - [`registry`]: the name table (live sessions, names held for reconnect).
//! - [`config`]: the server's configuration and the hashed token set.
//! - [`settings`]: flags, environment and TOML file resolved into a [`Config`].
//! - [`policy`]: per-tunnel visitor rules (`--allow-ip`, Basic auth), rate and connection limits.
//! - [`store`]: tokens and reservations: the [`store::TokenStore`] trait, and SQLite.
//! - [`cluster`]: several nodes as one server, their state in etcd (`--cluster`).
//! - [`acme`]: certificates from an ACME CA (TLS-ALPN-01).
//! - [`metrics`]: the Prometheus counters.
//! - [`shard`]: connections spread over single-threaded runtimes.
//! - `fuzzing` (feature `fuzzing`): the harnesses the fuzz targets drive.
//!
//! Every value on the wire is defined in [`ggrok_tunnel::protocol`].
//!
//! The caller binds, the library serves: see [`run`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acme;
pub mod cluster;
pub mod config;
mod connect;
mod cookies;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod h1;
mod listener;
pub mod metrics;
mod pages;
pub mod policy;
mod proxy;
mod proxy_protocol;
pub mod registry;
mod revocation;
mod router;
pub mod settings;
pub mod shard;
mod state;
pub mod store;
mod tcp;
mod visitor;

use std::{future::Future, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tracing::warn;

pub use config::{Config, Tokens};
use state::Shared;

/// Serves `listener` until `shutdown` completes. Then it stops accepting, lets requests in
/// flight finish for up to `config.drain_timeout`, and closes every connection and session
/// (clients then reconnect, to this server's successor or another node).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_sharded(listener, config, shutdown, None).await
}

/// Like [`run`], with the connections served on `shards` (see [`shard`]) rather than on the
/// calling runtime, which accepts them and runs the server's background work.
pub async fn run_sharded(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
    shards: Option<Arc<shard::Shards>>,
) -> std::io::Result<()> {
    let stored = config
        .store
        .as_ref()
        .map(|s| s.has_tokens().unwrap_or(true))
        .unwrap_or(false);
    if config.tokens.is_open() && !stored {
        warn!("no tokens configured: open mode, anyone who can reach this server may open tunnels");
    }
    let mut shared = Shared::new(config);
    shared.tcp_ip = listener.local_addr()?.ip();
    let shared = Arc::new(shared);
    start_background(&shared);
    listener::serve(listener, shared, shutdown, shards).await;
    Ok(())
}

/// The server's work beside its connections: certificates, revocations, limiter upkeep.
fn start_background(shared: &Arc<Shared>) {
    if let Some(acme) = shared.config.acme.clone() {
        let served = shared.clone();
        acme.request(&shared.config.domain);
        shared.spawn(acme.manage(move |name| router::is_served(&served, name)));
    }
    if let Some(store) = shared.config.store.clone() {
        shared.spawn(revocation::watch(shared.clone(), store));
    }
    if let Some(node) = shared.config.cluster.clone() {
        shared.spawn(cluster::end_taken_sessions(shared.clone(), node.clone()));
        if let Some(range) = shared.config.tcp_ports.clone() {
            shared.spawn(cluster::shadow_tcp_ports(shared.clone(), node, range));
        }
    }
    let sweeper = shared.clone();
    shared.spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            sweeper.connect_limit.sweep();
            sweeper.request_limit.sweep();
        }
    });
}
