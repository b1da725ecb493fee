//! A ggrok server in this process, on 127.0.0.1 with a port from `:0`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ggrok_server::Config;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

/// A ggrok server running in this process.
pub struct Server {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server with `config` on a free port.
    pub async fn start(config: Config) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, config)
    }

    /// Starts on a given address (for restarts on the same port).
    pub async fn start_at(addr: SocketAddr, config: Config) -> Server {
        let listener = TcpListener::bind(addr).await.unwrap();
        Self::serve(listener, config)
    }

    /// Runs the server on `listener` as the binary does by default on a multi-core machine:
    /// connections on two shards, a tunnel's visitors on its session's thread. (The unsharded
    /// `run`, which the desktop app embeds, is tested by the CLI's and the desktop app's
    /// tests.) For a config that needs the address first (a cluster node's).
    pub fn serve(listener: TcpListener, config: Config) -> Server {
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let shards = Arc::new(ggrok_server::shard::Shards::start(2).unwrap());
        let task = tokio::spawn(async move {
            ggrok_server::run_sharded(
                listener,
                config,
                async {
                    let _ = rx.await;
                },
                Some(shards),
            )
            .await
            .unwrap();
        });
        Server {
            addr,
            stop: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits until every connection and session is closed.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap();
    }
}

/// Test config: domain `localhost`, short timers.
pub fn config() -> Config {
    Config {
        reconnect_grace: Duration::from_secs(2),
        ..Config::new("localhost")
    }
}

/// A range of 100 ports for TCP tunnels, starting at one the OS just gave out (the server skips
/// ports something else holds when it picks one).
pub fn tcp_port_range() -> std::ops::RangeInclusive<u16> {
    let low = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .min(65_435);
    low..=low + 99
}
