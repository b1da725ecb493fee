//! Idle tunnels and time to online, for `bench/`, through the library the CLI and the desktop app
//! use ([`ggrok_tunnel::Tunnel`]).
//!
//! ```text
//! bench_idle online --server http://127.0.0.1:P --port ORIGIN [--runs 50]
//! bench_idle hold   --server http://127.0.0.1:P --port ORIGIN [--tunnels 10000]
//! ```
//!
//! `online` starts one fresh tunnel at a time (`Tunnel::start` until `online()` returns), stops
//! it, and reports the distribution. `hold` brings N tunnels online, a bounded number connecting
//! at once, prints a `BENCHJSON` line, then keeps them open until its standard input closes, so
//! that the caller can read the server's memory and CPU while they sit idle.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use futures_util::{stream, StreamExt};
use ggrok_tunnel::{LocalTarget, Tunnel, TunnelConfig};
use tokio::{
    io::AsyncReadExt,
    time::{timeout, Instant},
};

#[derive(Parser)]
enum Cmd {
    /// Time from `Tunnel::start` to online, one fresh tunnel at a time.
    Online {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 50)]
        runs: usize,
    },
    /// Hold many tunnels online until standard input closes.
    Hold {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        tunnels: usize,
        /// Tunnels connecting at once while ramping up.
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Give up on a tunnel that is not online after this many seconds.
        #[arg(long, default_value_t = 60)]
        online_timeout: u64,
    },
}

#[derive(clap::Args)]
struct Target {
    /// The ggrok server, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    server: String,
    /// Local port the tunnels point at (nothing needs to listen there: idle tunnels get no requests).
    #[arg(long)]
    port: u16,
}

impl Target {
    fn config(&self) -> TunnelConfig {
        let mut c = TunnelConfig::new(self.server.clone(), self.port);
        c.local = LocalTarget::new("127.0.0.1", self.port);
        c
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cmd::parse() {
        Cmd::Online { target, runs } => online(target, runs).await,
        Cmd::Hold {
            target,
            tunnels,
            concurrency,
            online_timeout,
        } => hold(target, tunnels, concurrency, online_timeout).await,
    }
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

async fn online(target: Target, runs: usize) -> anyhow::Result<()> {
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t0 = Instant::now();
        let tunnel = Tunnel::start(target.config())?;
        match timeout(Duration::from_secs(10), tunnel.online()).await {
            Ok(Ok(_)) => ms.push(t0.elapsed().as_secs_f64() * 1e3),
            Ok(Err(status)) => bail!("tunnel did not come online: {status:?}"),
            Err(_) => bail!("tunnel not online after 10 s"),
        }
        // Stopping waits for the server to acknowledge, so runs do not overlap.
        tunnel.stop().await;
    }
    ms.sort_by(f64::total_cmp);
    let report = serde_json::json!({
        "runs": ms.len(),
        "min_ms": ms.first(),
        "p50_ms": percentile(&ms, 0.50),
        "p99_ms": percentile(&ms, 0.99),
        "max_ms": ms.last(),
    });
    println!("BENCHJSON {report}");
    Ok(())
}

async fn hold(
    target: Target,
    n: usize,
    concurrency: usize,
    online_timeout: u64,
) -> anyhow::Result<()> {
    let limit = Duration::from_secs(online_timeout);
    let t0 = Instant::now();
    let results = stream::iter(0..n)
        .map(|_| {
            let config = target.config();
            async move {
                let tunnel = Tunnel::start(config).map_err(|e| e.to_string())?;
                match timeout(limit, tunnel.online()).await {
                    Ok(Ok(_)) => Ok(tunnel),
                    Ok(Err(status)) => Err(format!("{status:?}")),
                    Err(_) => {
                        let status = tunnel.status().borrow().clone();
                        Err(format!("not online after {limit:?}: {status:?}"))
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let ramp_s = t0.elapsed().as_secs_f64();
    let mut tunnels = Vec::with_capacity(n);
    let mut failures = 0usize;
    let mut first_error = None;
    for r in results {
        match r {
            Ok(t) => tunnels.push(t),
            Err(e) => {
                failures += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let report = serde_json::json!({
        "tunnels": n,
        "online": tunnels.len(),
        "failures": failures,
        "ramp_s": ramp_s,
        "first_error": first_error,
    });
    println!("BENCHJSON {report}");
    // The caller reads /proc while the tunnels sit idle, and closes our stdin when done.
    let mut sink = [0u8; 64];
    let mut stdin = tokio::io::stdin();
    while stdin
        .read(&mut sink)
        .await
        .context("reading standard input")?
        > 0
    {}
    let still = tunnels
        .iter()
        .filter(|t| matches!(&*t.status().borrow(), ggrok_tunnel::Status::Online { .. }))
        .count();
    // Tunnels that dropped while idle would make the memory figures flattering.
    println!("BENCHJSON {}", serde_json::json!({ "still_online": still }));
    Ok(())
}
