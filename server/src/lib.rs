//! ggrok-server: routes `NAME.DOMAIN` to the client holding NAME.
//!
//! One listener serves everything. Requests for the apex domain (or an IP address) reach the
//! server's own endpoints: the control endpoint [`CONNECT_PATH`] where clients open their
//! session, `/healthz` and a landing page. Requests for `NAME.DOMAIN` are forwarded over NAME's
//! session: one stream per request, opened with the request's head.
//!
//! Layout:
//! - [`config`]: settings and the hashed token set.
//! - [`registry`]: the name table (live sessions, names held for reconnect).
//! - `cookies`: keeps a tunnel's `Set-Cookie` to its own host.
//! - `connect`: the control endpoint: checks, name claim, the session's life.
//! - `proxy`: public requests through a session.
//! - `proxy_protocol`: the PROXY protocol header from trusted TCP load balancers.
//! - `tcp`: TCP tunnels: public ports from `--tcp-ports`, a stream per visitor connection.
//!
//! The caller binds, the library serves: see [`run`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acme;
pub mod config;
mod connect;
mod cookies;
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod policy;
mod proxy;
mod proxy_protocol;
pub mod registry;
pub mod settings;
pub mod shard;
pub mod store;
mod tcp;

use std::{convert::Infallible, future::Future, net::SocketAddr, sync::Arc};

use ggrok_tunnel::{
    http_util::{error_page, full, wants_json, Body, PageKind},
    protocol::CONNECT_PATH,
    stop::until_stopped,
};
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

pub use config::{Config, Tokens};

/// First wait after a failed accept; it doubles while accepts keep failing.
const ACCEPT_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(10);
/// Longest wait between accepts that fail (file descriptors exhausted, say).
const ACCEPT_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// What an open connection holds, given back when it closes: its place under `--max-conns`
/// and under its address's `--max-conns-per-ip`.
struct Slot {
    _server: Option<tokio::sync::OwnedSemaphorePermit>,
    _ip: Option<policy::ConnGuard>,
}

/// Largest request head a visitor may send; hyper answers 431 past it.
const MAX_HEAD: usize = 64 * 1024;

/// State every connection shares.
struct Shared {
    config: Config,
    registry: registry::Registry,
    metrics: metrics::Metrics,
    /// Connect attempts per client IP.
    connect_limit: policy::Limiter<std::net::IpAddr>,
    /// Open connections per visitor address (`--max-conns-per-ip`).
    conns_per_ip: policy::ConnCounter,
    /// Public requests per tunnel name.
    request_limit: policy::Limiter<String>,
    /// Fires when shutdown begins: connections finish their request in flight, then close.
    draining: CancellationToken,
    /// Fires when shutdown ends (drained or past the deadline); every task watches it.
    cancel: CancellationToken,
    /// Visitor and client HTTP connections: what a drain waits for.
    conns: TaskTracker,
    /// Sessions, tunnel streams and upgraded connections.
    tasks: TaskTracker,
    /// Where SQLite is called while serving (token checks, revocation looks), when there is a
    /// store: never on a thread that serves traffic.
    store_thread: Option<store::StoreThread>,
    /// Where TCP tunnels bind their ports: the address the server listens on.
    tcp_ip: std::net::IpAddr,
}

