//! The client engine: keeps one tunnel online, reconnecting with jittered backoff, and forwards
//! every stream the server opens to the local service.
//!
//! [`Tunnel::start`] returns at once; progress arrives on the [`Status`] watch, requests on the
//! [`Traffic`] sink and, for TCP tunnels ([`TunnelKind::Tcp`]), connections on the
//! [`Connections`] sink. The CLI and the desktop app are two consumers of the same handle.

use std::{sync::Arc, time::Duration};

use http::HeaderValue;
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};

use crate::{
    backoff::Backoff,
    forward::{Forwarder, LocalTarget, ReplayEdits, ReplayError},
    mux,
    protocol::{self, Heartbeat, Refusal, RefusalKind},
    secrets::Secret,
    stop::until_stopped,
    tcp::Connections,
    traffic::{Exchange, Traffic, DEFAULT_CAPTURE_LIMIT, DEFAULT_RING_SIZE},
};

/// What a tunnel forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TunnelKind {
    /// HTTP (and WebSocket) at `https://NAME.DOMAIN`.
    #[default]
    Http,
    /// Raw TCP at `tcp://DOMAIN:PORT`: every visitor connection to the public port becomes a
    /// connection to the local port.
    Tcp {
        /// The public port to ask for; `None` lets the server pick one from its range (and the
        /// engine then keeps that one across reconnects).
        remote_port: Option<u16>,
    },
}

/// Everything needed to run one tunnel.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// HTTP or TCP. A TCP tunnel ignores `subdomain`, and the HTTP-only parts of `local`
    /// (`host_header`, `upstream`); it refuses `basic_auth`.
    pub kind: TunnelKind,
    /// Server URL: `http(s)://host[:port]` or `ws(s)://host[:port]`.
    pub server: String,
    /// Bearer token, if the server requires one.
    pub token: Option<Secret>,
    /// Fixed subdomain; `None` lets the server pick (and the engine then keeps that one).
    pub subdomain: Option<String>,
    /// `subdomain` (a TCP tunnel's `remote_port`) is only what the server gave this tunnel
    /// before, remembered by an app or the CLI, not the user's choice: refused as taken or
    /// reserved now, the tunnel takes any the server picks instead of failing. A name the
    /// server picked during this run is kept the same way on reconnects.
    pub given: bool,
    /// The local service.
    pub local: LocalTarget,
    /// Liveness settings.
    pub heartbeat: Heartbeat,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Exchanges kept for inspection.
    pub ring_size: usize,
    /// Bytes of each body kept for inspection.
    pub capture_limit: usize,
    /// Extra CA certificate (PEM) to trust for `wss://`, for servers with a private CA.
    pub ca_cert: Option<std::path::PathBuf>,
    /// `user:password` visitors must give (HTTP Basic), enforced by the server.
    pub basic_auth: Option<Secret>,
    /// IP addresses or CIDR ranges allowed to use the public URL (empty: everyone).
    pub allow_ips: Vec<String>,
    /// This tunnel's identity towards the server across restarts of the process (an app that
    /// saves tunnels keeps one per tunnel); `None` picks a random one per [`Tunnel::start`].
    /// The server gives a held name back to the same id at once.
    pub client_id: Option<String>,
    /// Where to record exchanges; `None` starts an empty one sized by `ring_size` and
    /// `capture_limit`. An app that restarts a tunnel passes the previous run's, so its history
    /// stays and exchange ids keep counting up.
    pub traffic: Option<Traffic>,
    /// Where a TCP tunnel records connections; `None` starts an empty one. As with `traffic`,
    /// an app that restarts a tunnel passes the previous run's.
    pub connections: Option<Connections>,
    /// The most credit per stream this client accepts, offered to the server in
    /// [`protocol::HEADER_WINDOW`] (default [`protocol::MAX_STREAM_WINDOW`]).
    /// [`protocol::STREAM_WINDOW`] offers nothing and never grows a window: a client from
    /// before growing windows, as tests need one.
    pub stream_window: u32,
}

