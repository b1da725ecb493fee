//! Fault soak for `bench/soak.sh`: thousands of requests through the real `ggrok-server` and
//! `ggrok` binaries while both are SIGKILLed and restarted, then a check that every answer was
//! either right or a clean failure and that the processes went back to their idle footprint.
//!
//! ```text
//! soak            # env: SOAK_REQUESTS=10000 SOAK_CONCURRENCY=32 SOAK_CLIENT_KILLS=10
//!                 #      SOAK_SERVER_KILLS=3 SOAK_TIMEOUT=30 SOAK_WARMUP=1000
//!                 #      SOAK_SEED=<random> SOAK_BIN=<dir>
//!                 #      SOAK_LOGS=<dir, default a temp dir kept only on failure>
//! ```
//!
//! Topology, all on 127.0.0.1: this process runs the origin and the visitors; `ggrok-server`
//! (from `SOAK_BIN`, default the target dir this example was built into) listens on a port probed
//! free at start and kept across its restarts; `ggrok http` forwards `soak.localhost:PORT` to the
//! origin with a fixed `--client-id`, so a restarted client gets its held name back.
//!
//! Requests (drawn up front from `SOAK_SEED`, so a run can be repeated):
//! - kind: 30 % plain download (Content-Length), 30 % chunked download, 25 % upload (origin
//!   answers length and SHA-256), 15 % WebSocket echo (messages of 1 B–256 KiB);
//! - size: 5 % 0 B, 45 % 1 B–16 KiB, 30 % 16–256 KiB, 15 % 256 KiB–2 MiB, 5 % 2–8 MiB (uniform
//!   within a band; mean ≈ 470 KiB, so 10,000 requests move ≈ 4.6 GiB);
//! - bodies are a keyed pseudo-random stream, so downloads and echoes are checked byte by byte.
//!
//! A worker that gets anything but `ok` waits before its next request, 25 ms doubling to 1 s,
//! as a retrying visitor would; otherwise an outage would swallow a large part of the run.
//!
//! Faults: the kills happen when the count of finished requests passes thresholds drawn
//! uniformly from 5–80 % of the run (so every final instance serves at least a fifth of the run
//! before the leak check), each followed by 0–1 s of downtime before the restart.
//!
//! Outcomes, per request:
//! - `ok`: the status and the whole body (or every echo) verified;
//! - `clean`: 502/503/504 with a `ggrok-error` header (tunnel lost / not answering);
//! - `offline`: 404 `tunnel_not_found`, the server's answer while no session holds the name
//!   (client being restarted, or reconnecting after a server restart);
//! - `refused`: TCP connect refused: the server process was down;
//! - `reset`: the connection failed before a response head: the server was killed with the
//!   request in flight, or answered an upload early and closed while the body was still
//!   being sent. A visitor cannot mistake it for an answer, so it counts as clean;
//! - `cut`: the head arrived but the body (or the WebSocket) then failed with an error: the
//!   visitor can tell the response is incomplete (a proxy cannot do better once it has started a
//!   response), so it counts as clean;
//! - `WRONG`: a body that differs, a body shorter than announced or than requested but ended
//!   as if complete, or any other status;
//! - `HUNG`: no outcome within `SOAK_TIMEOUT` seconds (the whole request, body included).
//!
//! Before the faults, a warm-up of `SOAK_WARMUP` (1,000) requests without faults must all be
//! `ok`; then, idle, each process's fds and RSS are its baseline. Warm, so that the allocator
//! has already grown to the workload's peak (glibc and mimalloc both keep much of it: 35–150
//! MiB after 32 concurrent 8 MiB transfers, whatever the request count) and growth over the
//! baseline means a leak, not the allocator's plateau. Restarted instances are compared with
//! that baseline too (same binary, same flags; their own first numbers are taken under load).
//! The processes run with `MIMALLOC_PURGE_DELAY=0`, so that RSS follows live memory rather
//! than what each thread's heap happens to keep: with the server's shards that varied by up to
//! 45 MiB from one instance to the next (2,000-request runs: the last server instance ended
//! 27 MiB below to 45 MiB above the first one's baseline without it, 12 below to 34 above with
//! it).
//!
//! The exit status is non-zero when WRONG or HUNG is non-zero or, after the run and once the
//! client is back online, a process exceeds its baseline by more than the tolerance: fds +4, not
//! counting the client's idle keep-alive connections to the origin (it pools up to 64 by
//! design); RSS +48 MiB, which 10,000 requests leaking 5 KiB each would exceed. Every leaked
//! connection shows in the fds.
//!
//! A HUNG request leaves `hung-N.txt` in the logs: `ss -tanpi` for the server's port at the
//! moment it timed out, to see which hop holds it.

