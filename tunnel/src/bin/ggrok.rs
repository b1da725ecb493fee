//! `ggrok`: expose a local port through a ggrok server.
//!
//! Layout: this file has the flags and turns them into tunnels to run;
//! [`run`] runs them and prints what happens (plain lines through [`printer`]'s thread, or
//! [`screen`]'s live screen on a terminal); [`saved_cmds`] has `config`, `list` and `start` over
//! the file shared with the desktop app; [`upstream_args`] `http`'s target and how to talk to it.

// In `ggrok/`: files directly in `src/bin/` would each be a binary of their own.
#[path = "ggrok/printer.rs"]
mod printer;
#[path = "ggrok/run.rs"]
mod run;
#[path = "ggrok/saved_cmds.rs"]
mod saved_cmds;
#[path = "ggrok/screen.rs"]
mod screen;
#[path = "ggrok/upstream_args.rs"]
mod upstream_args;

use std::{process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use ggrok_tunnel::{protocol::Heartbeat, Secret, TunnelConfig, TunnelKind};

use crate::run::{run_all, Run};

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

/// The local inspector: `http` and `start` serve one for the tunnels they run.
#[derive(clap::Args, Debug)]
pub struct InspectArgs {
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
}

impl InspectArgs {
    /// The first port to try, or `None` with `--inspect=false`.
    fn port(&self) -> Option<u16> {
        self.inspect.then_some(self.inspect_port)
    }
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
    #[command(flatten)]
    display: screen::DisplayArgs,
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
    #[command(flatten)]
    display: screen::DisplayArgs,
    #[command(flatten)]
    inspect: InspectArgs,
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
    ggrok_tunnel::memory::no_huge_pages();
    tracing_subscriber::fmt()
        .with_env_filter(ggrok_tunnel::logging::log_filter("warn"))
        .with_writer(printer::log_writer)
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
    config.capture_limit = args.inspect.capture_limit;
    config.heartbeat = Heartbeat {
        interval: Duration::from_secs(args.heartbeat_interval),
        timeout: Duration::from_secs(args.heartbeat_timeout),
    };
    let target = config.local.url();
    run_all(
        vec![Run {
            config,
            target,
            label: None,
            saved_id: None,
        }],
        args.display,
        args.inspect.port(),
    )
    .await
}

/// Runs saved tunnels side by side; with more than one, every line says which it is about.
async fn start(args: saved_cmds::StartArgs) -> anyhow::Result<ExitCode> {
    let (display, inspect) = (args.display, args.inspect.port());
    let capture_limit = args.inspect.capture_limit;
    let planned = saved_cmds::plan(args)?;
    let labelled = planned.len() > 1;
    let runs = planned
        .into_iter()
        .map(|p| Run {
            config: TunnelConfig {
                capture_limit,
                ..p.config
            },
            target: p.target,
            label: labelled.then_some(p.label),
            saved_id: Some(p.id),
        })
        .collect();
    run_all(runs, display, inspect).await
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
    run_all(
        vec![Run {
            config,
            target,
            label: None,
            saved_id: None,
        }],
        args.display,
        None,
    )
    .await
}
