//! What the commands and the tray act on: saved data, tokens and running tunnels together.
//! Plain Rust (no Tauri types), so every user action is testable without a window.

use std::{sync::Mutex, time::Duration};

use ggrok_tunnel::{
    protocol::validate_name,
    saved::{new_id, Kind, SavedServer, SavedTunnel, Settings, Store, BUILTIN_SERVER_ID},
    secrets::mask,
    tokens::{basic_auth_key, Secrets, Storage},
    HostHeader, Secret, Status, TunnelConfig,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    error::Error,
    listening::{listening, ListeningPort},
    server_check::{self, ServerCheck},
    tunnels::{ConnectionRow, Detail, Manager, Spec, Summary, TRAFFIC_CAP},
};

/// How long `expose`/`start` wait for the URL before answering with the current status (the
/// UI keeps following status events after that).
pub const ONLINE_WAIT: Duration = Duration::from_secs(5);

/// A saved tunnel with its live state, as the UI lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelView {
    /// Saved id.
    pub id: String,
    /// HTTP or TCP.
    pub kind: Kind,
    /// A TCP tunnel's public port as asked for; `None` lets the server pick one.
    pub remote_port: Option<u16>,
    /// The port the server last gave a TCP tunnel without a fixed one.
    pub given_port: Option<u16>,
    /// Server id.
    pub server_id: String,
    /// Server label.
    pub server_name: String,
    /// Requested subdomain.
    pub subdomain: Option<String>,
    /// Local host.
    pub local_host: String,
    /// Local port.
    pub local_port: u16,
    /// The local side in a line: `host:port`, `https://host:port`, `tcp://host:port`.
    pub target: String,
    /// Start on launch.
    pub start_on_launch: bool,
    /// Engine status (`stopped` when not running).
    pub status: Status,
    /// Requests since the last start (HTTP tunnels).
    pub requests: u64,
    /// Visitor connections since the last start (TCP tunnels).
    pub connections: u64,
    /// Set while nothing answers on the local port.
    pub local_warning: Option<String>,
    /// The name the server last gave it, when it has no fixed subdomain.
    pub given_name: Option<String>,
    /// The Basic-auth user visitors must log in as (the password is never sent to the UI).
    pub basic_auth_user: Option<String>,
    /// Visitor addresses allowed; empty lets everyone in.
    pub allow_ips: Vec<String>,
    /// Pass the public Host header through.
    pub keep_host: bool,
    /// TLS to the local service.
    pub local_tls: bool,
    /// With `local_tls`, any certificate accepted.
    pub upstream_insecure: bool,
    /// HTTP/2 to the local service.
    pub upstream_http2: bool,
    /// A `Host` value the local service gets.
    pub host_header: Option<String>,
}

impl TunnelView {
    /// The public URL when online.
    pub fn url(&self) -> Option<&str> {
        match &self.status {
            Status::Online { url, .. } => Some(url),
            _ => None,
        }
    }

    /// A short label: the public name (`tcp:PORT` for a TCP tunnel), else the local target.
    pub fn label(&self) -> String {
        if self.kind == Kind::Tcp {
            return match (&self.status, self.remote_port.or(self.given_port)) {
                (Status::Online { name, .. }, _) => name.clone(),
                (_, Some(port)) => format!("tcp:{port}"),
                _ => format!("tcp {}", self.target),
            };
        }
        match (&self.status, &self.subdomain, &self.given_name) {
            (Status::Online { name, .. }, _, _) => name.clone(),
            (_, Some(s), _) | (_, None, Some(s)) => s.clone(),
            _ => self.target.clone(),
        }
    }
}

/// A server as the settings list shows it. The token appears only masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerView {
    /// Stable id; tunnels refer to it, and the keyring keeps its token under it.
    pub id: String,
    /// The user's label for it, e.g. "work".
    pub name: String,
    /// Scheme and host (and port), without a trailing slash.
    pub url: String,
    /// Whether this is the in-process server (not editable).
    pub builtin: bool,
    /// Masked token, if one is set.
    pub token_masked: Option<String>,
    /// Where the token is kept.
    pub token_storage: Option<Storage>,
}

/// Startup facts for the UI.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppInfo {
    /// URL of the in-process server.
    pub builtin_server_url: String,
    /// Things the user must know (settings moved aside, keyring missing).
    pub warnings: Vec<String>,
    /// Rows kept per tunnel.
    pub traffic_cap: usize,
    /// Whether tokens go to the system keyring (else memory, this run only).
    pub keyring_available: bool,
}

/// Expose / edit form input.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelInput {
    /// HTTP (the default) or TCP.
    #[serde(default)]
    pub kind: Kind,
    /// A TCP tunnel's public port; none lets the server pick. Wide type, as `local_port`.
    #[serde(default)]
    pub remote_port: Option<i64>,
    /// Server id.
    pub server_id: String,
    /// Optional subdomain (HTTP tunnels).
    #[serde(default)]
    pub subdomain: Option<String>,
    /// Local host (default `localhost`).
    #[serde(default)]
    pub local_host: Option<String>,
    /// Local port; wide type so out-of-range input is explained rather than a decode error.
    pub local_port: i64,
    /// Start on launch.
    #[serde(default)]
    pub start_on_launch: bool,
    /// `user:password` visitors must give: `None` keeps the current one, `""` removes it.
    #[serde(default)]
    pub basic_auth: Option<String>,
    /// Visitor addresses allowed (IP or CIDR); empty lets everyone in.
    #[serde(default)]
    pub allow_ips: Vec<String>,
    /// Pass the public Host header through.
    #[serde(default)]
    pub keep_host: bool,
    /// TLS to the local service (an `https://` one).
    #[serde(default)]
    pub local_tls: bool,
    /// With `local_tls`, accept its certificate whoever signed it (self-signed ones).
    #[serde(default)]
    pub upstream_insecure: bool,
    /// HTTP/2 to the local service (gRPC).
    #[serde(default)]
    pub upstream_http2: bool,
    /// A `Host` value for the local service; empty rewrites it to the local `host:port`
    /// (`keep_host` wins).
    #[serde(default)]
    pub host_header: Option<String>,
}

/// Server form input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInput {
    /// Existing id to edit, none to add.
    #[serde(default)]
    pub id: Option<String>,
    /// The user's label for it.
    pub name: String,
    /// As typed; trimmed and checked (scheme and host only) on save.
    pub url: String,
    /// `None` keeps the current token, `""` removes it, anything else replaces it.
    #[serde(default)]
    pub token: Option<String>,
}

