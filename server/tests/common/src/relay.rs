//! A TCP relay that can freeze, like a network that silently stops delivering.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;

/// A TCP relay on 127.0.0.1 that can be frozen: while paused it neither forwards nor closes,
/// like a network that silently stopped delivering.
pub struct Relay {
    pub addr: SocketAddr,
    paused: Arc<tokio::sync::watch::Sender<bool>>,
    held: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let paused = Arc::new(tokio::sync::watch::channel(false).0);
        let held = Arc::new(tokio::sync::watch::channel(false).0);
        let (p, h) = (paused.clone(), held.clone());
        tokio::spawn(async move {
            loop {
                let (inbound, _) = listener.accept().await.unwrap();
                let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, p.subscribe(), h.subscribe()));
                tokio::spawn(pump(ro, wi, p.subscribe(), h.subscribe()));
            }
        });
        Relay { addr, paused, held }
    }

    /// Holds back everything, both ways, until [`Relay::release`] delivers it: a network that
    /// is slow for a moment.
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    /// Delivers what [`Relay::hold`] held back, and everything after it at once again.
    pub fn release(&self) {
        self.held.send_replace(false);
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *paused.borrow_and_update() {
            // Hold everything, and the sockets open, until the test ends.
            std::future::pending::<()>().await;
        }
        if held.wait_for(|held| !held).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Relay {
    /// Lets new connections through again. Connections that saw data while paused stay frozen,
    /// so a peer must reconnect: the network came back, its old sessions did not.
    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}