#[path = "support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::Write as _,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use support::{env_or, query, Body};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use rand::{rngs::StdRng, Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
    sync::{watch, Notify},
};
use tokio_tungstenite::tungstenite::{
    self, client::IntoClientRequest, protocol::WebSocketConfig, Message,
};

const NAME: &str = "soak";
const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
/// Chunk size of generated bodies and upload streams.
const CHUNK: usize = 64 * 1024;
const FD_TOLERANCE: i64 = 4;
/// Growth over the warm baseline allowed to the allocator's noise and to a restarted instance
/// reaching its own plateau: 10,000 requests leaking 5 KiB each would exceed it.
const RSS_TOLERANCE_KB: i64 = 48 * 1024;

// ---------------------------------------------------------------------------------------------
// Deterministic bodies

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Bytes `pos..pos + buf.len()` of the body keyed by `seed`.
fn fill(seed: u64, mut pos: u64, buf: &mut [u8]) {
    let key = splitmix(seed);
    let mut i = 0;
    while i < buf.len() {
        let word = splitmix(key ^ (pos / 8)).to_le_bytes();
        let off = (pos % 8) as usize;
        let n = (8 - off).min(buf.len() - i);
        buf[i..i + n].copy_from_slice(&word[off..off + n]);
        i += n;
        pos += n as u64;
    }
}

fn chunk_at(seed: u64, pos: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    fill(seed, pos, &mut v);
    Bytes::from(v)
}

/// The body as chunks; `varied` cuts it at seed-dependent sizes so chunk boundaries differ.
fn chunks(seed: u64, size: u64, varied: bool) -> impl futures_util::Stream<Item = Bytes> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    futures_util::stream::unfold(0u64, move |pos| {
        let len = if varied {
            rng.random_range(1..=CHUNK)
        } else {
            CHUNK
        };
        let len = (size - pos).min(len as u64) as usize;
        let out = (pos < size).then(|| (chunk_at(seed, pos, len), pos + len as u64));
        std::future::ready(out)
    })
}

/// Checks received bytes against the body as they arrive.
struct Checker {
    seed: u64,
    pos: u64,
    scratch: Vec<u8>,
}

impl Checker {
    fn new(seed: u64) -> Self {
        Self {
            seed,
            pos: 0,
            scratch: Vec::new(),
        }
    }

    fn check(&mut self, data: &[u8]) -> Result<(), String> {
        self.scratch.resize(data.len(), 0);
        fill(self.seed, self.pos, &mut self.scratch);
        if self.scratch != data {
            let at = self.scratch.iter().zip(data).position(|(a, b)| a != b);
            return Err(format!(
                "bytes differ at offset {}",
                self.pos + at.unwrap_or(0) as u64
            ));
        }
        self.pos += data.len() as u64;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The origin

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

async fn origin(mut req: Request<Incoming>) -> Response<Body> {
    let (size, seed) = (query(&req, "n"), query(&req, "s"));
    match req.uri().path() {
        "/plain" | "/chunked" => {
            let plain = req.uri().path() == "/plain";
            let body = StreamBody::new(chunks(seed, size, !plain).map(|b| Ok(Frame::data(b))));
            let mut resp = Response::builder();
            if plain {
                resp = resp.header(header::CONTENT_LENGTH, size);
            }
            resp.body(BodyExt::boxed(body)).unwrap()
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut hash = Sha256::new();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => {
                        if let Ok(data) = f.into_data() {
                            n += data.len() as u64;
                            hash.update(&data);
                        }
                    }
                    // The tunnel went away mid-upload; nobody is left to answer.
                    Err(_) => return full(StatusCode::BAD_REQUEST, "upload broken"),
                }
            }
            full(StatusCode::OK, format!("{n} {:x}", hash.finalize()))
        }
        "/ws" => {
            let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
                return full(StatusCode::BAD_REQUEST, "not a websocket");
            };
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    tungstenite::protocol::Role::Server,
                    None,
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
                    tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .body(Full::new(Bytes::new()).boxed())
                .unwrap()
        }
        _ => full(StatusCode::NOT_FOUND, "origin: no such path"),
    }
}