/// The app's state.
pub struct AppState {
    store: Mutex<Store>,
    secrets: Secrets,
    manager: Manager,
    builtin_url: String,
    warnings: Mutex<Vec<String>>,
    changed: broadcast::Sender<()>,
}

impl AppState {
    /// State over `store` and `secrets`, with the in-process server at `builtin_url`.
    pub fn new(
        store: Store,
        store_warning: Option<String>,
        secrets: Secrets,
        manager: Manager,
        builtin_url: String,
    ) -> Self {
        Self {
            store: Mutex::new(store),
            secrets,
            manager,
            builtin_url,
            warnings: Mutex::new(store_warning.into_iter().collect()),
            changed: broadcast::channel(16).0,
        }
    }

    /// The tunnel manager (for its event stream).
    pub fn manager(&self) -> &Manager {
        &self.manager
    }

    /// Fires when saved tunnels or servers change.
    pub fn subscribe_changes(&self) -> broadcast::Receiver<()> {
        self.changed.subscribe()
    }

    fn notify(&self) {
        let _ = self.changed.send(());
    }

    /// Re-reads the saved file if something else (the `ggrok` CLI) changed it, and then tells
    /// the window; whether it had changed.
    pub fn reload_if_changed(&self) -> bool {
        let changed = {
            let mut store = self.store.lock().expect("store lock");
            let changed = store.changed_on_disk();
            if changed {
                store.fresh();
            }
            changed
        };
        if changed {
            self.notify();
        }
        changed
    }

    /// Startup facts and warnings.
    pub fn info(&self) -> AppInfo {
        let mut warnings = self.warnings.lock().expect("warnings lock").clone();
        let problem = self.secrets.keyring_problem();
        let keyring_available = problem.is_none();
        warnings.extend(problem);
        AppInfo {
            builtin_server_url: self.builtin_url.clone(),
            warnings,
            traffic_cap: TRAFFIC_CAP,
            keyring_available,
        }
    }

