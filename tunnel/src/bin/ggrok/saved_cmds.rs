//! `ggrok config ...`, `ggrok list` and `ggrok start`: the servers and tunnels saved in the file
//! the desktop app uses too (`ggrok_tunnel::saved`), their tokens in the OS keyring.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use ggrok_tunnel::{
    protocol::validate_name,
    saved::{new_id, Data, Kind, SavedServer, SavedTunnel, Store, StoreError, BUILTIN_SERVER_ID},
    secrets::mask,
    terminal::escape_controls,
    tokens::{basic_auth_key, KeyringStore, SecretError, SecretStore, NO_KEYRING_ENV, SERVICE},
    LocalTarget, Secret, TunnelConfig,
};

use crate::upstream_args::{local_target, Target, UpstreamArgs};

/// `ggrok config`.
#[derive(Parser, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    command: ConfigCommand,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Save a server (or change the saved one with this URL); the token goes to the OS keyring.
    AddServer(AddServerArgs),
    /// Save a tunnel to start later with `ggrok start NAME` (or from the desktop app).
    AddTunnel(AddTunnelArgs),
    /// Forget a saved tunnel.
    RemoveTunnel {
        /// Its name, subdomain or id.
        name: String,
    },
    /// Forget a saved server and its token; refused while saved tunnels use it.
    RemoveServer {
        /// Its name, URL or id.
        server: String,
    },
    /// Print where the file of saved servers and tunnels is.
    Path,
}

#[derive(Args, Debug)]
struct AddServerArgs {
    /// The server, e.g. https://tunnel.example.com.
    url: String,
    /// Token the server expects (stored in the OS keyring, never in the file).
    #[arg(long)]
    token: Option<String>,
    /// Label for it (the URL's host if omitted).
    #[arg(long)]
    name: Option<String>,
}

#[derive(Args, Debug)]
struct AddTunnelArgs {
    /// Local service, as `ggrok http` takes it: a port, host:port, or http:// or https:// URL.
    #[arg(value_name = "PORT|URL", value_parser = crate::upstream_args::parse_target)]
    target: Target,
    /// A TCP tunnel, as `ggrok tcp` runs, instead of HTTP.
    #[arg(long, conflicts_with_all = ["subdomain", "basic_auth"])]
    tcp: bool,
    /// With --tcp: the public port to ask for, from the server's TCP port range (any free one,
    /// kept from then on, if omitted).
    #[arg(long, requires = "tcp", value_parser = clap::value_parser!(u16).range(1..))]
    remote_port: Option<u16>,
    /// The name to start it by (its subdomain, else the port, if omitted).
    #[arg(long)]
    name: Option<String>,
    /// Saved server (name, URL or id); the only saved one if omitted, `local` for the desktop
    /// app's built-in server.
    #[arg(long)]
    server: Option<String>,
    /// Fixed subdomain to ask for (random if omitted).
    #[arg(long)]
    subdomain: Option<String>,
    /// Host of the local service.
    #[arg(long, default_value = "localhost")]
    local_host: String,
    /// Allow only these visitor addresses (IP or CIDR, repeatable).
    #[arg(long = "allow-ip", value_name = "CIDR")]
    allow_ips: Vec<String>,
    /// Require visitors to log in with HTTP Basic auth (kept in the OS keyring, as the app
    /// keeps it).
    #[arg(long, value_name = "USER:PASSWORD")]
    basic_auth: Option<String>,
    #[command(flatten)]
    upstream: UpstreamArgs,
    /// Start it when the desktop app starts.
    #[arg(long)]
    start_on_launch: bool,
}

/// `ggrok list`.
#[derive(Parser, Debug)]
pub struct ListArgs {}

/// `ggrok start`.
#[derive(Parser, Debug)]
pub struct StartArgs {
    /// Saved tunnels to start, by name, subdomain or id.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    names: Vec<String>,
    /// Start every saved tunnel.
    #[arg(long)]
    all: bool,
    /// Token for the tunnels' server, instead of the one in the keyring (headless machines).
    #[arg(long, env = "GGROK_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Extra CA certificate (PEM) to trust, for a server with a private or self-signed CA.
    #[arg(long, env = "GGROK_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// What is shown while they run.
    #[command(flatten)]
    pub display: crate::screen::DisplayArgs,
    #[command(flatten)]
    pub inspect: crate::InspectArgs,
}