async fn start_origin() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req| async move {
                    Ok::<_, Infallible>(origin(req).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    Ok(addr)
}

// ---------------------------------------------------------------------------------------------
// Requests and outcomes

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Plain,
    Chunked,
    Upload,
    Ws,
}

const KINDS: [Kind; 4] = [Kind::Plain, Kind::Chunked, Kind::Upload, Kind::Ws];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    Clean,
    Offline,
    Refused,
    Reset,
    Cut,
    Wrong,
    Hung,
}

const OUTCOMES: [Outcome; 8] = [
    Outcome::Ok,
    Outcome::Clean,
    Outcome::Offline,
    Outcome::Refused,
    Outcome::Reset,
    Outcome::Cut,
    Outcome::Wrong,
    Outcome::Hung,
];

#[derive(Clone, Copy, Debug)]
struct Job {
    kind: Kind,
    size: u64,
    seed: u64,
}

fn draw_job(rng: &mut StdRng) -> Job {
    let kind = match rng.random_range(0..100) {
        0..30 => Kind::Plain,
        30..60 => Kind::Chunked,
        60..85 => Kind::Upload,
        _ => Kind::Ws,
    };
    let size = match rng.random_range(0..100) {
        0..5 => 0,
        5..50 => rng.random_range(1..=16 * KIB),
        50..80 => rng.random_range(16 * KIB..=256 * KIB),
        80..95 => rng.random_range(256 * KIB..=2 * MIB),
        _ => rng.random_range(2 * MIB..=8 * MIB),
    };
    Job {
        kind,
        size,
        seed: rng.random(),
    }
}

type Verdict = (Outcome, Option<String>);

fn wrong(why: String) -> Verdict {
    (Outcome::Wrong, Some(why))
}

/// An answer that is not the origin's: a clean ggrok error, or wrong.
fn non_origin(status: StatusCode, ggrok_error: Option<&str>) -> Verdict {
    match (status.as_u16(), ggrok_error) {
        (502..=504, Some(_)) => (Outcome::Clean, None),
        (404, Some("tunnel_not_found")) => (Outcome::Offline, None),
        (s, e) => wrong(format!("status {s} (ggrok-error {e:?})")),
    }
}

fn send_error(e: &reqwest::Error) -> Outcome {
    if e.is_connect() {
        Outcome::Refused
    } else {
        Outcome::Reset
    }
}

struct Visitor {
    http: reqwest::Client,
    base: String,
    host: String,
}

impl Visitor {
    /// Runs `job`; `seen` tracks how far it got (0: no response head yet, 1: head, 2 + n:
    /// n bytes of body or echo), to say where a hung request stopped.
    async fn run(&self, job: Job, seen: &AtomicU64) -> Verdict {
        match job.kind {
            Kind::Plain | Kind::Chunked => self.download(job, seen).await,
            Kind::Upload => self.upload(job, seen).await,
            Kind::Ws => self.websocket(job, seen).await,
        }
    }

    /// Sends `req` to the tunnel; the response if the origin answered it `200`, else the
    /// verdict (refused, reset, or ggrok's own error page).
    async fn send(
        &self,
        req: reqwest::RequestBuilder,
        seen: &AtomicU64,
    ) -> Result<reqwest::Response, Verdict> {
        let resp = req
            .header(header::HOST, &self.host)
            .send()
            .await
            .map_err(|e| (send_error(&e), None))?;
        seen.store(1, Ordering::SeqCst);
        if resp.status() != StatusCode::OK {
            return Err(non_origin(
                resp.status(),
                ggrok_error(resp.headers()).as_deref(),
            ));
        }
        Ok(resp)
    }

