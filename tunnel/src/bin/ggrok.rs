//! `ggrok`: expose a local port through a ggrok server.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ggrok_tunnel::{
    protocol::Heartbeat, terminal::escape_controls, Connection, Exchange, LocalTarget, Secret,
    Status, Tunnel, TunnelConfig, TunnelKind,
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
    /// Forward raw TCP connections from a public port of the server to a local port.
    Tcp(TcpArgs),
}

#[derive(Parser, Debug)]
struct TcpArgs {
    /// Local port to expose.
    #[arg(value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Public port to ask for, from the server's TCP port range (any free one if omitted).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    remote_port: Option<u16>,
    /// ggrok server, e.g. https://tunnel.example.com or http://127.0.0.1:8080.
    #[arg(long, env = "GGROK_SERVER")]
    server: String,
    /// Token the server expects.
    #[arg(long, env = "GGROK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Host of the local service.
    #[arg(long, default_value = "localhost")]
    local_host: String,
    /// Extra CA certificate (PEM) to trust, for a server with a private or self-signed CA.
    #[arg(long, env = "GGROK_CA_CERT")]
    ca_cert: Option<std::path::PathBuf>,
    /// Allow only these visitor addresses (IP or CIDR, repeatable); others are disconnected.
    #[arg(long = "allow-ip", value_name = "CIDR")]
    allow_ips: Vec<String>,
    /// Identity towards the server, kept across restarts of this command: a restarted ggrok with
    /// the same id gets its held port back at once (random per run if omitted).
    #[arg(long, env = "GGROK_CLIENT_ID", hide = true)]
    client_id: Option<String>,
    /// Seconds between pings to the server.
    #[arg(long, default_value_t = 20, hide = true)]
    heartbeat_interval: u64,
    /// Seconds of silence after which the session counts as lost.
    #[arg(long, default_value_t = 45, hide = true)]
    heartbeat_timeout: u64,
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
    /// Serve the inspector (web page and API) on 127.0.0.1:4040, or the next free port.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    inspect: bool,
    /// Bytes of each request and response body kept for the inspector (e.g. 65536, 512KiB,
    /// 1MiB; at most 16MiB); longer bodies are cut there, and the inspector says so.
    #[arg(
        long,
        value_name = "SIZE",
        default_value = "64KiB",
        value_parser = ggrok_tunnel::traffic::parse_capture_limit
    )]
    capture_limit: usize,
    /// First port the inspector tries (0: any free port).
    #[arg(
        long,
        env = "GGROK_INSPECT_PORT",
        default_value_t = ggrok_tunnel::inspect::DEFAULT_PORT,
        hide = true
    )]
    inspect_port: u16,
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
        .with_env_filter(ggrok_tunnel::logging::log_filter("warn"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let run = match Cli::parse().command {
        Command::Http(args) => http(args).await,
        Command::Tcp(args) => tcp(args).await,
    };
    match run {
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
    config.capture_limit = args.capture_limit;
    config.heartbeat = Heartbeat {
        interval: Duration::from_secs(args.heartbeat_interval),
        timeout: Duration::from_secs(args.heartbeat_timeout),
    };
    let target = format!("http://{}", config.local.authority());
    let inspect = args.inspect.then_some(args.inspect_port);
    serve(config, target, inspect).await
}

async fn tcp(args: TcpArgs) -> anyhow::Result<ExitCode> {
    let mut config = TunnelConfig::new(args.server, args.port);
    config.kind = TunnelKind::Tcp {
        remote_port: args.remote_port,
    };
    config.token = args.token.filter(|t| !t.is_empty()).map(Secret::new);
    config.ca_cert = args.ca_cert;
    config.allow_ips = args.allow_ips;
    config.client_id = args.client_id.filter(|id| !id.is_empty());
    config.local.host = args.local_host;
    config.heartbeat = Heartbeat {
        interval: Duration::from_secs(args.heartbeat_interval),
        timeout: Duration::from_secs(args.heartbeat_timeout),
    };
    let target = format!("tcp://{}", config.local.authority());
    serve(config, target, None).await
}

/// Runs the tunnel until Ctrl-C or a final refusal: prints its URL alone on stdout when it is
/// first online, then a line per request or connection. With `inspect`, the inspector listens
/// from that port on (bound at once, announced when the tunnel is online).
async fn serve(
    config: TunnelConfig,
    target: String,
    inspect: Option<u16>,
) -> anyhow::Result<ExitCode> {
    let tunnel = Tunnel::start(config).context("cannot start the tunnel")?;
    let mut inspector = match inspect {
        Some(port) => {
            let tunnels = vec![ggrok_tunnel::inspect::Inspected {
                name: ggrok_tunnel::inspect::CLI_TUNNEL_NAME.to_owned(),
                handle: tunnel.handle(),
            }];
            let addr = ggrok_tunnel::inspect::spawn(port, tunnels)
                .await
                .context("cannot start the inspector (--inspect=false runs without it)")?;
            Some(addr)
        }
        None => None,
    };
    let mut status = tunnel.status();
    let mut traffic = tunnel.traffic().subscribe();
    let mut connections = tunnel.connections().subscribe();
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
                    // Everything a server says is untrusted: it must not write to the terminal.
                    Status::Online { url, .. } => {
                        let url = escape_controls(&url).into_owned();
                        if shown_url.as_deref() != Some(url.as_str()) {
                            println!("{url}");
                            eprintln!("ggrok: forwarding {url} -> {target}");
                            if let Some(addr) = inspector.take() {
                                eprintln!("ggrok: inspector on http://{addr}");
                            }
                            shown_url = Some(url);
                        } else {
                            eprintln!("ggrok: back online");
                        }
                    }
                    Status::Reconnecting { attempt, reason } => {
                        let reason = escape_controls(&reason);
                        eprintln!("ggrok: {reason}; reconnecting (attempt {attempt})");
                    }
                    Status::Failed { message, .. } => {
                        eprintln!("ggrok: refused: {}", escape_controls(&message));
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
            event = connections.recv() => match event {
                Ok(c) => print_connections(c, &mut connections),
                Err(RecvError::Lagged(n)) => eprintln!("ggrok: {n} connection events not shown (log too slow)"),
                Err(RecvError::Closed) => return Ok(ExitCode::FAILURE),
            },
        }
    }
}

/// Prints a line for `first` and every connection queued behind it that has ended.
fn print_connections(
    first: std::sync::Arc<Connection>,
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Connection>>,
) {
    print_batch(first, events, connection_line);
}

/// Prints `first` and every event already queued behind it with one write, not one per line.
/// Bounded by the broadcast queue; a lag is reported by the next `recv`.
fn print_batch<T>(
    first: std::sync::Arc<T>,
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<T>>,
    line: fn(&mut String, &T),
) {
    use std::io::Write;
    let mut out = String::new();
    line(&mut out, &first);
    while let Ok(e) = events.try_recv() {
        line(&mut out, &e);
    }
    let _ = std::io::stdout().write_all(out.as_bytes());
}

/// Appends `12:01:02 203.0.113.7:51234 1520ms up 1.2 KB down 3.4 KB closed` (UTC time of
/// arrival) for a connection that has ended; nothing for one that just opened.
fn connection_line(out: &mut String, c: &Connection) {
    use std::fmt::Write;
    let Some(end) = &c.end else { return };
    push_time(out, c.opened_ms);
    let _ = write!(out, " {} {}ms up ", escape_controls(&c.from), c.duration_ms);
    push_size(out, c.bytes_up);
    out.push_str(" down ");
    push_size(out, c.bytes_down);
    out.push(' ');
    // Reasons may quote what a peer sent.
    out.push_str(&escape_controls(&end.describe()));
    out.push('\n');
}

/// Appends `HH:MM:SS` (UTC) of a Unix time in milliseconds.
fn push_time(out: &mut String, unix_ms: u64) {
    let secs = unix_ms / 1000 % 86_400;
    for (i, n) in [secs / 3600, secs / 60 % 60, secs % 60]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(b'0' + (n / 10) as u8));
        out.push(char::from(b'0' + (n % 10) as u8));
    }
}

