//! TCP tunnels: one stream per visitor connection, spliced to a connection of its own to the
//! local service.
//!
//! The server accepts a visitor on the tunnel's public port and opens a stream whose head is a
//! TCP head ([`crate::head::encode_tcp`], the visitor's address). The client connects to the
//! local service and copies bytes both ways ([`splice`]): a FIN crosses as a FIN (a half-close),
//! a failure on either side resets the other. A local service that cannot be reached resets the
//! stream with [`RESET_UNREACHABLE`] and the reason, so the visitor's connection closes at once.
//!
//! Every connection is recorded as a [`Connection`] in [`Connections`]: published when it opens
//! and again when it ends, for the CLI's log and the desktop's traffic view.

use std::{
    collections::VecDeque,
    io,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use bytes::BytesMut;
use serde::Serialize;
use tokio::{io::AsyncWriteExt, net::TcpStream, sync::broadcast};
use tracing::{debug, warn};

use crate::{
    forward::LocalTarget,
    head::{self, Open},
    mux::{Item, MuxStream},
    protocol::{RESET_CANCEL, RESET_PROTOCOL, RESET_UNREACHABLE},
    traffic::EVENT_BUFFER,
};

/// Default number of ended connections kept in the ring.
pub const DEFAULT_CONNECTION_RING: usize = 500;

/// Bytes each direction of a splice reads at once: a full DATA frame per read.
const SPLICE_BUFFER: usize = 64 * 1024;

/// How long connecting to the local service may take: a refused port fails at once, but a host
/// that drops packets (`--local-host` on another machine) would hold the visitor for minutes.
pub const LOCAL_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One visitor connection through a TCP tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    /// Unique within the process (shared by the opening and the ending event).
    pub id: u64,
    /// The visitor's `ip:port` as the server reported it. Untrusted text.
    pub from: String,
    /// Unix time in milliseconds when the connection arrived.
    pub opened_ms: u64,
    /// From arrival to the end, in milliseconds (0 while open).
    pub duration_ms: u64,
    /// Bytes from the visitor to the local service.
    pub bytes_up: u64,
    /// Bytes from the local service to the visitor.
    pub bytes_down: u64,
    /// How it ended; `None` while open.
    pub end: Option<End>,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum End {
    /// Both sides closed their half.
    Closed,
    /// The local service could not be reached; nothing was forwarded.
    Unreachable {
        /// Why, for a human.
        reason: String,
    },
    /// The visitor's side failed: the visitor reset, the server gave up on it, or the session
    /// ended. The local connection was reset.
    VisitorReset {
        /// Why, for a human.
        reason: String,
    },
    /// The local service's connection failed (reset); the visitor's was reset.
    LocalReset {
        /// Why, for a human.
        reason: String,
    },
    /// The tunnel stopped, or its session ended, while the connection was open; the bytes are
    /// those counted until then.
    Cut,
}

impl End {
    /// A short phrase for a log line: `closed`, `unreachable: ...`, `reset by ...: ...`.
    pub fn describe(&self) -> String {
        match self {
            End::Closed => "closed".to_owned(),
            End::Unreachable { reason } => format!("local service unreachable: {reason}"),
            End::VisitorReset { reason } => format!("visitor side reset: {reason}"),
            End::LocalReset { reason } => format!("local side reset: {reason}"),
            End::Cut => "cut: the tunnel stopped or lost its session".to_owned(),
        }
    }
}

/// Where connections are recorded: a broadcast for live consumers and a bounded ring of ended
/// connections.
#[derive(Clone)]
pub struct Connections {
    inner: Arc<ConnectionsInner>,
}

struct ConnectionsInner {
    events: broadcast::Sender<Arc<Connection>>,
    ring: Mutex<VecDeque<Arc<Connection>>>,
    ring_size: usize,
    next_id: AtomicU64,
    open: AtomicU64,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl Default for Connections {
    fn default() -> Self {
        Self::new(DEFAULT_CONNECTION_RING)
    }
}

impl Connections {
    /// A sink keeping the last `ring_size` ended connections.
    pub fn new(ring_size: usize) -> Self {
        Self {
            inner: Arc::new(ConnectionsInner {
                events: broadcast::channel(EVENT_BUFFER).0,
                ring: Mutex::new(VecDeque::with_capacity(ring_size.min(1024))),
                ring_size,
                next_id: AtomicU64::new(1),
                open: AtomicU64::new(0),
            }),
        }
    }

    /// Every connection as it opens (`end: None`) and as it ends. A subscriber that falls more
    /// than [`EVENT_BUFFER`] events behind misses the oldest (`Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Connection>> {
        self.inner.events.subscribe()
    }

    /// The ended connections kept, oldest first.
    pub fn recent(&self) -> Vec<Arc<Connection>> {
        self.inner
            .ring
            .lock()
            .expect("connections lock")
            .iter()
            .cloned()
            .collect()
    }

    /// Connections open now.
    pub fn open(&self) -> u64 {
        self.inner.open.load(Ordering::Relaxed)
    }

    fn opened(&self, from: String) -> Opened {
        let opened_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let conn = Connection {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            from,
            opened_ms,
            duration_ms: 0,
            bytes_up: 0,
            bytes_down: 0,
            end: None,
        };
        self.inner.open.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.events.send(Arc::new(conn.clone()));
        Opened {
            log: self.clone(),
            conn: Some(conn),
            started: Instant::now(),
            up: Arc::default(),
            down: Arc::default(),
        }
    }

    fn ended(&self, conn: Connection, end: End) -> Arc<Connection> {
        self.inner.open.fetch_sub(1, Ordering::Relaxed);
        let conn = Arc::new(Connection {
            end: Some(end),
            ..conn
        });
        {
            let mut ring = self.inner.ring.lock().expect("connections lock");
            if ring.len() >= self.inner.ring_size {
                ring.pop_front();
            }
            if self.inner.ring_size > 0 {
                ring.push_back(conn.clone());
            }
        }
        let _ = self.inner.events.send(conn.clone());
        conn
    }
}

/// A connection being recorded. Dropped without [`Opened::end`] (its task was dropped: the
/// tunnel stopped or its session ended), it is published as [`End::Cut`], so no consumer is
/// left with a connection that never ends.
struct Opened {
    log: Connections,
    /// `None` once published.
    conn: Option<Connection>,
    started: Instant,
    /// Bytes from the visitor and to it so far.
    up: Arc<AtomicU64>,
    down: Arc<AtomicU64>,
}

impl Opened {
    fn from(&self) -> &str {
        self.conn.as_ref().map_or("", |c| c.from.as_str())
    }

    fn end(mut self, end: End) -> Arc<Connection> {
        self.publish(end).expect("published once")
    }

    fn publish(&mut self, end: End) -> Option<Arc<Connection>> {
        let conn = Connection {
            duration_ms: self.started.elapsed().as_millis() as u64,
            bytes_up: self.up.load(Ordering::Relaxed),
            bytes_down: self.down.load(Ordering::Relaxed),
            ..self.conn.take()?
        };
        Some(self.log.ended(conn, end))
    }
}

impl Drop for Opened {
    fn drop(&mut self) {
        self.publish(End::Cut);
    }
}

/// Opens connections to the local service of a TCP tunnel.
#[derive(Debug)]
pub struct Dialer {
    target: LocalTarget,
    /// The address that answered last. `localhost` resolves to `::1` before `127.0.0.1` and
    /// most services listen on one of them only: resolving (a hop to tokio's blocking pool and
    /// a read of /etc/hosts) and trying the wrong one first would cost every new connection.
    addr: Mutex<Option<std::net::SocketAddr>>,
}

impl Dialer {
    /// A dialer to `target`.
    pub fn new(target: LocalTarget) -> Self {
        Self {
            target,
            addr: Mutex::new(None),
        }
    }

    /// Connects to the address that worked last, else to each address the host resolves to in
    /// order; gives up after [`LOCAL_CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> io::Result<TcpStream> {
        tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, self.try_connect())
            .await
            .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")))
    }

    async fn try_connect(&self) -> io::Result<TcpStream> {
        let known = *self.addr.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = known {
            // Down, or back on another address: resolve again.
            if let Ok(tcp) = TcpStream::connect(addr).await {
                return Ok(tcp);
            }
        }
        let mut last = None;
        let host = (self.target.host.as_str(), self.target.port);
        for addr in tokio::net::lookup_host(host).await? {
            match TcpStream::connect(addr).await {
                Ok(tcp) => {
                    *self.addr.lock().unwrap_or_else(|p| p.into_inner()) = Some(addr);
                    return Ok(tcp);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("the host resolves to no address")))
    }
}