impl TunnelConfig {
    /// A tunnel from `server` to `localhost:port` with defaults for the rest.
    pub fn new(server: impl Into<String>, port: u16) -> Self {
        Self {
            kind: TunnelKind::Http,
            server: server.into(),
            token: None,
            subdomain: None,
            given: false,
            local: LocalTarget::new("localhost", port),
            heartbeat: Heartbeat::default(),
            backoff: Backoff::default(),
            ring_size: DEFAULT_RING_SIZE,
            capture_limit: DEFAULT_CAPTURE_LIMIT,
            ca_cert: None,
            basic_auth: None,
            allow_ips: Vec::new(),
            client_id: None,
            traffic: None,
            connections: None,
            stream_window: protocol::MAX_STREAM_WINDOW,
        }
    }

    /// The WebSocket URL of the server's control endpoint.
    pub fn connect_url(&self) -> Result<String, ConfigError> {
        let s = self.server.trim().trim_end_matches('/');
        let (scheme, rest) = s.split_once("://").unwrap_or(("http", s));
        let ws = match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => "ws",
            "https" | "wss" => "wss",
            other => return Err(ConfigError::Server(format!("unsupported scheme {other:?}"))),
        };
        // `Authority` alone takes any text after a colon as the port, hence the second check.
        let authority_ok = rest
            .parse::<http::uri::Authority>()
            .is_ok_and(|a| a.as_str().len() == a.host().len() || a.port_u16().is_some());
        if rest.is_empty() || rest.contains('/') || rest.contains('?') || !authority_ok {
            return Err(ConfigError::Server(format!(
                "{:?} should be just a scheme and host, like https://tunnel.example.com",
                self.server
            )));
        }
        Ok(format!("{ws}://{rest}{}", protocol::CONNECT_PATH))
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The server URL is unusable.
    #[error("bad server URL: {0}")]
    Server(String),
    /// The subdomain is not a DNS label. Transparent: [`protocol::NameError`] already names
    /// the subdomain, and a prefix here would repeat it in an error chain.
    #[error(transparent)]
    Subdomain(#[from] protocol::NameError),
    /// The CA certificate file is unusable.
    #[error("bad CA certificate: {0}")]
    CaCert(String),
    /// Basic auth must be `user:password`.
    #[error("basic auth must look like user:password")]
    BasicAuth,
    /// Port 0 is not a service.
    #[error("local port must be between 1 and 65535")]
    Port,
    /// Remote port 0: "any port" is `remote_port: None`.
    #[error("remote port must be between 1 and 65535 (or left out for any free port)")]
    RemotePort,
    /// TCP visitors cannot log in: Basic auth is HTTP's.
    #[error("basic auth protects HTTP tunnels only; restrict a TCP tunnel with --allow-ip")]
    TcpBasicAuth,
    /// An allowlist entry is blank (`--allow-ip "$VAR"` with VAR unset): sending it would
    /// leave the tunnel public, the opposite of what was asked.
    #[error("an allowed IP entry is empty: give an address or CIDR range, or no --allow-ip")]
    AllowIp,
}

/// Where a tunnel is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// First connection attempt under way.
    Connecting,
    /// Serving at `url`.
    Online {
        /// The public URL.
        url: String,
        /// The subdomain.
        name: String,
    },
    /// Waiting to retry after `reason`; `attempt` counts retries since the last success.
    Reconnecting {
        /// Retry number.
        attempt: u32,
        /// Why the last attempt or session ended.
        reason: String,
    },
    /// Refused for good (bad token, name taken...): retrying would not help.
    Failed {
        /// The server's reason.
        kind: RefusalKind,
        /// A sentence for a human.
        message: String,
    },
    /// Stopped by its owner.
    Stopped,
}

/// What the inspector needs of a running tunnel: its status, traffic and local target, and
/// replay with edits. Cheap to clone.
#[derive(Clone)]
pub struct TunnelHandle {
    status: watch::Receiver<Status>,
    forwarder: Arc<Forwarder>,
}

impl TunnelHandle {
    /// The status now.
    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// The status now and its changes.
    pub fn watch_status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Requests through the tunnel.
    pub fn traffic(&self) -> &Traffic {
        self.forwarder.traffic()
    }

    /// Where requests go.
    pub fn local(&self) -> &LocalTarget {
        self.forwarder.target()
    }

