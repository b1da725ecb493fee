//! Saved tunnels, servers and settings: one JSON file in the OS config directory.
//!
//! Writes go to a temporary file in the same directory which is then renamed over the old
//! file, so a crash mid-write leaves either the old or the new file, never half of one. A file
//! that cannot be read or parsed is moved aside (`config.json.corrupt-<unix ms>`) and reported
//! as a warning, so nothing is silently lost. Tokens are never stored here: see `secrets`.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// File name inside the config directory.
pub const FILE_NAME: &str = "config.json";
/// Schema version written into the file, for future migrations.
pub const VERSION: u32 = 1;
/// Id of the server the app runs in-process. Not stored: its URL changes with its port.
pub const BUILTIN_SERVER_ID: &str = "local";

/// A server the user added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedServer {
    /// Stable id (random hex).
    pub id: String,
    /// Label shown in the UI.
    pub name: String,
    /// `https://tunnel.example.com`; the token lives in the keyring under `id`.
    pub url: String,
}

/// What a saved tunnel forwards. Files written before TCP tunnels existed have no `kind`: HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// HTTP (and WebSocket) at `http(s)://NAME.DOMAIN`.
    #[default]
    Http,
    /// Raw TCP at `tcp://DOMAIN:PORT`.
    Tcp,
}

impl Kind {
    fn is_http(&self) -> bool {
        *self == Kind::Http
    }
}

/// A tunnel the user saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedTunnel {
    /// Stable id (random hex).
    pub id: String,
    /// HTTP or TCP.
    #[serde(default, skip_serializing_if = "Kind::is_http")]
    pub kind: Kind,
    /// A TCP tunnel's public port as asked for; `None` lets the server pick one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_port: Option<u16>,
    /// The port the server last gave a TCP tunnel without a fixed one: asked for again on the
    /// next start, as `given_name` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_port: Option<u16>,
    /// [`SavedServer::id`] or [`BUILTIN_SERVER_ID`].
    pub server_id: String,
    /// Requested subdomain; `None` lets the server pick.
    #[serde(default)]
    pub subdomain: Option<String>,
    /// Local host to forward to.
    #[serde(default = "default_host")]
    pub local_host: String,
    /// Local port to forward to.
    pub local_port: u16,
    /// Start this tunnel when the app starts.
    #[serde(default)]
    pub start_on_launch: bool,
    /// The name the server last gave a tunnel without a fixed subdomain: asked for again on
    /// the next start (the server gives it back while it is free or held for this client) and
    /// shown while offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// Visitor addresses allowed (IP or CIDR); empty lets everyone in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_ips: Vec<String>,
    /// Pass the public Host header to the local service instead of rewriting it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub keep_host: bool,
}

fn default_host() -> String {
    "localhost".to_owned()
}

/// App-wide settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Start with the window hidden, in the tray only.
    #[serde(default)]
    pub start_hidden: bool,
    /// No desktop notifications (they are on unless turned off).
    #[serde(default)]
    pub notifications_off: bool,
    /// Port of the built-in server; `None` is [`crate::embedded::DEFAULT_PORT`].
    #[serde(default)]
    pub server_port: Option<u16>,
    /// Bytes of each body the inspector keeps; `None` is [`crate::tunnels::CAPTURE_LIMIT`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_limit: Option<usize>,
}

/// Everything in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Data {
    /// Schema version.
    pub version: u32,
    /// Servers added by the user (the built-in one is not listed).
    #[serde(default)]
    pub servers: Vec<SavedServer>,
    /// Saved tunnels, in the order shown.
    #[serde(default)]
    pub tunnels: Vec<SavedTunnel>,
    /// App-wide settings (see [`Settings`]).
    #[serde(default)]
    pub settings: Settings,
}

impl Default for Data {
    fn default() -> Self {
        Self {
            version: VERSION,
            servers: Vec::new(),
            tunnels: Vec::new(),
            settings: Settings::default(),
        }
    }
}

/// Why the store could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating, writing or renaming the file failed.
    #[error("could not save settings to {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// The loaded file plus where it lives.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    data: Data,
}

impl Store {
    /// The default location: the OS config dir (`~/.config/ggrok` on Linux).
    pub fn default_path() -> Option<PathBuf> {
        directories::ProjectDirs::from("dev", "ggrok", "ggrok")
            .map(|d| d.config_dir().join(FILE_NAME))
    }

    /// Loads `path`. A missing file is an empty store; an unreadable or corrupt one is moved
    /// aside and the returned warning says where it went.
    pub fn load(path: impl Into<PathBuf>) -> (Self, Option<String>) {
        let path = path.into();
        let (data, warning) = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<Data>(&bytes) {
                Ok(data) => (data, None),
                Err(err) => (Data::default(), Some(move_aside(&path, &err.to_string()))),
            },
            Err(err) if err.kind() == io::ErrorKind::NotFound => (Data::default(), None),
            Err(err) => (Data::default(), Some(move_aside(&path, &err.to_string()))),
        };
        if let Some(w) = &warning {
            warn!(warning = %w, "settings file not usable");
        }
        (Self { path, data }, warning)
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current data.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Changes the data with `f` and saves; on a failed save the change is rolled back.
    pub fn update<T>(&mut self, f: impl FnOnce(&mut Data) -> T) -> Result<T, StoreError> {
        let mut next = self.data.clone();
        let out = f(&mut next);
        write_atomic(&self.path, &next)?;
        self.data = next;
        Ok(out)
    }
}

