//! `ggrok-server`: flags, logging and signals; [`ggrok_server::run`] does the work.

use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ggrok_server::{store::Store, Config, Tokens};
use ggrok_tunnel::protocol::Heartbeat;

/// The self-hosted ggrok tunnel server: routes NAME.DOMAIN to the client holding NAME.
#[derive(Parser, Debug)]
#[command(name = "ggrok-server", version)]
struct Args {
    /// Address to listen on [default: 0.0.0.0:$PORT when PORT is set, else 127.0.0.1:8080].
    #[arg(long, env = "GGROK_LISTEN")]
    listen: Option<SocketAddr>,
    /// Domain whose subdomains are tunnels (NAME.DOMAIN); the apex serves the control endpoint.
    #[arg(long, env = "GGROK_DOMAIN", default_value = "localhost")]
    domain: String,
    /// Token clients must present (repeatable). None: open mode, anyone may connect.
    #[arg(
        long = "token",
        env = "GGROK_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    tokens: Vec<String>,
    /// Seconds a dropped client's name stays held for it to reconnect.
    #[arg(long, env = "GGROK_RECONNECT_GRACE", default_value_t = 10)]
    reconnect_grace: u64,
    /// On SIGTERM, seconds that requests in flight may take to finish.
    #[arg(long, env = "GGROK_DRAIN_TIMEOUT", default_value_t = 10)]
    drain_timeout: u64,
    /// PEM certificate chain for HTTPS/wss (a wildcard *.DOMAIN certificate that also covers DOMAIN).
    #[arg(long, env = "GGROK_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GGROK_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Bearer token that enables Prometheus metrics at /metrics on the apex domain.
    #[arg(long, env = "GGROK_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// SQLite database of tokens and reserved subdomains (created if missing).
    #[arg(long, env = "GGROK_DB", default_value = "ggrok.db", global = true)]
    db: std::path::PathBuf,
    #[command(subcommand)]
    command: Option<Admin>,
    /// Seconds between pings to each client.
    #[arg(long, env = "GGROK_HEARTBEAT_INTERVAL", default_value_t = 20)]
    heartbeat_interval: u64,
    /// Seconds of silence after which a client counts as gone and its name is freed.
    #[arg(long, env = "GGROK_HEARTBEAT_TIMEOUT", default_value_t = 45)]
    heartbeat_timeout: u64,
}

/// Administration of the token database; takes effect on a running server without a restart.
#[derive(Subcommand, Debug)]
enum Admin {
    /// Manage client tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Reserve a subdomain so only one token may use it.
    Reserve {
        /// The subdomain.
        subdomain: String,
        /// Name of the token it is for.
        #[arg(long = "for")]
        token_name: String,
    },
    /// Free a reserved subdomain.
    Release {
        /// The subdomain.
        subdomain: String,
    },
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print it (only this once: it is stored hashed).
    Create {
        /// A name to recognise it by (a person or machine).
        #[arg(long)]
        name: String,
        /// Subdomain to reserve for it (repeatable).
        #[arg(long = "reserve")]
        reserve: Vec<String>,
    },
    /// List tokens (never the tokens themselves).
    List,
    /// Revoke a token: new sessions with it are refused at once.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn admin(db: &std::path::Path, command: Admin) -> anyhow::Result<()> {
    let store = Store::open(db).with_context(|| format!("cannot open {}", db.display()))?;
    match command {
        Admin::Token(TokenCommand::Create { name, reserve }) => {
            let token = store.create_token(&name, &reserve)?;
            eprintln!("token {name:?} created; it is shown only now:");
            println!("{token}");
        }
        Admin::Token(TokenCommand::List) => {
            println!("{:<24} {:<12} {:<10} RESERVED", "NAME", "CREATED", "STATUS");
            for t in store.list()? {
                let status = if t.revoked.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!(
                    "{:<24} {:<12} {:<10} {}",
                    t.name,
                    date(t.created),
                    status,
                    t.reserved.join(",")
                );
            }
        }
        Admin::Token(TokenCommand::Revoke { name }) => {
            store.revoke(&name)?;
            eprintln!("token {name:?} revoked");
        }
        Admin::Reserve {
            subdomain,
            token_name,
        } => {
            store.reserve(&subdomain, &token_name)?;
            eprintln!("{subdomain:?} reserved for token {token_name:?}");
        }
        Admin::Release { subdomain } => {
            if store.release(&subdomain)? {
                eprintln!("{subdomain:?} released");
            } else {
                anyhow::bail!("{subdomain:?} was not reserved");
            }
        }
    }
    Ok(())
}

/// `YYYY-MM-DD` (UTC) of a Unix time, by the days-from-civil inverse.
fn date(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let mut args = Args::parse();
    if let Some(command) = args.command.take() {
        return admin(&args.db, command);
    }
    let store = Store::open(&args.db).with_context(|| {
        format!(
            "cannot open the token database {} (set --db or GGROK_DB to a writable path)",
            args.db.display()
        )
    })?;
    let listen = match args.listen {
        Some(addr) => addr,
        None => match std::env::var("PORT") {
            Ok(port) => {
                let port: u16 = port
                    .trim()
                    .parse()
                    .with_context(|| format!("PORT={port:?} is not a port"))?;
                SocketAddr::from(([0, 0, 0, 0], port))
            }
            Err(_) => SocketAddr::from(([127, 0, 0, 1], 8080)),
        },
    };
    let config = Config {
        tokens: Tokens::from_plain(&args.tokens),
        heartbeat: Heartbeat {
            interval: Duration::from_secs(args.heartbeat_interval.max(1)),
            timeout: Duration::from_secs(args.heartbeat_timeout.max(1)),
        },
        reconnect_grace: Duration::from_secs(args.reconnect_grace),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        metrics_token: args
            .metrics_token
            .as_deref()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(ggrok_server::config::hash_token),
        ..Config::new(args.domain)
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ggrok_server::config::load_tls(cert, key)?),
        _ => None,
    };
    let config = Config {
        tls,
        store: Some(std::sync::Arc::new(store)),
        ..config
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        domain = %config.domain,
        tokens = config.tokens.len(),
        tls = config.tls.is_some(),
        "listening"
    );
    ggrok_server::run(listener, config, shutdown_signal()).await?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