    /// Re-sends a recorded request, changed as `edits` say; the result is a new exchange.
    pub async fn replay(&self, id: u64, edits: ReplayEdits) -> Result<Arc<Exchange>, ReplayError> {
        self.forwarder.replay(id, edits).await
    }
}

impl std::fmt::Debug for TunnelHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelHandle")
            .field("local", self.local())
            .finish_non_exhaustive()
    }
}

/// A running tunnel. Dropping it stops the tunnel.
pub struct Tunnel {
    status: watch::Receiver<Status>,
    forwarder: Arc<Forwarder>,
    connections: Connections,
    cancel: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Tunnel {
    /// Validates `config` and starts connecting in the background.
    pub fn start(config: TunnelConfig) -> Result<Tunnel, ConfigError> {
        let url = config.connect_url()?;
        if let Some(name) = &config.subdomain {
            protocol::validate_name(name)?;
        }
        if config.local.port == 0 {
            return Err(ConfigError::Port);
        }
        if let TunnelKind::Tcp { remote_port } = config.kind {
            if remote_port == Some(0) {
                return Err(ConfigError::RemotePort);
            }
            if config.basic_auth.is_some() {
                return Err(ConfigError::TcpBasicAuth);
            }
        }
        if let Some(auth) = &config.basic_auth {
            if !auth.expose().contains(':') || auth.expose().starts_with(':') {
                return Err(ConfigError::BasicAuth);
            }
        }
        if config.allow_ips.iter().any(|ip| ip.trim().is_empty()) {
            return Err(ConfigError::AllowIp);
        }
        let connector = match &config.ca_cert {
            Some(path) => Some(tls_connector(path)?),
            None => None,
        };
        let traffic = config
            .traffic
            .clone()
            .unwrap_or_else(|| Traffic::new(config.ring_size, config.capture_limit));
        let forwarder = Forwarder::new(config.local.clone(), traffic);
        let connections = config.connections.clone().unwrap_or_default();
        let client_id = config
            .client_id
            .clone()
            .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
        let (tx, rx) = watch::channel(Status::Connecting);
        let cancel = CancellationToken::new();
        let mut config = config;
        // Nothing asked for: what the server picks is given, not chosen.
        config.given |= match config.kind {
            TunnelKind::Http => config.subdomain.is_none(),
            TunnelKind::Tcp { remote_port } => remote_port.is_none(),
        };
        let engine = Engine {
            url,
            config,
            client_id,
            connector,
            forwarder: forwarder.clone(),
            connections: connections.clone(),
            status: tx,
            cancel: cancel.clone(),
        };
        let span = info_span!("tunnel", port = engine.config.local.port);
        let task = tokio::spawn(engine.run().instrument(span));
        Ok(Tunnel {
            status: rx,
            forwarder,
            connections,
            cancel,
            task: Some(task),
        })
    }

    /// The status now and its changes.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.clone()
    }

    /// Requests through this tunnel.
    pub fn traffic(&self) -> &Traffic {
        self.forwarder.traffic()
    }

    /// Connections through this tunnel (TCP tunnels; always empty for HTTP).
    pub fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Waits until the tunnel is online (returns its URL) or has failed for good.
    pub async fn online(&self) -> Result<String, Status> {
        let mut rx = self.status.clone();
        loop {
            match &*rx.borrow_and_update() {
                Status::Online { url, .. } => return Ok(url.clone()),
                s @ (Status::Failed { .. } | Status::Stopped) => return Err(s.clone()),
                _ => {}
            }
            if rx.changed().await.is_err() {
                return Err(Status::Stopped);
            }
        }
    }

    /// Re-sends a recorded request to the local service; the result is a new exchange.
    pub async fn replay(&self, id: u64) -> Result<Arc<Exchange>, ReplayError> {
        self.forwarder.replay(id, ReplayEdits::default()).await
    }

    /// A handle that reads this tunnel's status and traffic and replays its requests, for the
    /// inspector; it does not keep the tunnel running.
    pub fn handle(&self) -> TunnelHandle {
        TunnelHandle {
            status: self.status.clone(),
            forwarder: self.forwarder.clone(),
        }
    }

