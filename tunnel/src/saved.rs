//! Saved servers and tunnels: one JSON file in the OS config directory, shared by the `ggrok`
//! CLI and the desktop app. The format is documented in `docs/config.md`.
//!
//! Both programs may change the file at the same time, so every change is a read-modify-write
//! under an advisory lock (on `config.json.lock` beside it, because the file itself is replaced):
//! the file is read again under the lock, changed, written to a temporary file in the same
//! directory and renamed over the old one. A crash mid-write leaves either the old or the new
//! file, and a change made by the other program between our read and our write is kept.
//!
//! A file that cannot be read or parsed is moved aside (`config.json.corrupt-<unix ms>`) and
//! reported, so nothing is silently lost. Fields this version does not know (written by a newer
//! app or CLI) are kept through every rewrite. Tokens are never stored here: see [`tokens`].
//!
//! [`tokens`]: crate::tokens

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{HostHeader, LocalTarget, TunnelKind, Upstream};

/// File name inside the config directory.
pub const FILE_NAME: &str = "config.json";
/// Schema version written into the file, for future migrations.
pub const VERSION: u32 = 1;
/// Id of the server the desktop app runs in-process. Not stored: its URL changes with its port.
pub const BUILTIN_SERVER_ID: &str = "local";
/// Port of the desktop app's in-process server unless [`Settings::server_port`] says otherwise.
pub const BUILTIN_DEFAULT_PORT: u16 = 7070;

/// Fields of an object this version does not know, kept so that rewriting the file loses none.
pub type Unknown = serde_json::Map<String, serde_json::Value>;

/// A server the user added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedServer {
    /// Stable id (random hex).
    pub id: String,
    /// Label shown in the UI.
    pub name: String,
    /// `https://tunnel.example.com`; the token lives in the keyring under `id`.
    pub url: String,
    /// Fields of a newer format.
    #[serde(flatten)]
    pub unknown: Unknown,
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
    /// The name `ggrok start NAME` knows it by; `None` for tunnels saved without one (they are
    /// started by subdomain or id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
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
    /// How to talk to an HTTP tunnel's local service, when not plain HTTP/1.1 (the CLI's
    /// `https://` target, `--upstream-insecure`, `--upstream-protocol`, `--host-header VALUE`).
    #[serde(default, skip_serializing_if = "SavedUpstream::is_plain")]
    pub upstream: SavedUpstream,
    /// Fields of a newer format.
    #[serde(flatten)]
    pub unknown: Unknown,
}

/// What a saved tunnel asks the server for; see [`SavedTunnel::ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ask {
    /// HTTP, or TCP with the port to ask for.
    pub kind: TunnelKind,
    /// The subdomain to ask for (HTTP).
    pub subdomain: Option<String>,
    /// Whether the name or port is only the one the server gave before.
    pub given: bool,
}

/// A saved HTTP tunnel's way to its local service beyond host and port, as `ggrok http` takes
/// it; the desktop app's Expose form has it under "More".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedUpstream {
    /// TLS to the local service (an `https://` target).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
    /// With `tls`, accept any certificate (self-signed development certificates).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure: bool,
    /// HTTP/2 to the local service (gRPC).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub http2: bool,
    /// The `Host` the local service gets, as `--host-header` takes it: a value, `rewrite` or
    /// `preserve` (`keep_host`, the app's checkbox, wins: the public host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_header: Option<String>,
    /// Fields of a newer format.
    #[serde(flatten)]
    pub unknown: Unknown,
}

impl SavedUpstream {
    fn is_plain(&self) -> bool {
        *self == Self::default()
    }
}

impl SavedTunnel {
    /// A tunnel to `local_host:local_port` on server `server_id`, with everything else unset.
    pub fn new(id: String, server_id: String, local_host: String, local_port: u16) -> Self {
        Self {
            id,
            kind: Kind::Http,
            remote_port: None,
            given_port: None,
            name: None,
            server_id,
            subdomain: None,
            local_host,
            local_port,
            start_on_launch: false,
            given_name: None,
            allow_ips: Vec::new(),
            keep_host: false,
            upstream: SavedUpstream::default(),
            unknown: Unknown::new(),
        }
    }

    /// Where its traffic goes and how. A `host_header` the file holds that is not a header
    /// value (the file may have been written by hand) is an error, not a silent default.
    pub fn local_target(&self) -> Result<LocalTarget, String> {
        let mut local = LocalTarget::new(self.local_host.clone(), self.local_port);
        if self.kind == Kind::Tcp {
            return Ok(local);
        }
        let u = &self.upstream;
        local.upstream = Upstream {
            tls: u.tls,
            insecure: u.insecure,
            http2: u.http2,
        };
        local.host_header = match &u.host_header {
            _ if self.keep_host => HostHeader::Preserve,
            // As `--host-header` takes it.
            Some(v) => v.parse()?,
            None => HostHeader::Rewrite,
        };
        Ok(local)
    }