/// Appends `7 B`, `1.5 KB` or `3.0 MB`.
fn push_size(out: &mut String, n: u64) {
    use std::fmt::Write;
    let _ = match n {
        n if n < 1024 => write!(out, "{n} B"),
        n if n < 1024 * 1024 => write!(out, "{:.1} KB", n as f64 / 1024.0),
        n => write!(out, "{:.1} MB", n as f64 / (1024.0 * 1024.0)),
    };
}

/// Prints `first` and every exchange already queued behind it.
fn print_lines(
    first: std::sync::Arc<Exchange>,
    traffic: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<Exchange>>,
) {
    print_batch(first, traffic, log_line);
}

/// Appends `12:01:02 GET /path 200 12ms 1.2 KB` (UTC time) and a newline to `out`, formatted
/// in place: a line per request is the CLI's busiest output.
fn log_line(out: &mut String, e: &Exchange) {
    use std::fmt::Write;
    push_time(out, e.started_ms);
    out.push(' ');
    out.push_str(&e.method);
    out.push(' ');
    // Paths are untrusted.
    out.push_str(&escape_controls(&e.path));
    out.push(' ');
    let _ = match (e.status, e.upgraded) {
        (_, true) => write!(out, "101 upgraded"),
        (Some(s), _) => write!(out, "{s}"),
        (None, _) => write!(out, "---"),
    };
    let _ = write!(out, " {}ms ", e.duration_ms);
    push_size(out, e.response_body.size);
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_per_ended_connection() {
        let mut c = Connection {
            id: 1,
            from: "203.0.113.7:51234".into(),
            opened_ms: (3600 + 2 * 60 + 3) * 1000,
            duration_ms: 1520,
            bytes_up: 1536,
            bytes_down: 7,
            end: None,
        };
        let mut out = String::new();
        connection_line(&mut out, &c);
        assert_eq!(out, "", "nothing while open");
        c.end = Some(ggrok_tunnel::tcp::End::Closed);
        connection_line(&mut out, &c);
        c.end = Some(ggrok_tunnel::tcp::End::Unreachable {
            reason: "cannot connect to localhost:1: refused\n".into(),
        });
        connection_line(&mut out, &c);
        assert_eq!(
            out,
            "01:02:03 203.0.113.7:51234 1520ms up 1.5 KB down 7 B closed\n\
             01:02:03 203.0.113.7:51234 1520ms up 1.5 KB down 7 B local service unreachable: \
             cannot connect to localhost:1: refused\\n\n"
        );
    }

    #[test]
    fn a_log_line_per_exchange() {
        let mut e = Exchange {
            id: 1,
            started_ms: (3600 + 2 * 60 + 3) * 1000 + 999,
            method: "GET".into(),
            path: "/a\nb".into(),
            status: Some(200),
            duration_ms: 12,
            remote_addr: None,
            upgraded: false,
            request_headers: Default::default(),
            response_headers: Default::default(),
            request_body: Default::default(),
            response_body: Default::default(),
            error: None,
            frames: None,
        };
        e.response_body.size = 1536;
        let mut out = String::new();
        log_line(&mut out, &e);
        e.status = None;
        e.response_body.size = 7;
        log_line(&mut out, &e);
        e.upgraded = true;
        e.response_body.size = 3 << 20;
        log_line(&mut out, &e);
        e.path = "/plain?q=1&r=a b".into();
        log_line(&mut out, &e);
        e.path = "/\"q\"".into();
        log_line(&mut out, &e);
        assert_eq!(
            out,
            "01:02:03 GET /a\\nb 200 12ms 1.5 KB\n\
             01:02:03 GET /a\\nb --- 12ms 7 B\n\
             01:02:03 GET /a\\nb 101 upgraded 12ms 3.0 MB\n\
             01:02:03 GET /plain?q=1&r=a b 101 upgraded 12ms 3.0 MB\n\
             01:02:03 GET /\"q\" 101 upgraded 12ms 3.0 MB\n"
        );
    }
}