/// Renames a bad file out of the way and says so. If even the rename fails, the warning says
/// that too (the file is then overwritten on the next save, which the user has been told).
fn move_aside(path: &Path, why: &str) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let aside = path.with_file_name(format!("{FILE_NAME}.corrupt-{ms}"));
    match fs::rename(path, &aside) {
        Ok(()) => format!(
            "Your settings file could not be read ({why}). It was moved to {} and ggrok started with empty settings.",
            aside.display()
        ),
        Err(err) => format!(
            "Your settings file {} could not be read ({why}) nor moved aside ({err}); ggrok started with empty settings.",
            path.display()
        ),
    }
}

fn write_atomic(path: &Path, data: &Data) -> Result<(), StoreError> {
    let io_err = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err)?;
    }
    let tmp = path.with_file_name(format!("{FILE_NAME}.tmp-{}", std::process::id()));
    let json = serde_json::to_vec_pretty(data).expect("settings serialize");
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&json)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// A random id for servers and tunnels.
pub fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Data {
        Data {
            version: VERSION,
            servers: vec![SavedServer {
                id: "s1".into(),
                name: "work".into(),
                url: "https://tunnel.example.com".into(),
            }],
            tunnels: vec![
                SavedTunnel {
                    id: "t1".into(),
                    kind: Kind::Http,
                    remote_port: None,
                    given_port: None,
                    server_id: BUILTIN_SERVER_ID.into(),
                    subdomain: Some("app".into()),
                    local_host: "localhost".into(),
                    local_port: 5173,
                    start_on_launch: true,
                    given_name: None,
                    allow_ips: vec!["10.0.0.0/8".into()],
                    keep_host: true,
                },
                SavedTunnel {
                    id: "t2".into(),
                    kind: Kind::Tcp,
                    remote_port: Some(20022),
                    given_port: Some(20022),
                    server_id: "s1".into(),
                    subdomain: None,
                    local_host: "127.0.0.1".into(),
                    local_port: 22,
                    start_on_launch: false,
                    given_name: None,
                    allow_ips: Vec::new(),
                    keep_host: false,
                },
            ],
            settings: Settings {
                start_hidden: true,
                notifications_off: true,
                server_port: Some(7171),
                capture_limit: Some(1 << 20),
            },
        }
    }

    #[test]
    fn round_trips_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join(FILE_NAME);
        let (mut store, warning) = Store::load(&path);
        assert!(warning.is_none());
        assert_eq!(store.data(), &Data::default());
        store.update(|d| *d = sample()).unwrap();

        let (again, warning) = Store::load(&path);
        assert!(warning.is_none());
        assert_eq!(again.data(), &sample());
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![FILE_NAME.to_owned()]);
    }

    #[test]
    fn a_file_from_before_tcp_tunnels_loads_its_tunnels_as_http() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(
            &path,
            br#"{"version": 1, "tunnels": [{"id": "old", "server_id": "local", "local_port": 3000}]}"#,
        )
        .unwrap();
        let (mut store, warning) = Store::load(&path);
        assert_eq!(warning, None);
        let t = &store.data().tunnels[0];
        assert_eq!(
            (t.kind, t.remote_port, t.given_port),
            (Kind::Http, None, None)
        );
        // Saved again, an HTTP tunnel is written as before (no `kind`), a TCP one with it.
        store
            .update(|d| {
                let mut tcp = d.tunnels[0].clone();
                tcp.id = "new".into();
                tcp.kind = Kind::Tcp;
                d.tunnels.push(tcp);
            })
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(json["tunnels"][0].get("kind"), None);
        assert_eq!(json["tunnels"][1]["kind"], "tcp");
        assert_eq!(Store::load(&path).0.data().tunnels[1].kind, Kind::Tcp);
    }

    #[test]
    fn corrupt_file_is_moved_aside_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(&path, b"{\"version\": 1, \"tunnels\": [tru").unwrap();

        let (mut store, warning) = Store::load(&path);
        let warning = warning.expect("a warning");
        assert!(warning.contains("moved to"), "{warning}");
        assert_eq!(store.data(), &Data::default());
        let aside: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
        assert_eq!(
            fs::read(&aside[0]).unwrap(),
            b"{\"version\": 1, \"tunnels\": [tru"
        );
        assert!(warning.contains(&aside[0].display().to_string()));

        // The next save writes a fresh file and the moved one stays.
        store.update(|d| *d = sample()).unwrap();
        assert_eq!(Store::load(&path).0.data(), &sample());
        assert!(aside[0].exists());
    }

    #[test]
    fn failed_save_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be makes the rename fail.
        let path = dir.path().join(FILE_NAME);
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"x").unwrap();
        let mut store = Store {
            path: path.clone(),
            data: Data::default(),
        };
        assert!(store.update(|d| *d = sample()).is_err());
        assert_eq!(store.data(), &Data::default());
    }
}
