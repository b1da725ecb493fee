//! The local inspector of the `ggrok` CLI: the desktop app's traffic view as a web page and a
//! JSON API in the shape of ngrok's agent API, on `127.0.0.1:4040` (see docs/inspector.md).
//!
//! Loopback only, with no authentication, as ngrok's: what keeps other web pages out is the
//! [`guard`]: the `Host` header must name this port on loopback (a DNS-rebinding page sends its
//! own name), and calls that change something need a same-origin (or no) `Origin` and, for a
//! POST, a JSON body, which a cross-site form cannot send without a CORS preflight that is never
//! granted.
//!
//! Layout:
//! - [`view`]: a traffic row and an exchange as the UIs show them (shared with the app).
//! - [`export`]: `curl` command lines and HAR logs.
//! - [`api`]: the routes and the ngrok-shaped JSON.
//! - [`guard`]: the `Host`, `Origin` and `Content-Type` checks.
//! - [`assets`]: the web page, embedded at compile time from `ui/dist-inspector`.

pub mod api;
pub mod assets;
pub mod export;
pub mod guard;
pub mod view;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{mpsc, oneshot, watch, Semaphore},
};

use crate::client::TunnelHandle;

/// The port asked for first, ngrok's.
pub const DEFAULT_PORT: u16 = 4040;
/// Ports tried from the first one when it is taken (4040 by another ggrok or ngrok).
pub const PORT_TRIES: u16 = 20;
/// The API's name of the tunnel `ggrok http` runs: ngrok's name for a tunnel started from the
/// command line, which scripts written for ngrok look for.
pub const CLI_TUNNEL_NAME: &str = "command_line";
/// Connections served at once; more wait. The live event stream holds one per open page.
pub const MAX_CONNECTIONS: usize = 64;

/// A tunnel the inspector shows.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// Its name in the API (`tunnel_name`).
    pub name: String,
    /// Its status, traffic and replay.
    pub handle: TunnelHandle,
}

/// What the inspector shows, and where it asks for tunnels to be started and stopped
/// (`POST /api/tunnels`, `DELETE /api/tunnels/{name}`). Cheap to clone: the program that runs
/// the tunnels keeps one to add and remove them.
#[derive(Debug, Clone)]
pub struct Agent {
    tunnels: Arc<Mutex<Vec<Inspected>>>,
    /// Bumped when a tunnel is added or removed: live pages reload.
    changes: Arc<watch::Sender<u64>>,
    control: Option<mpsc::Sender<Control>>,
}

impl Agent {
    /// An inspector of `tunnels` that cannot start or stop any.
    pub fn new(tunnels: Vec<Inspected>) -> Self {
        Self {
            tunnels: Arc::new(Mutex::new(tunnels)),
            changes: Arc::new(watch::channel(0).0),
            control: None,
        }
    }

    /// Changes to the set of tunnels from now on.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Passes the API's starts and stops to `control`.
    pub fn with_control(mut self, control: mpsc::Sender<Control>) -> Self {
        self.control = Some(control);
        self
    }

    /// The tunnels now, in the order they were added.
    pub fn tunnels(&self) -> Vec<Inspected> {
        self.tunnels.lock().expect("tunnels lock").clone()
    }

    /// Shows `tunnel` too.
    pub fn add(&self, tunnel: Inspected) {
        self.tunnels.lock().expect("tunnels lock").push(tunnel);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Stops showing tunnel `name`.
    pub fn remove(&self, name: &str) {
        self.tunnels
            .lock()
            .expect("tunnels lock")
            .retain(|t| t.name != name);
        self.changes.send_modify(|n| *n += 1);
    }
}

/// A change the API asks of the program that runs the tunnels.
#[derive(Debug)]
pub enum Control {
    /// `POST /api/tunnels`: start this tunnel; answered with it (online, or still connecting
    /// after a while) or why not.
    Start(
        TunnelRequest,
        oneshot::Sender<Result<Inspected, StartError>>,
    ),
    /// `DELETE /api/tunnels/{name}`: stop that tunnel; answered with whether there was one.
    Stop(String, oneshot::Sender<bool>),
}

/// Why `POST /api/tunnels` started nothing.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The request cannot be run (a bad address, a name in use).
    #[error("{0}")]
    Invalid(String),
    /// The server refused the tunnel.
    #[error("{0}")]
    Refused(String),
}

/// `POST /api/tunnels`'s body, in the shape of ngrok's: `{"name", "addr", "proto"}` and the
/// options ggrok has. Other fields of ngrok's (`inspect`, `schemes`, ...) are accepted and
/// ignored, so that pyngrok's requests work.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct TunnelRequest {
    /// Its name in the API.
    pub name: String,
    /// The local service: a port, `host:port`, or an `http://` or `https://` URL. Without it,
    /// `name` is a saved tunnel (as `ggrok start NAME` takes it), started as saved.
    #[serde(default)]
    pub addr: Option<String>,
    /// `http` (the default) or `tcp`.
    #[serde(default = "http_proto")]
    pub proto: String,
    /// A fixed subdomain (HTTP).
    #[serde(default)]
    pub subdomain: Option<String>,
    /// The `Host` the local service gets: `rewrite`, `preserve` or a value (HTTP).
    #[serde(default)]
    pub host_header: Option<String>,
    /// `user:password` visitors must give (HTTP); ngrok takes a list, of which one is used.
    #[serde(default, deserialize_with = "one_or_many")]
    pub basic_auth: Vec<String>,
    /// A TCP tunnel's public address, `host:port` (the port is asked for) or a port.
    #[serde(default)]
    pub remote_addr: Option<String>,
}

fn http_proto() -> String {
    "http".to_owned()
}

/// A string or a list of strings.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Binds the inspector's listener on 127.0.0.1: port `first`, or the next free one of
/// [`PORT_TRIES`]. Port 0 takes any free port.
pub async fn bind(first: u16) -> io::Result<TcpListener> {
    let mut last = None;
    for port in (first..=u16::MAX).take(usize::from(PORT_TRIES)) {
        match TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)).await {
            Ok(l) => return Ok(l),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && first != 0 => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no port to try")))
}

/// Serves the inspector on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, agent: Agent, shutdown: impl Future) {
    let port = match listener.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => return tracing::warn!(%e, "inspector listener has no address"),
    };
    let app = Arc::new(api::App::new(agent, port));
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return,
            p = permits.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, peer): (_, SocketAddr) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::debug!(%e, "inspector accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let app = app.clone();
                async move { Ok::<_, std::convert::Infallible>(app.handle(req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%e, %peer, "inspector connection ended");
            }
            drop(permit);
        });
    }
}

/// Binds the inspector (see [`bind`]) and serves it in the background for as long as the
/// runtime runs; returns its address.
pub async fn spawn(first_port: u16, agent: Agent) -> io::Result<SocketAddr> {
    let listener = bind(first_port).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, agent, std::future::pending::<()>()));
    Ok(addr)
}
