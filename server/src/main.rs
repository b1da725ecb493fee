//! `ggrok-server`: flags, logging and signals; [`ggrok_server::run`] does the work.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use ggrok_server::{
    cluster::{node::Membership, EtcdStore, Node},
    settings::Settings,
    store::{Store, TokenStore},
    Config,
};

/// The self-hosted ggrok tunnel server: routes NAME.DOMAIN to the client holding NAME.
///
/// Settings come from flags, then GGROK_* environment variables (and PORT), then the TOML file
/// given with --config, in that order.
#[derive(Parser, Debug)]
#[command(name = "ggrok-server", version)]
struct Args {
    /// TOML file with any of the settings below (keys as the flags, with underscores).
    #[arg(long, env = "GGROK_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,
    /// Log format on stderr.
    #[arg(long, env = "GGROK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Option<Admin>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Administration of the token database (or, with --cluster, of the cluster's store in etcd);
/// takes effect on a running server without a restart.
#[derive(Subcommand, Debug)]
enum Admin {
    /// Manage client tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Reserve a subdomain or a TCP port so only one token may use it.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["subdomain", "port"]))]
    Reserve {
        /// The subdomain.
        subdomain: Option<String>,
        /// A TCP port (from --tcp-ports) instead of a subdomain.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// Name of the token it is for.
        #[arg(long = "for", visible_alias = "token-name")]
        token_name: String,
    },
    /// Free a reserved subdomain or TCP port.
    #[command(group = clap::ArgGroup::new("what").required(true).args(["subdomain", "port"]))]
    Release {
        /// The subdomain.
        subdomain: Option<String>,
        /// A TCP port instead of a subdomain.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
    },
    /// Check the settings (flags, environment, --config file) and explain any problem.
    CheckConfig,
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
    /// Revoke a token: new sessions with it are refused and open ones ended at once.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn admin(store: &dyn TokenStore, command: Admin) -> anyhow::Result<()> {
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
            port,
            token_name,
        } => match (subdomain, port) {
            (Some(subdomain), _) => {
                store.reserve(&subdomain, &token_name)?;
                eprintln!("{subdomain:?} reserved for token {token_name:?}");
            }
            (None, Some(port)) => {
                store.reserve_port(port, &token_name)?;
                eprintln!("port {port} reserved for token {token_name:?}");
            }
            (None, None) => unreachable!("clap requires one"),
        },
        Admin::CheckConfig => {}
        Admin::Release { subdomain, port } => {
            let (released, what) = match (subdomain, port) {
                (Some(subdomain), _) => (store.release(&subdomain)?, format!("{subdomain:?}")),
                (None, Some(port)) => (store.release_port(port)?, format!("port {port}")),
                (None, None) => unreachable!("clap requires one"),
            };
            if released {
                eprintln!("{what} released");
            } else {
                anyhow::bail!("{what} was not reserved");
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

// Many small short-lived allocations per request (headers, frames, bodies): mimalloc takes
// them at a fraction of the system allocator's cost; see docs/benchmarks.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    ggrok_tunnel::memory::no_huge_pages();
    let args = Args::parse();
    // Trace-level tungstenite would print visitors' bytes and clients' upgrade requests.
    let filter = ggrok_tunnel::logging::log_filter("info");

    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    let file = args.config.as_deref().map(Settings::from_file).transpose();
    // The runtime's size is the one setting needed before the runtime exists; 0 is reported
    // with the other problems by `resolve`.
    let workers = args
        .settings
        .workers
        .or_else(|| file.as_ref().ok()?.as_ref()?.workers)
        .filter(|&n| n > 0);
    // One thread per core by default. With more than one, connections are served on shards
    // (single-threaded runtimes, a tunnel's visitors on its session's thread) and this thread
    // accepts them and does the background work; with one, it does everything.
    let threads = workers.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let needs_shards = threads > 1 && args.command.is_none();
    let result = (|| {
        let shards = if needs_shards {
            Some(std::sync::Arc::new(ggrok_server::shard::Shards::start(
                threads,
            )?))
        } else {
            None
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(serve(args, file, shards))
    })();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ggrok-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(
    args: Args,
    file: Result<Option<Settings>, ggrok_server::settings::FileError>,
    shards: Option<std::sync::Arc<ggrok_server::shard::Shards>>,
) -> anyhow::Result<std::process::ExitCode> {
    let settings = match (file, &args.command) {
        (Ok(file), _) => args.settings.or(file.unwrap_or_default()),
        (Err(e), Some(Admin::CheckConfig)) => {
            println!("error: {e}");
            return Ok(std::process::ExitCode::FAILURE);
        }
        (Err(e), _) => return Err(e.into()),
    };
    let port = std::env::var("PORT").ok();
    match args.command {
        Some(Admin::CheckConfig) => {
            let (ok, report) = settings.check(port.as_deref());
            print!("{report}");
            return Ok(if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            });
        }
        Some(command) => {
            let endpoints = settings.cluster_endpoints().map_err(anyhow::Error::msg)?;
            let store: std::sync::Arc<dyn TokenStore> = match endpoints {
                Some(endpoints) => EtcdStore::connect(endpoints)
                    .await
                    .context("cannot reach the cluster's etcd")?,
                None => {
                    let db = settings.db.unwrap_or_else(|| "ggrok.db".into());
                    let store = Store::open(&db)
                        .with_context(|| format!("cannot open {}", db.display()))?;
                    std::sync::Arc::new(store)
                }
            };
            admin(&*store, command)?;
            return Ok(std::process::ExitCode::SUCCESS);
        }
        None => {}
    }
    let resolved = match settings.resolve(port.as_deref()) {
        Ok(r) => r,
        Err(problems) => anyhow::bail!("invalid settings:\n  {}", problems.join("\n  ")),
    };
    let listen = resolved.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    // Listening on port 0 (tests), the other nodes need the port it got.
    let bound = listener.local_addr()?;
    let (store, node): (std::sync::Arc<dyn TokenStore>, _) = match resolved.cluster {
        Some(cluster) => {
            let joined = async {
                let store = EtcdStore::connect(cluster.endpoints.clone()).await?;
                let advertise = match settings.advertise {
                    None if listen.port() == 0 => {
                        let scheme = match resolved.config.tls {
                            Some(_) => "https",
                            None => "http",
                        };
                        format!("{scheme}://{bound}")
                    }
                    _ => cluster.advertise,
                };
                let membership = Membership {
                    advertise,
                    secret: cluster.secret,
                    lease_ttl: cluster.lease_ttl,
                    peer_roots: cluster.peer_roots,
                };
                let node = Node::join(store.clone(), membership).await?;
                Ok::<_, ggrok_server::store::StoreError>((store, node))
            };
            let (store, node) = joined.await.with_context(|| {
                format!(
                    "cannot join the cluster on etcd {}",
                    cluster.endpoints.join(",")
                )
            })?;
            (store, Some(node))
        }
        None => {
            let store = Store::open(&resolved.db).with_context(|| {
                format!(
                    "cannot open the token database {} (set --db or GGROK_DB to a writable path)",
                    resolved.db.display()
                )
            })?;
            (std::sync::Arc::new(store), None)
        }
    };
    let config = Config {
        store: Some(store),
        cluster: node,
        ..resolved.config
    };
    tracing::info!(
        addr = %listener.local_addr()?,
        domain = %config.domain,
        tokens = config.tokens.len(),
        tls = config.tls.is_some(),
        "listening"
    );
    ggrok_server::run_sharded(listener, config, shutdown_signal(), shards).await?;
    Ok(std::process::ExitCode::SUCCESS)
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