    async fn download(&self, job: Job, seen: &AtomicU64) -> Verdict {
        let path = if job.kind == Kind::Plain {
            "plain"
        } else {
            "chunked"
        };
        let url = format!("{}/{path}?n={}&s={}", self.base, job.size, job.seed);
        let resp = match self.send(self.http.get(url), seen).await {
            Ok(r) => r,
            Err(verdict) => return verdict,
        };
        let announced = resp
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if job.kind == Kind::Plain && announced != Some(job.size) {
            return wrong(format!("content-length {announced:?}, want {}", job.size));
        }
        let mut check = Checker::new(job.seed);
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                return (Outcome::Cut, None);
            };
            if check.pos + chunk.len() as u64 > job.size {
                return wrong(format!("body longer than {}", job.size));
            }
            if let Err(e) = check.check(&chunk) {
                return wrong(e);
            }
            seen.store(2 + check.pos, Ordering::SeqCst);
        }
        if check.pos != job.size {
            return wrong(format!(
                "body ended cleanly after {} of {} bytes",
                check.pos, job.size
            ));
        }
        (Outcome::Ok, None)
    }

    async fn upload(&self, job: Job, seen: &AtomicU64) -> Verdict {
        let mut hash = Sha256::new();
        let all = chunks(job.seed, job.size, false);
        futures_util::pin_mut!(all);
        while let Some(c) = all.next().await {
            hash.update(&c);
        }
        let want = format!("{} {:x}", job.size, hash.finalize());
        let body =
            reqwest::Body::wrap_stream(chunks(job.seed, job.size, true).map(Ok::<_, Infallible>));
        let req = self
            .http
            .post(format!("{}/upload", self.base))
            .header(header::CONTENT_LENGTH, job.size)
            .body(body);
        let resp = match self.send(req, seen).await {
            Ok(r) => r,
            Err(verdict) => return verdict,
        };
        match resp.text().await {
            Ok(got) if got == want => (Outcome::Ok, None),
            Ok(got) => wrong(format!("upload echo {got:?}, want {want:?}")),
            Err(_) => (Outcome::Cut, None),
        }
    }

    async fn websocket(&self, job: Job, seen: &AtomicU64) -> Verdict {
        let url = format!("{}/ws", self.base.replacen("http", "ws", 1));
        let mut req = url.into_client_request().expect("ws url");
        req.headers_mut()
            .insert(header::HOST, self.host.parse().expect("host"));
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let ws = match tokio_tungstenite::connect_async_with_config(req, Some(cfg), true).await {
            Ok((ws, _)) => {
                seen.store(1, Ordering::SeqCst);
                ws
            }
            Err(tungstenite::Error::Http(resp)) => {
                return non_origin(resp.status(), ggrok_error(resp.headers()).as_deref())
            }
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return (Outcome::Refused, None)
            }
            Err(_) => return (Outcome::Reset, None),
        };
        // Message sizes from the seed; an empty echo is a message too.
        let mut sizes = Vec::new();
        let mut rng = StdRng::seed_from_u64(job.seed ^ 0x3e55);
        let mut left = job.size;
        while left > 0 {
            let n = rng.random_range(1..=256 * KIB).min(left);
            sizes.push(n);
            left -= n;
        }
        if sizes.is_empty() {
            sizes.push(0);
        }
        let (mut tx, mut rx) = ws.split();
        let send = async {
            let mut pos = 0;
            for &n in &sizes {
                let msg = Message::binary(chunk_at(job.seed, pos, n as usize));
                tx.send(msg).await.map_err(|_| ())?;
                pos += n;
            }
            Ok::<_, ()>(())
        };
        let receive = async {
            let mut check = Checker::new(job.seed);
            let mut got = 0;
            while got < sizes.len() {
                match rx.next().await {
                    Some(Ok(Message::Binary(data))) => {
                        if data.len() as u64 != sizes[got] {
                            return wrong(format!(
                                "echo {got} has {} bytes, sent {}",
                                data.len(),
                                sizes[got]
                            ));
                        }
                        if let Err(e) = check.check(&data) {
                            return wrong(e);
                        }
                        got += 1;
                        seen.store(2 + check.pos, Ordering::SeqCst);
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(other)) if !other.is_close() => {
                        return wrong(format!("unexpected message {other:?}"))
                    }
                    // A close or an abrupt end before every echo: the visitor sees it end early.
                    _ => return (Outcome::Cut, None),
                }
            }
            (Outcome::Ok, None)
        };
        // The receiving side decides: once it has every echo, or the connection ended, a send
        // still waiting (on a peer that stopped reading) does not matter.
        tokio::pin!(send, receive);
        let mut sent = None;
        let verdict = loop {
            tokio::select! {
                r = &mut send, if sent.is_none() => sent = Some(r),
                v = &mut receive => break v,
            }
        };
        if verdict.0 == Outcome::Ok && sent == Some(Err(())) {
            return wrong("every echo arrived but sending failed".into());
        }
        verdict
    }
}

fn ggrok_error(h: &http::HeaderMap) -> Option<String> {
    h.get("ggrok-error")?.to_str().ok().map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// The processes

#[derive(Clone, Copy, Debug, Default)]
struct Snapshot {
    /// Open fds, without `pooled`.
    fds: i64,
    /// Idle keep-alive connections to the origin: the client pools up to 64 by design.
    pooled: i64,
    rss_kb: i64,
    peak_kb: i64,
}

/// Socket inodes of TCP connections whose remote port is `port`.
fn connections_to(port: u16) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(p), Some(inode)) = (remote_port, f.get(9)) {
                if p == port {
                    out.insert(inode.to_string());
                }
            }
        }
    }
    out
}