impl Shared {
    /// The state of a server with `config`, before it serves anything.
    fn new(config: Config) -> Self {
        let store_thread = config
            .store
            .as_ref()
            .map(|_| store::StoreThread::start().expect("cannot start the store's thread"));
        Self {
            registry: registry::Registry::new(config.reconnect_grace),
            metrics: metrics::Metrics::default(),
            connect_limit: policy::Limiter::per_minute(config.connect_rate),
            conns_per_ip: policy::ConnCounter::new(config.max_conns_per_ip),
            request_limit: policy::Limiter::per_second(config.tunnel_rate),
            config,
            draining: CancellationToken::new(),
            cancel: CancellationToken::new(),
            conns: TaskTracker::new(),
            tasks: TaskTracker::new(),
            store_thread,
            tcp_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// Spawns `fut` on `tracker` so that shutdown ends it and waits for it.
    fn spawn_on<F>(&self, tracker: &TaskTracker, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_on_runtime(&tokio::runtime::Handle::current(), tracker, fut);
    }

    /// Like `spawn_on`, on the runtime of `handle`.
    fn spawn_on_runtime<F>(&self, handle: &tokio::runtime::Handle, tracker: &TaskTracker, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        handle.spawn(tracker.track_future(async move {
            let _ = until_stopped(cancel.cancelled(), fut).await;
        }));
    }

    /// Spawns a background task that shutdown ends.
    fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_on(&self.tasks, fut);
    }
}

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
    if let Some(acme) = shared.config.acme.clone() {
        let routable = shared.clone();
        acme.request(&shared.config.domain);
        shared.spawn(acme.manage(move |name| {
            let domain = &routable.config.domain;
            name == domain
                || matches!(classify(name, domain), Route::Tunnel(sub) if routable.registry.route(sub).is_some())
        }));
    }
    if let (Some(store), Some(thread)) = (shared.config.store.clone(), shared.store_thread.clone())
    {
        shared.spawn(watch_revocations(shared.clone(), store, thread));
    }
    let sweeper = shared.clone();
    shared.spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            sweeper.connect_limit.sweep();
            sweeper.request_limit.sweep();
        }
    });
    tokio::pin!(shutdown);
    // mini-redis's pattern: a permit per open connection, taken before accepting, so past the
    // cap connections wait in the kernel's backlog instead of costing memory here.
    let conn_cap = (shared.config.max_conns > 0)
        .then(|| Arc::new(tokio::sync::Semaphore::new(shared.config.max_conns)));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let permit = async {
            match &conn_cap {
                Some(cap) => Some(cap.clone().acquire_owned().await.expect("never closed")),
                None => None,
            }
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = async { (permit.await, listener.accept().await) } => accepted,
        };
        match accepted {
            (permit, Ok((stream, peer))) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let _ = stream.set_nodelay(true);
                let slot = Slot {
                    _server: permit,
                    _ip: None,
                };
                let conn_shared = shared.clone();
                match &shards {
                    None => {
                        shared.spawn_on(&shared.conns, accept_tcp(conn_shared, stream, peer, slot))
                    }
                    Some(shards) => shared.spawn_on(
                        &shared.conns,
                        to_shard(conn_shared, shards.clone(), stream, peer, slot),
                    ),
                }
            }
            (_, Err(e)) => {
                // Usually EMFILE: back off, longer each time it persists, instead of spinning.
                warn!(%e, ?backoff, "accept failed");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
    drop(listener);
    let deadline = shared.config.drain_timeout;
    info!(
        in_flight = shared.conns.len(),
        ?deadline,
        "shutting down: draining connections"
    );
    shared.draining.cancel();
    shared.conns.close();
    if tokio::time::timeout(deadline, shared.conns.wait())
        .await
        .is_err()
    {
        warn!(
            left = shared.conns.len(),
            "drain deadline passed; closing what is left"
        );
    }
    shared.cancel.cancel();
    shared.tasks.close();
    shared.tasks.wait().await;
    shared.conns.wait().await;
    info!("stopped");
    Ok(())
}

/// Ends the sessions of tokens revoked in the store (by `ggrok-server token revoke`, another
/// process) while they are open. Polls: SQLite has no cross-process change notification, and
/// a poll that finds the database unchanged costs one pragma. Each look runs on the store's
/// thread, so a slow disk never holds up a thread that accepts or serves traffic.
async fn watch_revocations(
    shared: Arc<Shared>,
    store: Arc<store::Store>,
    thread: store::StoreThread,
) {
    let mut every = tokio::time::interval(shared.config.revocation_check);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = RevocationWatch::default();
    loop {
        every.tick().await;
        let (shared, store) = (shared.clone(), store.clone());
        let look = thread.run(move || {
            watch.look(&shared, &store);
            watch
        });
        // A look that panicked starts over: the next one checks every token again.
        watch = look.await.unwrap_or_default();
    }
}