/// The keyring, or why there is none. The CLI does not fall back to memory the way the app
/// does: a token it cannot keep is reported, not held for a run that ends at once.
fn keyring() -> Result<KeyringStore, SecretError> {
    if std::env::var(NO_KEYRING_ENV).as_deref() == Ok("1") {
        return Err(SecretError(format!("{NO_KEYRING_ENV}=1")));
    }
    Ok(KeyringStore::new(SERVICE))
}

fn load() -> Store {
    let (store, warning) = Store::load(Store::configured_path());
    if let Some(w) = warning {
        eprintln!("ggrok: {w}");
    }
    store
}

/// Runs `ggrok config ...`.
pub fn config(args: ConfigArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        ConfigCommand::AddServer(a) => add_server(a),
        ConfigCommand::AddTunnel(a) => add_tunnel(a),
        ConfigCommand::RemoveTunnel { name } => {
            let mut store = load();
            let id = find(store.fresh(), &name)?.id.clone();
            store.update(|d| d.tunnels.retain(|t| t.id != id))?;
            // Its Basic auth, if the app set one; a missing keyring leaves nothing to remove.
            if let Ok(k) = keyring() {
                let _ = k.delete(&basic_auth_key(&id));
            }
            eprintln!("ggrok: removed tunnel {}", escape_controls(&name));
            Ok(ExitCode::SUCCESS)
        }
        ConfigCommand::RemoveServer { server } => remove_server(&server),
        ConfigCommand::Path => {
            println!("{}", Store::configured_path().display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn add_server(a: AddServerArgs) -> anyhow::Result<ExitCode> {
    let url = a.url.trim().trim_end_matches('/').to_owned();
    TunnelConfig::new(url.clone(), 1).connect_url()?;
    let name = match a.name {
        Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
        _ => url
            .split_once("://")
            .map_or(url.as_str(), |(_, h)| h)
            .to_owned(),
    };
    let mut store = load();
    let (id, added) = store.update(|d| match d.servers.iter_mut().find(|s| s.url == url) {
        Some(s) => {
            s.name = name.clone();
            (s.id.clone(), false)
        }
        None => {
            let id = new_id();
            d.servers.push(SavedServer {
                id: id.clone(),
                name: name.clone(),
                url: url.clone(),
                unknown: Default::default(),
            });
            (id, true)
        }
    })?;
    let what = if added { "saved" } else { "updated" };
    let Some(token) = a.token.filter(|t| !t.trim().is_empty()) else {
        eprintln!("ggrok: {what} server {name} ({url})");
        return Ok(ExitCode::SUCCESS);
    };
    match keyring().and_then(|k| k.set(&id, token.trim())) {
        Ok(()) => {
            eprintln!(
                "ggrok: {what} server {name} ({url}), token {} in the system keyring",
                mask(token.trim())
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => {
            eprintln!(
                "ggrok: {what} server {name} ({url}) but not its token: the system keyring is not \
                 available ({err}). Pass --token or set GGROK_TOKEN when starting its tunnels."
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

fn remove_server(wanted: &str) -> anyhow::Result<ExitCode> {
    let mut store = load();
    let data = store.fresh();
    let id = find_server(data, wanted)?;
    if id == BUILTIN_SERVER_ID {
        bail!("the desktop app's built-in server cannot be removed");
    }
    let label = server_label(data, &id);
    let users: Vec<&str> = data
        .tunnels
        .iter()
        .filter(|t| t.server_id == id)
        .map(|t| t.label())
        .collect();
    if !users.is_empty() {
        bail!(
            "saved tunnels use server {}: {} (remove them first with `ggrok config remove-tunnel NAME`)",
            escape_controls(&label),
            escape_controls(&users.join(", "))
        );
    }
    store.update(|d| d.servers.retain(|s| s.id != id))?;
    // A missing keyring has no token of it to remove.
    if let Ok(k) = keyring() {
        let _ = k.delete(&id);
    }
    eprintln!("ggrok: removed server {}", escape_controls(&label));
    Ok(ExitCode::SUCCESS)
}

fn add_tunnel(a: AddTunnelArgs) -> anyhow::Result<ExitCode> {
    let subdomain = a.subdomain.filter(|s| !s.is_empty());
    if let Some(s) = &subdomain {
        validate_name(s).with_context(|| format!("subdomain {s:?}"))?;
    }
    if let Some(bad) = a.allow_ips.iter().find(|s| s.trim().is_empty()) {
        bail!("--allow-ip {bad:?} is empty");
    }
    let basic_auth = a.basic_auth.filter(|s| !s.is_empty());
    if let Some(auth) = &basic_auth {
        if !auth.contains(':') || auth.starts_with(':') {
            bail!("--basic-auth takes USER:PASSWORD");
        }
    }
    let port = a.target.port;
    let local = local_target(&a.target, a.local_host, a.upstream)?;
    if a.tcp && local != LocalTarget::new(local.host.clone(), port) {
        bail!(
            "--tcp forwards raw TCP: an https:// target, --upstream-insecure, \
             --upstream-protocol and --host-header are for HTTP tunnels"
        );
    }
    let name = a
        .name
        .filter(|n| !n.trim().is_empty())
        .map(|n| n.trim().to_owned())
        .or_else(|| subdomain.clone())
        .unwrap_or_else(|| port.to_string());
    let mut store = load();
    let server_id = match &a.server {
        Some(s) => find_server(store.fresh(), s)?,
        None => match store.fresh().servers.as_slice() {
            [one] => one.id.clone(),
            [] => bail!(
                "no saved server: add one with `ggrok config add-server URL`, or pass \
                 --server local for the desktop app's built-in server"
            ),
            _ => bail!("several saved servers: choose one with --server NAME"),
        },
    };
    if store.fresh().tunnels.iter().any(|x| x.answers_to(&name)) {
        bail!("a saved tunnel is already called {name:?}: choose another --name");
    }
    let mut t = SavedTunnel::new(new_id(), server_id, local.host.clone(), port);
    t.set_local_target(&local);
    if a.tcp {
        t.kind = Kind::Tcp;
        t.remote_port = a.remote_port;
    }
    t.name = Some(name.clone());
    t.subdomain = subdomain;
    t.allow_ips = a.allow_ips;
    t.start_on_launch = a.start_on_launch;
    // The password first: without a keyring to keep it, nothing is saved.
    if let Some(auth) = &basic_auth {
        keyring()
            .and_then(|k| k.set(&basic_auth_key(&t.id), auth))
            .map_err(|err| {
                anyhow::anyhow!(
                    "tunnel {name:?} not saved: the system keyring, where its Basic auth \
                     password would be kept, is not available ({err})"
                )
            })?;
    }
    let id = t.id.clone();
    let saved = store.update(|d| {
        if d.tunnels.iter().any(|x| x.answers_to(&name)) {
            bail!("a saved tunnel is already called {name:?}: choose another --name");
        }
        d.tunnels.push(t);
        Ok(())
    });
    if !matches!(saved, Ok(Ok(()))) && basic_auth.is_some() {
        if let Ok(k) = keyring() {
            let _ = k.delete(&basic_auth_key(&id));
        }
    }
    saved??;
    eprintln!(
        "ggrok: saved tunnel {}; start it with `ggrok start {}`",
        escape_controls(&name),
        escape_controls(&name)
    );
    Ok(ExitCode::SUCCESS)
}

/// A saved server by name, URL or id (`local`: the app's built-in one).
fn find_server(data: &Data, wanted: &str) -> anyhow::Result<String> {
    if wanted == BUILTIN_SERVER_ID {
        return Ok(BUILTIN_SERVER_ID.to_owned());
    }
    let url = wanted.trim_end_matches('/');
    let hits: Vec<_> = data
        .servers
        .iter()
        .filter(|s| s.id == wanted || s.name == wanted || s.url == url)
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => bail!("no saved server {wanted:?} (see `ggrok list`)"),
        _ => bail!("several saved servers match {wanted:?}: use its URL"),
    }
}

/// A saved tunnel by name, subdomain or id.
fn find<'a>(data: &'a Data, wanted: &str) -> anyhow::Result<&'a SavedTunnel> {
    let hits: Vec<_> = data
        .tunnels
        .iter()
        .filter(|t| t.answers_to(wanted))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => bail!(
            "no saved tunnel {:?} (see `ggrok list`)",
            escape_controls(wanted)
        ),
        _ => bail!(
            "several saved tunnels answer to {:?}: start it by id (see `ggrok list`)",
            escape_controls(wanted)
        ),
    }
}

fn server_label(data: &Data, id: &str) -> String {
    if id == BUILTIN_SERVER_ID {
        return format!("local ({})", data.builtin_server_url());
    }
    data.servers
        .iter()
        .find(|s| s.id == id)
        .map(|s| s.url.clone())
        .unwrap_or_else(|| "(deleted server)".to_owned())
}

/// Runs `ggrok list`: saved tunnels, then saved servers.
pub fn list(_: ListArgs) -> anyhow::Result<ExitCode> {
    let mut store = load();
    print!("{}", listing(store.fresh()));
    Ok(ExitCode::SUCCESS)
}

/// The table `ggrok list` prints. The file may have been written by anything: it is escaped.
fn listing(data: &Data) -> String {
    use std::fmt::Write;
    let mut rows = vec![[
        "NAME".to_owned(),
        "LOCAL".to_owned(),
        "SUBDOMAIN".to_owned(),
        "SERVER".to_owned(),
        "ID".to_owned(),
    ]];
    for t in &data.tunnels {
        rows.push([
            t.label().to_owned(),
            match t.kind {
                Kind::Http => t.local_label(),
                Kind::Tcp => format!("tcp://{}", t.local_label()),
            },
            t.subdomain.clone().unwrap_or_else(|| "-".to_owned()),
            server_label(data, &t.server_id),
            t.id.clone(),
        ]);
    }
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| escape_controls(c).into_owned()).collect())
        .collect();
    let mut out = String::new();
    if data.tunnels.is_empty() {
        out.push_str("no saved tunnels (add one with `ggrok config add-tunnel PORT`)\n");
    } else {
        let widths: Vec<usize> = (0..5)
            .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
            .collect();
        for r in &rows {
            let mut line = String::new();
            for (i, cell) in r.iter().enumerate() {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    out.push_str("\nservers:\n");
    for s in &data.servers {
        let _ = writeln!(
            out,
            "  {}  {}",
            escape_controls(&s.name),
            escape_controls(&s.url)
        );
    }
    let _ = writeln!(
        out,
        "  local  {} (the desktop app's built-in server)",
        data.builtin_server_url()
    );
    out
}

/// A saved tunnel made ready to run: its config and the label its output lines carry.
pub struct Planned {
    /// Its name in the listing.
    pub label: String,
    /// What to run.
    pub config: TunnelConfig,
    /// `http://host:port`, for the "forwarding" line.
    pub target: String,
    /// Its id in the file, where the name the server gives it is remembered.
    pub id: String,
}

/// Remembers the name (or port) the server gave saved tunnel `id` online at `url`, so that the
/// next `ggrok start` (or the app) asks for it again.
pub fn remember_online(id: &str, url: &str, name: &str) -> Result<(), StoreError> {
    Store::load(Store::configured_path())
        .0
        .remember_online(id, url, name)
        .map(drop)
}

/// The tunnels `ggrok start` runs, with tokens from `--token` or the keyring.
pub fn plan(args: StartArgs) -> anyhow::Result<Vec<Planned>> {
    let mut store = load();
    let data = store.fresh().clone();
    let chosen: Vec<&SavedTunnel> = if args.all {
        if data.tunnels.is_empty() {
            bail!("no saved tunnels (add one with `ggrok config add-tunnel PORT`)");
        }
        data.tunnels.iter().collect()
    } else {
        let mut chosen: Vec<&SavedTunnel> = Vec::new();
        for name in &args.names {
            let t = find(&data, name)?;
            if !chosen.iter().any(|c| c.id == t.id) {
                chosen.push(t);
            }
        }
        chosen
    };
    let token = args.token.filter(|t| !t.is_empty()).map(Secret::new);
    let mut secrets = SavedSecrets::new();
    chosen
        .into_iter()
        .map(|t| planned(&data, t, &mut secrets, token.clone(), args.ca_cert.clone()))
        .collect()
}

/// Saved tunnel `wanted` (name, subdomain or id) made ready to run, for the inspector's
/// `POST /api/tunnels`: its server's token from the keyring, else `token` (the run's own)
/// when it is the run's server.
pub fn plan_saved(
    wanted: &str,
    token: Option<(String, Secret)>,
    ca_cert: Option<PathBuf>,
) -> anyhow::Result<Planned> {
    let data = load().fresh().clone();
    let t = find(&data, wanted)?;
    let mut secrets = SavedSecrets::new();
    let mut p = planned(&data, t, &mut secrets, None, ca_cert)?;
    if p.config.token.is_none() {
        p.config.token = token
            .filter(|(server, _)| *server == p.config.server)
            .map(|(_, t)| t);
    }
    Ok(p)
}

/// Tokens and Basic-auth passwords from the keyring, saying once that it is not available.
struct SavedSecrets {
    keyring: Result<KeyringStore, SecretError>,
    reported: bool,
}

impl SavedSecrets {
    fn new() -> Self {
        Self {
            keyring: keyring(),
            reported: false,
        }
    }

    fn get(&mut self, key: &str) -> Option<Secret> {
        match &self.keyring {
            Ok(k) => match k.get(key) {
                Ok(v) => v.map(Secret::new),
                Err(err) => {
                    if !self.reported {
                        self.reported = true;
                        eprintln!(
                            "ggrok: the system keyring is not available ({err}); starting \
                             without saved tokens or Basic auth passwords. Pass --token or set \
                             GGROK_TOKEN if the server needs one."
                        );
                    }
                    None
                }
            },
            // Asked not to use it: say nothing.
            Err(_) => None,
        }
    }
}

/// Saved tunnel `t` made ready to run: `token` if given, else its server's from the keyring;
/// its Basic auth from the keyring either way.
fn planned(
    data: &Data,
    t: &SavedTunnel,
    secrets: &mut SavedSecrets,
    token: Option<Secret>,
    ca_cert: Option<PathBuf>,
) -> anyhow::Result<Planned> {
    let server = if t.server_id == BUILTIN_SERVER_ID {
        data.builtin_server_url()
    } else {
        data.servers
            .iter()
            .find(|s| s.id == t.server_id)
            .map(|s| s.url.clone())
            .with_context(|| {
                format!(
                    "tunnel {:?}: its server was deleted",
                    escape_controls(t.label())
                )
            })?
    };
    let mut config = TunnelConfig::new(server, t.local_port);
    config.token = token.or_else(|| secrets.get(&t.server_id));
    config.basic_auth = secrets.get(&basic_auth_key(&t.id));
    config.allow_ips = t.allow_ips.clone();
    config.ca_cert = ca_cert;
    // Not the app's id: were both to run it, the server would let each replace the other in
    // turn. The server still hands a held name over between them (same token).
    config.client_id = Some(format!("ggrok-cli-{}", t.id));
    config.local = t.local_target().map_err(|e| {
        anyhow::anyhow!(
            "tunnel {:?}: its host_header: {e}",
            escape_controls(t.label())
        )
    })?;
    let ask = t.ask();
    (config.kind, config.subdomain, config.given) = (ask.kind, ask.subdomain, ask.given);
    let target = match t.kind {
        Kind::Http => config.local.url(),
        Kind::Tcp => format!("tcp://{}", config.local.authority()),
    };
    Ok(Planned {
        label: escape_controls(t.label()).into_owned(),
        id: t.id.clone(),
        target,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listing_is_a_table_and_escapes_what_the_file_says() {
        let mut data = Data::default();
        data.servers.push(SavedServer {
            id: "s1".into(),
            name: "work".into(),
            url: "https://tunnel.example.com".into(),
            unknown: Default::default(),
        });
        let mut web = SavedTunnel::new("t1".into(), "s1".into(), "localhost".into(), 3000);
        web.name = Some("web".into());
        web.subdomain = Some("app".into());
        let mut other = SavedTunnel::new("t2".into(), "local".into(), "127.0.0.1".into(), 8080);
        other.given_name = Some("x\u{1b}[2Jy".into());
        other.upstream.tls = true;
        let mut ssh = SavedTunnel::new("t3".into(), "s1".into(), "::1".into(), 22);
        ssh.name = Some("ssh".into());
        ssh.kind = Kind::Tcp;
        data.tunnels = vec![web, other, ssh];
        assert_eq!(
            listing(&data),
            "NAME         LOCAL                   SUBDOMAIN  SERVER                         ID\n\
             web          localhost:3000          app        https://tunnel.example.com     t1\n\
             x\\u{1b}[2Jy  https://127.0.0.1:8080  -          local (http://localhost:7070)  t2\n\
             ssh          tcp://[::1]:22          -          https://tunnel.example.com     t3\n\
             \n\
             servers:\n  \
             work  https://tunnel.example.com\n  \
             local  http://localhost:7070 (the desktop app's built-in server)\n"
        );
    }
}