/// Serves one stream the server opened on a TCP tunnel: connects to the local service and
/// splices.
pub async fn serve_stream(stream: MuxStream, local: &Dialer, log: &Connections) {
    let from = match stream.recv().await {
        Some(Ok(Item::Head(h))) => match head::decode_open(h) {
            Ok(Open::Tcp(from)) => from,
            Ok(Open::Http(_)) => {
                return stream.reset(RESET_PROTOCOL, "this tunnel forwards TCP, not HTTP")
            }
            Err(e) => return stream.reset(RESET_PROTOCOL, &e.to_string()),
        },
        _ => return stream.reset(RESET_PROTOCOL, "a stream must open with a head"),
    };
    let opened = log.opened(from);
    let tcp = match local.connect().await {
        Ok(tcp) => tcp,
        Err(e) => {
            let reason = format!("cannot connect to {}: {e}", local.target.authority());
            warn!(from = %opened.from(), "{reason}");
            stream.reset(RESET_UNREACHABLE, &reason);
            opened.end(End::Unreachable { reason });
            return;
        }
    };
    let _ = tcp.set_nodelay(true);
    let (up, down) = (opened.up.clone(), opened.down.clone());
    let spliced = splice_counting(
        tcp,
        stream,
        move |n| {
            down.fetch_add(n, Ordering::Relaxed);
        },
        move |n| {
            up.fetch_add(n, Ordering::Relaxed);
        },
    )
    .await;
    opened.end(match spliced.failure {
        None => End::Closed,
        Some(Failure::Tcp(reason)) => End::LocalReset { reason },
        Some(Failure::Stream(reason)) => End::VisitorReset { reason },
    });
}

