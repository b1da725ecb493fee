//! Test support for ggrok-server's integration tests, grouped by what it provides. Everything
//! runs in the test process on 127.0.0.1 with ports from `:0`; nothing waits by sleeping for
//! readiness.
//!
//! A crate rather than a `mod common` in each test file: each test binary uses a subset, which
//! a shared module would compile again for every binary and warn about as dead code.
//!
//! Layout:
//! - [`server`]: a ggrok server in this process, and the test config.
//! - [`tunnels`]: ggrok clients connected to it.
//! - [`visitors`]: HTTP clients reaching tunnels through it.
//! - [`origin`]: the local service a tunnel exposes.
//! - [`bodies`]: large streamed bodies checked by SHA-256.
//! - [`relay`]: a TCP relay that can freeze (a network that stops delivering).
//! - [`tls`]: TLS clients for test certificates.
//! - [`process`]: the `ggrok-server` binary as a child process; memory from `/proc`.
//! - [`eventually`], [`until_listening`]: polling for what another process makes true.

pub mod bodies;
pub mod origin;
pub mod process;
pub mod relay;
pub mod server;
pub mod tls;
pub mod tunnels;
pub mod visitors;

use std::{future::Future, time::Duration};

/// Polls `f` until it returns `Some`, for at most `limit`: for conditions nothing notifies of
/// (another process listening, a certificate issued).
pub async fn eventually<T, F, Fut>(limit: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    tokio::time::timeout(limit, async {
        loop {
            if let Some(v) = f().await {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("condition not reached in time")
}

/// Waits until something (a child process: pebble, HAProxy) accepts connections on
/// 127.0.0.1:`port`, for at most 30 s.
pub async fn until_listening(port: u16) {
    eventually(Duration::from_secs(30), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await
}
