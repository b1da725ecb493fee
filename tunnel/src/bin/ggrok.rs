//! `ggrok`: expose a local port through a ggrok server.
//!
//! Layout: this file has the `http` and `tcp` commands and runs tunnels;
//! [`saved_cmds`] has `config`, `list` and `start` over the file shared with the desktop app;
//! [`upstream_args`] `http`'s target and how to talk to it.

// In `ggrok/`: files directly in `src/bin/` would each be a binary of their own.
#[path = "ggrok/saved_cmds.rs"]
mod saved_cmds;
#[path = "ggrok/upstream_args.rs"]
mod upstream_args;

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ggrok_tunnel::{
    protocol::Heartbeat, terminal::escape_controls, Connection, Exchange, Secret, Status, Tunnel,
    TunnelConfig, TunnelKind,
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
    /// Saved servers and tunnels (shared with the desktop app).
    Config(saved_cmds::ConfigArgs),
    /// List saved tunnels and servers.
    List(saved_cmds::ListArgs),
    /// Start saved tunnels by name, or all of them.
    Start(saved_cmds::StartArgs),
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
    /// Local service: a port, host:port, or http:// or https:// URL (https: TLS to it, trusting
    /// the system's certificate authorities).
    #[arg(value_name = "PORT|URL", value_parser = upstream_args::parse_target)]
    target: upstream_args::Target,
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
    #[command(flatten)]
    upstream: upstream_args::UpstreamArgs,
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
        Command::Config(args) => saved_cmds::config(args),
        Command::List(args) => saved_cmds::list(args),
        Command::Start(args) => start(args).await,
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
    let mut config = TunnelConfig::new(args.server, args.target.port);
    config.token = args.token.filter(|t| !t.is_empty()).map(Secret::new);
    config.subdomain = args.subdomain;
    config.ca_cert = args.ca_cert;
    config.basic_auth = args.basic_auth.map(Secret::new);
    config.allow_ips = args.allow_ips;
    config.client_id = args.client_id.filter(|id| !id.is_empty());
    config.local = upstream_args::local_target(&args.target, args.local_host, args.upstream)?;
    config.heartbeat = Heartbeat {
        interval: Duration::from_secs(args.heartbeat_interval),
        timeout: Duration::from_secs(args.heartbeat_timeout),
    };
    let target = config.local.url();
    serve(config, target, None).await
}

/// Runs saved tunnels side by side; with more than one, every line says which it is about.
async fn start(args: saved_cmds::StartArgs) -> anyhow::Result<ExitCode> {
    let planned = saved_cmds::plan(args)?;
    let labelled = planned.len() > 1;
    let runs = planned.into_iter().map(|p| {
        let label = labelled.then_some(p.label);
        serve(p.config, p.target, label)
    });
    let mut code = ExitCode::SUCCESS;
    for result in futures_util::future::join_all(runs).await {
        match result {
            Ok(c) if c == ExitCode::SUCCESS => {}
            Ok(c) => code = c,
            Err(e) => {
                eprintln!("ggrok: {e:#}");
                code = ExitCode::FAILURE;
            }
        }
    }
    Ok(code)
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
/// first online, then a line per request or connection. With a `label` (several tunnels in one
/// run) every line starts with it.
async fn serve(
    config: TunnelConfig,
    target: String,
    label: Option<String>,
) -> anyhow::Result<ExitCode> {
    let tunnel = Tunnel::start(config).context("cannot start the tunnel")?;
    let (out_prefix, err_prefix) = match &label {
        Some(l) => (format!("{l} "), format!("ggrok: {l}: ")),
        None => (String::new(), "ggrok: ".to_owned()),
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
                            println!("{out_prefix}{url}");
                            eprintln!("{err_prefix}forwarding {url} -> {target}");
                            shown_url = Some(url);
                        } else {
                            eprintln!("{err_prefix}back online");
                        }
                    }
                    Status::Reconnecting { attempt, reason } => {
                        let reason = escape_controls(&reason);
                        eprintln!("{err_prefix}{reason}; reconnecting (attempt {attempt})");
                    }
                    Status::Failed { message, .. } => {
                        eprintln!("{err_prefix}refused: {}", escape_controls(&message));
                        return Ok(ExitCode::FAILURE);
                    }
                    Status::Connecting | Status::Stopped => {}
                }
            }
            event = traffic.recv() => match event {
                Ok(e) => print_batch(e, &mut traffic, log_line, &out_prefix),
                Err(RecvError::Lagged(n)) => eprintln!("{err_prefix}{n} requests not shown (log too slow)"),
                Err(RecvError::Closed) => return Ok(ExitCode::FAILURE),
            },
            event = connections.recv() => match event {
                Ok(c) => print_batch(c, &mut connections, connection_line, &out_prefix),
                Err(RecvError::Lagged(n)) => eprintln!("{err_prefix}{n} connection events not shown (log too slow)"),
                Err(RecvError::Closed) => return Ok(ExitCode::FAILURE),
            },
        }
    }
}

/// Prints `first` and every event already queued behind it with one write, not one per line,
/// each line after `prefix`. Bounded by the broadcast queue; a lag is reported by the next
/// `recv`.
fn print_batch<T>(
    first: std::sync::Arc<T>,
    events: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<T>>,
    line: fn(&mut String, &T),
    prefix: &str,
) {
    use std::io::Write;
    let mut out = String::new();
    let mut add = |e: &T| {
        let start = out.len();
        line(&mut out, e);
        if out.len() > start {
            out.insert_str(start, prefix);
        }
    };
    add(&first);
    while let Ok(e) = events.try_recv() {
        add(&e);
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