    /// What to ask the server for: the kind (with a TCP tunnel's port) and subdomain, the
    /// user's fixed ones or else the ones the server gave last time, and whether they are
    /// only those ([`TunnelConfig::given`]: not free now, any other will do).
    ///
    /// [`TunnelConfig::given`]: crate::TunnelConfig::given
    pub fn ask(&self) -> Ask {
        match self.kind {
            Kind::Http => Ask {
                kind: TunnelKind::Http,
                subdomain: self.subdomain.clone().or_else(|| self.given_name.clone()),
                given: self.subdomain.is_none(),
            },
            Kind::Tcp => Ask {
                kind: TunnelKind::Tcp {
                    remote_port: self.remote_port.or(self.given_port),
                },
                subdomain: None,
                given: self.remote_port.is_none(),
            },
        }
    }

    /// Remembers the name (a TCP tunnel's port) the server gave it online at `url` as `name`,
    /// to ask for it again next time; whether that changed anything. A fixed one stays.
    pub fn remember_online(&mut self, url: &str, name: &str) -> bool {
        match self.kind {
            Kind::Http if self.subdomain.is_none() && self.given_name.as_deref() != Some(name) => {
                self.given_name = Some(name.to_owned());
                true
            }
            Kind::Tcp if self.remote_port.is_none() => {
                let port = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                let changed = port.is_some() && port != self.given_port;
                if changed {
                    self.given_port = port;
                }
                changed
            }
            _ => false,
        }
    }

    /// Its local side in a line: `host:port`, or `https://host:port` when TLS is spoken to it
    /// (`ggrok list`, the app's card and tray).
    pub fn local_label(&self) -> String {
        let authority = LocalTarget::new(self.local_host.clone(), self.local_port).authority();
        if self.kind == Kind::Http && self.upstream.tls {
            format!("https://{authority}")
        } else {
            authority
        }
    }

    /// Saves `local` as its target: host, port, TLS, HTTP version and `Host` header.
    pub fn set_local_target(&mut self, local: &LocalTarget) {
        self.local_host = local.host.clone();
        self.local_port = local.port;
        self.keep_host = local.host_header == HostHeader::Preserve;
        self.upstream = SavedUpstream {
            tls: local.upstream.tls,
            insecure: local.upstream.insecure,
            http2: local.upstream.http2,
            host_header: match &local.host_header {
                HostHeader::Value(v) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
                _ => None,
            },
            unknown: std::mem::take(&mut self.upstream.unknown),
        };
    }

    /// What the CLI lists it as: its name, else its subdomain, else the name the server last
    /// gave it, else its id.
    pub fn label(&self) -> &str {
        self.name
            .as_deref()
            .or(self.subdomain.as_deref())
            .or(self.given_name.as_deref())
            .unwrap_or(&self.id)
    }

    /// Whether `wanted` names this tunnel: its name, subdomain or id.
    pub fn answers_to(&self, wanted: &str) -> bool {
        self.name.as_deref() == Some(wanted)
            || self.subdomain.as_deref() == Some(wanted)
            || self.id == wanted
    }
}

fn default_host() -> String {
    "localhost".to_owned()
}

/// The desktop app's settings (the CLI reads only `server_port`, to reach the app's server).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Start with the window hidden, in the tray only.
    #[serde(default)]
    pub start_hidden: bool,
    /// No desktop notifications (they are on unless turned off).
    #[serde(default)]
    pub notifications_off: bool,
    /// Port of the built-in server; `None` is [`BUILTIN_DEFAULT_PORT`].
    #[serde(default)]
    pub server_port: Option<u16>,
    /// Bytes of each body the inspector keeps; `None` is the app's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture_limit: Option<usize>,
    /// Fields of a newer format.
    #[serde(flatten)]
    pub unknown: Unknown,
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
    /// The desktop app's settings (see [`Settings`]).
    #[serde(default)]
    pub settings: Settings,
    /// Fields of a newer format.
    #[serde(flatten)]
    pub unknown: Unknown,
}

impl Default for Data {
    fn default() -> Self {
        Self {
            version: VERSION,
            servers: Vec::new(),
            tunnels: Vec::new(),
            settings: Settings::default(),
            unknown: Unknown::new(),
        }
    }
}

