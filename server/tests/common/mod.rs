//! Shared test support: a real ggrok server, a real origin and a visitor client, all on
//! 127.0.0.1 with ports from `:0`.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ggrok_server::Config;
use ggrok_tunnel::{
    http_util::{boxed, empty, full, Body},
    Status, Tunnel, TunnelConfig,
};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::{
    net::TcpListener,
    sync::{oneshot, Notify},
    task::JoinHandle,
};
use tokio_tungstenite::tungstenite::protocol::Role;

/// A ggrok server running in this process.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, config)
    }

    /// Starts on a given address (for restarts on the same port).
    pub async fn start_at(addr: SocketAddr, config: Config) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, config)
    }

    /// Runs the server as the binary does by default on a multi-core machine: connections on
    /// two shards, a tunnel's visitors on its session's thread. (The unsharded `run`, which the
    /// desktop app embeds, is tested by the CLI's and the desktop app's tests.)
    fn serve(listener: TcpListener, config: Config) -> Server {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let shards = Arc::new(ggrok_server::shard::Shards::start(2).unwrap());
        let task = tokio::spawn(async move {
            ggrok_server::run_sharded(
                listener,
                config,
                async {
                    let _ = rx.await;
                },
                Some(shards),
            )
            .await
            .unwrap();
        });
        Server {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits until every connection and session is closed.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// Test config: domain `localhost`, short timers.
pub fn config() -> Config {
    Config {
        reconnect_grace: Duration::from_secs(2),
        ..Config::new("localhost")
    }
}

/// Starts a tunnel to `port` and waits until it is online.
pub async fn tunnel(server: &Server, port: u16, name: Option<&str>) -> (Tunnel, String) {
    let mut cfg = TunnelConfig::new(server.url(), port);
    cfg.subdomain = name.map(str::to_owned);
    tunnel_with(cfg).await
}

pub async fn tunnel_with(cfg: TunnelConfig) -> (Tunnel, String) {
    let t = Tunnel::start(cfg).unwrap();
    let url = t
        .online()
        .await
        .unwrap_or_else(|s| panic!("tunnel did not come online: {s:?}"));
    (t, url)
}

/// Waits until the tunnel's status satisfies `f`.
pub async fn wait_status(t: &Tunnel, f: impl Fn(&Status) -> bool) -> Status {
    let mut rx = t.status();
    loop {
        {
            let s = rx.borrow_and_update();
            if f(&s) {
                return s.clone();
            }
        }
        rx.changed().await.unwrap();
    }
}

/// The `Host` header value that reaches tunnel `name` on `server`.
pub fn host(server: &Server, name: &str) -> String {
    format!("{name}.localhost:{}", server.addr.port())
}

/// The name in a public URL.
pub fn name_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned()
}

/// A visitor: a real HTTP client that never follows redirects or decompresses.
pub fn visitor() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// GET through the tunnel.
pub fn get(server: &Server, name: &str, path: &str) -> reqwest::RequestBuilder {
    visitor()
        .get(format!("{}{path}", server.url()))
        .header(header::HOST, host(server, name))
}

/// What the origin saw and controls tests can pull.
#[derive(Default)]
pub struct OriginState {
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// `/gate` and `/hang` wait for this.
    pub gate: Notify,
    /// Wakes `/barrier` waiters.
    pub barrier: Notify,
    /// Fired when a request reaches `/hang` or `/upload-stream` receives its first chunk.
    pub reached: Notify,
}

pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
}

/// Deterministic pattern bytes.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) * 7 % 251) as u8)
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

