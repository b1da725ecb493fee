//! A TCP relay that can freeze, like a network that silently stops delivering.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpListener;

/// A TCP relay on 127.0.0.1 that can be frozen: while paused it neither forwards nor closes,
/// like a network that silently stopped delivering.
pub struct Relay {
    pub addr: SocketAddr,
    paused: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, _) = tokio::sync::watch::channel(false);
        let paused = Arc::new(tx);
        let p = paused.clone();
        tokio::spawn(async move {
            loop {
                let (inbound, _) = listener.accept().await.unwrap();
                let outbound = tokio::net::TcpStream::connect(target).await.unwrap();
                let (ri, wi) = inbound.into_split();
                let (ro, wo) = outbound.into_split();
                tokio::spawn(pump(ri, wo, p.subscribe()));
                tokio::spawn(pump(ro, wi, p.subscribe()));
            }
        });
        Relay { addr, paused }
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
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
