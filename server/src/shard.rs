//! Thread-per-core serving: the server's connections spread over single-threaded runtimes
//! ("shards"), each visitor connection on the shard that runs the session of the tunnel it is
//! for.
//!
//! A request through a tunnel meets its session's task at every step (the visitor's task hands
//! frames to it and gets frames back). On one multi-threaded runtime those tasks land on any
//! thread, and every hand-off between threads is a wake-up of another thread; with the load
//! generator and the origin sharing the cores, two busy runtime threads also compete with them
//! for the CPU. Here a tunnel's session and its visitors keep to one thread: one busy tunnel
//! costs what it costs with `--workers 1`, and many tunnels still spread over every core.
//!
//! The acceptor (the runtime that calls [`crate::run_sharded`]) reads the start of each new
//! connection, just enough to learn its host: the TLS ClientHello's server name, or the
//! request head's `Host` (or absolute target). The connection then moves, with the bytes read,
//! to the shard whose session holds that name (in a cluster, for a name another node holds, the
//! shard whose session to that node carries its hops); connections for no live tunnel (the
//! apex, the client's connect, unknown names) go round the shards in turn, which spreads new
//! sessions.
//! Later requests on a connection for another tunnel (HTTP/2 coalescing, a proxy in front) are
//! still served, by a hand-off to that session's thread.

use std::{
    cell::Cell,
    io,
    pin::Pin,
    sync::atomic::{AtomicUsize, Ordering},
    task::{Context, Poll},
};

use bytes::{Buf, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf},
    net::TcpStream,
    runtime::Handle,
};

/// The most of a connection's start read to find its host; past it the connection goes round
/// the shards like one without a host.
const SNIFF_LIMIT: usize = 16 * 1024;

