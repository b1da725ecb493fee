//! Slow transfers for `bench/slow.sh`: a download whose visitor reads at a fixed rate and an
//! upload whose local service reads at that rate, each next to a fast transfer on the same
//! tunnel, through the real `ggrok-server` and `ggrok` binaries, sampling both processes' RSS.
//!
//! ```text
//! slow    # env: SLOW_SIZE=1073741824 (bytes) SLOW_RATE=1000000 (bytes/s) FAST_SIZE=268435456
//!         #      SLOW_LIMIT_MB=64 SLOW_PHASES=down,up SLOW_BIN=<dir with the binaries>
//! ```
//!
//! Each phase uses two fresh pairs of processes. On the first, the fast transfer runs alone,
//! then next to a slow one that has been under way for a second (throughput). The second
//! carries only the whole slow transfer, so its peak RSS (sampled every 100 ms and the
//! kernel's VmHWM) is the slow transfer's own, not what the allocator kept from a fast one.
//! The slow end is where the back-pressure starts: for downloads the visitor, for uploads the
//! local service (a slow *sender* leaves nothing to pile up; a slow receiver is what tests the
//! bound). Everything is checked by SHA-256. Exits non-zero when a checksum is wrong or a
//! peak RSS reaches `SLOW_LIMIT_MB`.

#[path = "support/mod.rs"]
mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};
use support::{env_or, query, Body};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::{Child, Command},
};

const CHUNK: u64 = 64 * 1024;
const NAME: &str = "slow";

/// Chunk `k` of a test body: a fixed pseudo-random block stamped with `k`.
fn chunk(k: u64, len: usize) -> Bytes {
    static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        (0..CHUNK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    });
    let mut c = block[..len].to_vec();
    let stamp = k.to_be_bytes();
    let n = stamp.len().min(len);
    c[..n].copy_from_slice(&stamp[..n]);
    Bytes::from(c)
}

fn chunks(n: u64) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::iter(
        (0..n.div_ceil(CHUNK)).map(move |k| chunk(k, CHUNK.min(n - k * CHUNK) as usize)),
    )
}

fn sha(n: u64) -> String {
    let mut h = Sha256::new();
    for k in 0..n.div_ceil(CHUNK) {
        h.update(chunk(k, CHUNK.min(n - k * CHUNK) as usize));
    }
    format!("{:x}", h.finalize())
}

/// Sleeps as needed to keep `done` bytes since `start` at or under `rate` bytes/s.
async fn pace(start: Instant, done: u64, rate: u64) {
    let due = start + Duration::from_secs_f64(done as f64 / rate as f64);
    tokio::time::sleep_until(due.into()).await;
}

/// `/bytes?n=N`: N bytes. `/upload?rate=R`: hashes the body, reading at R bytes/s when given.
async fn origin(req: Request<Incoming>) -> Response<Body> {
    match req.uri().path() {
        "/bytes" => {
            let n = query(&req, "n");
            let body = StreamBody::new(chunks(n).map(|b| Ok(Frame::data(b))));
            Response::builder()
                .header(header::CONTENT_LENGTH, n)
                .body(BodyExt::boxed(body))
                .unwrap()
        }
        "/upload" => {
            let rate = query(&req, "rate");
            let mut body = req.into_body();
            let (mut h, mut n, start) = (Sha256::new(), 0u64, Instant::now());
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return Response::builder()
                        .status(StatusCode::BAD_REQUEST)
                        .body(Full::new(Bytes::from("broken")).boxed())
                        .unwrap();
                };
                if let Ok(data) = frame.into_data() {
                    n += data.len() as u64;
                    h.update(&data);
                    if rate > 0 {
                        pace(start, n, rate).await;
                    }
                }
            }
            Response::new(Full::new(Bytes::from(format!("{n} {:x}", h.finalize()))).boxed())
        }
        _ => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap(),
    }
}

