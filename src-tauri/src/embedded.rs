//! The ggrok server the app runs in-process on loopback, so a new user can expose a port
//! without owning a server: tunnels are served at `http://NAME.localhost:PORT`, which browsers
//! resolve to loopback without any DNS set-up, and TCP tunnels at `tcp://localhost:PORT` with a
//! port of [`TCP_PORTS`].

use std::net::{Ipv4Addr, SocketAddr};

use tokio::{net::TcpListener, sync::oneshot};
use tracing::{info, warn};

/// Preferred port; if it is taken (another ggrok, say) an ephemeral port is used instead.
pub const DEFAULT_PORT: u16 = ggrok_tunnel::saved::BUILTIN_DEFAULT_PORT;
/// Domain of the embedded server: `*.localhost` resolves to loopback in browsers.
pub const DOMAIN: &str = "localhost";
/// Public ports of TCP tunnels on the embedded server, bound on 127.0.0.1 like the server.
/// Below Linux's ephemeral range (32768-60999), so outgoing connections never hold them; a port
/// another program listens on is skipped.
pub const TCP_PORTS: std::ops::RangeInclusive<u16> = 20000..=20999;

/// A running embedded server. Dropping it shuts the server down.
pub struct EmbeddedServer {
    /// Where it listens (always 127.0.0.1).
    pub addr: SocketAddr,
    /// The port asked for; differs from `addr`'s when that one was taken.
    pub requested_port: u16,
    /// URL clients connect to.
    pub url: String,
    shutdown: Option<oneshot::Sender<()>>,
}

impl EmbeddedServer {
    /// The port asked for was taken and another one is used: saved
    /// `http://NAME.localhost:PORT` links of earlier runs do not work in this one.
    pub fn moved(&self) -> bool {
        self.requested_port != 0 && self.requested_port != self.addr.port()
    }

    /// Binds 127.0.0.1:`port` (falling back to an ephemeral port if that is busy; `0` means
    /// ephemeral) and serves. Must be called inside a tokio runtime.
    pub async fn start(port: u16) -> std::io::Result<Self> {
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)).await {
            Ok(l) => l,
            Err(err) if port != 0 => {
                warn!(%err, port, "embedded server port busy; using an ephemeral port");
                TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?
            }
            Err(err) => return Err(err),
        };
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let config = ggrok_server::Config {
            tcp_ports: Some(TCP_PORTS),
            ..ggrok_server::Config::new(DOMAIN)
        };
        tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(err) = ggrok_server::run(listener, config, shutdown).await {
                warn!(%err, "embedded server stopped");
            }
        });
        let url = format!("http://{DOMAIN}:{}", addr.port());
        info!(%addr, %url, "embedded server listening");
        Ok(Self {
            addr,
            requested_port: port,
            url,
            shutdown: Some(tx),
        })
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn falls_back_to_an_ephemeral_port_when_busy() {
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = busy.local_addr().unwrap().port();
        let server = EmbeddedServer::start(port).await.unwrap();
        assert_ne!(server.addr.port(), port);
        assert!(server.moved());
        assert!(!EmbeddedServer::start(0).await.unwrap().moved());
        assert!(server.addr.ip().is_loopback());
        assert_eq!(
            server.url,
            format!("http://localhost:{}", server.addr.port())
        );
        let (status, _) =
            crate::test_support::get(server.addr.port(), "localhost", "/healthz").await;
        assert_eq!(status, 200);
    }
}
