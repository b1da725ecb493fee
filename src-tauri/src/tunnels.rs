//! The tunnel manager: one running [`Tunnel`] per saved tunnel id, their status, request
//! counts and traffic (an HTTP tunnel's exchanges, a TCP tunnel's connections), and one event
//! stream that the window and the tray both follow.
//!
//! Plain Rust with no Tauri types, so it is tested against a real server without a window.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

pub use ggrok_tunnel::inspect::view::{Detail, Summary};
use ggrok_tunnel::{
    inspect::export, tcp::End, ConfigError, Connection, Connections, LocalTarget, ReplayEdits,
    ReplayError, Secret, Status, Traffic, Tunnel, TunnelConfig, TunnelKind,
};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::task::AbortOnDropHandle;
use tracing::{debug, info};

/// Exchanges kept per tunnel (the UI table shows the same number).
pub const TRAFFIC_CAP: usize = 500;
/// Bytes of each body kept for the inspector.
pub const CAPTURE_LIMIT: usize = 64 * 1024;
/// Events buffered for a slow listener before it starts missing some.
pub const EVENT_BUFFER: usize = 1024;
/// How long the local-port check waits for a connection before calling the port dead.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// HTTP, or TCP with the public port to ask for.
    pub kind: TunnelKind,
    /// Server URL.
    pub server: String,
    /// Token for that server.
    pub token: Option<Secret>,
    /// Requested subdomain.
    pub subdomain: Option<String>,
    /// The subdomain (or TCP port) is only the one the server gave before: any other will do.
    pub given: bool,
    /// Where the traffic goes and how (TLS, HTTP version, `Host`).
    pub local: LocalTarget,
    /// Identity towards the server, so a restarted tunnel gets its held name back.
    pub client_id: Option<String>,
    /// `user:password` visitors must give.
    pub basic_auth: Option<Secret>,
    /// Visitor addresses allowed; empty lets everyone in.
    pub allow_ips: Vec<String>,
}

/// A tunnel's state as the UI shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TunnelState {
    /// Engine status; `stopped` for a tunnel that is not running.
    pub status: Status,
    /// Requests seen since the tunnel was last started (HTTP tunnels).
    pub requests: u64,
    /// Visitor connections opened since the tunnel was last started (TCP tunnels).
    pub connections: u64,
    /// Set while nothing answers on the local port: checked on start and after a 502.
    pub local_warning: Option<String>,
}

impl Default for TunnelState {
    fn default() -> Self {
        Self {
            status: Status::Stopped,
            requests: 0,
            connections: 0,
            local_warning: None,
        }
    }
}

/// One row of a TCP tunnel's connection table.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionRow {
    /// Connection id, unique within the app's run.
    pub id: u64,
    /// The visitor's `ip:port` as the server reported it. Untrusted text.
    pub from: String,
    /// When it arrived, in Unix milliseconds.
    pub opened_ms: u64,
    /// From arrival to the end, in milliseconds (0 while open).
    pub duration_ms: u64,
    /// Bytes from the visitor to the local service.
    pub bytes_up: u64,
    /// Bytes from the local service to the visitor.
    pub bytes_down: u64,
    /// How it ended: `closed`, `unreachable`, `visitor_reset`, `local_reset` or `cut`; `None`
    /// while open.
    pub end_kind: Option<&'static str>,
    /// How it ended, for a human (the CLI's phrase); `None` while open.
    pub end: Option<String>,
}