async fn start_origin() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req| async move {
                    Ok::<_, Infallible>(origin(req).await)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

/// Starts `cmd` and returns it once a line of its output satisfies `ready` (with that line).
async fn start(
    mut cmd: Command,
    ready: impl Fn(&str) -> bool + Send + Sync + 'static,
) -> anyhow::Result<(Child, String)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a ggrok binary (set SLOW_BIN)")?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let tx = Arc::new(std::sync::Mutex::new(Some(tx)));
    let ready = Arc::new(ready);
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let (tx, ready) = (tx.clone(), ready.clone());
        // Keeps draining the output so the process never blocks on a full pipe.
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if ready(&line) {
                    if let Some(tx) = tx.lock().unwrap().take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
    }
    let line = tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .context("a ggrok binary did not become ready in 20 s")??;
    Ok((child, line))
}

fn rss_kb(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

struct Tunnel {
    server: Child,
    client: Child,
    base: String,
    host: String,
    http: reqwest::Client,
}

impl Tunnel {
    async fn start(bin: &std::path::Path, origin: SocketAddr) -> anyhow::Result<Tunnel> {
        let mut cmd = Command::new(bin.join("ggrok-server"));
        cmd.args(["--listen", "127.0.0.1:0", "--domain", "localhost"])
            .args(["--db", ":memory:"])
            .env("RUST_LOG", "info");
        let (server, line) = start(cmd, |l| l.contains("listening")).await?;
        let addr: SocketAddr = line
            .split("addr=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next()?.parse().ok())
            .context("no address in the server's log")?;
        let mut cmd = Command::new(bin.join("ggrok"));
        cmd.arg("http")
            .arg(origin.port().to_string())
            .args(["--local-host", "127.0.0.1", "--subdomain", NAME, "--server"])
            .arg(format!("http://{addr}"));
        let (client, _) = start(cmd, |l| l.starts_with("http://")).await?;
        Ok(Tunnel {
            server,
            client,
            base: format!("http://{addr}"),
            host: format!("{NAME}.localhost:{}", addr.port()),
            http: reqwest::Client::builder().no_proxy().build()?,
        })
    }

    fn pids(&self) -> (u32, u32) {
        (self.server.id().unwrap_or(0), self.client.id().unwrap_or(0))
    }

    /// Downloads `n` bytes, at `rate` bytes/s if non-zero; counts progress in `done`.
    async fn download(&self, n: u64, rate: u64, done: &AtomicU64) -> anyhow::Result<()> {
        let r = self
            .http
            .get(format!("{}/bytes?n={n}", self.base))
            .header(header::HOST, &self.host)
            .send()
            .await?
            .error_for_status()?;
        let (mut h, mut got, start) = (Sha256::new(), 0u64, Instant::now());
        let mut body = r.bytes_stream();
        while let Some(c) = body.next().await {
            let c = c?;
            got += c.len() as u64;
            done.store(got, Ordering::Relaxed);
            h.update(&c);
            if rate > 0 {
                pace(start, got, rate).await;
            }
        }
        if got != n || format!("{:x}", h.finalize()) != sha(n) {
            bail!("download of {n} bytes came back wrong ({got} bytes)");
        }
        Ok(())
    }

    /// Uploads `n` bytes to a service reading at `rate` bytes/s if non-zero.
    async fn upload(&self, n: u64, rate: u64, done: Arc<AtomicU64>) -> anyhow::Result<()> {
        let counted = chunks(n).map(move |c| {
            done.fetch_add(c.len() as u64, Ordering::Relaxed);
            Ok::<_, Infallible>(c)
        });
        let r = self
            .http
            .post(format!("{}/upload?rate={rate}", self.base))
            .header(header::HOST, &self.host)
            .body(reqwest::Body::wrap_stream(counted))
            .send()
            .await?
            .error_for_status()?;
        let got = r.text().await?;
        if got != format!("{n} {}", sha(n)) {
            bail!("upload of {n} bytes arrived wrong: {got}");
        }
        Ok(())
    }
}

fn mb_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let size: u64 = env_or("SLOW_SIZE", 1 << 30);
    let rate: u64 = env_or("SLOW_RATE", 1_000_000);
    let fast: u64 = env_or("FAST_SIZE", 256 << 20);
    let limit_kb: u64 = env_or::<u64>("SLOW_LIMIT_MB", 64) * 1000;
    let phases: String = env_or("SLOW_PHASES", "down,up".to_owned());
    let bin = match std::env::var_os("SLOW_BIN") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()?
            .parent()
            .and_then(|p| p.parent())
            .context("cannot find the target dir")?
            .to_owned(),
    };
    let origin = start_origin().await?;
    eprintln!(
        "slow: {size} bytes at {rate} B/s (~{:.0} s per phase), fast transfer {fast} bytes, \
         RSS limit {limit_kb} kB",
        size as f64 / rate as f64
    );
    println!("| phase | slow transfer | server peak RSS (MB) | client peak RSS (MB) | fast alone (MB/s) | fast next to slow (MB/s) | result |");
    println!("|---|--:|--:|--:|--:|--:|---|");
    let mut failed = false;
    for phase in phases.split(',').filter(|p| !p.is_empty()) {
        let up = match phase {
            "down" => false,
            "up" => true,
            other => bail!("unknown phase {other:?} (down, up)"),
        };
        let fast_run = |t: Arc<Tunnel>| async move {
            let started = Instant::now();
            if up {
                t.upload(fast, 0, Arc::new(AtomicU64::new(0))).await?;
            } else {
                t.download(fast, 0, &AtomicU64::new(0)).await?;
            }
            anyhow::Ok(mb_s(fast, started.elapsed()))
        };
        let slow_run = |t: Arc<Tunnel>, progress: Arc<AtomicU64>| {
            tokio::spawn(async move {
                if up {
                    t.upload(size, rate, progress).await
                } else {
                    t.download(size, rate, &progress).await
                }
            })
        };

        // Throughput, on one pair of processes: the fast transfer alone, then next to a slow
        // one that has been under way for a second (its buffers full, its stream waiting on
        // the slow end). That slow transfer is then dropped.
        let t = Arc::new(Tunnel::start(&bin, origin).await?);
        t.download(8 << 20, 0, &AtomicU64::new(0)).await?; // warm-up
        let alone = fast_run(t.clone()).await?;
        let progress = Arc::new(AtomicU64::new(0));
        let background = slow_run(t.clone(), progress.clone());
        while progress.load(Ordering::Relaxed) < rate.min(size) && !background.is_finished() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let beside = fast_run(t.clone()).await?;
        background.abort();
        drop(t);
        eprintln!("slow {phase}: fast transfer next to it at {beside:.0} MB/s (alone {alone:.0})");

        // Memory, on fresh processes that carry nothing but the slow transfer, so the peak is
        // its own and not what the allocator kept from a fast one.
        let t = Arc::new(Tunnel::start(&bin, origin).await?);
        let (spid, cpid) = t.pids();
        let progress = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let slow = slow_run(t.clone(), progress.clone());
        let mut peaks = (0, 0);
        let mut next_report = 0u64;
        while !slow.is_finished() {
            peaks.0 = peaks.0.max(rss_kb(spid, "VmRSS"));
            peaks.1 = peaks.1.max(rss_kb(cpid, "VmRSS"));
            let s = started.elapsed().as_secs();
            if s >= next_report {
                next_report = s + 60;
                eprintln!(
                    "slow {phase}: {s:>5} s, {} MB taken, server RSS {} kB, client RSS {} kB",
                    progress.load(Ordering::Relaxed) / 1_000_000,
                    peaks.0,
                    peaks.1
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let result = slow.await?;
        let took = started.elapsed();
        // The kernel's own peak backs the sampling up.
        let server_kb = peaks.0.max(rss_kb(spid, "VmHWM"));
        let client_kb = peaks.1.max(rss_kb(cpid, "VmHWM"));
        let ok = result.is_ok() && server_kb < limit_kb && client_kb < limit_kb;
        failed |= !ok;
        println!(
            "| {} | {} MB at {:.2} MB/s in {:.0} s | {:.1} | {:.1} | {alone:.0} | {beside:.0} | {} |",
            if up {
                "upload, slow service"
            } else {
                "download, slow visitor"
            },
            size / 1_000_000,
            mb_s(size, took),
            took.as_secs_f64(),
            server_kb as f64 / 1000.0,
            client_kb as f64 / 1000.0,
            match &result {
                Ok(()) if ok => "ok".to_owned(),
                Ok(()) => "OVER LIMIT".to_owned(),
                Err(e) => format!("FAILED: {e:#}"),
            }
        );
    }
    if failed {
        bail!("a slow transfer failed or went over the RSS limit");
    }
    Ok(())
}