    fn saved(&self, id: &str) -> Result<SavedTunnel, Error> {
        self.store
            .lock()
            .expect("store lock")
            .fresh()
            .tunnels
            .iter()
            .find(|t| t.id == id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("tunnel {id}")))
    }

    fn server_url_and_name(&self, server_id: &str) -> Result<(String, String), Error> {
        if server_id == BUILTIN_SERVER_ID {
            return Ok((self.builtin_url.clone(), "This computer".to_owned()));
        }
        self.store
            .lock()
            .expect("store lock")
            .fresh()
            .servers
            .iter()
            .find(|s| s.id == server_id)
            .map(|s| (s.url.clone(), s.name.clone()))
            .ok_or_else(|| Error::invalid("serverId", "choose a saved server"))
    }

    fn view(&self, t: &SavedTunnel) -> TunnelView {
        let state = self.manager.state(&t.id);
        let server_name = self
            .server_url_and_name(&t.server_id)
            .map(|(_, n)| n)
            .unwrap_or_else(|_| "(deleted server)".to_owned());
        TunnelView {
            id: t.id.clone(),
            kind: t.kind,
            remote_port: t.remote_port,
            given_port: t.given_port,
            server_id: t.server_id.clone(),
            server_name,
            subdomain: t.subdomain.clone(),
            local_host: t.local_host.clone(),
            local_port: t.local_port,
            target: t.local_label(),
            start_on_launch: t.start_on_launch,
            status: state.status,
            requests: state.requests,
            connections: state.connections,
            local_warning: state.local_warning,
            given_name: t.given_name.clone(),
            basic_auth_user: self
                .secrets
                .get(&basic_auth_key(&t.id))
                .and_then(|(s, _)| s.expose().split_once(':').map(|(u, _)| u.to_owned())),
            allow_ips: t.allow_ips.clone(),
            keep_host: t.keep_host,
            local_tls: t.upstream.tls,
            upstream_insecure: t.upstream.insecure,
            upstream_http2: t.upstream.http2,
            host_header: t.upstream.host_header.clone(),
        }
    }

    /// A snapshot of the saved tunnels, so no lock is held while they are used.
    fn saved_tunnels(&self) -> Vec<SavedTunnel> {
        self.store
            .lock()
            .expect("store lock")
            .fresh()
            .tunnels
            .clone()
    }

    /// Saved tunnels with live state, in saved order.
    pub fn tunnels(&self) -> Vec<TunnelView> {
        let saved = self.saved_tunnels();
        saved.iter().map(|t| self.view(t)).collect()
    }

    /// One tunnel.
    pub fn tunnel(&self, id: &str) -> Result<TunnelView, Error> {
        Ok(self.view(&self.saved(id)?))
    }

    /// The built-in server first, then the user's.
    pub fn servers(&self) -> Vec<ServerView> {
        let saved = self
            .store
            .lock()
            .expect("store lock")
            .fresh()
            .servers
            .clone();
        let mut out = vec![ServerView {
            id: BUILTIN_SERVER_ID.to_owned(),
            name: "This computer".to_owned(),
            url: self.builtin_url.clone(),
            builtin: true,
            token_masked: None,
            token_storage: None,
        }];
        out.extend(saved.into_iter().map(|s| {
            let token = self.secrets.get(&s.id);
            ServerView {
                token_masked: token.as_ref().map(|(t, _)| t.masked()),
                token_storage: token.map(|(_, st)| st),
                id: s.id,
                name: s.name,
                url: s.url,
                builtin: false,
            }
        }));
        out
    }

    /// Checks `input` for the saved tunnel `id` (`None` for a new one).
    fn validate(&self, id: Option<&str>, input: &TunnelInput) -> Result<SavedTunnel, Error> {
        let port = u16::try_from(input.local_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::invalid("port", "port must be between 1 and 65535"))?;
        let tcp = input.kind == Kind::Tcp;
        let remote_port = match input.remote_port {
            Some(p) if tcp => Some(u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                Error::invalid(
                    "remotePort",
                    "public port must be between 1 and 65535, or empty for any free port",
                )
            })?),
            _ => None,
        };
        if tcp && input.basic_auth.as_deref().is_some_and(|a| !a.is_empty()) {
            return Err(Error::invalid(
                "basicAuth",
                "basic auth protects HTTP tunnels only; restrict a TCP tunnel with allowed IPs",
            ));
        }
        // The CLI's rule, unchanged: "MyApp" is refused with the reason rather than quietly
        // becoming another name than the one typed.
        let subdomain = match input.subdomain.as_deref().map(str::trim) {
            // A TCP tunnel has a port, not a name.
            _ if tcp => None,
            None | Some("") => None,
            Some(s) => {
                validate_name(s).map_err(|e| Error::invalid("subdomain", e.to_string()))?;
                Some(s.to_owned())
            }
        };
        if let Some(want) = remote_port {
            let twin = self.saved_tunnels().into_iter().any(|t| {
                Some(t.id.as_str()) != id
                    && t.server_id == input.server_id
                    && t.kind == Kind::Tcp
                    && t.remote_port == Some(want)
            });
            if twin {
                return Err(Error::invalid(
                    "remotePort",
                    format!("another saved tunnel already uses port {want} on this server"),
                ));
            }
        }
        if let Some(name) = &subdomain {
            let twin = self.saved_tunnels().into_iter().any(|t| {
                Some(t.id.as_str()) != id
                    && t.server_id == input.server_id
                    && t.subdomain.as_ref() == Some(name)
            });
            if twin {
                return Err(Error::invalid(
                    "subdomain",
                    format!("another saved tunnel already uses {name} on this server"),
                ));
            }
        }
        let local_host = match input.local_host.as_deref().map(str::trim) {
            None | Some("") => "localhost".to_owned(),
            Some(h)
                if h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-_:[]".contains(c)) =>
            {
                h.to_owned()
            }
            Some(_) => return Err(Error::invalid("host", "not a host name or address")),
        };
        if let Some(auth) = input.basic_auth.as_deref().filter(|a| !a.is_empty()) {
            if !auth.contains(':') || auth.starts_with(':') {
                return Err(Error::invalid("basicAuth", "use user:password"));
            }
        }
        let allow_ips: Vec<String> = input
            .allow_ips
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if let Some(bad) = allow_ips
            .iter()
            .find(|s| ggrok_server::policy::parse_net(s).is_none())
        {
            return Err(Error::invalid(
                "allowIps",
                format!("{bad:?} is not an IP address or CIDR range like 10.0.0.0/8"),
            ));
        }
        self.server_url_and_name(&input.server_id)?;
        let mut t = SavedTunnel::new(String::new(), input.server_id.clone(), local_host, port);
        t.kind = input.kind;
        t.remote_port = remote_port;
        t.subdomain = subdomain;
        t.start_on_launch = input.start_on_launch;
        t.allow_ips = allow_ips;
        // How to reach the local service, as `ggrok http` takes it: HTTP's only.
        if !tcp {
            t.keep_host = input.keep_host;
            t.upstream.tls = input.local_tls;
            t.upstream.insecure = input.local_tls && input.upstream_insecure;
            t.upstream.http2 = input.upstream_http2;
            match input.host_header.as_deref().map(str::trim) {
                None | Some("") => {}
                Some(v) => match v.parse::<HostHeader>() {
                    Ok(HostHeader::Rewrite) => {}
                    Ok(HostHeader::Preserve) => t.keep_host = true,
                    Ok(HostHeader::Value(_)) => t.upstream.host_header = Some(v.to_owned()),
                    Err(e) => return Err(Error::invalid("hostHeader", e)),
                },
            }
        }
        Ok(t)
    }

    fn spec(&self, t: &SavedTunnel) -> Result<Spec, Error> {
        let (server, _) = self.server_url_and_name(&t.server_id)?;
        let ask = t.ask();
        Ok(Spec {
            kind: ask.kind,
            server,
            token: self.secrets.get(&t.server_id).map(|(s, _)| s),
            subdomain: ask.subdomain,
            given: ask.given,
            local: t
                .local_target()
                .map_err(|e| Error::invalid("host", format!("the saved Host header: {e}")))?,
            // Stable per saved tunnel: the server gives a restarted tunnel its name back at
            // once instead of holding it for the old session.
            client_id: Some(format!("ggrok-desktop-{}", t.id)),
            basic_auth: self.secrets.get(&basic_auth_key(&t.id)).map(|(s, _)| s),
            allow_ips: t.allow_ips.clone(),
        })
    }

    async fn run(&self, t: &SavedTunnel) -> Result<TunnelView, Error> {
        self.manager.start(&t.id, self.spec(t)?).await?;
        // Ok or failed, the view shows it; a slow server keeps "connecting" and events follow.
        let _ = tokio::time::timeout(ONLINE_WAIT, self.manager.online(&t.id)).await;
        let view = self.tunnel(&t.id)?;
        if let Status::Online { url, name } = &view.status {
            if self.remember_online(&t.id, url, name)? {
                return self.tunnel(&t.id);
            }
        }
        Ok(view)
    }

    /// Remembers the name (or port) the server gave tunnel `id` online at `url`, to ask for it
    /// again next time (the engine itself takes another when the one remembered has gone to
    /// someone else); whether that changed the saved tunnel. Called on start and on every
    /// status event, so a tunnel that came online late or under a new name is remembered too.
    pub fn remember_online(&self, id: &str, url: &str, name: &str) -> Result<bool, Error> {
        let changed = self
            .store
            .lock()
            .expect("store lock")
            .remember_online(id, url, name)?;
        if changed {
            self.notify();
        }
        Ok(changed)
    }

    /// Stores (`Some("u:p")`), removes (`Some("")`) or keeps (`None`) a tunnel's Basic auth;
    /// whether it changed.
    fn save_basic_auth(&self, id: &str, auth: Option<&str>) -> bool {
        let key = basic_auth_key(id);
        let old = self.secrets.get(&key).map(|(s, _)| s.expose().to_owned());
        match auth {
            None => false,
            Some("") => {
                self.secrets.delete(&key);
                old.is_some()
            }
            Some(a) => {
                self.secrets.set(&key, &Secret::new(a));
                old.as_deref() != Some(a)
            }
        }
    }

    /// Validates, saves and starts a new tunnel; answers once it is online (or failed).
    pub async fn expose(&self, input: TunnelInput) -> Result<TunnelView, Error> {
        let mut t = self.validate(None, &input)?;
        t.id = new_id();
        self.save_basic_auth(&t.id, input.basic_auth.as_deref());
        self.store
            .lock()
            .expect("store lock")
            .update(|d| d.tunnels.push(t.clone()))?;
        self.notify();
        self.run(&t).await
    }

    /// Changes a saved tunnel; a running one restarts only if what it serves changed.
    pub async fn update_tunnel(&self, id: &str, input: TunnelInput) -> Result<TunnelView, Error> {
        let old = self.saved(id)?;
        let mut t = self.validate(Some(id), &input)?;
        t.id = id.to_owned();
        if t.subdomain.is_none() && t.server_id == old.server_id && t.kind == old.kind {
            t.given_name = old.given_name.clone();
            t.given_port = old.given_port;
        }
        // What the form does not show (the CLI's name, fields of a newer format) stays.
        t.name = old.name.clone();
        t.upstream.unknown = old.upstream.unknown.clone();
        t.unknown = old.unknown.clone();
        let auth_changed = self.save_basic_auth(id, input.basic_auth.as_deref());
        let restart = auth_changed
            || SavedTunnel {
                start_on_launch: old.start_on_launch,
                ..t.clone()
            } != old;
        self.store.lock().expect("store lock").update(|d| {
            if let Some(slot) = d.tunnels.iter_mut().find(|x| x.id == id) {
                *slot = t.clone();
            }
        })?;
        self.notify();
        if restart && self.manager.is_running(id) {
            self.run(&t).await
        } else {
            self.tunnel(id)
        }
    }

    /// Stops and forgets a tunnel.
    pub async fn delete_tunnel(&self, id: &str) -> Result<(), Error> {
        self.saved(id)?;
        self.manager.remove(id).await;
        self.secrets.delete(&basic_auth_key(id));
        self.store
            .lock()
            .expect("store lock")
            .update(|d| d.tunnels.retain(|t| t.id != id))?;
        self.notify();
        Ok(())
    }

    /// Starts a saved tunnel.
    pub async fn start(&self, id: &str) -> Result<TunnelView, Error> {
        let t = self.saved(id)?;
        self.run(&t).await
    }

    /// Stops a tunnel.
    pub async fn stop(&self, id: &str) -> Result<TunnelView, Error> {
        self.saved(id)?;
        self.manager.stop(id).await;
        self.tunnel(id)
    }

    /// Starts a stopped tunnel or stops a running one (tray check items).
    pub async fn toggle(&self, id: &str) -> Result<TunnelView, Error> {
        if self.manager.is_running(id) {
            self.stop(id).await
        } else {
            self.start(id).await
        }
    }

    /// Starts every tunnel marked "start on launch".
    pub async fn start_on_launch(&self) {
        let saved = self.saved_tunnels();
        for t in saved.iter().filter(|t| t.start_on_launch) {
            if let Ok(spec) = self.spec(t) {
                if let Err(err) = self.manager.start(&t.id, spec).await {
                    tracing::warn!(tunnel = %t.id, %err, "could not start on launch");
                }
            }
        }
    }

    /// App-wide settings.
    pub fn settings(&self) -> Settings {
        self.store
            .lock()
            .expect("store lock")
            .fresh()
            .settings
            .clone()
    }

    /// Changes the settings with `f` and saves them.
    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) -> Result<Settings, Error> {
        let mut store = self.store.lock().expect("store lock");
        Ok(store.update(|d| {
            f(&mut d.settings);
            d.settings.clone()
        })?)
    }

    /// Keeps `limit` bytes of each body from now on (Settings).
    pub fn set_capture_limit(&self, limit: usize) {
        self.manager.set_capture_limit(limit);
    }

    /// Adds a warning for the window (shown with the start-up ones).
    pub fn add_warning(&self, warning: String) {
        self.warnings.lock().expect("warnings lock").push(warning);
    }

    /// The public URL of an online tunnel.
    pub fn public_url(&self, id: &str) -> Result<String, Error> {
        self.tunnel(id)?
            .url()
            .map(str::to_owned)
            .ok_or_else(|| Error::System("the tunnel is not online".to_owned()))
    }

    /// The public URL of an online HTTP tunnel, for a browser.
    pub fn browser_url(&self, id: &str) -> Result<String, Error> {
        if self.saved(id)?.kind == Kind::Tcp {
            return Err(Error::System(
                "a TCP tunnel has no page to open: connect to its address with your TCP client"
                    .to_owned(),
            ));
        }
        self.public_url(id)
    }

    /// A TCP tunnel's connections, newest first: those open, then those ended.
    pub fn connections(&self, id: &str) -> Result<Vec<ConnectionRow>, Error> {
        self.saved(id)?;
        Ok(self.manager.connections(id))
    }

    /// Rows of a tunnel's traffic, newest first.
    pub fn traffic(&self, id: &str) -> Result<Vec<Summary>, Error> {
        self.saved(id)?;
        Ok(self.manager.traffic(id))
    }

    /// One exchange for the inspector.
    pub fn exchange(&self, id: &str, exchange: u64) -> Result<Detail, Error> {
        Ok(self.manager.exchange(id, exchange)?)
    }

    /// Replays an exchange, changed as `edits` say; the result is also a new row via events.
    pub async fn replay(
        &self,
        id: &str,
        exchange: u64,
        edits: ggrok_tunnel::ReplayEdits,
    ) -> Result<Summary, Error> {
        Ok(self.manager.replay(id, exchange, edits).await?)
    }

    /// An exchange's request as a curl command.
    pub fn curl(&self, id: &str, exchange: u64) -> Result<String, Error> {
        Ok(self.manager.curl(id, exchange)?)
    }

    /// Writes a HAR log of the given exchanges into `dir`; returns the file's path.
    pub fn export_har(
        &self,
        id: &str,
        exchanges: &[u64],
        dir: &std::path::Path,
    ) -> Result<std::path::PathBuf, Error> {
        self.saved(id)?;
        let har = self.manager.har(id, exchanges);
        let path = dir.join(format!("ggrok-{}.har", ggrok_tunnel::traffic::now_ms()));
        let text = serde_json::to_vec_pretty(&har)
            .map_err(|e| Error::System(format!("could not write the HAR: {e}")))?;
        std::fs::write(&path, text)
            .map_err(|e| Error::System(format!("could not write {}: {e}", path.display())))?;
        Ok(path)
    }

    /// Adds or edits a server; the token goes to the keyring, never to the file.
    pub fn save_server(&self, input: ServerInput) -> Result<ServerView, Error> {
        let name = input.name.trim().to_owned();
        if name.is_empty() {
            return Err(Error::invalid("name", "give the server a name"));
        }
        let url = input.url.trim().trim_end_matches('/').to_owned();
        TunnelConfig::new(url.clone(), 1)
            .connect_url()
            .map_err(|e| Error::invalid("url", e.to_string()))?;
        let id = match input.id {
            Some(id) if id == BUILTIN_SERVER_ID => {
                return Err(Error::invalid(
                    "url",
                    "the built-in server cannot be edited",
                ))
            }
            Some(id) => {
                self.server_url_and_name(&id)
                    .map_err(|_| Error::NotFound(format!("server {id}")))?;
                id
            }
            None => new_id(),
        };
        self.store.lock().expect("store lock").update(|d| {
            match d.servers.iter_mut().find(|s| s.id == id) {
                Some(slot) => {
                    slot.name = name;
                    slot.url = url;
                }
                None => d.servers.push(SavedServer {
                    id: id.clone(),
                    name,
                    url,
                    unknown: Default::default(),
                }),
            }
        })?;
        match input.token.as_deref().map(str::trim) {
            None => {}
            Some("") => self.secrets.delete(&id),
            Some(tok) => {
                let stored = self.secrets.set(&id, &Secret::new(tok));
                if stored == Storage::Memory {
                    tracing::warn!(server = %id, token = %mask(tok), "token kept in memory only");
                }
            }
        }
        self.notify();
        self.servers()
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| Error::NotFound(format!("server {id}")))
    }

    /// "Test connection": the server's health endpoint, then its answer to the token (the typed
    /// one, else the saved one); see [`server_check`](crate::server_check).
    pub async fn test_server(&self, input: ServerInput) -> Result<ServerCheck, Error> {
        let url = input.url.trim().trim_end_matches('/').to_owned();
        let mut config = TunnelConfig::new(url, 9);
        config
            .connect_url()
            .map_err(|e| Error::invalid("url", e.to_string()))?;
        config.token = match input.token.as_deref().map(str::trim) {
            Some("") => None,
            Some(tok) => Some(Secret::new(tok)),
            None => input
                .id
                .as_deref()
                .and_then(|id| self.secrets.get(id))
                .map(|(s, _)| s),
        };
        Ok(server_check::check(config).await)
    }

    /// Ports listening on this machine, ggrok's own left out, those saved tunnels use marked.
    pub fn listening(&self) -> Result<Vec<ListeningPort>, Error> {
        let exposed: Vec<u16> = self.saved_tunnels().iter().map(|t| t.local_port).collect();
        listening(std::process::id(), &exposed).map_err(|e| Error::System(e.to_string()))
    }

    /// Removes a server that no tunnel uses, and its token.
    pub fn delete_server(&self, id: &str) -> Result<(), Error> {
        if id == BUILTIN_SERVER_ID {
            return Err(Error::invalid(
                "serverId",
                "the built-in server cannot be removed",
            ));
        }
        let users = self
            .store
            .lock()
            .expect("store lock")
            .fresh()
            .tunnels
            .iter()
            .filter(|t| t.server_id == id)
            .count();
        if users > 0 {
            return Err(Error::InUse(format!(
                "{users} saved tunnel(s) use this server; delete or move them first"
            )));
        }
        self.store
            .lock()
            .expect("store lock")
            .update(|d| d.servers.retain(|s| s.id != id))?;
        self.secrets.delete(id);
        self.notify();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ggrok_tunnel::saved::FILE_NAME;

    use crate::{
        server_check::Outcome,
        test_support::{get, get_with, Origin, TestServer},
    };

    fn state(dir: &std::path::Path, server: &TestServer) -> AppState {
        let (store, warning) = Store::load(dir.join(FILE_NAME));
        AppState::new(
            store,
            warning,
            Secrets::in_memory(),
            Manager::new(),
            server.url.clone(),
        )
    }

    fn input(port: i64, sub: Option<&str>) -> TunnelInput {
        TunnelInput {
            kind: Kind::Http,
            remote_port: None,
            server_id: BUILTIN_SERVER_ID.into(),
            subdomain: sub.map(str::to_owned),
            local_host: Some("127.0.0.1".into()),
            local_port: port,
            start_on_launch: true,
            ..TunnelInput::default()
        }
    }

    #[tokio::test]
    async fn expose_saves_starts_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let s = state(dir.path(), &server);
        let view = s
            .expose(input(origin.port as i64, Some("demo")))
            .await
            .unwrap();
        let url = format!("http://demo.localhost:{}", server.port);
        assert_eq!(view.url(), Some(url.as_str()));
        assert_eq!(s.public_url(&view.id).unwrap(), url);
        assert_eq!(get(server.port, "demo.localhost", "/").await.0, 200);

        // A fresh state over the same file (and a fresh embedded server, as after an app
        // restart) sees the tunnel and starts it on launch.
        s.manager().stop_all().await;
        drop(server);
        let server = TestServer::start().await;
        let again = state(dir.path(), &server);
        let listed = again.tunnels();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].subdomain.as_deref(), Some("demo"));
        assert_eq!(listed[0].status, Status::Stopped);
        again.start_on_launch().await;
        again.manager().online(&view.id).await.unwrap();
        assert_eq!(get(server.port, "demo.localhost", "/").await.0, 200);

        let stopped = again.toggle(&view.id).await.unwrap();
        assert_eq!(stopped.status, Status::Stopped);
        assert_eq!(get(server.port, "demo.localhost", "/").await.0, 404);
        again.delete_tunnel(&view.id).await.unwrap();
        assert!(again.tunnels().is_empty());
        assert!(state(dir.path(), &server).tunnels().is_empty());
    }

    /// The `ggrok` CLI writes the same file while the app runs (`ggrok config add-tunnel`): the
    /// app lists and starts that tunnel, and an edit in the app keeps what only the CLI sets.
    #[tokio::test]
    async fn a_tunnel_the_cli_saved_while_the_app_runs_is_listed_started_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let s = state(dir.path(), &server);
        assert!(s.tunnels().is_empty());

        let mut changes = s.subscribe_changes();
        assert!(!s.reload_if_changed());
        let (mut cli, _) = Store::load(dir.path().join(FILE_NAME));
        cli.update(|d| {
            let mut t = SavedTunnel::new(
                "c11".into(),
                BUILTIN_SERVER_ID.into(),
                "127.0.0.1".into(),
                origin.port,
            );
            t.name = Some("web".into());
            t.subdomain = Some("from-cli".into());
            t.upstream.host_header = Some("cli.test".into());
            d.tunnels.push(t);
        })
        .unwrap();
        assert!(s.reload_if_changed());
        changes.try_recv().expect("the window is told");

        let listed = s.tunnels();
        assert_eq!(listed.len(), 1, "the app sees the CLI's save");
        assert_eq!(listed[0].host_header.as_deref(), Some("cli.test"));
        let view = s.start("c11").await.unwrap();
        assert_eq!(
            view.url(),
            Some(format!("http://from-cli.localhost:{}", server.port).as_str())
        );
        assert_eq!(get(server.port, "from-cli.localhost", "/").await.0, 200);

        s.update_tunnel(
            "c11",
            TunnelInput {
                start_on_launch: false,
                // As the form shows it.
                host_header: listed[0].host_header.clone(),
                ..input(origin.port as i64, Some("from-cli"))
            },
        )
        .await
        .unwrap();
        let (cli, _) = Store::load(dir.path().join(FILE_NAME));
        let t = &cli.data().tunnels[0];
        assert_eq!((t.name.as_deref(), t.start_on_launch), (Some("web"), false));
        assert_eq!(
            s.spec(t).unwrap().local.host_header,
            "cli.test".parse().unwrap(),
            "the Host value the CLI saved is kept and used"
        );
        s.manager().stop_all().await;
    }

    /// The form's HTTPS, HTTP/2 and Host value reach the file as the CLI saves them, the view,
    /// and the tunnel's local target; an edit that clears them clears them.
    #[tokio::test]
    async fn the_local_services_protocol_and_host_are_saved_and_used() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let s = state(dir.path(), &server);
        match s
            .expose(TunnelInput {
                host_header: Some("bad\nvalue".into()),
                ..input(8443, None)
            })
            .await
        {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "hostHeader"),
            other => panic!("{other:?}"),
        }
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = i64::from(dead.local_addr().unwrap().port());
        drop(dead);
        let v = s
            .expose(TunnelInput {
                local_tls: true,
                upstream_insecure: true,
                upstream_http2: true,
                host_header: Some(" app.test ".into()),
                ..input(port, Some("secure"))
            })
            .await
            .unwrap();
        assert_eq!(
            (v.local_tls, v.upstream_insecure, v.upstream_http2),
            (true, true, true)
        );
        assert_eq!(v.host_header.as_deref(), Some("app.test"));
        assert_eq!(v.target, format!("https://127.0.0.1:{port}"));
        let saved = s.saved(&v.id).unwrap();
        let local = s.spec(&saved).unwrap().local;
        assert!(local.upstream.tls && local.upstream.insecure && local.upstream.http2);
        assert_eq!(local.host_header, "app.test".parse().unwrap());

        let v = s
            .update_tunnel(&v.id, input(port, Some("secure")))
            .await
            .unwrap();
        assert!(!v.local_tls && !v.upstream_http2 && v.host_header.is_none());
        assert_eq!(s.saved(&v.id).unwrap().upstream, Default::default());
        s.manager().stop_all().await;
    }

    #[tokio::test]
    async fn invalid_input_names_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let s = state(dir.path(), &server);
        for (inp, field) in [
            (input(0, None), "port"),
            (input(70000, None), "port"),
            (input(-1, None), "port"),
            (input(80, Some("-bad")), "subdomain"),
            (input(80, Some("a.b")), "subdomain"),
            // The CLI's rule: refused with the reason, not silently lowercased.
            (input(80, Some("MyApp")), "subdomain"),
            (
                TunnelInput {
                    server_id: "nope".into(),
                    ..input(80, None)
                },
                "serverId",
            ),
        ] {
            match s.expose(inp).await {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(s.tunnels().is_empty(), "nothing saved on invalid input");
        let Err(err) = s.expose(input(80, Some("MyApp"))).await else {
            panic!()
        };
        assert_eq!(err.to_string(), "subdomain must be lowercase (found 'M')");
    }

    async fn next_traffic(rx: &mut broadcast::Receiver<crate::tunnels::Event>) {
        while !matches!(
            rx.recv().await.unwrap(),
            crate::tunnels::Event::Traffic { .. }
        ) {}
    }

    #[tokio::test]
    async fn the_same_subdomain_twice_on_one_server_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let s = state(dir.path(), &server);
        let first = s
            .expose(input(origin.port as i64, Some("twin")))
            .await
            .unwrap();
        match s.expose(input(origin.port as i64, Some("twin"))).await {
            Err(Error::Invalid { field, message }) => {
                assert_eq!(field, "subdomain");
                assert_eq!(
                    message,
                    "another saved tunnel already uses twin on this server"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(s.tunnels().len(), 1);
        // Saving the tunnel itself again is not a twin.
        s.update_tunnel(&first.id, input(origin.port as i64, Some("twin")))
            .await
            .unwrap();
        s.manager().stop_all().await;
    }

    #[tokio::test]
    async fn edits_restart_only_when_needed_and_keep_history_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let s = state(dir.path(), &server);
        let mut events = s.manager().subscribe();
        let t = s
            .expose(input(origin.port as i64, Some("keep")))
            .await
            .unwrap();
        get(server.port, "keep.localhost", "/one").await;
        next_traffic(&mut events).await;
        assert_eq!(s.tunnel(&t.id).unwrap().requests, 1);

        // Only "start on launch": saved, not restarted (a restart resets the count).
        let v = s
            .update_tunnel(
                &t.id,
                TunnelInput {
                    start_on_launch: false,
                    ..input(origin.port as i64, Some("keep"))
                },
            )
            .await
            .unwrap();
        assert!(!v.start_on_launch);
        assert_eq!(v.requests, 1, "not restarted");
        assert!(v.url().is_some());

        // A new local port restarts it; the fixed name comes back at once (same client id),
        // and the history stays.
        let origin2 = Origin::start().await;
        let v = s
            .update_tunnel(&t.id, input(origin2.port as i64, Some("keep")))
            .await
            .unwrap();
        assert_eq!(v.requests, 0, "restarted");
        assert_eq!(
            v.url(),
            Some(format!("http://keep.localhost:{}", server.port).as_str())
        );
        get(server.port, "keep.localhost", "/two").await;
        next_traffic(&mut events).await;
        let paths: Vec<_> = s
            .traffic(&t.id)
            .unwrap()
            .into_iter()
            .map(|r| r.path)
            .collect();
        assert_eq!(paths, ["/two", "/one"]);

        // Stop and Start: same name, same history.
        s.stop(&t.id).await.unwrap();
        let v = s.start(&t.id).await.unwrap();
        assert!(v.url().is_some(), "{v:?}");
        assert_eq!(s.traffic(&t.id).unwrap().len(), 2);
        s.manager().stop_all().await;
    }

    #[tokio::test]
    async fn a_server_given_name_is_kept_and_labels_the_tunnel() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let s = state(dir.path(), &server);
        let t = s.expose(input(origin.port as i64, None)).await.unwrap();
        let Status::Online { name, .. } = t.status.clone() else {
            panic!("{t:?}")
        };
        assert_eq!(t.given_name.as_deref(), Some(name.as_str()));
        let stopped = s.stop(&t.id).await.unwrap();
        assert_eq!(stopped.label(), name, "offline, labelled by its name");
        let again = s.start(&t.id).await.unwrap();
        assert_eq!(again.label(), name, "same name after Stop/Start");
        s.manager().stop_all().await;

        // After an app restart (a fresh server) the name is asked for again...
        drop(server);
        let server = TestServer::start().await;
        let s = state(dir.path(), &server);
        assert_eq!(s.tunnel(&t.id).unwrap().label(), name);
        let v = s.start(&t.id).await.unwrap();
        assert_eq!(
            v.url(),
            Some(format!("http://{name}.localhost:{}", server.port).as_str())
        );
        s.stop(&t.id).await.unwrap();

        // ...and when someone else has it by then, the tunnel takes a new one instead of failing.
        let other = Manager::new();
        other
            .start(
                "other",
                Spec {
                    kind: ggrok_tunnel::TunnelKind::Http,
                    server: server.url.clone(),
                    token: None,
                    subdomain: Some(name.clone()),
                    given: false,
                    local: ggrok_tunnel::LocalTarget::new("127.0.0.1", origin.port),
                    client_id: None,
                    basic_auth: None,
                    allow_ips: Vec::new(),
                },
            )
            .await
            .unwrap();
        other.online("other").await.unwrap();
        let s = state(dir.path(), &server);
        let v = s.start(&t.id).await.unwrap();
        let Status::Online { name: new_name, .. } = &v.status else {
            panic!("{v:?}")
        };
        assert_ne!(new_name, &name);
        assert_eq!(v.given_name.as_ref(), Some(new_name));
        s.manager().stop_all().await;
        other.stop_all().await;
    }

    #[tokio::test]
    async fn basic_auth_allowlist_and_host_header_as_in_the_cli() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let s = state(dir.path(), &server);
        for (inp, field) in [
            (
                TunnelInput {
                    basic_auth: Some("nocolon".into()),
                    ..input(80, None)
                },
                "basicAuth",
            ),
            (
                TunnelInput {
                    allow_ips: vec!["10.0.0.0/33".into()],
                    ..input(80, None)
                },
                "allowIps",
            ),
        ] {
            match s.expose(inp).await {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        let t = s
            .expose(TunnelInput {
                basic_auth: Some("ann:s3cret-pw".into()),
                allow_ips: vec![" 127.0.0.1 ".into(), "".into()],
                keep_host: true,
                ..input(origin.port as i64, Some("guarded"))
            })
            .await
            .unwrap();
        assert_eq!(t.basic_auth_user.as_deref(), Some("ann"));
        assert_eq!(t.allow_ips, ["127.0.0.1"]);
        assert!(t.keep_host);
        let file = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!file.contains("s3cret"), "{file}");
        assert!(!serde_json::to_string(&t).unwrap().contains("s3cret"));
        assert_eq!(get(server.port, "guarded.localhost", "/").await.0, 401);
        // "ann:s3cret-pw" in base64.
        let auth = [("authorization", "Basic YW5uOnMzY3JldC1wdw==")];
        let (status, _) = get_with(server.port, "guarded.localhost", "/", &auth).await;
        assert_eq!(status, 200);

        // An allowlist without this machine shuts it out.
        s.update_tunnel(
            &t.id,
            TunnelInput {
                allow_ips: vec!["10.0.0.0/8".into()],
                ..input(origin.port as i64, Some("guarded"))
            },
        )
        .await
        .unwrap();
        let (status, _) = get_with(server.port, "guarded.localhost", "/", &auth).await;
        assert_eq!(status, 403);

        // Removing it restarts the tunnel without it; an empty allowlist lets everyone in.
        let v = s
            .update_tunnel(
                &t.id,
                TunnelInput {
                    basic_auth: Some(String::new()),
                    ..input(origin.port as i64, Some("guarded"))
                },
            )
            .await
            .unwrap();
        assert_eq!(v.basic_auth_user, None);
        assert_eq!(get(server.port, "guarded.localhost", "/").await.0, 200);
        s.manager().stop_all().await;
    }

    #[tokio::test]
    async fn bad_server_urls_are_refused_on_save_and_test() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let s = state(dir.path(), &server);
        for url in ["tunnel example com", "ftp://x", "https://x/path", ""] {
            let inp = ServerInput {
                id: None,
                name: "x".into(),
                url: url.into(),
                token: None,
            };
            assert!(
                matches!(
                    s.save_server(inp.clone()),
                    Err(Error::Invalid { field: "url", .. })
                ),
                "{url}"
            );
            assert!(
                matches!(
                    s.test_server(inp).await,
                    Err(Error::Invalid { field: "url", .. })
                ),
                "{url}"
            );
        }
        assert_eq!(s.servers().len(), 1);
    }

    #[tokio::test]
    async fn test_connection_checks_reachability_and_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let s = state(dir.path(), &server);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut config = ggrok_server::Config::new("localhost");
        config.tokens = ggrok_server::Tokens::from_plain(["right-token"]);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(ggrok_server::run(listener, config, async {
            let _ = stopped.await;
        }));
        let check = |url: String, token: Option<&str>| ServerInput {
            id: None,
            name: "x".into(),
            url,
            token: token.map(str::to_owned),
        };
        let url = format!("http://127.0.0.1:{port}");
        let ok = s
            .test_server(check(url.clone(), Some("right-token")))
            .await
            .unwrap();
        assert_eq!(
            ok,
            ServerCheck {
                ok: true,
                outcome: Outcome::Connected,
                message: "A ggrok server; the token was accepted.".into()
            }
        );
        let bad = s
            .test_server(check(url.clone(), Some("wrong")))
            .await
            .unwrap();
        assert_eq!(bad.outcome, Outcome::Refused, "{bad:?}");
        assert!(
            bad.message
                .starts_with("A ggrok server, but it refused the token"),
            "{}",
            bad.message
        );
        let none = s.test_server(check(url, None)).await.unwrap();
        assert_eq!(none.outcome, Outcome::Refused, "{none:?}");
        // The saved token is used when none is typed.
        let saved = s
            .save_server(check(
                format!("http://127.0.0.1:{port}"),
                Some("right-token"),
            ))
            .unwrap();
        let again = s
            .test_server(ServerInput {
                id: Some(saved.id),
                ..check(format!("http://127.0.0.1:{port}"), None)
            })
            .await
            .unwrap();
        assert!(again.ok, "{again:?}");
        let open = s
            .test_server(check(server.url.clone(), None))
            .await
            .unwrap();
        assert_eq!(open.message, "A ggrok server; it needs no token.");
        let _ = stop.send(());

        // Nothing listening: said so, without waiting for the full timeout.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let down = s
            .test_server(check(format!("http://127.0.0.1:{dead}"), None))
            .await
            .unwrap();
        assert_eq!(down.outcome, Outcome::Unreachable);
        assert!(
            down.message.starts_with("Cannot reach the server"),
            "{}",
            down.message
        );

        // Something else answers: reachability is asked of /healthz, and a web server that
        // has none, or a service that does not speak HTTP, is not a ggrok server.
        for (answer, said) in [
            (
                &b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"[..],
                "GET /healthz gave 404 Not Found",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                "GET /healthz gave 200 OK with another body",
            ),
            (
                b"SSH-2.0-OpenSSH_9.2\r\n",
                "GET /healthz gave no HTTP answer",
            ),
        ] {
            let (url, asked) = one_answer(answer).await;
            let other = s.test_server(check(url.clone(), None)).await.unwrap();
            assert_eq!(other.outcome, Outcome::NotGgrok, "{other:?}");
            assert!(
                other.message.starts_with(&format!(
                    "Something answers at {url}, but it is not a ggrok server: {said}"
                )),
                "{}",
                other.message
            );
            assert_eq!(asked.await.unwrap(), "GET /healthz HTTP/1.1");
        }
    }

    /// A server on loopback that answers one connection with `answer`; its URL, and the request
    /// line it was sent.
    async fn one_answer(answer: &'static [u8]) -> (String, tokio::sync::oneshot::Receiver<String>) {
        use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (conn, _) = listener.accept().await.unwrap();
            let mut conn = tokio::io::BufReader::new(conn);
            let mut line = String::new();
            conn.read_line(&mut line).await.unwrap();
            let _ = tx.send(line.trim_end().to_owned());
            conn.get_mut().write_all(answer).await.unwrap();
            conn.get_mut().shutdown().await.unwrap();
        });
        (url, rx)
    }

    #[tokio::test]
    async fn servers_keep_tokens_out_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let s = state(dir.path(), &server);
        let v = s
            .save_server(ServerInput {
                id: None,
                name: "work".into(),
                url: format!("{}/", server.url),
                token: Some("super-secret-token-123".into()),
            })
            .unwrap();
        assert_eq!(v.url, server.url);
        assert_eq!(v.token_masked.as_deref(), Some("supe****"));
        let file = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(file.contains(&server.url));
        assert!(!file.contains("super-secret"), "{file}");
        assert!(!serde_json::to_string(&s.servers())
            .unwrap()
            .contains("super-secret"));
        let list = s.servers();
        assert_eq!(list.len(), 2);
        assert!(list[0].builtin);

        // The token travels with the tunnel (the open-mode server accepts any token).
        let origin = Origin::start().await;
        let t = s
            .expose(TunnelInput {
                server_id: v.id.clone(),
                ..input(origin.port as i64, Some("tok"))
            })
            .await
            .unwrap();
        assert!(t.url().is_some(), "{t:?}");
        assert_eq!(t.server_name, "work");
        assert!(matches!(s.delete_server(&v.id), Err(Error::InUse(_))));
        s.delete_tunnel(&t.id).await.unwrap();
        s.delete_server(&v.id).unwrap();
        assert_eq!(s.servers().len(), 1);
        assert!(matches!(
            s.save_server(ServerInput {
                id: None,
                name: "x".into(),
                url: "ftp://x".into(),
                token: None
            }),
            Err(Error::Invalid { field: "url", .. })
        ));
    }

    /// A local service that echoes each connection until EOF.
    async fn echo() -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        port
    }

    fn tcp_input(local: u16, remote: Option<i64>) -> TunnelInput {
        TunnelInput {
            kind: Kind::Tcp,
            remote_port: remote,
            ..input(i64::from(local), None)
        }
    }

    fn port_of(url: &str) -> u16 {
        url.strip_prefix("tcp://localhost:")
            .unwrap()
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn a_tcp_tunnel_keeps_its_kind_and_port_and_lists_its_connections() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let s = state(dir.path(), &server);
        let local = echo().await;
        let view = s.expose(tcp_input(local, None)).await.unwrap();
        assert_eq!(view.kind, Kind::Tcp);
        let url = view.url().expect("online").to_owned();
        let port = port_of(&url);
        assert!(crate::embedded::TCP_PORTS.contains(&port), "{url}");
        // The port the server picked is remembered, and the label and tray name it.
        assert_eq!(view.given_port, Some(port));
        assert_eq!(view.label(), format!("tcp:{port}"));
        assert_eq!(s.public_url(&view.id).unwrap(), url);
        assert!(matches!(s.browser_url(&view.id), Err(Error::System(_))));

        let mut events = s.manager().subscribe();
        let mut visitor = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        visitor.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        visitor.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        let open = s.connections(&view.id).unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].end, None);
        assert!(open[0].from.starts_with("127.0.0.1:"), "{}", open[0].from);
        drop(visitor);
        let ended = loop {
            if let crate::tunnels::Event::Connection { connection, .. } =
                events.recv().await.unwrap()
            {
                if connection.end.is_some() {
                    break connection;
                }
            }
        };
        assert_eq!((ended.bytes_up, ended.bytes_down), (4, 4));
        assert_eq!(ended.end_kind, Some("closed"));
        assert_eq!(s.connections(&view.id).unwrap(), vec![ended]);
        assert_eq!(s.tunnel(&view.id).unwrap().connections, 1);

        // After an app restart the saved tunnel is still TCP and asks for the same port.
        s.manager().stop_all().await;
        let again = state(dir.path(), &server);
        let back = again.start(&view.id).await.unwrap();
        assert_eq!(back.kind, Kind::Tcp);
        assert_eq!(back.url(), Some(url.as_str()));
        again.manager().stop_all().await;
    }

    #[tokio::test]
    async fn tcp_input_is_checked_and_a_held_port_is_given_up_for_another() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let s = state(dir.path(), &server);
        for (inp, field) in [
            (tcp_input(22, Some(0)), "remotePort"),
            (tcp_input(22, Some(70_000)), "remotePort"),
            (
                TunnelInput {
                    basic_auth: Some("u:p".into()),
                    ..tcp_input(22, None)
                },
                "basicAuth",
            ),
        ] {
            match s.expose(inp).await {
                Err(Error::Invalid { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: {other:?}"),
            }
        }
        assert!(s.tunnels().is_empty());

        // The remembered port went to someone else: the tunnel takes another one.
        let local = echo().await;
        let first = s.expose(tcp_input(local, None)).await.unwrap();
        let port = port_of(first.url().unwrap());
        s.stop(&first.id).await.unwrap();
        let mut other = tcp_input(local, Some(i64::from(port)));
        other.server_id = BUILTIN_SERVER_ID.into();
        let holder = s.expose(other).await.unwrap();
        assert_eq!(holder.url(), first.url());
        let moved = s.start(&first.id).await.unwrap();
        let new_port = port_of(moved.url().expect("online on another port"));
        assert_ne!(new_port, port);
        assert_eq!(moved.given_port, Some(new_port));
        s.manager().stop_all().await;
    }
}