/// What [`watch_revocations`] remembers between looks.
#[derive(Debug, Default, Clone, Copy)]
struct RevocationWatch {
    /// The store's version when every open token was last found valid.
    seen: Option<store::Version>,
    /// One more look after a change: a connect that read the token just before the revoke may
    /// register its session just after this look.
    again: bool,
}

impl RevocationWatch {
    fn look(&mut self, shared: &Shared, store: &store::Store) {
        let version = match store.version() {
            Ok(v) => v,
            Err(e) => {
                warn!(%e, "cannot check the token database for revocations");
                return;
            }
        };
        let changed = self.seen != Some(version);
        if !changed && !self.again {
            return;
        }
        self.again = changed;
        let mut checked = true;
        for token in shared.registry.tokens() {
            if shared.config.tokens.contains_hash(&token) {
                // Flag tokens live in the configuration, not the store.
                continue;
            }
            match store.token_by_hash(&token) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let ended = shared.registry.revoke(&token);
                    // Never the token or its hash: the log names what ended, not who.
                    info!(sessions = ended, "token revoked: ending its sessions");
                }
                Err(e) => {
                    warn!(%e, "cannot check a token against the database");
                    checked = false;
                }
            }
        }
        if checked {
            self.seen = Some(version);
        }
    }
}

/// Who sent a request and how: what routing, forwarding headers and URLs depend on.
#[derive(Debug, Clone)]
struct Visitor {
    peer: SocketAddr,
    /// The visitor's address: the peer's, or what a trusted proxy says in `X-Forwarded-For`.
    ip: std::net::IpAddr,
    /// `ip` as text for `X-Forwarded-For`, formatted once per connection rather than per request.
    ip_value: http::HeaderValue,
    /// Came over TLS (ours, or a trusted proxy's); decides `X-Forwarded-Proto` and URL schemes.
    secure: bool,
    /// Came through a trusted proxy, whose `X-Forwarded-For` already names the visitor.
    proxied: bool,
}

impl Visitor {
    fn direct(peer: SocketAddr, secure: bool) -> Self {
        let ip = peer.ip().to_canonical();
        Visitor {
            peer,
            ip,
            ip_value: ip_value(ip),
            secure,
            proxied: false,
        }
    }

    /// Believes `X-Forwarded-Proto`/`-For` only from a trusted proxy.
    fn through(self, trusted: &[ipnet::IpNet], h: &http::HeaderMap) -> Self {
        if !is_trusted(trusted, self.ip) {
            return self;
        }
        let secure = self.secure
            || h.get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        match forwarded_for(trusted, h) {
            Some(ip) => Visitor {
                ip,
                ip_value: ip_value(ip),
                secure,
                proxied: true,
                ..self
            },
            None => Visitor { secure, ..self },
        }
    }
}