    /// Stops the tunnel and waits until its session is closed.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Engine {
    url: String,
    /// TLS settings when a private CA is trusted; `None` uses the system's roots.
    connector: Option<Arc<rustls::ClientConfig>>,
    config: TunnelConfig,
    client_id: String,
    forwarder: Arc<Forwarder>,
    connections: Connections,
    status: watch::Sender<Status>,
    cancel: CancellationToken,
}

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError {
    #[error("{0}")]
    Refused(Refusal),
    #[error("{0}")]
    Network(String),
}

/// How a session ended.
enum Ended {
    /// Connect again (after the backoff): why it ended.
    Retry(String),
    /// Stop: connecting again would undo what the server did on purpose.
    Final(String),
}

/// Sessions shorter than this do not reset the backoff, so a server that accepts and then drops
/// at once is not hammered.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// How long a stopping tunnel waits for the server to acknowledge the close.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(500);

impl Engine {
    async fn run(mut self) {
        let mut attempt: u32 = 0;
        loop {
            let reason = tokio::select! {
                _ = self.cancel.cancelled() => break,
                r = self.connect() => match r {
                    Ok(session) => {
                        let started = tokio::time::Instant::now();
                        let reason = match self.serve(session).await {
                            Ended::Retry(reason) => reason,
                            Ended::Final(message) => {
                                info!("session ended for good: {message}");
                                self.status.send_replace(Status::Failed {
                                    kind: RefusalKind::NameTaken,
                                    message,
                                });
                                return;
                            }
                        };
                        if self.cancel.is_cancelled() {
                            break;
                        }
                        if started.elapsed() >= STABLE_SESSION {
                            attempt = 0;
                        }
                        reason
                    }
                    Err(ConnectError::Refused(r)) if r.error.is_final() => {
                        if self.forget_given(r.error) {
                            info!(kind = ?r.error, "what the server gave before is not free now: asking for any ({})", r.message);
                            continue;
                        }
                        info!(kind = ?r.error, "server refused the tunnel: {}", r.message);
                        self.status.send_replace(Status::Failed { kind: r.error, message: r.message });
                        return;
                    }
                    Err(e) => e.to_string(),
                },
            };
            attempt = attempt.saturating_add(1);
            info!(attempt, %reason, "reconnecting");
            self.status
                .send_replace(Status::Reconnecting { attempt, reason });
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(self.config.backoff.delay(attempt)) => {}
            }
        }
        self.status.send_replace(Status::Stopped);
    }

    /// After a refusal of `kind`: whether the name or port asked for was only a given one, now
    /// dropped so that the next attempt takes any.
    fn forget_given(&mut self, kind: RefusalKind) -> bool {
        let taken = matches!(
            kind,
            RefusalKind::NameTaken
                | RefusalKind::NameReserved
                | RefusalKind::PortTaken
                | RefusalKind::PortReserved
                | RefusalKind::PortOutOfRange
        );
        if !self.config.given || !taken {
            return false;
        }
        match &mut self.config.kind {
            TunnelKind::Http => self.config.subdomain.take().is_some(),
            TunnelKind::Tcp { remote_port } => remote_port.take().is_some(),
        }
    }

    async fn connect(&self) -> Result<Session, ConnectError> {
        let mut req = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| ConnectError::Network(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(
            protocol::HEADER_VERSION,
            HeaderValue::from(protocol::PROTOCOL_VERSION),
        );
        h.insert(protocol::HEADER_CLIENT_ID, header_value(&self.client_id)?);
        match self.config.kind {
            TunnelKind::Http => {
                if let Some(name) = &self.config.subdomain {
                    h.insert(protocol::HEADER_SUBDOMAIN, header_value(name)?);
                }
            }
            TunnelKind::Tcp { remote_port } => {
                h.insert(
                    protocol::HEADER_TCP_PORT,
                    HeaderValue::from(remote_port.unwrap_or(0)),
                );
            }
        }
        if let Some(auth) = &self.config.basic_auth {
            h.insert(protocol::HEADER_BASIC_AUTH, header_value(auth.expose())?);
        }
        if !self.config.allow_ips.is_empty() {
            h.insert(
                protocol::HEADER_ALLOW_IPS,
                header_value(&self.config.allow_ips.join(","))?,
            );
        }
        protocol::offer_window(h, self.config.stream_window);
        if let Some(token) = &self.config.token {
            h.insert(
                http::header::AUTHORIZATION,
                header_value(&format!("Bearer {}", token.expose()))?,
            );
        }
        // A black-holed server must not hang the engine: the handshake gets the same budget as
        // a silent peer.
        let handshake = crate::ws::connect(req, self.connector.clone());
        let (ws, resp) = tokio::time::timeout(self.config.heartbeat.timeout, handshake)
            .await
            .map_err(|_| {
                ConnectError::Network("the server did not answer the handshake in time".into())
            })?
            .map_err(refusal_from)?;
        let get = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (Some(name), Some(url)) = (get(protocol::HEADER_NAME), get(protocol::HEADER_URL))
        else {
            return Err(ConnectError::Refused(Refusal::new(
                RefusalKind::BadRequest,
                "the server accepted the WebSocket but sent no tunnel name: is it a ggrok server?",
            )));
        };
        let port = get(protocol::HEADER_TCP_PORT).and_then(|p| p.parse::<u16>().ok());
        if matches!(self.config.kind, TunnelKind::Tcp { .. }) && port.is_none() {
            return Err(ConnectError::Refused(Refusal::new(
                RefusalKind::BadRequest,
                "the server opened an HTTP tunnel where a TCP one was asked for: is it an older ggrok server?",
            )));
        }
        Ok(Session {
            ws,
            name,
            url,
            port,
            window: protocol::window_offer(resp.headers()),
        })
    }

    /// Runs an online session until it ends; returns why it ended.
    async fn serve(&mut self, session: Session) -> Ended {
        let Session {
            ws,
            name,
            url,
            port,
            window,
        } = session;
        info!(%url, "online");
        // Reconnects ask for the same name (or port), so a server restart gives it back.
        match (&mut self.config.kind, port) {
            (TunnelKind::Tcp { remote_port }, Some(port)) => *remote_port = Some(port),
            _ => self.config.subdomain = Some(name.clone()),
        }
        self.status.send_replace(Status::Online { url, name });
        let config = mux::Config {
            heartbeat: self.config.heartbeat,
            ..mux::Config::new(true)
        }
        .windows(self.config.stream_window, window);
        let (session, driver) = mux::start(ws, mux::Role::Connector, config);
        let closing = session.closing();
        let streams = self.cancel.child_token();
        let forwarder = self.forwarder.clone();
        let spawn_cancel = streams.clone();
        let tcp = matches!(self.config.kind, TunnelKind::Tcp { .. });
        let (local, connections) = (
            Arc::new(crate::tcp::Dialer::new(self.config.local.clone())),
            self.connections.clone(),
        );
        let driven = driver.run(move |stream| {
            if tcp {
                let cancel = spawn_cancel.clone();
                let (local, connections) = (local.clone(), connections.clone());
                tokio::spawn(async move {
                    let served = crate::tcp::serve_stream(stream, &local, &connections);
                    let _ = until_stopped(cancel.cancelled(), served).await;
                });
                return;
            }
            // Boxed: the future is large and spawning moves it several times (into the task,
            // and its stage on completion), each a copy of its whole size.
            let watched = stream.clone();
            let served = Box::pin(forwarder.clone().serve_stream(stream));
            tokio::spawn(async move {
                // Stopped with the others, or by a visitor that leaves (the server resets the
                // stream): the local request goes too, and the local service sees its connection
                // close, as behind nginx.
                let _ = until_stopped(watched.abandoned(), served).await;
            });
        });
        tokio::pin!(driven);
        // The driver wakes for every batch of frames: see `until_stopped`.
        let reason = match until_stopped(self.cancel.cancelled(), driven.as_mut()).await {
            Ok(Ok(())) => "session closed by the server".to_owned(),
            Ok(Err(e)) => format!("session lost: {e}"),
            Err(()) => {
                streams.cancel();
                closing.stop_streams();
                // A WebSocket Close frame tells the server this is a stop, not a drop, so it
                // frees the name at once. The driver reads until the server answers it, fails,
                // or the timeout passes.
                closing.close();
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, driven).await;
                "stopped".to_owned()
            }
        };
        // Streams of a dead session cannot finish; end them now rather than at their timeouts.
        streams.cancel();
        closing.stop_streams();
        // A server that ends a session on purpose says why in its Close frame.
        match closing.peer_close() {
            Some((protocol::CLOSE_REPLACED, why)) => Ended::Final(format!(
                "the server ended this session: {why}. Another ggrok with the same client id \
                 took the tunnel over"
            )),
            Some((_, why)) if !why.is_empty() && !self.cancel.is_cancelled() => {
                Ended::Retry(format!("the server ended the session: {why}"))
            }
            _ => Ended::Retry(reason),
        }
    }
}

