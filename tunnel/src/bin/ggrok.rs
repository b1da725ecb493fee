//! `ggrok`: expose a local port through a ggrok server.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ggrok_tunnel::{
    protocol::Heartbeat, Exchange, LocalTarget, Secret, Status, Tunnel, TunnelConfig,
};
use tokio::sync::broadcast::error::RecvError;

/// Expose a local port at a fixed public URL through your own ggrok server.
#[derive(Parser, Debug)]
#[command(name = "ggrok", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Forward HTTP (and WebSocket) traffic from a public URL to a local port.
    Http(HttpArgs),
}

#[derive(Parser, Debug)]
struct HttpArgs {
    /// Local port to expose.
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// ggrok server, e.g. https://tunnel.example.com or http://127.0.0.1:8080.
    #[arg(long, env = "GGROK_SERVER")]
    server: String,
    /// Fixed subdomain to ask for (random if omitted).
    #[arg(long)]
    subdomain: Option<String>,
    /// Token the server expects.
    #[arg(long, env = "GGROK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Host of the local service.
    #[arg(long, default_value = "localhost")]
    local_host: String,
    /// Extra CA certificate (PEM) to trust, for a server with a private or self-signed CA.
    #[arg(long, env = "GGROK_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Require visitors to log in with HTTP Basic auth (checked by the server).
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "GGROK_BASIC_AUTH",
        hide_env_values = true
    )]
    basic_auth: Option<String>,
    /// Allow only these visitor addresses (IP or CIDR, repeatable); everyone else gets 403.
    #[arg(long = "allow-ip", value_name = "CIDR")]
    allow_ips: Vec<String>,
    /// Pass the public Host header through instead of rewriting it to the local target.
    #[arg(long)]
    keep_host: bool,
    /// Identity towards the server, kept across restarts of this command: a restarted ggrok with
    /// the same id gets its held subdomain back at once (random per run if omitted).
    #[arg(long, env = "GGROK_CLIENT_ID", hide = true)]
    client_id: Option<String>,
    /// Seconds between pings to the server.
    #[arg(long, default_value_t = 20, hide = true)]
    heartbeat_interval: u64,
    /// Seconds of silence after which the session counts as lost.
    #[arg(long, default_value_t = 45, hide = true)]
    heartbeat_timeout: u64,
}

// Many small short-lived allocations per request (headers, frames, bodies): mimalloc takes
// them at a fraction of the system allocator's cost; see docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

// One thread: a tunnel client's work is a chain of hand-offs between tasks (session, stream,
// local connection), and across worker threads every hand-off is a futex wake-up and a context
// switch. On one thread the same chain costs a queue push; see docs/benchmarks.md.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(ggrok_tunnel::client::log_filter("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Command::Http(args) = Cli::parse().command;
    match http(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ggrok: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn http(args: HttpArgs) -> anyhow::Result<ExitCode> {
    let mut config = TunnelConfig::new(args.server, args.port);
    config.token = args.token.filter(|t| !t.is_empty()).map(Secret::new);
    config.subdomain = args.subdomain;
    config.ca_cert = args.ca_cert;
    config.basic_auth = args.basic_auth.map(Secret::new);
    config.allow_ips = args.allow_ips;
    config.client_id = args.client_id.filter(|id| !id.is_empty());
    config.local = LocalTarget {
        host: args.local_host,
        port: args.port,
        keep_host: args.keep_host,
    };
    config.heartbeat = Heartbeat {
        interval: Duration::from_secs(args.heartbeat_interval),
        timeout: Duration::from_secs(args.heartbeat_timeout),
    };
    let target = config.local.authority();
    let tunnel = Tunnel::start(config).context("cannot start the tunnel")?;
    let mut status = tunnel.status();
    let mut traffic = tunnel.traffic().subscribe();
    let mut shown_url: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                tunnel.stop().await;
                return Ok(ExitCode::SUCCESS);
            }
            changed = status.changed() => {
                if changed.is_err() {
                    return Ok(ExitCode::FAILURE);
                }
                let now = status.borrow_and_update().clone();
                match now {
                    Status::Online { url, .. } => {
                        if shown_url.as_deref() != Some(url.as_str()) {
                            println!("{url}");
                            eprintln!("ggrok: forwarding {url} -> http://{target}");
                            shown_url = Some(url);
                        } else {
                            eprintln!("ggrok: back online");
                        }
                    }
                    Status::Reconnecting { attempt, reason } => {
                        eprintln!("ggrok: {reason}; reconnecting (attempt {attempt})");
                    }
                    Status::Failed { message, .. } => {
                        eprintln!("ggrok: refused: {message}");
                        return Ok(ExitCode::FAILURE);
                    }
                    Status::Connecting | Status::Stopped => {}
                }
            }
            event = traffic.recv() => match event {
                Ok(e) => print_lines(e, &mut traffic),
                Err(RecvError::Lagged(n)) => eprintln!("ggrok: {n} requests not shown (log too slow)"),
                Err(RecvError::Closed) => return Ok(ExitCode::FAILURE),
            },
        }
    }
}

/// Prints `first` and every exchange already queued behind it with one write, not one per line.
fn print_lines(
    first: std::sync::Arc<Exchange>,
    traffic: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Exchange>>,
) {
    use std::io::Write;
    let mut out = log_line(&first);
    out.push('\n');
    // Bounded by the broadcast queue; a lag is reported by the next `recv`.
    while let Ok(e) = traffic.try_recv() {
        out.push_str(&log_line(&e));
        out.push('\n');
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
}

/// `12:01:02 GET /path 200 12ms 1.2 KB` (UTC time).
fn log_line(e: &Exchange) -> String {
    let secs = e.started_ms / 1000 % 86_400;
    let status = match (e.status, e.upgraded) {
        (_, true) => "101 upgraded".to_owned(),
        (Some(s), _) => s.to_string(),
        (None, _) => "---".to_owned(),
    };
    format!(
        "{:02}:{:02}:{:02} {} {} {} {}ms {}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        e.method,
        e.path.escape_debug(),
        status,
        e.duration_ms,
        human_bytes(e.response_body.size)
    )
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KB", n as f64 / 1024.0),
        n => format!("{:.1} MB", n as f64 / (1024.0 * 1024.0)),
    }
}
