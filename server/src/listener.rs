//! Connections from accept to close: the accept loop with its connection caps and backoff, the
//! hand-off to a shard, TLS and ALPN, serving HTTP through the [`Router`], and the drain at
//! shutdown (stop accepting, let requests in flight finish, close what is left at the deadline).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::BytesMut;
use ggrok_tunnel::stop::until_stopped;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::OwnedSemaphorePermit,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    acme, policy,
    router::{self, Router, MAX_HEAD},
    shard::{self, Shards},
    state::Shared,
    visitor::{self, Visitor},
};

/// First wait after a failed accept; it doubles while accepts keep failing. TCP tunnels'
/// listeners (`tcp`) back off the same way.
pub(crate) const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait between accepts that fail (file descriptors exhausted, say).
pub(crate) const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What an open connection holds, given back when it closes: its place under `--max-conns`
/// and under its address's `--max-conns-per-ip`.
struct ConnPermit {
    _server: Option<OwnedSemaphorePermit>,
    _ip: Option<policy::ConnGuard>,
}

/// Accepts connections on `listener` until `shutdown` completes, then drains. Connections are
/// served on `shards` when given, else on the calling runtime.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
    shards: Option<Arc<Shards>>,
) {
    tokio::pin!(shutdown);
    // mini-redis's pattern: a permit per open connection, taken before accepting, so past the
    // cap connections wait in the kernel's backlog instead of costing memory here.
    let conn_cap = shared.conn_cap.clone();
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
                let permit = ConnPermit {
                    _server: permit,
                    _ip: None,
                };
                let conn_shared = shared.clone();
                match &shards {
                    None => shared.spawn_on(
                        &shared.conns,
                        accept_here(conn_shared, stream, peer, permit),
                    ),
                    Some(shards) => shared.spawn_on(
                        &shared.conns,
                        to_shard(conn_shared, shards.clone(), stream, peer, permit),
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
    drain(&shared).await;
}

/// Shutdown after the listener closed: connections finish the request in flight (see
/// [`until_drained`]) for up to `--drain-timeout`; then every task is cancelled (sessions
/// close with [`ggrok_tunnel::protocol::CLOSE_SHUTDOWN`]) and awaited.
async fn drain(shared: &Shared) {
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
}

/// `permit` with a place under `--max-conns-per-ip` for `visitor`; `None` when its address has
/// all its connections open.
fn per_ip(shared: &Shared, visitor: SocketAddr, mut permit: ConnPermit) -> Option<ConnPermit> {
    match ip_place(shared, visitor) {
        Ok(guard) => {
            permit._ip = guard;
            Some(permit)
        }
        Err(TooMany) => {
            debug!(%visitor, "closing a connection: its address has too many open");
            None
        }
    }
}

/// The address of a connection has all its `--max-conns-per-ip` connections open.
pub(crate) struct TooMany;

/// A place under `--max-conns-per-ip` for `visitor`. A trusted proxy's connections are not
/// counted (`Ok(None)`): every visitor behind it shares its address (with `--proxy-protocol`,
/// `visitor` is the visitor). TCP tunnels' ports count the same way.
pub(crate) fn ip_place(
    shared: &Shared,
    visitor: SocketAddr,
) -> Result<Option<policy::ConnGuard>, TooMany> {
    let ip = visitor.ip().to_canonical();
    if visitor::is_trusted(&shared.config.trusted_proxies, ip) {
        return Ok(None);
    }
    shared.conns_per_ip.try_open(ip).map(Some).ok_or(TooMany)
}

/// Serves a connection accepted on this runtime.
async fn accept_here(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: ConnPermit,
) {
    let mut head = BytesMut::new();
    let Some(peer) = visitor::behind_balancer(&shared, &mut stream, &mut head, peer).await else {
        return;
    };
    let Some(_permit) = per_ip(&shared, peer, permit) else {
        return;
    };
    let stream = shard::Prefixed::new(head.freeze(), stream);
    serve_connection(shared, stream, peer).await
}

/// Reads the start of a new connection to learn its host, then moves it (with what was read) to
/// the shard of the tunnel it is for, or to the next shard in turn. See [`shard`].
async fn to_shard(
    shared: Arc<Shared>,
    shards: Arc<Shards>,
    mut stream: TcpStream,
    peer: SocketAddr,
    permit: ConnPermit,
) {
    let mut head = BytesMut::with_capacity(4096);
    let Some(peer) = visitor::behind_balancer(&shared, &mut stream, &mut head, peer).await else {
        return;
    };
    let Some(permit) = per_ip(&shared, peer, permit) else {
        return;
    };
    let tls = shared.config.tls.is_some();
    let sniff = shard::sniff(&mut stream, &mut head, tls);
    // Nothing usable within the time hyper gives a head: closed, as hyper would.
    let Ok(sniffed) = tokio::time::timeout(shared.config.header_read_timeout, sniff).await else {
        return debug!(%peer, "connection sent no request head in time");
    };
    let preferred = match &sniffed {
        shard::Sniffed::Host(host) => router::shard_of(&shared, host),
        _ => None,
    };
    let std_stream = match stream.into_std() {
        Ok(s) => s,
        Err(e) => return debug!(%e, %peer, "cannot move a connection to its shard"),
    };
    let head = head.freeze();
    let conn_shared = shared.clone();
    let serve = async move {
        let _permit = permit;
        match TcpStream::from_std(std_stream) {
            Ok(stream) => {
                let stream = shard::Prefixed::new(head, stream);
                serve_connection(conn_shared, stream, peer).await
            }
            Err(e) => debug!(%e, %peer, "cannot take a connection over on its shard"),
        }
    };
    shared.spawn_on_runtime(shards.handle(preferred), &shared.conns, serve);
}

/// The HTTP/2 connection preface, which a client with prior knowledge (h2c: gRPC clients,
/// `curl --http2-prior-knowledge`) sends in place of an HTTP/1.1 request line.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads the start of a plain-text connection until it tells the HTTP/2 preface from HTTP/1.1
/// (nearly always the first read: no request line starts with `PRI `); whether it is HTTP/2,
/// and the stream with what was read put back in front. `None` if nothing came in time.
async fn sniff_h2c<S>(mut stream: S, timeout: Duration) -> Option<(shard::Prefixed<S>, bool)>
where
    S: AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    // A head's worth: the read that tells also takes the whole request head, as hyper's would.
    let mut buf = BytesMut::with_capacity(4096);
    let read = async {
        loop {
            let n = buf.len().min(H2_PREFACE.len());
            if buf[..n] != H2_PREFACE[..n] {
                return false;
            }
            if n == H2_PREFACE.len() {
                return true;
            }
            // Closed or failed: hyper meets the same end on its first read.
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    };
    let h2 = tokio::time::timeout(timeout, read).await.ok()?;
    Some((shard::Prefixed::new(buf.freeze(), stream), h2))
}

/// Completes TLS when configured (HTTP/2 or HTTP/1.1 by ALPN), then serves HTTP; in plain
/// text, HTTP/1.1 or HTTP/2 with prior knowledge.
async fn serve_connection<S>(shared: Arc<Shared>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = shared.config.tls.clone() else {
        let Some((stream, h2)) = sniff_h2c(stream, shared.config.header_read_timeout).await else {
            return debug!(%peer, "connection sent no request head in time");
        };
        return serve_http(shared, stream, Visitor::direct(peer, false), h2).await;
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
    serve_http(shared, stream, Visitor::direct(peer, true), h2).await;
}

/// Serves HTTP/1.1 (with upgrades) or HTTP/2 on `io`, every request through a [`Router`].
async fn serve_http<I>(shared: Arc<Shared>, io: I, visitor: Visitor, h2: bool)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let timeout = shared.config.header_read_timeout;
    let draining = shared.draining.clone();
    let peer = visitor.peer;
    let router = Router::new(shared.clone(), visitor.clone());
    // `service_fn` over `Router::handle` rather than the `Router` itself: hyper keeps this
    // future inline, where `Service::call` would box one per request.
    let service = hyper::service::service_fn(move |req| {
        let router = router.clone();
        async move { Ok::<_, std::convert::Infallible>(router.handle(req).await) }
    });
    let result = if h2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .max_header_list_size(MAX_HEAD as u32)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        until_drained(conn, &draining, |c| c.graceful_shutdown()).await
    } else {
        // The plain requests first, on the server's own HTTP/1.1; hyper from the first that is not.
        let Some(io) = crate::h1::serve(&shared, io, &visitor).await else {
            return;
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .max_buf_size(MAX_HEAD)
            .serve_connection(TokioIo::new(io), service);
        let conn = conn.with_upgrades();
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
    C: std::future::Future<Output = Result<(), E>>,
{
    match until_stopped(draining.cancelled(), conn.as_mut()).await {
        Ok(r) => r,
        Err(()) => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}