fn snapshot(pid: u32, origin_port: u16) -> anyhow::Result<Snapshot> {
    let to_origin = connections_to(origin_port);
    let (mut fds, mut pooled) = (0, 0);
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let target = std::fs::read_link(fd?.path()).unwrap_or_default();
        let target = target.to_string_lossy();
        match target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
        {
            Some(inode) if to_origin.contains(inode) => pooled += 1,
            _ => fds += 1,
        }
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| -> i64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(-1)
    };
    Ok(Snapshot {
        fds,
        pooled,
        rss_kb: kb("VmRSS:"),
        peak_kb: kb("VmHWM:"),
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Server,
    Client,
}

/// One running instance of a binary, its log copied to a file.
struct Proc {
    role: Role,
    instance: usize,
    child: Child,
    pid: u32,
    /// Server: listening. Client: online.
    ready: watch::Receiver<bool>,
    baseline: Snapshot,
}

struct Env {
    bin: PathBuf,
    logs: PathBuf,
    port: u16,
    origin_port: u16,
    client_id: String,
}

/// Copies a child's output lines to its log, flagging readiness from them.
fn watch_lines(
    reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    log: Arc<Mutex<std::fs::File>>,
    ready: Arc<watch::Sender<bool>>,
    role: Role,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(log.lock().unwrap(), "{line}");
            match role {
                Role::Server if line.contains("listening") => {
                    ready.send_replace(true);
                }
                Role::Client if line.starts_with("http://") || line.contains("back online") => {
                    ready.send_replace(true);
                }
                Role::Client if line.contains("reconnecting") => {
                    ready.send_replace(false);
                }
                _ => {}
            }
        }
    });
}