fn is_trusted(trusted: &[ipnet::IpNet], ip: std::net::IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The visitor that `X-Forwarded-For` names, read as its proxies wrote it: each proxy appends
/// the address it got the request from, on the last line or on a line of its own (HAProxy's
/// `option forwardfor`). So the entries of every line are walked from the right, past the
/// trusted proxies; the first other address is the visitor, and everything left of it is
/// whatever the visitor chose to send. Only trusted entries: the leftmost. An entry that is
/// not an address where a trusted proxy should have written one: `None`, believe nothing.
fn forwarded_for(trusted: &[ipnet::IpNet], h: &http::HeaderMap) -> Option<std::net::IpAddr> {
    let mut leftmost = None;
    for line in h.get_all("x-forwarded-for").iter().rev() {
        for entry in line.to_str().ok()?.rsplit(',').map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            // Some proxies (Azure's) add the port: `1.2.3.4:5678`, `[2001:db8::1]:5678`.
            let ip = entry
                .parse::<std::net::IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
                .ok()?
                .to_canonical();
            if !is_trusted(trusted, ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost
}

fn ip_value(ip: std::net::IpAddr) -> http::HeaderValue {
    http::HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value")
}

/// The visitor behind a trusted TCP load balancer, from the PROXY protocol header that starts
/// `stream` (see [`proxy_protocol`]); bytes read past it are left in `head`. `None`: close the
/// connection. Anyone else's connection is left untouched: its address is the visitor's.
async fn behind_balancer(
    shared: &Shared,
    stream: &mut tokio::net::TcpStream,
    head: &mut bytes::BytesMut,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    if !shared.config.proxy_protocol
        || !is_trusted(&shared.config.trusted_proxies, peer.ip().to_canonical())
    {
        return Some(peer);
    }
    let read = proxy_protocol::read(stream, head, peer);
    match tokio::time::timeout(shared.config.header_read_timeout, read).await {
        Ok(Ok(visitor)) => Some(visitor),
        Ok(Err(e)) => {
            debug!(%e, %peer, "closing a trusted proxy's connection");
            None
        }
        Err(_) => {
            debug!(%peer, "trusted proxy sent no PROXY protocol header in time");
            None
        }
    }
}

/// `slot` with a place under `--max-conns-per-ip` for `visitor`; `None` when its address has
/// all its connections open. A trusted proxy's connections are not counted: every visitor
/// behind it shares its address (with `--proxy-protocol`, `visitor` is the visitor).
fn per_ip(shared: &Shared, visitor: SocketAddr, mut slot: Slot) -> Option<Slot> {
    let ip = visitor.ip().to_canonical();
    if is_trusted(&shared.config.trusted_proxies, ip) {
        return Some(slot);
    }
    match shared.conns_per_ip.try_open(ip) {
        Some(guard) => {
            slot._ip = Some(guard);
            Some(slot)
        }
        None => {
            debug!(%visitor, "closing a connection: its address has too many open");
            None
        }
    }
}

/// Serves a connection accepted on this runtime.
async fn accept_tcp(
    shared: Arc<Shared>,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let mut head = bytes::BytesMut::new();
    let Some(peer) = behind_balancer(&shared, &mut stream, &mut head, peer).await else {
        return;
    };
    let Some(_slot) = per_ip(&shared, peer, slot) else {
        return;
    };
    let stream = shard::Prefixed::new(head.freeze(), stream);
    accept_connection(shared, stream, peer).await
}

/// Reads the start of a new connection to learn its host, then moves it (with what was read) to
/// the shard of the tunnel it is for, or to the next shard in turn. See [`shard`].
async fn to_shard(
    shared: Arc<Shared>,
    shards: Arc<shard::Shards>,
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
) {
    let mut head = bytes::BytesMut::with_capacity(4096);
    let Some(peer) = behind_balancer(&shared, &mut stream, &mut head, peer).await else {
        return;
    };
    let Some(slot) = per_ip(&shared, peer, slot) else {
        return;
    };
    let tls = shared.config.tls.is_some();
    let sniff = shard::sniff(&mut stream, &mut head, tls);
    // Nothing usable within the time hyper gives a head: closed, as hyper would.
    let Ok(sniffed) = tokio::time::timeout(shared.config.header_read_timeout, sniff).await else {
        return debug!(%peer, "connection sent no request head in time");
    };
    let preferred = match &sniffed {
        shard::Sniffed::Host(host) => match classify(host, &shared.config.domain) {
            Route::Tunnel(name) => shared.registry.route(name).and_then(|r| r.shard),
            _ => None,
        },
        _ => None,
    };
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => return debug!(%e, %peer, "cannot move a connection to its shard"),
    };
    let head = head.freeze();
    let conn_shared = shared.clone();
    let serve = async move {
        let _slot = slot;
        match tokio::net::TcpStream::from_std(std_stream) {
            Ok(stream) => {
                let stream = shard::Prefixed::new(head, stream);
                accept_connection(conn_shared, stream, peer).await
            }
            Err(e) => debug!(%e, %peer, "cannot take a connection over on its shard"),
        }
    };
    shared.spawn_on_runtime(shards.handle(preferred), &shared.conns, serve);
}

/// Completes TLS when configured (HTTP/2 or HTTP/1.1 by ALPN), then serves HTTP.
async fn accept_connection<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = shared.config.tls.clone() else {
        return serve_connection(shared, stream, Visitor::direct(peer, false), false).await;
    };
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let stream = match tokio::time::timeout(shared.config.header_read_timeout, handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!(%e, %peer, "TLS handshake failed"),
        Err(_) => return debug!(%peer, "TLS handshake timed out"),
    };
    let alpn = stream.get_ref().1.alpn_protocol();
    if alpn == Some(acme::ACME_TLS_ALPN) {
        // An ACME validation handshake: the certificate was the answer.
        return;
    }
    let h2 = alpn == Some(b"h2");
    serve_connection(shared, stream, Visitor::direct(peer, true), h2).await;
}

async fn serve_connection<I>(shared: Arc<Shared>, io: I, visitor: Visitor, h2: bool)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.config.header_read_timeout;
    let draining = shared.draining.clone();
    let peer = visitor.peer;
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let visitor = visitor.clone();
        async move { Ok::<_, Infallible>(route(shared, visitor, req).await) }
    });
    let result = if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD as u32)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        until_drained(conn, &draining, |c| c.graceful_shutdown()).await
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades();
        tokio::pin!(conn);
        until_drained(conn, &draining, |c| c.graceful_shutdown()).await
    };
    if let Err(e) = result {
        debug!(%e, %peer, "connection ended with an error");
    }
}

