//! The tunnel manager: one running [`Tunnel`] per saved tunnel id, their status, request
//! counts and traffic, and one event stream that the window and the tray both follow.
//!
//! Plain Rust with no Tauri types, so it is tested against a real server without a window.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ggrok_tunnel::{
    traffic::{CapturedBody, Headers},
    ConfigError, Exchange, HostHeader, LocalTarget, ReplayError, Secret, Status, Traffic, Tunnel,
    TunnelConfig,
};
use serde::Serialize;
use tokio::sync::broadcast;
use tracing::{debug, info};

/// Exchanges kept per tunnel (the UI table shows the same number).
pub const TRAFFIC_CAP: usize = 500;
/// Bytes of each body kept for the inspector.
pub const CAPTURE_LIMIT: usize = 64 * 1024;
/// Events buffered for a slow listener before it starts missing some.
pub const EVENT_BUFFER: usize = 1024;
/// Bytes of a binary body shown as hex.
pub const HEX_LIMIT: usize = 4096;
/// How long the local-port check waits for a connection before calling the port dead.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Server URL.
    pub server: String,
    /// Token for that server.
    pub token: Option<Secret>,
    /// Requested subdomain.
    pub subdomain: Option<String>,
    /// Local host.
    pub local_host: String,
    /// Local port.
    pub local_port: u16,
    /// Identity towards the server, so a restarted tunnel gets its held name back.
    pub client_id: Option<String>,
    /// `user:password` visitors must give.
    pub basic_auth: Option<Secret>,
    /// Visitor addresses allowed; empty lets everyone in.
    pub allow_ips: Vec<String>,
    /// Pass the public Host header through.
    pub keep_host: bool,
}

/// A tunnel's state as the UI shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelState {
    /// Engine status; `stopped` for a tunnel that is not running.
    pub status: Status,
    /// Requests seen since the tunnel was last started.
    pub requests: u64,
    /// Set while nothing answers on the local port: checked on start and after a 502.
    pub local_warning: Option<String>,
}

impl Default for TunnelState {
    fn default() -> Self {
        Self {
            status: Status::Stopped,
            requests: 0,
            local_warning: None,
        }
    }
}

/// One row of the traffic table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// Exchange id, unique within its tunnel across restarts of the tunnel.
    pub id: u64,
    /// When the request arrived, in Unix milliseconds.
    pub started_ms: u64,
    /// As the request line had it.
    pub method: String,
    /// Path and query, as received.
    pub path: String,
    /// Response status, if any.
    pub status: Option<u16>,
    /// How long the exchange took, in milliseconds.
    pub duration_ms: u64,
    /// Response body bytes.
    pub size: u64,
    /// Failure, if any.
    pub error: Option<String>,
}

impl From<&Exchange> for Summary {
    fn from(e: &Exchange) -> Self {
        Self {
            id: e.id,
            started_ms: e.started_ms,
            method: e.method.clone(),
            path: e.path.clone(),
            status: e.status,
            duration_ms: e.duration_ms,
            size: e.response_body.size,
            error: e.error.clone(),
        }
    }
}

/// A body prepared for display: the UI only ever puts `text` into a text node.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BodyView {
    /// `empty`, `json` (pretty-printed), `text` or `binary` (hex).
    pub kind: &'static str,
    /// What to show.
    pub text: String,
    /// Bytes in the whole body.
    pub size: u64,
    /// Whether `text` shows only part of the body.
    pub truncated: bool,
}

impl BodyView {
    /// Decides how `body` is shown, using the `content-type` among `headers` as a hint.
    pub fn of(body: &CapturedBody, headers: &Headers) -> Self {
        let data = &body.data[..];
        let ctype = headers
            .get("content-type")
            .map(str::to_ascii_lowercase)
            .unwrap_or_default();
        let (kind, text, cut) = if data.is_empty() {
            ("empty", String::new(), false)
        } else if let Some(pretty) = (ctype.contains("json") || data[0] == b'{' || data[0] == b'[')
            .then(|| serde_json::from_slice::<serde_json::Value>(data).ok())
            .flatten()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
        {
            ("json", pretty, false)
        } else if let Ok(text) = std::str::from_utf8(data) {
            ("text", text.to_owned(), false)
        } else {
            let shown = &data[..data.len().min(HEX_LIMIT)];
            ("binary", hex_dump(shown), shown.len() < data.len())
        };
        Self {
            kind,
            text,
            size: body.size,
            truncated: body.truncated || cut,
        }
    }
}