impl Origin {
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(origin(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin { addr, state }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn resp(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(full(body.into()))
        .unwrap()
}

/// Size of the chunks of [`big_chunk`].
pub const CHUNK: u64 = 64 * 1024;

/// Chunk `k` of a large test body: a fixed pseudo-random block stamped with `k`, so that
/// gigabytes cost a copy per chunk, not arithmetic per byte, and any reordering shows.
pub fn big_chunk(k: u64, len: usize) -> Bytes {
    static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| pattern(12345, CHUNK as usize));
    let mut chunk = block[..len].to_vec();
    let stamp = k.to_be_bytes();
    let n = stamp.len().min(len);
    chunk[..n].copy_from_slice(&stamp[..n]);
    Bytes::from(chunk)
}

/// The chunks of an `n`-byte large test body.
pub fn big_chunks(n: u64) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::iter(
        (0..n.div_ceil(CHUNK)).map(move |k| big_chunk(k, CHUNK.min(n - k * CHUNK) as usize)),
    )
}

/// SHA-256 of the `n`-byte large test body.
pub fn big_sha256(n: u64) -> String {
    let mut h = Sha256::new();
    for k in 0..n.div_ceil(CHUNK) {
        h.update(big_chunk(k, CHUNK.min(n - k * CHUNK) as usize));
    }
    format!("{:x}", h.finalize())
}

/// A streamed body of `n` bytes (see [`big_chunk`]).
pub fn pattern_body(n: u64) -> Body {
    boxed(StreamBody::new(
        big_chunks(n).map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ))
}

async fn origin(st: Arc<OriginState>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match path.as_str() {
        // Echo: body back, request facts in headers.
        "/echo" => {
            let mut b = Response::builder()
                .header("x-echo-method", req.method().as_str())
                .header("x-echo-uri", req.uri().to_string());
            for name in [
                "host",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-multi",
                "authorization",
            ] {
                let values: Vec<_> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                b = b.header(format!("x-echo-{name}"), values.join("|"));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            b.body(full(body)).unwrap()
        }
        "/status" => {
            let code: u16 = query.parse().unwrap();
            let mut b = Response::builder().status(code);
            if code == 302 {
                b = b.header(header::LOCATION, "/elsewhere");
            }
            b.body(empty()).unwrap()
        }
        "/cookies" => Response::builder()
            .header(header::SET_COOKIE, "a=1; Path=/")
            .header(header::SET_COOKIE, "b=2; HttpOnly")
            .header(header::SET_COOKIE, "c=3")
            // A tenant tossing a cookie at every tunnel, and one for its own host only.
            .header(header::SET_COOKIE, "toss=1; Domain=.localhost; Path=/")
            .header(header::SET_COOKIE, "own=1; Domain=hdr.localhost")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .body(empty())
            .unwrap(),
        "/gzip" => Response::builder()
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(full(gzip_bytes()))
            .unwrap(),
        "/slow" => {
            let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            st.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(500)).await;
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
            resp(200, "slow")
        }
        // Answers only once `n` requests are waiting here at the same time (or fails after 30 s):
        // proof that the tunnel carries them concurrently, independent of machine speed.
        "/barrier" => {
            let n: usize = query.parse().unwrap();
            let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            st.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if now >= n {
                st.barrier.notify_waiters();
            }
            let waited = tokio::time::timeout(Duration::from_secs(30), async {
                while st.max_in_flight.load(Ordering::SeqCst) < n {
                    let notified = st.barrier.notified();
                    if st.max_in_flight.load(Ordering::SeqCst) >= n {
                        break;
                    }
                    notified.await;
                }
            })
            .await;
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
            match waited {
                Ok(()) => resp(200, "together"),
                Err(_) => resp(500, "barrier timed out"),
            }
        }
        "/hang" => {
            st.reached.notify_one();
            st.gate.notified().await;
            resp(200, "released")
        }
        // First chunk now, the rest only when the test opens the gate.
        "/gate" => {
            let st2 = st.clone();
            let stream = futures_util::stream::unfold(0, move |i| {
                let st = st2.clone();
                async move {
                    match i {
                        0 => Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first\n"))),
                            1,
                        )),
                        1 => {
                            st.gate.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"rest\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/sse" => {
            let st2 = st.clone();
            let stream = futures_util::stream::unfold(0, move |i| {
                let st = st2.clone();
                async move {
                    if i == 3 {
                        return None;
                    }
                    if i > 0 {
                        st.gate.notified().await;
                    }
                    let ev = format!("id: {i}\ndata: event {i}\n\n");
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(ev))), i + 1))
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/bytes" => {
            let n: u64 = query.parse().unwrap();
            Response::builder()
                .header(header::CONTENT_LENGTH, n)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(pattern_body(n))
                .unwrap()
        }
        // Hashes the upload as it streams; signals on the first chunk.
        "/upload" => {
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut n = 0u64;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    if first && !data.is_empty() {
                        st.reached.notify_one();
                        first = false;
                    }
                    n += data.len() as u64;
                    hasher.update(&data);
                }
            }
            resp(200, format!("{n} {:x}", hasher.finalize()))
        }
        "/ws" => {
            let key = req
                .headers()
                .get(header::SEC_WEBSOCKET_KEY)
                .unwrap()
                .clone();
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(64 << 20))
                    .max_frame_size(Some(64 << 20));
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(cfg),
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header(
                    header::SEC_WEBSOCKET_ACCEPT,
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .body(empty())
                .unwrap()
        }
        _ => resp(404, "origin: no such path"),
    }
}

/// A gzip member holding "hello gzip\n" (mtime 0).
pub fn gzip_bytes() -> Vec<u8> {
    vec![
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xff, 0xcb, 0x48, 0xcd, 0xc9, 0xc9,
        0x57, 0x48, 0xaf, 0xca, 0x2c, 0xe0, 0x02, 0x00, 0x39, 0x7c, 0x63, 0x56, 0x0b, 0x00, 0x00,
        0x00,
    ]
}

/// A TCP relay on 127.0.0.1 that can be frozen: while paused it neither forwards nor closes,
/// like a network that silently stopped delivering.
pub struct Relay {
    pub addr: SocketAddr,
    paused: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = tokio::sync::watch::channel(false);
        let paused = Arc::new(tx);
        let p = paused.clone();
        tokio::spawn(async move {
            loop {
                let (inbound, _) = listener.accept().await.unwrap();
                let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, p.subscribe()));
                tokio::spawn(pump(ro, wi, p.subscribe()));
            }
        });
        Relay { addr, paused }
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *paused.borrow_and_update() {
            // Hold everything, and the sockets open, until the test ends.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A TLS connector trusting exactly the certificates in `roots_pem`, offering `alpn`.
pub fn tls_connector(roots_pem: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// GET `path` over HTTPS/1.1 at `addr` with SNI and Host `host`; the status and body.
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    roots_pem: &str,
    path: &str,
) -> std::io::Result<(u16, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name =
        rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let tls = tls_connector(roots_pem, b"http/1.1")
        .connect(name, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, host)
        .body(empty())
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, body))
}