impl From<&Connection> for ConnectionRow {
    fn from(c: &Connection) -> Self {
        Self {
            id: c.id,
            from: c.from.clone(),
            opened_ms: c.opened_ms,
            duration_ms: c.duration_ms,
            bytes_up: c.bytes_up,
            bytes_down: c.bytes_down,
            end_kind: c.end.as_ref().map(|e| match e {
                End::Closed => "closed",
                End::Unreachable { .. } => "unreachable",
                End::VisitorReset { .. } => "visitor_reset",
                End::LocalReset { .. } => "local_reset",
                End::Cut => "cut",
            }),
            end: c.end.as_ref().map(End::describe),
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
    /// A visitor connection of a TCP tunnel opened or ended (the same `id` both times).
    #[serde(rename_all = "camelCase")]
    Connection {
        /// Saved tunnel id.
        tunnel_id: String,
        /// The row.
        connection: ConnectionRow,
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
    /// Ended connections (the engine's ring, kept across restarts as `traffic` is).
    connections: Connections,
    /// Connections open now, as their events told; bounded by the server's per-tunnel cap.
    open: Arc<Mutex<BTreeMap<u64, Arc<Connection>>>>,
    /// `http://host:port` of the local service.
    local_base: String,
    state: Arc<Mutex<TunnelState>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Forwards the traffic events: past a stop too, for the requests the stop cut short
    /// (recorded as it ends them); ends with the entry (a restart or a removal).
    _traffic_task: AbortOnDropHandle<()>,
}

/// Runs tunnels. Cheap to clone.
#[derive(Clone)]
pub struct Manager {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    events: broadcast::Sender<Event>,
    ring_size: usize,
    /// Shared by the clones; the app's setting changes it.
    capture_limit: Arc<std::sync::atomic::AtomicUsize>,
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
            capture_limit: Arc::new(capture_limit.into()),
        }
    }

    /// Keeps `limit` bytes of each body, from now on, in every tunnel (running or not).
    pub fn set_capture_limit(&self, limit: usize) {
        self.capture_limit
            .store(limit, std::sync::atomic::Ordering::Relaxed);
        for e in self.entries.lock().expect("entries lock").values() {
            e.traffic.set_capture_limit(limit);
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
        let target = spec.local.authority();
        let mut config = TunnelConfig::new(spec.server, spec.local.port);
        config.kind = spec.kind;
        config.traffic = self.traffic_of(id);
        config.connections = self.connections_of(id);
        config.client_id = spec.client_id;
        config.token = spec.token;
        config.subdomain = spec.subdomain;
        config.given = spec.given;
        config.local = spec.local;
        config.basic_auth = spec.basic_auth;
        config.allow_ips = spec.allow_ips;
        config.ring_size = self.ring_size;
        config.capture_limit = self
            .capture_limit
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = &config.traffic {
            t.set_capture_limit(config.capture_limit);
        }
        let tunnel = Arc::new(Tunnel::start(config)?);
        info!(tunnel = %id, "tunnel started");

        let state = Arc::new(Mutex::new(TunnelState {
            status: tunnel.status().borrow().clone(),
            ..TunnelState::default()
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
        let open: Arc<Mutex<BTreeMap<u64, Arc<Connection>>>> = Arc::default();
        let mut conn_rx = tunnel.connections().subscribe();
        let conn_task = {
            let (state, events, id, open) = (
                state.clone(),
                self.events.clone(),
                id.to_owned(),
                open.clone(),
            );
            tokio::spawn(async move {
                loop {
                    let conn = match conn_rx.recv().await {
                        Ok(conn) => conn,
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => break,
                    };
                    let opened = conn.end.is_none();
                    {
                        let mut open = open.lock().expect("open lock");
                        if opened {
                            open.insert(conn.id, conn.clone());
                        } else {
                            open.remove(&conn.id);
                        }
                    }
                    let _ = events.send(Event::Connection {
                        tunnel_id: id.clone(),
                        connection: ConnectionRow::from(&*conn),
                    });
                    if opened {
                        let snapshot = {
                            let mut s = state.lock().expect("state lock");
                            s.connections += 1;
                            s.clone()
                        };
                        let _ = events.send(Event::Status {
                            tunnel_id: id.clone(),
                            state: snapshot,
                        });
                    }
                }
            })
        };
        let entry = Entry {
            local_base: format!("http://{}", tunnel.handle().local().authority()),
            traffic: tunnel.traffic().clone(),
            connections: tunnel.connections().clone(),
            open,
            tunnel: Some(tunnel),
            state,
            tasks: vec![status_task, probe_task, conn_task],
            _traffic_task: AbortOnDropHandle::new(traffic_task),
        };
        self.entries
            .lock()
            .expect("entries lock")
            .insert(id.to_owned(), entry);
        Ok(())
    }

    /// Stops tunnel `id` if it runs; its traffic stays for inspection.
    pub async fn stop(&self, id: &str) {
        let (tunnel, tasks, state, connections, open) = {
            let mut entries = self.entries.lock().expect("entries lock");
            let Some(entry) = entries.get_mut(id) else {
                return;
            };
            (
                entry.tunnel.take(),
                std::mem::take(&mut entry.tasks),
                entry.state.clone(),
                entry.connections.clone(),
                entry.open.clone(),
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
        // The connections open at the stop ended with it (as `cut`), after the task that
        // forwards their events was gone: tell the window from the ring.
        let cut = std::mem::take(&mut *open.lock().expect("open lock"));
        for conn in connections
            .recent()
            .iter()
            .filter(|c| cut.contains_key(&c.id))
        {
            let _ = self.events.send(Event::Connection {
                tunnel_id: id.to_owned(),
                connection: ConnectionRow::from(&**conn),
            });
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

    /// The connection sink of tunnel `id`, cloned so no lock is held while it is read.
    fn connections_of(&self, id: &str) -> Option<Connections> {
        self.entries
            .lock()
            .expect("entries lock")
            .get(id)
            .map(|e| e.connections.clone())
    }

    /// Connections of TCP tunnel `id`, newest first: those open now, then those ended.
    pub fn connections(&self, id: &str) -> Vec<ConnectionRow> {
        let (open, ended) = {
            let entries = self.entries.lock().expect("entries lock");
            let Some(e) = entries.get(id) else {
                return Vec::new();
            };
            let open: Vec<_> = e
                .open
                .lock()
                .expect("open lock")
                .values()
                .cloned()
                .collect();
            (open, e.connections.clone())
        };
        let ended = ended.recent();
        open.iter()
            .rev()
            .chain(ended.iter().rev())
            .map(|c| ConnectionRow::from(&**c))
            .collect()
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

    /// Re-sends a captured request to the local service, changed as `edits` say; the result
    /// is a new row.
    pub async fn replay(
        &self,
        id: &str,
        exchange: u64,
        edits: ReplayEdits,
    ) -> Result<Summary, ManagerError> {
        let tunnel = self.tunnel(id).ok_or(ManagerError::NotRunning)?;
        let e = tunnel.handle().replay(exchange, edits).await?;
        Ok(Summary::from(&*e))
    }

    /// `http://host:port` of tunnel `id`'s local service, the base of curl and HAR URLs.
    fn local_base(&self, id: &str) -> String {
        let entries = self.entries.lock().expect("entries lock");
        entries
            .get(id)
            .map(|e| e.local_base.clone())
            .unwrap_or_default()
    }

    /// The request of an exchange as a curl command.
    pub fn curl(&self, id: &str, exchange: u64) -> Result<String, ManagerError> {
        let e = self
            .traffic_of(id)
            .and_then(|t| t.get(exchange))
            .ok_or(ManagerError::NoExchange(exchange))?;
        Ok(export::curl(&e, &self.local_base(id)))
    }

    /// A HAR log of the given exchanges of tunnel `id` (those still recorded), in that order.
    pub fn har(&self, id: &str, exchanges: &[u64]) -> serde_json::Value {
        let base = self.local_base(id);
        let found: Vec<_> = self
            .traffic_of(id)
            .map(|t| exchanges.iter().filter_map(|x| t.get(*x)).collect())
            .unwrap_or_default();
        let entries: Vec<_> = found.iter().map(|e| (&**e, base.clone())).collect();
        export::har(&entries)
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
            kind: TunnelKind::Http,
            server: server.url.clone(),
            token: None,
            subdomain: name.map(str::to_owned),
            given: false,
            local: LocalTarget::new("127.0.0.1", origin.port),
            client_id: None,
            basic_auth: None,
            allow_ips: Vec::new(),
        }
    }

    async fn next_traffic(rx: &mut broadcast::Receiver<Event>) -> Summary {
        loop {
            if let Event::Traffic { exchange, .. } = rx.recv().await.expect("event") {
                return exchange;
            }
        }
    }

    /// A request the stop cuts short (its visitor still waiting) reaches the window as such,
    /// although the stop ends the tunnel's other tasks first.
    #[tokio::test]
    async fn a_request_cut_short_by_a_stop_is_still_shown() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = TestServer::start().await;
        // A local service that takes requests and never answers.
        let local = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = local.local_addr().unwrap().port();
        let (got, mut arrived) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                // The app's probe of the port connects too, and sends nothing.
                let (mut s, _) = local.accept().await.unwrap();
                let got = got.clone();
                tokio::spawn(async move {
                    if s.read(&mut [0u8; 4096]).await.unwrap_or(0) > 0 {
                        got.send(()).unwrap();
                        let _ = s.read(&mut [0u8; 1]).await;
                    }
                });
            }
        });
        let mut spec = spec(&server, &Origin::start().await, Some("cut"));
        spec.local.port = port;
        let m = Manager::new();
        let mut events = m.subscribe();
        m.start("t1", spec).await.unwrap();
        next_status(&mut events, |s| matches!(s, Status::Online { .. })).await;

        let mut visitor = tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .unwrap();
        let head = format!(
            "GET /waits HTTP/1.1\r\nhost: cut.localhost:{}\r\n\r\n",
            server.port
        );
        visitor.write_all(head.as_bytes()).await.unwrap();
        arrived.recv().await.unwrap();
        m.stop("t1").await;
        let row = tokio::time::timeout(Duration::from_secs(10), next_traffic(&mut events))
            .await
            .expect("the cut request shown");
        assert_eq!((row.path.as_str(), row.status), ("/waits", None));
        assert_eq!(row.error.as_deref(), Some(ggrok_tunnel::traffic::ABANDONED));
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

        let replayed = m
            .replay("t1", row.id, ReplayEdits::default())
            .await
            .unwrap();
        assert_ne!(replayed.id, row.id);
        assert_eq!(replayed.path, "/hello?x=1");
        assert_eq!(origin.hits(), 2);
        let rows = m.traffic("t1");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].id, replayed.id, "newest first");

        // Replay with edits, copy as curl, HAR of the rows.
        let edits = ReplayEdits {
            method: Some("POST".into()),
            path: Some("/edited".into()),
            headers: Some(vec![("x-edit".into(), "1".into())]),
            body: Some("new body".into()),
        };
        let edited = m.replay("t1", row.id, edits).await.unwrap();
        assert_eq!(
            (edited.method.as_str(), edited.path.as_str()),
            ("POST", "/edited")
        );
        let d = m.exchange("t1", edited.id).unwrap();
        assert_eq!(d.request_body.text, "new body");
        assert!(d
            .request_headers
            .iter()
            .any(|(k, v)| k == "x-edit" && v == "1"));
        let curl = m.curl("t1", edited.id).unwrap();
        assert!(
            curl.starts_with(&format!("curl 'http://127.0.0.1:{}/edited'", origin.port)),
            "{curl}"
        );
        assert!(curl.ends_with("--data-binary 'new body'"), "{curl}");
        let har = m.har("t1", &[edited.id, row.id, 999_999]);
        let entries = har["log"]["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 2, "the rows still recorded, in order");
        assert_eq!(entries[0]["request"]["method"], "POST");

        m.stop("t1").await;
        assert!(!m.is_running("t1"));
        next_status(&mut events, |s| *s == Status::Stopped).await;
        assert_eq!(m.state("t1").status, Status::Stopped);
        assert!(matches!(
            m.replay("t1", row.id, ReplayEdits::default()).await,
            Err(ManagerError::NotRunning)
        ));
        // Traffic stays inspectable after stop; the public URL is gone.
        assert_eq!(m.traffic("t1").len(), 3);
        let (status, _) = get(server.port, "app.localhost", "/hello").await;
        assert_eq!(status, 404);
        assert_eq!(origin.hits(), 3);
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
        let replayed = m
            .replay("t", before.id, ReplayEdits::default())
            .await
            .unwrap();
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
            kind: TunnelKind::Http,
            server: server.url.clone(),
            token: None,
            subdomain: Some("dead".into()),
            given: false,
            local: LocalTarget::new("127.0.0.1", dead),
            client_id: None,
            basic_auth: None,
            allow_ips: Vec::new(),
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
        s.local.port = origin.port;
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
        assert_eq!(d.response_body.captured, 8);

        // The app's setting applies to the running tunnel at once.
        m.set_capture_limit(3);
        get(server.port, "cap.localhost", "/r5").await;
        while !matches!(events.recv().await.unwrap(), Event::Traffic { .. }) {}
        let d = m.exchange("t", m.traffic("t")[0].id).unwrap();
        assert_eq!(
            (d.response_body.text.as_str(), d.response_body.captured),
            ("ori", 3)
        );
        m.stop("t").await;
    }

    #[tokio::test]
    async fn a_connection_open_at_stop_is_reported_cut_and_history_survives_a_restart() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = TestServer::start().await;
        let local = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local_port = local.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = local.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let m = Manager::new();
        let mut tcp = Spec {
            kind: TunnelKind::Tcp { remote_port: None },
            server: server.url.clone(),
            token: None,
            subdomain: None,
            given: false,
            local: LocalTarget::new("127.0.0.1", local_port),
            client_id: None,
            basic_auth: None,
            allow_ips: Vec::new(),
        };
        m.start("t", tcp.clone()).await.unwrap();
        let url = m.online("t").await.unwrap();
        let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
        let mut events = m.subscribe();
        let mut visitor = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        visitor.write_all(b"abc").await.unwrap();
        let mut b = [0u8; 3];
        visitor.read_exact(&mut b).await.unwrap();
        assert_eq!(m.connections("t").len(), 1);

        m.stop("t").await;
        let ended = async {
            loop {
                if let Event::Connection { connection, .. } = events.recv().await.unwrap() {
                    if connection.end.is_some() {
                        return connection;
                    }
                }
            }
        };
        let cut = tokio::time::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the window hears that the connection ended with the stop");
        assert_eq!(cut.end_kind, Some("cut"));
        assert_eq!((cut.bytes_up, cut.bytes_down), (3, 3));
        assert_eq!(m.connections("t"), vec![cut.clone()]);

        // A restart keeps the list and counts afresh.
        tcp.kind = TunnelKind::Tcp {
            remote_port: Some(port),
        };
        m.start("t", tcp).await.unwrap();
        assert_eq!(m.online("t").await.unwrap(), url);
        assert_eq!(m.state("t").connections, 0);
        assert_eq!(m.connections("t"), vec![cut]);
        m.remove("t").await;
        assert!(m.connections("t").is_empty());
    }
}