impl Data {
    /// The URL of the app's in-process server as the file configures it (the app falls back to
    /// another port when that one is taken, which only the running app knows).
    pub fn builtin_server_url(&self) -> String {
        let port = self.settings.server_port.unwrap_or(BUILTIN_DEFAULT_PORT);
        format!("http://localhost:{port}")
    }
}

/// Why the file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Creating, locking, writing or renaming the file failed.
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
    /// The file's identity when last read or written, to notice changes made by the other
    /// program.
    seen: Option<Stamp>,
}

impl Store {
    /// The default location: the OS config dir (`~/.config/ggrok/config.json` on Linux).
    pub fn default_path() -> Option<PathBuf> {
        directories::ProjectDirs::from("dev", "ggrok", "ggrok")
            .map(|d| d.config_dir().join(FILE_NAME))
    }

    /// `GGROK_CONFIG_DIR/config.json` when that is set (tests, portable installs), else
    /// [`Store::default_path`].
    pub fn configured_path() -> PathBuf {
        match std::env::var_os("GGROK_CONFIG_DIR") {
            Some(dir) => PathBuf::from(dir).join(FILE_NAME),
            None => Self::default_path().unwrap_or_else(|| PathBuf::from(FILE_NAME)),
        }
    }

    /// Loads `path`. A missing file is an empty store; an unreadable or corrupt one is moved
    /// aside and the returned warning says where it went.
    pub fn load(path: impl Into<PathBuf>) -> (Self, Option<String>) {
        let path = path.into();
        let mut store = Self {
            path,
            data: Data::default(),
            seen: None,
        };
        let warning = store.read(true);
        (store, warning)
    }

    /// Reads the file into `self.data`; a warning if it had to be moved aside. A missing file
    /// is empty. An unusable one is moved aside on load, leaving `self.data` empty; later (see
    /// [`Store::reread`]) only one that does not parse is, and `self.data` stays the last good
    /// copy, so a save after someone broke the file keeps what we knew.
    fn read(&mut self, on_load: bool) -> Option<String> {
        match self.reread(on_load) {
            Ok(warning) => warning,
            Err(err) => {
                let warning = move_aside(&self.path, &err.to_string());
                warn!(warning = %warning, "settings file not usable");
                self.data = Data::default();
                self.seen = None;
                Some(warning)
            }
        }
    }

    /// [`Store::read`] where a file that cannot be read at all is an error, left in place.
    fn reread(&mut self, on_load: bool) -> io::Result<Option<String>> {
        let seen = stamp(&self.path);
        let parsed = match fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice::<Data>(&bytes).map_err(|e| e.to_string()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Data::default()),
            Err(err) => return Err(err),
        };
        self.seen = seen;
        Ok(match parsed {
            Ok(data) => {
                self.data = data;
                None
            }
            Err(why) => {
                let warning = move_aside(&self.path, &why);
                warn!(warning = %warning, "settings file not usable");
                if on_load {
                    self.data = Data::default();
                }
                self.seen = None;
                Some(warning)
            }
        })
    }

    /// The file this store writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The data as last read or written.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// Whether the file changed since it was last read or written here.
    pub fn changed_on_disk(&self) -> bool {
        stamp(&self.path) != self.seen
    }

    /// The data, read again first if the file changed since (the other program saved).
    pub fn fresh(&mut self) -> &Data {
        if stamp(&self.path) != self.seen {
            let _lock = self.lock().ok();
            let _ = self.reread(false);
        }
        &self.data
    }

    /// Changes the data with `f` and saves, under the lock and starting from the file as it is
    /// now, so a change the other program made meanwhile is kept. On a failed save nothing
    /// changes.
    pub fn update<T>(&mut self, f: impl FnOnce(&mut Data) -> T) -> Result<T, StoreError> {
        let _lock = self.lock()?;
        // Always: two saves within the file system's timestamp granularity can leave the same
        // modification time and size, and the file is small.
        self.reread(false).map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut next = self.data.clone();
        let out = f(&mut next);
        write_atomic(&self.path, &next)?;
        self.data = next;
        self.seen = stamp(&self.path);
        Ok(out)
    }

    /// Remembers the name (a TCP tunnel's port) the server gave tunnel `id` online at `url` as
    /// `name` ([`SavedTunnel::remember_online`]), writing the file only when that changes it;
    /// whether it did.
    pub fn remember_online(&mut self, id: &str, url: &str, name: &str) -> Result<bool, StoreError> {
        let mut probe = self.fresh().tunnels.iter().find(|t| t.id == id).cloned();
        if !probe.as_mut().is_some_and(|t| t.remember_online(url, name)) {
            return Ok(false);
        }
        self.update(|d| {
            d.tunnels
                .iter_mut()
                .find(|t| t.id == id)
                .is_some_and(|t| t.remember_online(url, name))
        })
    }

    /// Holds the advisory lock until dropped. Blocking: the other program holds it only for
    /// one read-modify-write.
    fn lock(&self) -> Result<FileLock, StoreError> {
        let io_err = |source| StoreError::Io {
            path: self.path.clone(),
            source,
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(io_err)?;
        }
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path.with_file_name(format!("{FILE_NAME}.lock")))
            .map_err(io_err)?;
        fs4::FileExt::lock(&file).map_err(io_err)?;
        Ok(FileLock(file))
    }
}

