//! What every connection, session and background task of one server shares.

use std::{future::Future, net::IpAddr, sync::Arc};

use ggrok_tunnel::stop::until_stopped;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{config::Config, metrics::Metrics, policy, registry::Registry, store};

/// State every connection shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) metrics: Metrics,
    /// Connect attempts per client IP.
    pub(crate) connect_limit: policy::Limiter<IpAddr>,
    /// Open connections per visitor address (`--max-conns-per-ip`).
    pub(crate) conns_per_ip: policy::ConnCounter,
    /// Places under `--max-conns`, shared by the main listener and every TCP tunnel's port;
    /// `None` without a limit.
    pub(crate) conn_cap: Option<Arc<Semaphore>>,
    /// Public requests per tunnel name.
    pub(crate) request_limit: policy::Limiter<String>,
    /// Fires when shutdown begins: connections finish their request in flight, then close.
    pub(crate) draining: CancellationToken,
    /// Fires when shutdown ends (drained or past the deadline); every task watches it.
    pub(crate) cancel: CancellationToken,
    /// Visitor and client HTTP connections: what a drain waits for.
    pub(crate) conns: TaskTracker,
    /// Sessions, tunnel streams and upgraded connections.
    pub(crate) tasks: TaskTracker,
    /// Where SQLite is called while serving (token checks, revocation looks), when there is a
    /// store whose reads may wait: never on a thread that serves traffic.
    pub(crate) store_thread: Option<store::StoreThread>,
    /// Where TCP tunnels bind their ports: the address the server listens on.
    pub(crate) tcp_ip: IpAddr,
}

impl Shared {
    /// The state of a server with `config`, before it serves anything.
    pub(crate) fn new(config: Config) -> Self {
        let store_thread = config
            .store
            .as_ref()
            .filter(|s| s.blocks())
            .map(|_| store::StoreThread::start().expect("cannot start the store's thread"));
        let metrics = Metrics::default();
        if config.cluster.is_some() {
            metrics.cluster(crate::cluster::store::ETCD_LATENCY.clone());
        }
        Self {
            registry: Registry::new(config.reconnect_grace),
            metrics,
            connect_limit: policy::Limiter::per_minute(config.connect_rate),
            conns_per_ip: policy::ConnCounter::new(config.max_conns_per_ip),
            conn_cap: (config.max_conns > 0).then(|| Arc::new(Semaphore::new(config.max_conns))),
            request_limit: policy::Limiter::per_second(config.tunnel_rate),
            config,
            draining: CancellationToken::new(),
            cancel: CancellationToken::new(),
            conns: TaskTracker::new(),
            tasks: TaskTracker::new(),
            store_thread,
            tcp_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    /// Spawns `fut` on `tracker` so that shutdown ends it and waits for it.
    pub(crate) fn spawn_on<F>(&self, tracker: &TaskTracker, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_on_runtime(&tokio::runtime::Handle::current(), tracker, fut);
    }

    /// Like `spawn_on`, on the runtime of `handle`.
    pub(crate) fn spawn_on_runtime<F>(
        &self,
        handle: &tokio::runtime::Handle,
        tracker: &TaskTracker,
        fut: F,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        handle.spawn(tracker.track_future(async move {
            let _ = until_stopped(cancel.cancelled(), fut).await;
        }));
    }

    /// Spawns a background task that shutdown ends.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_on(&self.tasks, fut);
    }
}