impl Env {
    fn command(&self, role: Role) -> Command {
        let mut cmd = match role {
            Role::Server => {
                let mut c = Command::new(self.bin.join("ggrok-server"));
                c.args(["--domain", "localhost", "--db", ":memory:", "--listen"])
                    .arg(format!("127.0.0.1:{}", self.port))
                    .env("RUST_LOG", "info,ggrok_server=debug");
                c
            }
            Role::Client => {
                let mut c = Command::new(self.bin.join("ggrok"));
                c.arg("http")
                    .arg(self.origin_port.to_string())
                    .args(["--local-host", "127.0.0.1", "--subdomain", NAME])
                    .arg("--server")
                    .arg(format!("http://127.0.0.1:{}", self.port))
                    .arg("--client-id")
                    .arg(&self.client_id)
                    .env("RUST_LOG", "warn");
                c
            }
        };
        // mimalloc returns freed pages to the system at once instead of after its delay, so
        // RSS follows live memory: a restarted instance is compared with another instance's
        // baseline, and how much each thread's heap keeps varies from instance to instance.
        cmd.env("MIMALLOC_PURGE_DELAY", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Starts an instance and waits until it is ready; a server whose port is still taken (by
    /// its killed predecessor's sockets) is started again, for up to 20 s.
    async fn start(&self, role: Role, instance: usize) -> anyhow::Result<Proc> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let name = match role {
                Role::Server => "server",
                Role::Client => "client",
            };
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.logs.join(format!("{name}-{instance}.log")))?;
            let log = Arc::new(Mutex::new(log));
            let mut child = self
                .command(role)
                .spawn()
                .with_context(|| format!("cannot start {name} from {}", self.bin.display()))?;
            let pid = child.id().context("no pid")?;
            let (tx, mut ready) = watch::channel(false);
            let tx = Arc::new(tx);
            watch_lines(child.stdout.take().unwrap(), log.clone(), tx.clone(), role);
            watch_lines(child.stderr.take().unwrap(), log, tx, role);
            let up = tokio::select! {
                r = ready.wait_for(|r| *r) => r.is_ok(),
                _ = child.wait() => false,
                _ = tokio::time::sleep_until(deadline.into()) => false,
            };
            if up {
                let baseline = snapshot(pid, self.origin_port)?;
                return Ok(Proc {
                    role,
                    instance,
                    child,
                    pid,
                    ready,
                    baseline,
                });
            }
            let _ = child.kill().await;
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not become ready in 20 s; see {}",
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A free port now; the server keeps it across restarts.
fn probe_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

// ---------------------------------------------------------------------------------------------
// The run

#[derive(Default)]
struct Tally {
    counts: BTreeMap<(Kind, Outcome), usize>,
    wrong: Vec<String>,
}

/// Requests in flight and their tally.
struct Drive {
    done: AtomicUsize,
    progress: Notify,
    tally: Mutex<Tally>,
    started: Instant,
}

/// Runs `jobs` on `concurrency` workers, each with its own visitor connections.
fn drive(
    jobs: Arc<Vec<Job>>,
    concurrency: usize,
    visitor: Arc<Visitor>,
    timeout: Duration,
    logs: PathBuf,
    port: u16,
) -> (Arc<Drive>, Vec<tokio::task::JoinHandle<()>>) {
    let state = Arc::new(Drive {
        done: AtomicUsize::new(0),
        progress: Notify::new(),
        tally: Mutex::new(Tally::default()),
        started: Instant::now(),
    });
    let next = Arc::new(AtomicUsize::new(0));
    let workers = (0..concurrency)
        .map(|_| {
            let (jobs, next, st, visitor, logs) = (
                jobs.clone(),
                next.clone(),
                state.clone(),
                visitor.clone(),
                logs.clone(),
            );
            tokio::spawn(async move {
                let (done, progress, tally, started) =
                    (&st.done, &st.progress, &st.tally, st.started);
                let mut backoff = Duration::ZERO;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&job) = jobs.get(i) else { break };
                    let seen = AtomicU64::new(0);
                    let (outcome, why) =
                        match tokio::time::timeout(timeout, visitor.run(job, &seen)).await {
                            Ok(v) => v,
                            Err(_) => {
                                let at = match seen.load(Ordering::SeqCst) {
                                    0 => "before the response head".to_owned(),
                                    1 => "after the head, before any body".to_owned(),
                                    n => format!("after {} bytes of body", n - 2),
                                };
                                let since = started.elapsed().as_secs_f64() - timeout.as_secs_f64();
                                let filter = format!("( sport = :{port} or dport = :{port} )");
                                if let Ok(out) = std::process::Command::new("ss")
                                    .args(["-tanpi", &filter])
                                    .output()
                                {
                                    let _ = std::fs::write(
                                        logs.join(format!("hung-{i}.txt")),
                                        out.stdout,
                                    );
                                }
                                (
                                    Outcome::Hung,
                                    Some(format!(
                                    "no outcome in {timeout:?}, stuck {at}; began at {since:.1} s"
                                )),
                                )
                            }
                        };
                    {
                        let mut t = tally.lock().unwrap();
                        *t.counts.entry((job.kind, outcome)).or_default() += 1;
                        if let Some(why) = why {
                            if t.wrong.len() < 20 {
                                t.wrong.push(format!("#{i} {job:?}: {why}"));
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                    progress.notify_waiters();
                    // While a process is down failures come back at once; backing off like a
                    // retrying visitor keeps most of the run's requests out of the outages.
                    if outcome == Outcome::Ok {
                        backoff = Duration::ZERO;
                    } else {
                        backoff =
                            (backoff * 2).clamp(Duration::from_millis(25), Duration::from_secs(1));
                        tokio::time::sleep(backoff).await;
                    }
                }
            })
        })
        .collect();
    (state, workers)
}

/// Waits (up to 30 s) until each process's fd count is at most `limit(i)` and steady.
async fn settle(
    procs: &[Proc],
    origin_port: u16,
    limit: impl Fn(usize) -> i64,
) -> anyhow::Result<[Snapshot; 2]> {
    let since = Instant::now();
    let mut last = [Snapshot::default(); 2];
    loop {
        let mut now = [Snapshot::default(); 2];
        for (i, p) in procs.iter().enumerate() {
            now[i] = snapshot(p.pid, origin_port)?;
        }
        let steady = (0..2).all(|i| now[i].fds == last[i].fds && now[i].fds <= limit(i));
        if steady || since.elapsed() > Duration::from_secs(30) {
            return Ok(now);
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn visitor(port: u16) -> anyhow::Result<Arc<Visitor>> {
    Ok(Arc::new(Visitor {
        http: reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        base: format!("http://127.0.0.1:{port}"),
        host: format!("{NAME}.localhost:{port}"),
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let requests: usize = env_or("SOAK_REQUESTS", 10_000);
    let concurrency: usize = env_or("SOAK_CONCURRENCY", 32);
    let client_kills: usize = env_or("SOAK_CLIENT_KILLS", 10);
    let server_kills: usize = env_or("SOAK_SERVER_KILLS", 3);
    let timeout = Duration::from_secs(env_or("SOAK_TIMEOUT", 30));
    let warmup: usize = env_or("SOAK_WARMUP", 1_000);
    let seed: u64 = env_or("SOAK_SEED", rand::random());
    let bin = match std::env::var_os("SOAK_BIN") {
        Some(dir) => PathBuf::from(dir),
        // target/PROFILE/examples/soak -> target/PROFILE
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("cannot find the target dir")?
            .to_owned(),
    };
    let (logs, temp_logs) = match std::env::var_os("SOAK_LOGS") {
        Some(dir) => (PathBuf::from(dir), false),
        None => (
            std::env::temp_dir().join(format!("ggrok-soak.{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&logs)?;
    eprintln!(
        "soak: {requests} requests, concurrency {concurrency}, {client_kills} client and \
         {server_kills} server kills, timeout {timeout:?}, seed {seed}, logs in {}",
        logs.display()
    );

    let origin = start_origin().await?;
    let env = Env {
        bin,
        logs: logs.clone(),
        port: probe_port()?,
        origin_port: origin.port(),
        client_id: format!("soak-{seed:x}"),
    };
    let server = env.start(Role::Server, 0).await?;
    let client = env.start(Role::Client, 0).await?;
    let procs = Arc::new(tokio::sync::Mutex::new([server, client]));

    let mut rng = StdRng::seed_from_u64(seed);
    let jobs: Arc<Vec<Job>> = Arc::new((0..requests).map(|_| draw_job(&mut rng)).collect());
    let mut kills: Vec<(usize, Role, u64)> = std::iter::repeat_n(Role::Client, client_kills)
        .chain(std::iter::repeat_n(Role::Server, server_kills))
        .map(|role| {
            let at = rng.random_range(requests / 20..=requests * 4 / 5);
            (at, role, rng.random_range(0..=1000))
        })
        .collect();
    kills.sort_by_key(|k| k.0);
    let bytes: u64 = jobs.iter().map(|j| j.size).sum();
    eprintln!(
        "soak: {:.2} GiB of bodies; kills after {:?} finished requests",
        bytes as f64 / (1u64 << 30) as f64,
        kills.iter().map(|k| k.0).collect::<Vec<_>>()
    );

    // Warm-up without faults, so that the baselines are those of processes whose allocator
    // has seen the run's peaks: a leak then shows as growth over them, not as the allocator
    // keeping what it once needed.
    if warmup > 0 {
        let mut wrng = StdRng::seed_from_u64(seed ^ 0x3a3a);
        let warm: Arc<Vec<Job>> = Arc::new((0..warmup).map(|_| draw_job(&mut wrng)).collect());
        let (st, workers) = drive(
            warm,
            concurrency,
            visitor(env.port)?,
            timeout,
            logs.clone(),
            env.port,
        );
        for w in workers {
            w.await?;
        }
        let t = st.tally.lock().unwrap();
        let ok: usize = KINDS
            .iter()
            .map(|&k| t.counts.get(&(k, Outcome::Ok)).copied().unwrap_or(0))
            .sum();
        if ok != warmup {
            bail!(
                "warm-up: {ok} of {warmup} requests ok, without any fault: {:?}",
                t.wrong
            );
        }
    }
    {
        let mut procs = procs.lock().await;
        let base = settle(&procs[..], env.origin_port, |_| i64::MAX).await?;
        for (p, b) in procs.iter_mut().zip(base) {
            p.baseline = b;
        }
    }

    let visitor = visitor(env.port)?;
    let (state, workers) = drive(
        jobs.clone(),
        concurrency,
        visitor.clone(),
        timeout,
        logs.clone(),
        env.port,
    );
    let (done, progress, started) = (&state.done, &state.progress, state.started);

    // The fault schedule.
    let mut instances = [1usize, 1usize];
    for (at, role, downtime_ms) in kills {
        while done.load(Ordering::SeqCst) < at {
            let woken = progress.notified();
            if done.load(Ordering::SeqCst) >= at {
                break;
            }
            woken.await;
        }
        let slot = role as usize;
        let mut procs = procs.lock().await;
        let p = &mut procs[slot];
        p.child.start_kill()?;
        p.child.wait().await?;
        let t = started.elapsed();
        tokio::time::sleep(Duration::from_millis(downtime_ms)).await;
        let mut fresh = env.start(role, instances[slot]).await?;
        instances[slot] += 1;
        // Its own first numbers are taken under load; see the module docs.
        fresh.baseline = p.baseline;
        eprintln!(
            "soak: {:>7.1}s  killed {:?} #{} at {} done, down {downtime_ms} ms, restarted in {:.1}s",
            t.as_secs_f64(),
            role,
            p.instance,
            at,
            (started.elapsed() - t).as_secs_f64()
        );
        *p = fresh;
    }
    for w in workers {
        w.await?;
    }
    let wall = started.elapsed();
    drop(visitor);

    // Idle: the client back online, then the fds settle (visitor connections closing).
    let mut procs = procs.lock().await;
    let online = tokio::time::timeout(Duration::from_secs(60), async {
        procs[1].ready.wait_for(|r| *r).await.is_ok()
    })
    .await;
    if online != Ok(true) {
        bail!("the client did not come back online after the run");
    }
    let limits = [
        procs[0].baseline.fds + FD_TOLERANCE,
        procs[1].baseline.fds + FD_TOLERANCE,
    ];
    let after = settle(&procs[..], env.origin_port, |i| limits[i]).await?;

    // Report.
    let t = std::mem::take(&mut *state.tally.lock().unwrap());
    println!(
        "\nsoak: {requests} requests, {:.2} GiB of bodies, concurrency {concurrency}, seed {seed}, \
         wall {:.1} s\n",
        bytes as f64 / (1u64 << 30) as f64,
        wall.as_secs_f64()
    );
    print!("| kind    |  total |");
    for o in OUTCOMES {
        print!(" {:>7} |", format!("{o:?}").to_lowercase());
    }
    println!();
    println!("|---|--:|{}", "--:|".repeat(OUTCOMES.len()));
    let mut totals = [0usize; OUTCOMES.len()];
    for kind in KINDS {
        let row: Vec<usize> = OUTCOMES
            .iter()
            .map(|&o| t.counts.get(&(kind, o)).copied().unwrap_or(0))
            .collect();
        for (total, n) in totals.iter_mut().zip(&row) {
            *total += n;
        }
        print!(
            "| {:<7} | {:>6} |",
            format!("{kind:?}").to_lowercase(),
            row.iter().sum::<usize>()
        );
        for n in row {
            print!(" {n:>7} |");
        }
        println!();
    }
    print!("| all     | {:>6} |", totals.iter().sum::<usize>());
    for n in totals {
        print!(" {n:>7} |");
    }
    println!("\n");
    println!("| process | instance | fds baseline → idle after | pooled to origin | RSS baseline → idle after (MiB) | peak RSS (MiB) | verdict |");
    println!("|---|--:|--:|--:|--:|--:|---|");
    let mut leak = false;
    for (p, a) in procs.iter().zip(&after) {
        let ok = a.fds <= p.baseline.fds + FD_TOLERANCE
            && a.rss_kb <= p.baseline.rss_kb + RSS_TOLERANCE_KB;
        leak |= !ok;
        println!(
            "| {:?} | {} | {} → {} | {} | {:.1} → {:.1} | {:.1} | {} |",
            p.role,
            p.instance,
            p.baseline.fds,
            a.fds,
            a.pooled,
            p.baseline.rss_kb as f64 / 1024.0,
            a.rss_kb as f64 / 1024.0,
            a.peak_kb as f64 / 1024.0,
            if ok { "ok" } else { "ABOVE TOLERANCE" }
        );
    }
    println!(
        "\ntolerance over the warm idle baseline: fds +{FD_TOLERANCE} (pooled origin \
         connections not counted), RSS +{} MiB",
        RSS_TOLERANCE_KB / 1024
    );
    for w in &t.wrong {
        println!("  {w}");
    }
    let bad = totals[Outcome::Wrong as usize] + totals[Outcome::Hung as usize];
    for p in procs.iter_mut() {
        let _ = p.child.kill().await;
    }
    if bad > 0 || leak {
        bail!(
            "{bad} WRONG/HUNG outcomes{}; logs kept in {}",
            if leak {
                ", a process above its baseline"
            } else {
                ""
            },
            logs.display()
        );
    }
    if temp_logs && std::env::var_os("KEEP_LOGS").is_none() {
        let _ = std::fs::remove_dir_all(&logs);
    }
    Ok(())
}