impl Relay {
    /// Lets new connections through again. Connections that saw data while paused stay frozen,
    /// so a peer must reconnect: the network came back, its old sessions did not.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

/// The real `ggrok-server` binary on an ephemeral port, so its memory can be measured apart
/// from the test process (which runs client, origin and visitors). Killed on drop.
pub struct ServerBinary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ServerBinary {
    pub fn spawn() -> ServerBinary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ggrok-server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--domain",
                "localhost",
                "--db",
                ":memory:",
            ])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start ggrok-server");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(rest) = line.split("addr=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerBinary { child, addr }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its peak resident set size so far, in kB.
    pub fn peak_rss_kb(&self) -> u64 {
        proc_status_kb(&self.child.id().to_string(), "VmHWM")
    }
}

impl Drop for ServerBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field (`VmRSS`, `VmHWM`...) of `/proc/PID/status`; `pid` may be `"self"`.
pub fn proc_status_kb(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// A request as [`Recorder`] received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request-target as the origin parsed it, byte for byte.
    pub uri: String,
    pub headers: http::HeaderMap,
    /// The whole body, or `None` when it ended in an error (cut off).
    pub body: Option<Bytes>,
}

/// An origin that records every request it receives (once its body ended) and answers
/// `200 seen N`: for tests that must know exactly which requests reached the origin.
pub struct Recorder {
    pub addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    /// Fires after each recorded request.
    pub recorded: Arc<Notify>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::new(Notify::new());
        let (log, note) = (seen.clone(), recorded.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (log, note) = (log.clone(), note.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (log, note) = (log.clone(), note.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.ok().map(|b| b.to_bytes());
                            let n = {
                                let mut log = log.lock().unwrap();
                                log.push(Seen {
                                    method: parts.method.to_string(),
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                });
                                log.len()
                            };
                            note.notify_waiters();
                            Ok::<_, Infallible>(resp(200, format!("seen {n}")))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            seen,
            recorded,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Paths of every request received so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.uri).collect()
    }

    /// Waits until `n` requests were recorded.
    pub async fn wait_for(&self, n: usize) -> Vec<Seen> {
        loop {
            let note = self.recorded.notified();
            tokio::pin!(note);
            note.as_mut().enable();
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            note.await;
        }
    }
}

/// A response read off a [`Raw`] connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A visitor speaking HTTP/1.1 by hand over TCP, for requests a real client would refuse to
/// send. Reads give up (panic) after 30 s: a guard against hanging, never a wait for readiness.
pub struct Raw {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

const RAW_GUARD: Duration = Duration::from_secs(30);

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`; false if the server already closed.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Reads more; false at end of stream (or reset).
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(RAW_GUARD, self.stream.read(&mut chunk))
            .await
            .expect("the server neither answered nor closed the connection");
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, or `None` if the connection closed first.
    pub async fn response(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "truncated response: {:?}", self.text());
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let mut r = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "truncated body");
            }
            r.body = self.buf.drain(..len).collect();
        } else if r
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "truncated chunk");
                };
                let size = std::str::from_utf8(&self.buf[..line_end]).unwrap();
                let size =
                    usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "truncated chunk");
                }
                r.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if !(r.status == 204 || r.status == 304 || (100..200).contains(&r.status)) {
            // Delimited by the end of the connection.
            while self.fill().await {}
            r.body = std::mem::take(&mut self.buf);
        }
        Some(r)
    }

    /// Reads until the server closes; returns the bytes that came meanwhile.
    pub async fn closed(&mut self) -> Vec<u8> {
        while self.fill().await {}
        std::mem::take(&mut self.buf)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