/// Serves `conn` to its end; once draining starts, it finishes the request in flight (if any)
/// and then closes instead of keeping alive.
async fn until_drained<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    draining: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    match until_stopped(draining.cancelled(), conn.as_mut()).await {
        Ok(r) => r,
        Err(()) => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// Where a request goes, decided by its Host.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Apex,
    Tunnel(&'a str),
    Foreign,
}

fn classify<'a>(host: &'a str, domain: &str) -> Route<'a> {
    if host.is_empty() || host == domain || host.parse::<std::net::IpAddr>().is_ok() {
        return Route::Apex;
    }
    match host.strip_suffix(domain).and_then(|p| p.strip_suffix('.')) {
        Some(name) if !name.is_empty() && !name.contains('.') => Route::Tunnel(name),
        _ => Route::Foreign,
    }
}

/// The request's host, lowercased, without port, brackets or a trailing dot; or why there is
/// no usable one. The request-target's authority (absolute form, HTTP/2 `:authority`) wins over
/// `Host`, as RFC 9112 §3.2.2 says, so a proxy in front that follows the RFC routes the same way.
fn request_host<B>(req: &Request<B>) -> Result<String, &'static str> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            let (first, second) = (hosts.next(), hosts.next());
            let value = match (first, second) {
                (_, Some(_)) => return Err("A request may carry only one Host header."),
                (Some(v), None) => v,
                // HTTP/1.0 predates Host: such a request is for the server itself.
                (None, None) if req.version() <= http::Version::HTTP_10 => return Ok(String::new()),
                (None, None) if req.version() == http::Version::HTTP_11 => {
                    return Err("HTTP/1.1 requests need a Host header.")
                }
                (None, None) => return Ok(String::new()),
            };
            let value = value.to_str().map_err(|_| {
                "The Host header must be ASCII: write international names in their xn-- form."
            })?;
            if value.is_empty() {
                // Allowed when the target has no authority: the server's own endpoints.
                return Ok(String::new());
            }
            value
                .parse::<http::uri::Authority>()
                .map_err(|_| "The Host header is not a valid host[:port].")?
        }
    };
    if authority.as_str().contains('@') {
        return Err("A host may not carry user information (user@host).");
    }
    // The port plays no part in routing, but a malformed one makes the whole host doubtful.
    let port = &authority.as_str()[authority.host().len()..];
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err("The Host header is not a valid host[:port].");
    }
    let host = authority.host();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // One trailing dot is a fully qualified name; more is no name at all.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.ends_with('.') {
        return Err("The Host header is not a valid host[:port].");
    }
    Ok(host.to_ascii_lowercase())
}

