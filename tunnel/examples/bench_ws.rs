//! Many concurrent WebSockets, for `bench/`: N connections that each send a small message once per
//! interval and time its echo.
//!
//! ```text
//! bench_ws echo [--listen 127.0.0.1:0]     # prints "listening ADDR", echoes every data message
//! bench_ws load --url ws://127.0.0.1:P/ [--host NAME.localhost:P] [-n 1000] [--seconds 10]
//! ```
//!
//! `load` opens all connections first (a bounded number at a time), then every connection sends
//! on its own schedule, offset by a random phase so that the load is spread over each interval
//! rather than arriving as one burst per interval. It prints one line, `BENCHJSON {...}`, with
//! round-trip percentiles in microseconds and counts of everything that went wrong.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{stream, SinkExt, StreamExt};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{timeout, Instant, MissedTickBehavior},
};
use tokio_tungstenite::tungstenite::{
    client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig, Message,
};

/// Messages are tiny; nothing legitimate here comes near this.
const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes per message: a sequence number and padding.
const MESSAGE_LEN: usize = 32;
/// Connections the echo server serves at once; more wait in the kernel's backlog.
const MAX_ECHO_CONNECTIONS: usize = 60_000;

#[derive(Parser)]
enum Cmd {
    /// WebSocket echo server (the origin).
    Echo {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
    /// Open the connections and measure echo round trips.
    Load(Load),
}

#[derive(clap::Args)]
struct Load {
    /// ws:// URL; the TCP connection goes to its host and port.
    #[arg(long)]
    url: String,
    /// Host header to send instead of the URL's (for routing by subdomain on 127.0.0.1).
    #[arg(long)]
    host: Option<String>,
    /// Concurrent WebSockets.
    #[arg(short = 'n', long, default_value_t = 1000)]
    connections: usize,
    /// How long every connection keeps sending, after all are open.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Milliseconds between two messages of one connection.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// Handshakes in flight at once while opening.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// An echo missing after this many milliseconds counts as a failure and ends that connection.
    #[arg(long, default_value_t = 5000)]
    echo_timeout_ms: u64,
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        // A few thousand sockets with tungstenite's 128 KiB default read buffer would make the
        // tool's own memory the story; messages here are 32 bytes.
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cmd::parse() {
        Cmd::Echo { listen } => echo(listen).await,
        Cmd::Load(args) => load(args).await,
    }
}

async fn echo(addr: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr).await.context("bind")?;
    println!("listening {}", listener.local_addr()?);
    let slots = Arc::new(Semaphore::new(MAX_ECHO_CONNECTIONS));
    loop {
        let permit = slots.clone().acquire_owned().await?;
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                eprintln!("bench_ws echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let Ok(mut ws) =
                tokio_tungstenite::accept_async_with_config(tcp, Some(ws_config())).await
            else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if msg.is_close() {
                    break;
                }
                // Pings are answered by tungstenite itself; only data is echoed.
                if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn connect(args: &Load) -> anyhow::Result<Ws> {
    let mut req = args.url.as_str().into_client_request()?;
    let Some(authority) = req.uri().authority().map(|a| a.to_string()) else {
        bail!("{} has no host", args.url);
    };
    if let Some(host) = &args.host {
        req.headers_mut()
            .insert("host", HeaderValue::from_str(host).context("bad --host")?);
    }
    let tcp = TcpStream::connect(&authority).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(ws_config())).await?;
    Ok(ws)
}

/// What one connection saw during the send phase.
#[derive(Default)]
struct Outcome {
    rtts_us: Vec<u32>,
    sent: u64,
    failure: Option<String>,
}

async fn exercise(mut ws: Ws, args: Arc<Load>, start: Instant) -> Outcome {
    let interval = Duration::from_millis(args.interval_ms.max(1));
    let rounds = (args.seconds * 1000 / args.interval_ms.max(1)).max(1);
    let echo_timeout = Duration::from_millis(args.echo_timeout_ms);
    let mut out = Outcome {
        rtts_us: Vec::with_capacity(rounds as usize),
        ..Outcome::default()
    };
    let phase = interval.mul_f64(rand::random::<f64>());
    let mut ticks = tokio::time::interval_at(start + phase, interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    for seq in 0..rounds {
        ticks.tick().await;
        let mut payload = vec![0u8; MESSAGE_LEN];
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let sent_at = Instant::now();
        if let Err(e) = ws.send(Message::binary(payload.clone())).await {
            out.failure = Some(format!("send: {e}"));
            return out;
        }
        out.sent += 1;
        let reply = timeout(echo_timeout, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Binary(b))) => return Ok(b),
                    Some(Ok(Message::Close(_))) | None => return Err("closed by peer".to_owned()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(format!("receive: {e}")),
                }
            }
        })
        .await;
        match reply {
            Ok(Ok(b)) if b[..] == payload[..] => {
                let us = sent_at.elapsed().as_micros();
                out.rtts_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(Ok(_)) => {
                out.failure = Some("echo differs from the message".to_owned());
                return out;
            }
            Ok(Err(e)) => {
                out.failure = Some(e);
                return out;
            }
            Err(_) => {
                out.failure = Some(format!("no echo within {echo_timeout:?}"));
                return out;
            }
        }
    }
    // Close politely so that the far side's logs do not fill with resets.
    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    out
}

fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

async fn load(args: Load) -> anyhow::Result<()> {
    let args = Arc::new(args);
    let opened_at = Instant::now();
    let attempts = stream::iter(0..args.connections)
        .map(|_| {
            let args = args.clone();
            async move {
                let t = Instant::now();
                match timeout(Duration::from_secs(10), connect(&args)).await {
                    Ok(Ok(ws)) => Ok((ws, t.elapsed())),
                    Ok(Err(e)) => Err(format!("{e:#}")),
                    Err(_) => Err("handshake took over 10 s".to_owned()),
                }
            }
        })
        .buffer_unordered(args.connect_concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let open_s = opened_at.elapsed().as_secs_f64();
    let mut sockets = Vec::with_capacity(attempts.len());
    let mut handshake_us = Vec::with_capacity(attempts.len());
    let mut connect_failures = 0u64;
    let mut first_error: Option<String> = None;
    for a in attempts {
        match a {
            Ok((ws, took)) => {
                handshake_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
                sockets.push(ws);
            }
            Err(e) => {
                connect_failures += 1;
                first_error.get_or_insert(format!("connect: {e}"));
            }
        }
    }
    eprintln!(
        "bench_ws: {} of {} connections open in {open_s:.2} s; sending for {} s",
        sockets.len(),
        args.connections,
        args.seconds
    );

    let start = Instant::now();
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|ws| tokio::spawn(exercise(ws, args.clone(), start)))
        .collect();
    let mut rtts = Vec::with_capacity(tasks.len() * (args.seconds as usize + 1));
    let (mut sent, mut echo_failures) = (0u64, 0u64);
    for t in tasks {
        let o = t.await?;
        sent += o.sent;
        rtts.extend_from_slice(&o.rtts_us);
        if let Some(f) = o.failure {
            echo_failures += 1;
            first_error.get_or_insert(f);
        }
    }
    rtts.sort_unstable();
    handshake_us.sort_unstable();
    let report = serde_json::json!({
        "connections": args.connections,
        "open": handshake_us.len(),
        "connect_failures": connect_failures,
        "open_s": open_s,
        "handshake_p50_us": percentile(&handshake_us, 0.50),
        "handshake_p99_us": percentile(&handshake_us, 0.99),
        "sent": sent,
        "echoed": rtts.len(),
        "echo_failures": echo_failures,
        "p50_us": percentile(&rtts, 0.50),
        "p99_us": percentile(&rtts, 0.99),
        "max_us": rtts.last(),
        "first_error": first_error,
    });
    println!("BENCHJSON {report}");
    Ok(())
}
