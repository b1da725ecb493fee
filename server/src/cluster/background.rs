//! A runtime on a thread of its own for the cluster's etcd work.
//!
//! The lease's keep-alive must not wait behind visitor traffic: a starved keep-alive would let
//! the lease expire while the node is healthy, and the node would then give up every name it
//! serves. So everything that talks to etcd (the client's connection, the watch, the
//! keep-alive, claims) runs here, and the serving runtimes only await its answers.

use std::future::Future;

use tokio::sync::oneshot;

/// The cluster's runtime; it stops when this is dropped.
pub(crate) struct Background {
    handle: tokio::runtime::Handle,
    _stop: oneshot::Sender<()>,
}

impl Background {
    /// Starts the thread and its single-threaded runtime.
    pub(crate) fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ggrok-cluster".into())
            .spawn(move || {
                let _ = runtime.block_on(stopped);
            })?;
        Ok(Self {
            handle,
            _stop: stop,
        })
    }

    /// Spawns `fut` here; it ends with the runtime.
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(fut);
    }

    /// Runs `fut` here and waits for its output from any runtime. `None` if the runtime
    /// stopped (or the work panicked) first.
    pub(crate) async fn run<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.handle.spawn(fut).await.ok()
    }

    /// Like [`Background::run`], blocking the calling thread: for the synchronous
    /// [`TokenStore`](crate::store::TokenStore) writes of the admin commands. Never call it
    /// from this runtime's own thread.
    pub(crate) fn block<F>(&self, fut: F) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (answer, answered) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = answer.send(fut.await);
        });
        answered.recv().ok()
    }
}