/// Transfer codings other than plain `chunked` (hyper accepts `gzip, chunked`): relaying them
/// would drop the coding the sender applied, so they are refused instead (RFC 9112 §6.1: 501).
fn unsupported_transfer_coding(h: &http::HeaderMap) -> bool {
    h.get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// A refusal after which the connection closes: a request hyper framed but ggrok refuses to
/// relay may have a body ggrok will not read, and nothing after it on the connection can be
/// trusted to start a new request.
fn refuse_and_close(
    shared: &Shared,
    status: StatusCode,
    message: &str,
    json: bool,
) -> Response<Body> {
    let mut resp = ggrok_error(shared, status, PageKind::BadRequest, message, json);
    resp.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

async fn route(shared: Arc<Shared>, visitor: Visitor, req: Request<Incoming>) -> Response<Body> {
    let json = wants_json(req.headers());
    let host = match request_host(&req) {
        Ok(host) => host,
        Err(message) => return refuse_and_close(&shared, StatusCode::BAD_REQUEST, message, json),
    };
    if unsupported_transfer_coding(req.headers()) {
        let message = "Only the chunked transfer coding is supported.";
        return refuse_and_close(&shared, StatusCode::NOT_IMPLEMENTED, message, json);
    }
    let visitor = visitor.through(&shared.config.trusted_proxies, req.headers());
    // hyper's read buffer bounds memory, not the head: enforce the documented limit here.
    let head: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let uri = req.uri();
    // The target's length as sent (`Uri`'s `Display`), without formatting it.
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    if head + target > MAX_HEAD {
        let message = format!("Request headers over {} KiB are refused.", MAX_HEAD / 1024);
        return ggrok_error(
            &shared,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            PageKind::BadRequest,
            &message,
            json,
        );
    }
    match classify(&host, &shared.config.domain) {
        Route::Tunnel(name) => {
            if let Err(e) = ggrok_tunnel::protocol::validate_name(name) {
                // No client can hold such a name, and no DNS name has such a label.
                let message = format!("{name:?} cannot be a tunnel name: {e}.");
                return ggrok_error(
                    &shared,
                    StatusCode::BAD_REQUEST,
                    PageKind::BadRequest,
                    &message,
                    json,
                );
            }
            proxy::forward(&shared, visitor, name, req, json).await
        }
        Route::Apex => match req.uri().path() {
            CONNECT_PATH => connect::accept(&shared, visitor, req).await,
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/metrics" => metrics_endpoint(&shared, &req),
            "/" => landing(&shared),
            _ => error_page(
                StatusCode::NOT_FOUND,
                PageKind::NotFound,
                "This ggrok server has no such page.",
                json,
            ),
        },
        Route::Foreign => {
            let message = format!(
                "This server only serves tunnels at *.{}.",
                shared.config.domain
            );
            ggrok_error(
                &shared,
                StatusCode::NOT_FOUND,
                PageKind::TunnelNotFound,
                &message,
                json,
            )
        }
    }
}

/// An error page of ggrok's own, counted in the metrics.
fn ggrok_error(
    shared: &Shared,
    status: StatusCode,
    kind: PageKind,
    message: &str,
    json: bool,
) -> Response<Body> {
    shared.metrics.error(kind.code());
    error_page(status, kind, message, json)
}

/// `/metrics`, only with the configured bearer token.
fn metrics_endpoint<B>(shared: &Shared, req: &Request<B>) -> Response<Body> {
    let Some(expected) = shared.config.metrics_token else {
        return error_page(
            StatusCode::NOT_FOUND,
            PageKind::NotFound,
            "Metrics are not enabled on this server.",
            false,
        );
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| config::hash_token(t.trim()));
    if presented != Some(expected) {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Bearer")
            .body(full("metrics need the metrics token\n"))
            .expect("static response");
    }
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(full(shared.metrics.encode(shared.registry.online())))
        .expect("static response")
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(body))
        .expect("static response")
}

fn landing(shared: &Shared) -> Response<Body> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ggrok server</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>ggrok server</h1>\
         <p>Tunnels are served at <code>NAME.{}</code>.</p></body></html>\n",
        ggrok_tunnel::http_util::escape_html(&shared.config.domain),
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(full(body))
        .expect("static response")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_proxies() {
        let trusted = [
            policy::parse_net("10.0.0.0/8").unwrap(),
            policy::parse_net("2001:db8::/32").unwrap(),
        ];
        let walk = |lines: &[&str]| {
            let mut h = http::HeaderMap::new();
            for line in lines {
                h.append("x-forwarded-for", line.parse().unwrap());
            }
            forwarded_for(&trusted, &h).map(|ip| ip.to_string())
        };
        let ip = |s: &str| Some(s.to_owned());
        // HAProxy's `option forwardfor` adds a line after the visitor's forged one.
        assert_eq!(walk(&["203.0.113.66", "198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(walk(&["203.0.113.66, 198.51.100.7"]), ip("198.51.100.7"));
        // Trusted hops are skipped, whichever line they are on.
        assert_eq!(
            walk(&["203.0.113.66, 198.51.100.7", "10.1.2.3", "10.0.0.9"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            walk(&["203.0.113.66,198.51.100.7 ,10.0.0.1,"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            walk(&["[2001:db9::1]:4711", "2001:db8::2"]),
            ip("2001:db9::1")
        );
        assert_eq!(walk(&["::ffff:198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(walk(&["198.51.100.7:4711"]), ip("198.51.100.7"));
        // Only proxies: the one farthest out.
        assert_eq!(walk(&["10.0.0.2, 10.0.0.1"]), ip("10.0.0.2"));
        // Garbage where a trusted proxy writes: nothing is believed.
        assert_eq!(walk(&["198.51.100.7, unknown"]), None);
        assert_eq!(walk(&["198.51.100.7", "10.0.0.1, _hidden"]), None);
        // Garbage the visitor put left of its own address does not matter.
        assert_eq!(walk(&["unknown, 198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(walk(&[]), None);
        assert_eq!(walk(&[" , "]), None);
    }

    #[test]
    fn hosts_route_by_subdomain() {
        assert_eq!(classify("app.localhost", "localhost"), Route::Tunnel("app"));
        assert_eq!(classify("localhost", "localhost"), Route::Apex);
        assert_eq!(classify("127.0.0.1", "localhost"), Route::Apex);
        assert_eq!(classify("::1", "localhost"), Route::Apex);
        assert_eq!(classify("a.b.localhost", "localhost"), Route::Foreign);
        assert_eq!(classify("evil.com", "localhost"), Route::Foreign);
        assert_eq!(classify("xlocalhost", "localhost"), Route::Foreign);
        assert_eq!(classify(".localhost", "localhost"), Route::Foreign);
    }

    #[test]
    fn host_header_parsing() {
        let req = |h: &str| Request::builder().header(header::HOST, h).body(()).unwrap();
        let host = |h: &str| request_host(&req(h));
        assert_eq!(host("App.Example.com:8080").unwrap(), "app.example.com");
        assert_eq!(host("[::1]:80").unwrap(), "::1");
        assert_eq!(host("example.com.").unwrap(), "example.com");
        assert_eq!(host("").unwrap(), "");
        for bad in [
            "a@b.example.com",
            "example.com:",
            "example.com:http",
            "example.com:99999",
            "example.com:+80",
            "exa mple.com",
            "example.com/x",
            "example.com..",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
        let two = Request::builder()
            .header(header::HOST, "a.example.com")
            .header(header::HOST, "b.example.com")
            .body(())
            .unwrap();
        assert!(request_host(&two).is_err());
        let none = Request::builder().body(()).unwrap();
        assert!(request_host(&none).is_err(), "HTTP/1.1 without Host");
        let old = Request::builder()
            .version(http::Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(request_host(&old).unwrap(), "");
        let absolute = Request::builder()
            .uri("http://a.example.com/x")
            .header(header::HOST, "b.example.com")
            .body(())
            .unwrap();
        assert_eq!(request_host(&absolute).unwrap(), "a.example.com");
    }
}