/// `hexdump -C`'s layout: offset, 16 bytes in hex, then the same bytes as ASCII (`.` where
/// not printable).
fn hex_dump(data: &[u8]) -> String {
    data.chunks(16)
        .enumerate()
        .map(|(i, row)| {
            let hex: Vec<String> = row.iter().map(|b| format!("{b:02x}")).collect();
            let ascii: String = row
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        b as char
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("{:08x}  {:<47}  |{ascii}|", i * 16, hex.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// An exchange for the inspector pane.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Detail {
    /// The row.
    #[serde(flatten)]
    pub summary: Summary,
    /// Visitor address.
    pub remote_addr: Option<String>,
    /// Whether it became a WebSocket.
    pub upgraded: bool,
    /// Request headers.
    pub request_headers: Vec<(String, String)>,
    /// Response headers.
    pub response_headers: Vec<(String, String)>,
    /// Request body.
    pub request_body: BodyView,
    /// Response body.
    pub response_body: BodyView,
}

/// Recorded headers as owned pairs, for the inspector's one exchange at a time.
fn pairs(h: &Headers) -> Vec<(String, String)> {
    h.iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

impl From<&Exchange> for Detail {
    fn from(e: &Exchange) -> Self {
        Self {
            summary: e.into(),
            remote_addr: e.remote_addr.clone(),
            upgraded: e.upgraded,
            request_headers: pairs(&e.request_headers),
            response_headers: pairs(&e.response_headers),
            request_body: BodyView::of(&e.request_body, &e.request_headers),
            response_body: BodyView::of(&e.response_body, &e.response_headers),
        }
    }
}

/// Something the window and the tray should hear about.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Event {
    /// A tunnel's status or request count changed.
    #[serde(rename_all = "camelCase")]
    Status {
        /// Saved tunnel id.
        tunnel_id: String,
        /// New state.
        state: TunnelState,
    },
    /// A request went through a tunnel.
    #[serde(rename_all = "camelCase")]
    Traffic {
        /// Saved tunnel id.
        tunnel_id: String,
        /// The row.
        exchange: Summary,
    },
}

/// Why a manager call failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tunnel is not running.
    #[error("the tunnel is not running")]
    NotRunning,
    /// No such exchange.
    #[error("request {0} is no longer in the recent traffic")]
    NoExchange(u64),
    /// Replay failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
}

struct Entry {
    /// `None` once stopped; traffic stays for inspection.
    tunnel: Option<Arc<Tunnel>>,
    traffic: Traffic,
    state: Arc<Mutex<TunnelState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Runs tunnels. Cheap to clone.
#[derive(Clone)]
pub struct Manager {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    events: broadcast::Sender<Event>,
    ring_size: usize,
    capture_limit: usize,
}

impl Default for Manager {
    fn default() -> Self {
        Self::new()
    }
}

impl Manager {
    /// An empty manager keeping [`TRAFFIC_CAP`] exchanges per tunnel.
    pub fn new() -> Self {
        Self::with_limits(TRAFFIC_CAP, CAPTURE_LIMIT)
    }

    /// An empty manager keeping `ring_size` exchanges per tunnel, bodies up to `capture_limit`.
    pub fn with_limits(ring_size: usize, capture_limit: usize) -> Self {
        Self {
            entries: Arc::default(),
            events: broadcast::channel(EVENT_BUFFER).0,
            ring_size,
            capture_limit,
        }
    }

    /// Status and traffic events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Starts (or restarts) tunnel `id`. Must be called inside a tokio runtime. A restart keeps
    /// the traffic recorded so far, and exchange ids go on from where they were.
    pub async fn start(&self, id: &str, spec: Spec) -> Result<(), ManagerError> {
        self.stop(id).await;
        let target = format!("{}:{}", spec.local_host, spec.local_port);
        let mut config = TunnelConfig::new(spec.server, spec.local_port);
        config.traffic = self.traffic_of(id);
        config.client_id = spec.client_id;
        config.token = spec.token;
        config.subdomain = spec.subdomain;
        config.local = LocalTarget::new(spec.local_host, spec.local_port);
        if spec.keep_host {
            config.local.host_header = HostHeader::Preserve;
        }
        config.basic_auth = spec.basic_auth;
        config.allow_ips = spec.allow_ips;
        config.ring_size = self.ring_size;
        config.capture_limit = self.capture_limit;
        let tunnel = Arc::new(Tunnel::start(config)?);
        info!(tunnel = %id, "tunnel started");

        let state = Arc::new(Mutex::new(TunnelState {
            status: tunnel.status().borrow().clone(),
            requests: 0,
            local_warning: None,
        }));
        let probe = Probe {
            target,
            state: state.clone(),
            events: self.events.clone(),
            id: id.to_owned(),
        };
        let probe_task = tokio::spawn(probe.clone().run());
        let mut status_rx = tunnel.status();
        let mut traffic_rx = tunnel.traffic().subscribe();
        let status_task = {
            let (state, events, id) = (state.clone(), self.events.clone(), id.to_owned());
            tokio::spawn(async move {
                loop {
                    let status = status_rx.borrow_and_update().clone();
                    let snapshot = {
                        let mut s = state.lock().expect("state lock");
                        s.status = status;
                        s.clone()
                    };
                    debug!(tunnel = %id, status = ?snapshot.status, "status");
                    let _ = events.send(Event::Status {
                        tunnel_id: id.clone(),
                        state: snapshot,
                    });
                    if status_rx.changed().await.is_err() {
                        break;
                    }
                }
            })
        };
        let traffic_task = {
            let (state, events, id) = (state.clone(), self.events.clone(), id.to_owned());
            tokio::spawn(async move {
                loop {
                    match traffic_rx.recv().await {
                        Ok(exchange) => {
                            // A 502 is what a dead local port looks like from here.
                            let local_ok = match exchange.status {
                                Some(502) => {
                                    tokio::spawn(probe.clone().run());
                                    None
                                }
                                Some(_) => Some(()),
                                None => None,
                            };
                            let snapshot = {
                                let mut s = state.lock().expect("state lock");
                                s.requests += 1;
                                if local_ok.is_some() {
                                    s.local_warning = None;
                                }
                                s.clone()
                            };
                            let _ = events.send(Event::Traffic {
                                tunnel_id: id.clone(),
                                exchange: Summary::from(&*exchange),
                            });
                            let _ = events.send(Event::Status {
                                tunnel_id: id.clone(),
                                state: snapshot,
                            });
                        }
                        // Missed events still happened: count them.
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            state.lock().expect("state lock").requests += n;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    }
                }
            })
        };
        let entry = Entry {
            traffic: tunnel.traffic().clone(),
            tunnel: Some(tunnel),
            state,
            tasks: vec![status_task, traffic_task, probe_task],
        };
        self.entries
            .lock()
            .expect("entries lock")
            .insert(id.to_owned(), entry);
        Ok(())
    }

    /// Stops tunnel `id` if it runs; its traffic stays for inspection.
    pub async fn stop(&self, id: &str) {
        let (tunnel, tasks, state) = {
            let mut entries = self.entries.lock().expect("entries lock");
            let Some(entry) = entries.get_mut(id) else {
                return;
            };
            (
                entry.tunnel.take(),
                std::mem::take(&mut entry.tasks),
                entry.state.clone(),
            )
        };
        for t in tasks {
            t.abort();
        }
        if let Some(tunnel) = tunnel {
            match Arc::try_unwrap(tunnel) {
                Ok(tunnel) => tunnel.stop().await,
                // A replay holds the other handle; the tunnel stops when it is dropped.
                Err(shared) => drop(shared),
            }
            info!(tunnel = %id, "tunnel stopped");
        }
        let snapshot = {
            let mut s = state.lock().expect("state lock");
            s.status = Status::Stopped;
            s.local_warning = None;
            s.clone()
        };
        let _ = self.events.send(Event::Status {
            tunnel_id: id.to_owned(),
            state: snapshot,
        });
    }

    /// Stops tunnel `id` and forgets its traffic.
    pub async fn remove(&self, id: &str) {
        self.stop(id).await;
        self.entries.lock().expect("entries lock").remove(id);
    }

    /// Stops everything (app exit).
    pub async fn stop_all(&self) {
        let ids: Vec<String> = self
            .entries
            .lock()
            .expect("entries lock")
            .keys()
            .cloned()
            .collect();
        for id in ids {
            self.stop(&id).await;
        }
    }

    /// Whether tunnel `id` runs.
    pub fn is_running(&self, id: &str) -> bool {
        self.entries
            .lock()
            .expect("entries lock")
            .get(id)
            .is_some_and(|e| e.tunnel.is_some())
    }

    /// The state of tunnel `id` (stopped if unknown).
    pub fn state(&self, id: &str) -> TunnelState {
        let entries = self.entries.lock().expect("entries lock");
        let Some(e) = entries.get(id) else {
            return TunnelState::default();
        };
        let mut state = e.state.lock().expect("state lock").clone();
        // The engine's watch is the truth; the status task may not have caught up yet.
        if let Some(t) = &e.tunnel {
            state.status = t.status().borrow().clone();
        }
        state
    }

    /// Waits until tunnel `id` is online (Ok(url)) or has failed or stopped (Err(status)).
    pub async fn online(&self, id: &str) -> Result<String, Status> {
        let tunnel = self.tunnel(id).ok_or(Status::Stopped)?;
        tunnel.online().await
    }

    fn tunnel(&self, id: &str) -> Option<Arc<Tunnel>> {
        self.entries
            .lock()
            .expect("entries lock")
            .get(id)
            .and_then(|e| e.tunnel.clone())
    }

    /// The traffic sink of tunnel `id`, cloned so no lock is held while it is read.
    fn traffic_of(&self, id: &str) -> Option<Traffic> {
        self.entries
            .lock()
            .expect("entries lock")
            .get(id)
            .map(|e| e.traffic.clone())
    }

    /// Recent rows of tunnel `id`, newest first.
    pub fn traffic(&self, id: &str) -> Vec<Summary> {
        let traffic = self.traffic_of(id);
        traffic
            .map(|t| {
                t.recent()
                    .iter()
                    .rev()
                    .map(|e| Summary::from(&**e))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// One exchange of tunnel `id` for the inspector.
    pub fn exchange(&self, id: &str, exchange: u64) -> Result<Detail, ManagerError> {
        let traffic = self.traffic_of(id);
        traffic
            .and_then(|t| t.get(exchange))
            .map(|e| Detail::from(&*e))
            .ok_or(ManagerError::NoExchange(exchange))
    }

    /// Re-sends a captured request to the local service; the result is a new row.
    pub async fn replay(&self, id: &str, exchange: u64) -> Result<Summary, ManagerError> {
        let tunnel = self.tunnel(id).ok_or(ManagerError::NotRunning)?;
        let e = tunnel.replay(exchange).await?;
        Ok(Summary::from(&*e))
    }
}

/// Checks whether anything listens on a tunnel's local port and tells the UI when that changes.
#[derive(Clone)]
struct Probe {
    target: String,
    state: Arc<Mutex<TunnelState>>,
    events: broadcast::Sender<Event>,
    id: String,
}

impl Probe {
    async fn run(self) {
        let listening = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&self.target)).await,
            Ok(Ok(_))
        );
        let warning = (!listening).then(|| format!("nothing is listening on {}", self.target));
        let snapshot = {
            let mut s = self.state.lock().expect("state lock");
            // A stopped tunnel has no local side to warn about.
            if s.local_warning == warning || s.status == Status::Stopped {
                return;
            }
            s.local_warning = warning;
            s.clone()
        };
        let _ = self.events.send(Event::Status {
            tunnel_id: self.id,
            state: snapshot,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{get, Origin, TestServer};

    async fn next_status(
        rx: &mut broadcast::Receiver<Event>,
        pred: impl Fn(&Status) -> bool,
    ) -> TunnelState {
        loop {
            match rx.recv().await.expect("event") {
                Event::Status { state, .. } if pred(&state.status) => return state,
                _ => {}
            }
        }
    }

    fn spec(server: &TestServer, origin: &Origin, name: Option<&str>) -> Spec {
        Spec {
            server: server.url.clone(),
            token: None,
            subdomain: name.map(str::to_owned),
            local_host: "127.0.0.1".into(),
            local_port: origin.port,
            client_id: None,
            basic_auth: None,
            allow_ips: Vec::new(),
            keep_host: false,
        }
    }

    async fn next_traffic(rx: &mut broadcast::Receiver<Event>) -> Summary {
        loop {
            if let Event::Traffic { exchange, .. } = rx.recv().await.expect("event") {
                return exchange;
            }
        }
    }

    #[tokio::test]
    async fn start_serve_count_replay_stop() {
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let m = Manager::new();
        let mut events = m.subscribe();

        m.start("t1", spec(&server, &origin, Some("app")))
            .await
            .unwrap();
        let first = next_status(&mut events, |_| true).await;
        assert!(
            matches!(first.status, Status::Connecting | Status::Online { .. }),
            "{first:?}"
        );
        let online = next_status(&mut events, |s| matches!(s, Status::Online { .. })).await;
        let Status::Online { url, name } = online.status else {
            unreachable!()
        };
        assert_eq!(name, "app");
        assert_eq!(url, format!("http://app.localhost:{}", server.port));
        assert!(m.is_running("t1"));

        let (status, body) = get(server.port, "app.localhost", "/hello?x=1").await;
        assert_eq!((status, body.as_str()), (200, "origin saw /hello?x=1"));

        // The traffic event and the count both arrive.
        let row = loop {
            if let Event::Traffic {
                tunnel_id,
                exchange,
            } = events.recv().await.unwrap()
            {
                assert_eq!(tunnel_id, "t1");
                break exchange;
            }
        };
        assert_eq!(
            (row.method.as_str(), row.path.as_str()),
            ("GET", "/hello?x=1")
        );
        assert_eq!(row.status, Some(200));
        let counted = next_status(&mut events, |_| true).await;
        assert_eq!(counted.requests, 1);
        assert_eq!(m.state("t1").requests, 1);

        let detail = m.exchange("t1", row.id).unwrap();
        assert_eq!(detail.response_body.kind, "text");
        assert_eq!(detail.response_body.text, "origin saw /hello?x=1");

        let replayed = m.replay("t1", row.id).await.unwrap();
        assert_ne!(replayed.id, row.id);
        assert_eq!(replayed.path, "/hello?x=1");
        assert_eq!(origin.hits(), 2);
        let rows = m.traffic("t1");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, replayed.id, "newest first");

        m.stop("t1").await;
        assert!(!m.is_running("t1"));
        next_status(&mut events, |s| *s == Status::Stopped).await;
        assert_eq!(m.state("t1").status, Status::Stopped);
        assert!(matches!(
            m.replay("t1", row.id).await,
            Err(ManagerError::NotRunning)
        ));
        // Traffic stays inspectable after stop; the public URL is gone.
        assert_eq!(m.traffic("t1").len(), 2);
        let (status, _) = get(server.port, "app.localhost", "/hello").await;
        assert_eq!(status, 404);
        assert_eq!(origin.hits(), 2);
    }

    #[tokio::test]
    async fn name_taken_fails_with_the_servers_reason() {
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let m = Manager::new();
        m.start("a", spec(&server, &origin, Some("dup")))
            .await
            .unwrap();
        m.online("a").await.unwrap();
        m.start("b", spec(&server, &origin, Some("dup")))
            .await
            .unwrap();
        let err = m.online("b").await.unwrap_err();
        let Status::Failed { message, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(!message.is_empty());
        assert_eq!(m.state("b").status, err);
        m.stop_all().await;
        assert!(!m.is_running("a") && !m.is_running("b"));
    }

    #[tokio::test]
    async fn restart_keeps_history_with_new_ids_and_remove_forgets() {
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let m = Manager::new();
        m.start("t", spec(&server, &origin, None)).await.unwrap();
        let url = m.online("t").await.unwrap();
        let host = url.trim_start_matches("http://").to_owned();
        let mut events = m.subscribe();
        get(server.port, &host, "/before").await;
        let before = next_traffic(&mut events).await;
        assert_eq!(m.traffic("t").len(), 1);
        // A restart gets a fresh count but keeps the rows, and new ids never reuse old ones.
        // (Random names: a fixed one is held by the server for the old session's reconnect
        // grace period.)
        m.stop("t").await;
        m.start("t", spec(&server, &origin, None)).await.unwrap();
        assert_eq!(m.state("t").requests, 0);
        let url = m.online("t").await.unwrap();
        let host = url.trim_start_matches("http://").to_owned();
        get(server.port, &host, "/after").await;
        let after = next_traffic(&mut events).await;
        assert!(after.id > before.id, "{} after {}", after.id, before.id);
        let rows = m.traffic("t");
        let paths: Vec<_> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/after", "/before"]);
        assert_eq!(m.exchange("t", before.id).unwrap().summary.path, "/before");
        // Replay works on a row recorded before the restart.
        let replayed = m.replay("t", before.id).await.unwrap();
        assert!(replayed.id > after.id);
        m.remove("t").await;
        assert!(m.traffic("t").is_empty());
        assert_eq!(m.state("t"), TunnelState::default());
        assert!(matches!(
            m.exchange("t", 1),
            Err(ManagerError::NoExchange(1))
        ));
    }

    #[tokio::test]
    async fn a_dead_local_port_is_reported_until_it_answers() {
        let server = TestServer::start().await;
        // A port that was just free: nothing listens on it.
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let m = Manager::new();
        let mut events = m.subscribe();
        let mut s = Spec {
            server: server.url.clone(),
            token: None,
            subdomain: Some("dead".into()),
            local_host: "127.0.0.1".into(),
            local_port: dead,
            client_id: None,
            basic_auth: None,
            allow_ips: Vec::new(),
            keep_host: false,
        };
        m.start("t", s.clone()).await.unwrap();
        let warned = loop {
            if let Event::Status { state, .. } = events.recv().await.unwrap() {
                if state.local_warning.is_some() {
                    break state;
                }
            }
        };
        assert_eq!(
            warned.local_warning.as_deref(),
            Some(format!("nothing is listening on 127.0.0.1:{dead}").as_str())
        );
        m.online("t").await.unwrap();
        assert_eq!(get(server.port, "dead.localhost", "/").await.0, 502);
        assert!(m.state("t").local_warning.is_some());

        // A live origin: no warning at start, and a 2xx clears one.
        let origin = Origin::start().await;
        m.stop("t").await;
        s.local_port = origin.port;
        s.subdomain = Some("alive".into());
        m.start("t", s).await.unwrap();
        m.online("t").await.unwrap();
        assert_eq!(get(server.port, "alive.localhost", "/").await.0, 200);
        next_traffic(&mut events).await;
        assert_eq!(m.state("t").local_warning, None);
        m.stop("t").await;
    }

    #[tokio::test]
    async fn traffic_is_capped_newest_first_and_bodies_cut() {
        let server = TestServer::start().await;
        let origin = Origin::start().await;
        let m = Manager::with_limits(3, 8);
        m.start("t", spec(&server, &origin, Some("cap")))
            .await
            .unwrap();
        m.online("t").await.unwrap();
        let mut events = m.subscribe();
        for i in 0..5 {
            get(server.port, "cap.localhost", &format!("/r{i}")).await;
        }
        let mut seen = 0;
        while seen < 5 {
            if let Event::Traffic { .. } = events.recv().await.unwrap() {
                seen += 1;
            }
        }
        let rows = m.traffic("t");
        let paths: Vec<_> = rows.iter().map(|r| r.path.as_str()).collect();
        assert_eq!(paths, ["/r4", "/r3", "/r2"]);
        assert_eq!(m.state("t").requests, 5);
        let d = m.exchange("t", rows[0].id).unwrap();
        assert_eq!(d.response_body.text, "origin s");
        assert!(d.response_body.truncated);
        assert_eq!(d.response_body.size, "origin saw /r4".len() as u64);
        m.stop("t").await;
    }

    #[test]
    fn bodies_render_as_json_text_or_hex() {
        let body = |d: &[u8]| CapturedBody {
            data: bytes::Bytes::copy_from_slice(d),
            size: d.len() as u64,
            truncated: false,
        };
        let json = BodyView::of(&body(br#"{"a":[1,2]}"#), &Headers::default());
        assert_eq!(json.kind, "json");
        assert_eq!(json.text, "{\n  \"a\": [\n    1,\n    2\n  ]\n}");
        let text = BodyView::of(&body(b"<img src=x onerror=alert(1)>"), &Headers::default());
        assert_eq!(
            (text.kind, text.text.as_str()),
            ("text", "<img src=x onerror=alert(1)>")
        );
        let bin = BodyView::of(&body(&[0xff, 0x00, 0x41]), &Headers::default());
        assert_eq!(
            (bin.kind, bin.text.as_str()),
            (
                "binary",
                format!("00000000  {:<47}  |..A|", "ff 00 41").as_str()
            )
        );
        let line = BodyView::of(&body(b"\x00ggrok tunnel!\n\xff+"), &Headers::default()).text;
        assert_eq!(
            line,
            "00000000  00 67 67 72 6f 6b 20 74 75 6e 6e 65 6c 21 0a ff  |.ggrok tunnel!..|\n\
             00000010  2b                                               |+|"
        );
        let big = vec![0xffu8; HEX_LIMIT + 10];
        let big = BodyView::of(&body(&big), &Headers::default());
        assert!(big.truncated);
        assert_eq!(big.text.lines().count(), HEX_LIMIT / 16);
        assert_eq!(BodyView::of(&body(b""), &Headers::default()).kind, "empty");
    }
}
