//! What the commands and the tray act on: saved data, tokens and running tunnels together.
//! Plain Rust (no Tauri types), so every user action is testable without a window.

use std::{sync::Mutex, time::Duration};

use ggrok_tunnel::{client::mask, protocol::validate_name, Secret, Status, TunnelConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    error::Error,
    secrets::{Secrets, Storage},
    store::{new_id, SavedServer, SavedTunnel, Settings, Store, BUILTIN_SERVER_ID},
    tunnels::{Detail, Manager, Spec, Summary, TRAFFIC_CAP},
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
    /// Start on launch.
    pub start_on_launch: bool,
    /// Engine status (`stopped` when not running).
    pub status: Status,
    /// Requests since the last start.
    pub requests: u64,
}

impl TunnelView {
    /// The public URL when online.
    pub fn url(&self) -> Option<&str> {
        match &self.status {
            Status::Online { url, .. } => Some(url),
            _ => None,
        }
    }

    /// A short label: the subdomain, else the local target.
    pub fn label(&self) -> String {
        match (&self.status, &self.subdomain) {
            (Status::Online { name, .. }, _) => name.clone(),
            (_, Some(s)) => s.clone(),
            _ => format!("{}:{}", self.local_host, self.local_port),
        }
    }
}

/// A server as the settings list shows it. The token appears only masked.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerView {
    /// Id.
    pub id: String,
    /// Label.
    pub name: String,
    /// URL.
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
}

/// Expose / edit form input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelInput {
    /// Server id.
    pub server_id: String,
    /// Optional subdomain.
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
}

/// Server form input.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInput {
    /// Existing id to edit, none to add.
    #[serde(default)]
    pub id: Option<String>,
    /// Label.
    pub name: String,
    /// URL.
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

    /// Startup facts and warnings.
    pub fn info(&self) -> AppInfo {
        let mut warnings = self.warnings.lock().expect("warnings lock").clone();
        if let Some(p) = self.secrets.keyring_problem() {
            warnings.push(p);
        }
        AppInfo {
            builtin_server_url: self.builtin_url.clone(),
            warnings,
            traffic_cap: TRAFFIC_CAP,
        }
    }

    fn saved(&self, id: &str) -> Result<SavedTunnel, Error> {
        self.store
            .lock()
            .expect("store lock")
            .data()
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
            .data()
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
            server_id: t.server_id.clone(),
            server_name,
            subdomain: t.subdomain.clone(),
            local_host: t.local_host.clone(),
            local_port: t.local_port,
            start_on_launch: t.start_on_launch,
            status: state.status,
            requests: state.requests,
        }
    }

    /// A snapshot of the saved tunnels, so no lock is held while they are used.
    fn saved_tunnels(&self) -> Vec<SavedTunnel> {
        self.store
            .lock()
            .expect("store lock")
            .data()
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
            .data()
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

    fn validate(&self, input: &TunnelInput) -> Result<SavedTunnel, Error> {
        let port = u16::try_from(input.local_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::invalid("port", "port must be between 1 and 65535"))?;
        let subdomain = match input.subdomain.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => {
                let s = s.to_ascii_lowercase();
                validate_name(&s).map_err(|e| Error::invalid("subdomain", e.to_string()))?;
                Some(s)
            }
        };
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
        self.server_url_and_name(&input.server_id)?;
        Ok(SavedTunnel {
            id: String::new(),
            server_id: input.server_id.clone(),
            subdomain,
            local_host,
            local_port: port,
            start_on_launch: input.start_on_launch,
        })
    }

    fn spec(&self, t: &SavedTunnel) -> Result<Spec, Error> {
        let (server, _) = self.server_url_and_name(&t.server_id)?;
        Ok(Spec {
            server,
            token: self.secrets.get(&t.server_id).map(|(s, _)| s),
            subdomain: t.subdomain.clone(),
            local_host: t.local_host.clone(),
            local_port: t.local_port,
        })
    }

    async fn run(&self, t: &SavedTunnel) -> Result<TunnelView, Error> {
        self.manager.start(&t.id, self.spec(t)?).await?;
        // Ok or failed, the view shows it; a slow server keeps "connecting" and events follow.
        let _ = tokio::time::timeout(ONLINE_WAIT, self.manager.online(&t.id)).await;
        self.tunnel(&t.id)
    }

    /// Validates, saves and starts a new tunnel; answers once it is online (or failed).
    pub async fn expose(&self, input: TunnelInput) -> Result<TunnelView, Error> {
        let mut t = self.validate(&input)?;
        t.id = new_id();
        self.store
            .lock()
            .expect("store lock")
            .update(|d| d.tunnels.push(t.clone()))?;
        self.notify();
        self.run(&t).await
    }

    /// Changes a saved tunnel; a running one restarts with the new settings.
    pub async fn update_tunnel(&self, id: &str, input: TunnelInput) -> Result<TunnelView, Error> {
        self.saved(id)?;
        let mut t = self.validate(&input)?;
        t.id = id.to_owned();
        self.store.lock().expect("store lock").update(|d| {
            if let Some(slot) = d.tunnels.iter_mut().find(|x| x.id == id) {
                *slot = t.clone();
            }
        })?;
        self.notify();
        if self.manager.is_running(id) {
            self.run(&t).await
        } else {
            self.tunnel(id)
        }
    }

    /// Stops and forgets a tunnel.
    pub async fn delete_tunnel(&self, id: &str) -> Result<(), Error> {
        self.saved(id)?;
        self.manager.remove(id).await;
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
            .data()
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

    /// Rows of a tunnel's traffic, newest first.
    pub fn traffic(&self, id: &str) -> Result<Vec<Summary>, Error> {
        self.saved(id)?;
        Ok(self.manager.traffic(id))
    }

    /// One exchange for the inspector.
    pub fn exchange(&self, id: &str, exchange: u64) -> Result<Detail, Error> {
        Ok(self.manager.exchange(id, exchange)?)
    }

    /// Replays an exchange; the result is also a new row via events.
    pub async fn replay(&self, id: &str, exchange: u64) -> Result<Summary, Error> {
        Ok(self.manager.replay(id, exchange).await?)
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
        let server = SavedServer {
            id: id.clone(),
            name,
            url,
        };
        self.store.lock().expect("store lock").update(|d| {
            match d.servers.iter_mut().find(|s| s.id == id) {
                Some(slot) => *slot = server.clone(),
                None => d.servers.push(server.clone()),
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
            .data()
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
    use crate::{
        store::FILE_NAME,
        test_support::{get, Origin, TestServer},
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
            server_id: BUILTIN_SERVER_ID.into(),
            subdomain: sub.map(str::to_owned),
            local_host: Some("127.0.0.1".into()),
            local_port: port,
            start_on_launch: true,
        }
    }

    #[tokio::test]
    async fn expose_saves_starts_and_survives_restart() {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let s = state(dir.path(), &server);
        let view = s
            .expose(input(origin.port as i64, Some("Demo")))
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
}