/// A TLS connector trusting the system roots plus the CA in `path`.
fn tls_connector(path: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let bad = |e: &dyn std::fmt::Display| ConfigError::CaCert(format!("{}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))?;
    let mut added = 0;
    for cert in certs {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        added += 1;
    }
    if added == 0 {
        return Err(bad(&"no certificate in file"));
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

struct Session {
    ws: crate::ws::Socket<crate::ws::ClientStream>,
    name: String,
    url: String,
    /// The public port of a TCP tunnel.
    port: Option<u16>,
    /// The most stream credit the server accepts.
    window: u32,
}

fn header_value(s: &str) -> Result<HeaderValue, ConnectError> {
    HeaderValue::from_str(s).map_err(|_| {
        ConnectError::Refused(Refusal::new(
            RefusalKind::BadRequest,
            "a header value has invalid characters",
        ))
    })
}

/// Turns a failed WebSocket handshake into a refusal (the server said no) or a network error.
pub(crate) fn refusal_from(e: crate::ws::HandshakeError) -> ConnectError {
    match e {
        crate::ws::HandshakeError::Refused(resp) => {
            let status = resp.status();
            if let Ok(r) = serde_json::from_slice::<Refusal>(resp.body()) {
                return ConnectError::Refused(r);
            }
            let message = format!("the server answered {status} instead of opening a tunnel: is the URL a ggrok server?");
            if status.is_server_error() {
                ConnectError::Network(message)
            } else {
                ConnectError::Refused(Refusal::new(RefusalKind::BadRequest, message))
            }
        }
        crate::ws::HandshakeError::Failed(why) => {
            ConnectError::Network(format!("cannot reach the server: {why}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_urls() {
        let mut c = TunnelConfig::new("http://127.0.0.1:8080", 3000);
        assert_eq!(
            c.connect_url().unwrap(),
            "ws://127.0.0.1:8080/_ggrok/connect"
        );
        c.server = "https://tunnel.example.com/".into();
        assert_eq!(
            c.connect_url().unwrap(),
            "wss://tunnel.example.com/_ggrok/connect"
        );
        c.server = "tunnel.example.com:9000".into();
        assert_eq!(
            c.connect_url().unwrap(),
            "ws://tunnel.example.com:9000/_ggrok/connect"
        );
        c.server = "ftp://x".into();
        assert!(c.connect_url().is_err());
        c.server = "http://x/path".into();
        assert!(c.connect_url().is_err());
        // Seen typed into the app: it used to be saved and then retried forever.
        c.server = "tunnel example com".into();
        assert!(c.connect_url().is_err());
        c.server = "https://tunnel.example.com:port".into();
        assert!(c.connect_url().is_err());
        c.server = "http://[::1]:7070".into();
        assert_eq!(c.connect_url().unwrap(), "ws://[::1]:7070/_ggrok/connect");
        c.server = "https://[::1]".into();
        assert!(c.connect_url().is_ok());
    }

    #[test]
    fn tcp_tunnels_refuse_port_zero_and_basic_auth() {
        let mut c = TunnelConfig::new("http://127.0.0.1:1", 22);
        c.kind = TunnelKind::Tcp {
            remote_port: Some(0),
        };
        assert_eq!(
            Tunnel::start(c.clone()).err(),
            Some(ConfigError::RemotePort)
        );
        c.kind = TunnelKind::Tcp { remote_port: None };
        c.basic_auth = Some(Secret::new("user:pass"));
        assert_eq!(Tunnel::start(c).err(), Some(ConfigError::TcpBasicAuth));
    }
}
