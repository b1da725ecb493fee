//! ggrok clients (the real engine) connected to a test [`Server`].

use ggrok_tunnel::{Status, Tunnel, TunnelConfig};

use crate::server::Server;

/// Starts a tunnel to `port` and waits until it is online.
pub async fn tunnel(server: &Server, port: u16, name: Option<&str>) -> (Tunnel, String) {
    let mut cfg = TunnelConfig::new(server.url(), port);
    cfg.subdomain = name.map(str::to_owned);
    tunnel_with(cfg).await
}

/// Starts a tunnel as `cfg` says and waits until it is online.
pub async fn tunnel_with(cfg: TunnelConfig) -> (Tunnel, String) {
    let t = Tunnel::start(cfg).unwrap();
    let url = t
        .online()
        .await
        .unwrap_or_else(|s| panic!("tunnel did not come online: {s:?}"));
    (t, url)
}

/// Waits until the tunnel's status satisfies `f`.
pub async fn wait_status(t: &Tunnel, f: impl Fn(&Status) -> bool) -> Status {
    let mut rx = t.status();
    loop {
        {
            let s = rx.borrow_and_update();
            if f(&s) {
                return s.clone();
            }
        }
        rx.changed().await.unwrap();
    }
}

/// The name in a public URL.
pub fn name_of(url: &str) -> String {
    url.split("://")
        .nth(1)
        .unwrap()
        .split('.')
        .next()
        .unwrap()
        .to_owned()
}