/// How a [`splice`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spliced {
    /// Bytes read from the TCP connection and sent on the stream.
    pub from_tcp: u64,
    /// Bytes received on the stream and written to the TCP connection.
    pub to_tcp: u64,
    /// `None` when both directions ended with a FIN.
    pub failure: Option<Failure>,
}

/// Which side of a splice failed first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The TCP connection (reset, or a write to it failed); the stream was reset.
    Tcp(String),
    /// The stream (reset by the peer, or its session ended); the TCP connection was reset.
    Stream(String),
}

/// Copies both ways between a TCP connection and a stream until both directions have ended
/// (each side's FIN reaches the other as a FIN) or either fails. A failure is passed on as a
/// failure, not as an orderly close: the other side's stream is reset, or its TCP connection
/// closed with RST (a zero linger), so neither end mistakes a broken connection for a complete
/// one. Used by both the server (visitor side) and the client (local side).
pub async fn splice(tcp: TcpStream, stream: MuxStream) -> Spliced {
    splice_counting(tcp, stream, |_| {}, |_| {}).await
}

/// Like [`splice`], calling `from_tcp` and `to_tcp` with the size of every chunk as it passes
/// (live byte counters for long connections).
///
/// The stream's data goes to the socket as the multiplexer delivered it, without a copy into a
/// buffer of our own; the other way reads into a [`ReadBuffer`].
pub async fn splice_counting(
    tcp: TcpStream,
    stream: MuxStream,
    mut from_tcp: impl FnMut(u64),
    mut to_tcp: impl FnMut(u64),
) -> Spliced {
    let (rd, mut wr) = tcp.into_split();
    let (mut sent, mut received) = (0u64, 0u64);
    let failure = {
        let up = async {
            let mut buf = ReadBuffer::default();
            loop {
                rd.readable()
                    .await
                    .map_err(|e| Failure::Tcp(e.to_string()))?;
                match rd.try_read_buf(buf.get()) {
                    Ok(0) => return stream.finish().map_err(|e| Failure::Stream(e.to_string())),
                    Ok(n) => {
                        from_tcp(n as u64);
                        sent += n as u64;
                        stream
                            .send(&buf.0)
                            .await
                            .map_err(|e| Failure::Stream(e.to_string()))?;
                        buf.sent();
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(Failure::Tcp(e.to_string())),
                }
            }
        };
        let down = async {
            loop {
                match stream.recv().await {
                    None => return wr.shutdown().await.map_err(|e| Failure::Tcp(e.to_string())),
                    Some(Ok(Item::Data(data))) => {
                        to_tcp(data.len() as u64);
                        received += data.len() as u64;
                        wr.write_all(&data)
                            .await
                            .map_err(|e| Failure::Tcp(e.to_string()))?;
                    }
                    Some(Ok(_)) => {
                        return Err(Failure::Stream(
                            "a head on a stream that carries bytes".into(),
                        ))
                    }
                    Some(Err(e)) => return Err(Failure::Stream(e.to_string())),
                }
            }
        };
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => match r {
                    Ok(()) => up_done = true,
                    Err(f) => break Some(f),
                },
                r = &mut down, if !down_done => match r {
                    Ok(()) => down_done = true,
                    Err(f) => break Some(f),
                },
            }
            if up_done && down_done {
                break None;
            }
        }
    };
    match &failure {
        Some(Failure::Stream(reason)) => {
            debug!(%reason, "stream failed: resetting the TCP connection");
            let _ = rd.as_ref().set_zero_linger();
            // Dropping the write half would send a FIN first: the peer must see only the reset.
            wr.forget();
        }
        Some(Failure::Tcp(reason)) => {
            debug!(%reason, "TCP connection failed: resetting the stream");
            stream.reset(RESET_CANCEL, reason);
        }
        None => {}
    }
    Spliced {
        from_tcp: sent,
        to_tcp: received,
        failure,
    }
}