/// An exclusive lock on the lock file, released when dropped (closing the file releases it
/// too, even if the process dies).
struct FileLock(fs::File);

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs4::FileExt::unlock(&self.0);
    }
}

/// What tells two versions of the file apart without reading it: every save renames a new file
/// into place, so on Unix the inode changes too.
type Stamp = (SystemTime, u64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Some((meta.modified().ok()?, meta.len(), inode))
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
    // Unique per writer: the app and the CLI never share a temporary file even without the lock.
    let tmp = path.with_file_name(format!(
        "{FILE_NAME}.tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
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
        let mut tunnel = SavedTunnel::new(
            "t1".into(),
            BUILTIN_SERVER_ID.into(),
            "localhost".into(),
            5173,
        );
        tunnel.subdomain = Some("app".into());
        tunnel.start_on_launch = true;
        tunnel.allow_ips = vec!["10.0.0.0/8".into()];
        tunnel.keep_host = true;
        let mut tcp = SavedTunnel::new("t2".into(), "s1".into(), "127.0.0.1".into(), 22);
        tcp.kind = Kind::Tcp;
        tcp.remote_port = Some(20022);
        tcp.given_port = Some(20022);
        let mut grpc = SavedTunnel::new("t3".into(), "s1".into(), "localhost".into(), 8443);
        grpc.upstream = SavedUpstream {
            tls: true,
            insecure: true,
            http2: true,
            host_header: Some("grpc.test".into()),
            unknown: Unknown::new(),
        };
        Data {
            version: VERSION,
            servers: vec![SavedServer {
                id: "s1".into(),
                name: "work".into(),
                url: "https://tunnel.example.com".into(),
                unknown: Unknown::new(),
            }],
            tunnels: vec![tunnel, tcp, grpc],
            settings: Settings {
                start_hidden: true,
                notifications_off: true,
                server_port: Some(7171),
                capture_limit: Some(1 << 20),
                unknown: Unknown::new(),
            },
            unknown: Unknown::new(),
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
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
        assert_eq!(
            names_in(path.parent().unwrap()),
            [FILE_NAME.to_owned(), format!("{FILE_NAME}.lock")]
        );
    }

    /// A file exactly as the desktop app wrote it before the CLI shared it.
    #[test]
    fn reads_the_file_the_app_wrote_before_and_keeps_what_it_does_not_know() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        fs::write(
            &path,
            r#"{
  "version": 1,
  "servers": [
    {
      "id": "9f3c0a1b2c3d4e5f",
      "name": "work",
      "url": "https://tunnel.example.com"
    }
  ],
  "tunnels": [
    {
      "id": "a1b2c3d4e5f60718",
      "server_id": "local",
      "subdomain": null,
      "local_host": "localhost",
      "local_port": 5173,
      "start_on_launch": true,
      "given_name": "brave-otter-42"
    },
    {
      "id": "0718a1b2c3d4e5f6",
      "server_id": "9f3c0a1b2c3d4e5f",
      "subdomain": "api",
      "local_host": "127.0.0.1",
      "local_port": 8080,
      "start_on_launch": false,
      "allow_ips": ["10.0.0.0/8"],
      "keep_host": true,
      "from_the_future": {"x": 1}
    }
  ],
  "settings": {
    "start_hidden": false,
    "notifications_off": true,
    "server_port": null
  },
  "also_new": [1, 2]
}"#,
        )
        .unwrap();
        let (mut store, warning) = Store::load(&path);
        assert!(warning.is_none(), "{warning:?}");
        let d = store.data().clone();
        assert_eq!(d.servers[0].url, "https://tunnel.example.com");
        assert_eq!(d.tunnels.len(), 2);
        assert_eq!(d.tunnels[0].label(), "brave-otter-42");
        assert!(d.tunnels[0].start_on_launch);
        let api = &d.tunnels[1];
        assert_eq!(
            (api.label(), api.local_host.as_str(), api.local_port),
            ("api", "127.0.0.1", 8080)
        );
        assert!(api.keep_host && api.answers_to("api") && api.answers_to("0718a1b2c3d4e5f6"));
        assert_eq!(d.builtin_server_url(), "http://localhost:7070");

        store
            .update(|d| d.tunnels[0].name = Some("web".into()))
            .unwrap();
        let written: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(written["tunnels"][1]["from_the_future"]["x"], 1);
        assert_eq!(written["also_new"], serde_json::json!([1, 2]));
        assert_eq!(written["tunnels"][0]["name"], "web");
    }

    /// A target as `ggrok http` takes it survives the file, and becomes the same target again.
    #[test]
    fn the_local_target_round_trips_through_the_saved_fields() {
        let mut t = SavedTunnel::new("t".into(), "s".into(), "x".into(), 1);
        let plain = LocalTarget::new("localhost", 3000);
        let mut https = LocalTarget::new("127.0.0.1", 8443);
        https.upstream = Upstream {
            tls: true,
            insecure: true,
            http2: true,
        };
        https.host_header = "myapp.test".parse().unwrap();
        let mut preserve = LocalTarget::new("::1", 8080);
        preserve.host_header = HostHeader::Preserve;
        for local in [plain, https, preserve] {
            t.set_local_target(&local);
            let json = serde_json::to_string(&t).unwrap();
            let back: SavedTunnel = serde_json::from_str(&json).unwrap();
            assert_eq!(back.local_target(), Ok(local), "{json}");
        }
        t.set_local_target(&LocalTarget::new("localhost", 3000));
        assert_eq!(t.upstream, SavedUpstream::default());
        assert!(!serde_json::to_string(&t).unwrap().contains("upstream"));

        // Written by hand: a bad value is an error that says which; a TCP tunnel has no HTTP.
        t.upstream.host_header = Some("a\nb".into());
        assert_eq!(
            t.local_target(),
            Err("\"a\\nb\" is not a valid Host header value".to_owned())
        );
        t.kind = Kind::Tcp;
        t.upstream.tls = true;
        assert_eq!(t.local_target(), Ok(LocalTarget::new("localhost", 3000)));
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
    fn failed_save_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be makes the rename fail.
        let path = dir.path().join(FILE_NAME);
        fs::create_dir(&path).unwrap();
        fs::write(path.join("keep"), b"x").unwrap();
        let mut store = Store {
            path: path.clone(),
            data: Data::default(),
            seen: None,
        };
        assert!(store.update(|d| *d = sample()).is_err());
        assert_eq!(store.data(), &Data::default());
        assert!(path.join("keep").exists());
    }

    /// Two programs (here two stores on one file, each in its own thread, as the app and the
    /// CLI would be) adding tunnels at the same time: every tunnel is there at the end.
    #[test]
    fn concurrent_writers_lose_nothing() {
        const EACH: usize = 40;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let writers: Vec<_> = ["app", "cli"]
            .into_iter()
            .map(|who| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Loaded before the other writes: without the re-read under the lock its
                    // stale copy would overwrite them.
                    let (mut store, _) = Store::load(&path);
                    for i in 0..EACH {
                        store
                            .update(|d| {
                                let id = format!("{who}-{i}");
                                d.tunnels.push(SavedTunnel::new(
                                    id,
                                    BUILTIN_SERVER_ID.into(),
                                    "localhost".into(),
                                    3000,
                                ));
                            })
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let (store, warning) = Store::load(&path);
        assert!(warning.is_none());
        let mut ids: Vec<_> = store.data().tunnels.iter().map(|t| t.id.clone()).collect();
        ids.sort();
        let mut want: Vec<_> = ["app", "cli"]
            .iter()
            .flat_map(|who| (0..EACH).map(move |i| format!("{who}-{i}")))
            .collect();
        want.sort();
        assert_eq!(ids, want);
        assert_eq!(
            names_in(dir.path()),
            [FILE_NAME.to_owned(), format!("{FILE_NAME}.lock")]
        );
    }

    #[test]
    fn fresh_sees_what_the_other_program_saved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let (mut app, _) = Store::load(&path);
        let (mut cli, _) = Store::load(&path);
        cli.update(|d| d.servers = sample().servers).unwrap();
        assert!(app.data().servers.is_empty());
        assert_eq!(app.fresh().servers, sample().servers);
    }
}