thread_local! {
    static CURRENT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The shard the calling thread runs, if it is one.
pub(crate) fn current() -> Option<usize> {
    CURRENT.with(Cell::get)
}

/// The shards: one thread each, with a single-threaded runtime.
pub struct Shards {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Shards {
    /// Starts `n` shard threads (at least one).
    pub fn start(n: usize) -> io::Result<Self> {
        let mut shards = Shards {
            handles: Vec::new(),
            next: AtomicUsize::new(0),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            shards.handles.push(runtime.handle().clone());
            shards.stops.push(stop);
            let thread = std::thread::Builder::new()
                .name(format!("ggrok-shard-{i}"))
                .spawn(move || {
                    CURRENT.with(|c| c.set(Some(i)));
                    let _ = runtime.block_on(stopped);
                })?;
            shards.threads.push(thread);
        }
        Ok(shards)
    }

    /// `preferred` if it is a shard, else the next one in turn.
    fn pick(&self, preferred: Option<usize>) -> usize {
        match preferred {
            Some(i) if i < self.handles.len() => i,
            _ => self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len(),
        }
    }

    pub(crate) fn handle(&self, preferred: Option<usize>) -> &Handle {
        &self.handles[self.pick(preferred)]
    }
}

impl Drop for Shards {
    /// Stops the threads; what still runs on them is dropped.
    fn drop(&mut self) {
        for stop in self.stops.drain(..) {
            let _ = stop.send(());
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What the start of a connection says about where it goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Sniffed {
    /// The host it names (lowercase, without port or trailing dot).
    Host(String),
    /// Nothing to route by (no host, not HTTP, too long): any shard will do.
    Unknown,
    /// Not enough bytes yet.
    More,
}

/// Reads the start of `stream` into `buf` until it names a host, says it will not, or ends.
pub(crate) async fn sniff(stream: &mut TcpStream, buf: &mut BytesMut, tls: bool) -> Sniffed {
    // `buf` may already hold what followed a PROXY protocol header.
    let mut read_first = buf.is_empty();
    loop {
        if read_first {
            match stream.read_buf(buf).await {
                Ok(0) | Err(_) => return Sniffed::Unknown,
                Ok(_) => {}
            }
        }
        read_first = true;
        let seen = if tls {
            sniff_client_hello(buf)
        } else {
            sniff_head(buf)
        };
        match seen {
            Sniffed::More if buf.len() < SNIFF_LIMIT => {
                // `read_buf` needs room to read into.
                buf.reserve(4096);
            }
            Sniffed::More => return Sniffed::Unknown,
            known => return known,
        }
    }
}

/// The host of an HTTP/1.x request head: the absolute target's authority, else `Host`.
pub(crate) fn sniff_head(buf: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Sniffed::More,
        Err(_) => return Sniffed::Unknown,
    }
    let from_target = req
        .path
        .and_then(|p| p.parse::<http::Uri>().ok())
        .and_then(|u| u.authority().map(|a| a.as_str().to_owned()));
    let authority = from_target.or_else(|| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::to_owned)
    });
    match authority.as_deref().and_then(host_of) {
        Some(host) => Sniffed::Host(host),
        None => Sniffed::Unknown,
    }
}

/// The server name of a TLS ClientHello.
pub(crate) fn sniff_client_hello(buf: &[u8]) -> Sniffed {
    let mut acceptor = rustls::server::Acceptor::default();
    if acceptor.read_tls(&mut &buf[..]).is_err() {
        return Sniffed::Unknown;
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => match accepted.client_hello().server_name() {
            Some(name) => Sniffed::Host(name.trim_end_matches('.').to_ascii_lowercase()),
            None => Sniffed::Unknown,
        },
        Ok(None) => Sniffed::More,
        Err(_) => Sniffed::Unknown,
    }
}

fn host_of(authority: &str) -> Option<String> {
    let a = authority.parse::<http::uri::Authority>().ok()?;
    Some(a.host().trim_end_matches('.').to_ascii_lowercase())
}

/// A stream whose first reads return bytes already read from it.
pub struct Prefixed<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` read first.
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Self { prefix, inner }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Let the read buffer go: a drained `Bytes` still holds it, for as long as the
                // connection lives (4 KiB per idle tunnel).
                self.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_host_of_a_request_head() {
        let host = |s: &str| sniff_head(s.as_bytes());
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: App.Example.com:8080\r\n\r\n"),
            Sniffed::Host("app.example.com".into())
        );
        assert_eq!(
            host("GET http://a.example.com./x HTTP/1.1\r\nHost: b.example.com\r\n\r\n"),
            Sniffed::Host("a.example.com".into()),
            "the absolute target wins, as in routing"
        );
        assert_eq!(
            host("GET / HTTP/1.1\r\nHost: a.exam"),
            Sniffed::More,
            "an unfinished head needs more"
        );
        assert_eq!(host("GET / HTTP/1.0\r\n\r\n"), Sniffed::Unknown);
        assert_eq!(host("\x16\x03\x01garbage\r\n\r\n"), Sniffed::Unknown);
    }

    #[test]
    fn the_server_name_of_a_client_hello() {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("App.Tunnel.example.com").unwrap();
        let mut client = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
        let mut hello = Vec::new();
        client.write_tls(&mut hello).unwrap();
        assert_eq!(
            sniff_client_hello(&hello),
            Sniffed::Host("app.tunnel.example.com".into())
        );
        assert_eq!(sniff_client_hello(&hello[..hello.len() / 2]), Sniffed::More);
        assert_eq!(sniff_client_hello(b"GET / HTTP/1.1\r\n"), Sniffed::Unknown);
    }

    #[tokio::test]
    async fn a_prefixed_stream_reads_its_prefix_first_then_lets_it_go() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut far, near) = tokio::io::duplex(64);
        let mut buf = BytesMut::with_capacity(4096);
        buf.extend_from_slice(b"GET / ");
        let head = buf.freeze();
        let mut s = Prefixed::new(head.clone(), near);
        far.write_all(b"HTTP/1.1").await.unwrap();
        drop(far);
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"GET / HTTP/1.1");
        assert!(
            head.is_unique(),
            "the stream no longer holds the read buffer"
        );
    }
}