/// What one direction of a splice reads into: allocated when the connection has something to
/// read (without zeroing it), kept while reads fill it (a transfer under way), and given back
/// after a read that drained the socket, so an idle connection (an SSH session nobody types in,
/// a pooled database connection) holds none.
#[derive(Default)]
struct ReadBuffer(BytesMut);

impl ReadBuffer {
    /// The buffer to read into (or send what was read from).
    fn get(&mut self) -> &mut BytesMut {
        if self.0.capacity() == 0 {
            self.0.reserve(SPLICE_BUFFER);
        }
        &mut self.0
    }

    /// What was read has been sent on.
    fn sent(&mut self) {
        if self.0.len() < self.0.capacity() {
            self.0 = BytesMut::new();
        } else {
            self.0.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_buffer_is_kept_only_while_reads_fill_it() {
        let mut buf = ReadBuffer::default();
        assert_eq!(buf.0.capacity(), 0, "nothing before the first read");
        let full = buf.get().capacity();
        assert!(full >= SPLICE_BUFFER);
        buf.get().resize(full, 7);
        buf.sent();
        assert_eq!(
            (buf.0.len(), buf.0.capacity()),
            (0, full),
            "kept during a transfer"
        );
        buf.get().extend_from_slice(b"ls\n");
        buf.sent();
        assert_eq!(
            buf.0.capacity(),
            0,
            "given back once a read drained the socket"
        );
    }

    #[tokio::test]
    async fn the_dialer_keeps_the_address_that_answered() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let dialer = Dialer::new(LocalTarget::new("localhost", addr.port()));
        for _ in 0..3 {
            dialer.connect().await.unwrap();
            l.accept().await.unwrap();
            assert_eq!(*dialer.addr.lock().unwrap(), Some(addr), "kept");
        }
        drop(l);
        let e = dialer.connect().await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }

    #[test]
    fn the_ring_is_bounded_and_events_carry_both_ends() {
        let log = Connections::new(2);
        let mut events = log.subscribe();
        for i in 0..3 {
            let o = log.opened(format!("192.0.2.1:{i}"));
            assert_eq!(log.open(), 1);
            o.up.store(10, Ordering::Relaxed);
            o.down.store(20, Ordering::Relaxed);
            o.end(End::Closed);
        }
        assert_eq!(log.open(), 0);
        let kept: Vec<_> = log.recent().iter().map(|c| c.from.clone()).collect();
        assert_eq!(kept, ["192.0.2.1:1", "192.0.2.1:2"]);
        let first = events.try_recv().unwrap();
        assert_eq!((first.id, first.end.clone()), (1, None));
        let ended = events.try_recv().unwrap();
        assert_eq!(
            (
                ended.id,
                ended.bytes_up,
                ended.bytes_down,
                ended.end.clone()
            ),
            (1, 10, 20, Some(End::Closed))
        );
        let json = serde_json::to_value(&*ended).unwrap();
        assert_eq!(json["end"]["kind"], "closed");
        // A connection whose task is dropped still ends, as cut.
        drop(log.opened("192.0.2.1:9".into()));
        assert_eq!(log.open(), 0);
        assert_eq!(log.recent().last().unwrap().end, Some(End::Cut));
    }
}
