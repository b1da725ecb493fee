//! Visitors: real HTTP clients reaching tunnels through a test [`Server`].

use std::time::Duration;

use http::header;

use crate::server::Server;

/// The `Host` header value that reaches tunnel `name` on `server`.
pub fn host(server: &Server, name: &str) -> String {
    format!("{name}.localhost:{}", server.addr.port())
}

/// A visitor: a real HTTP client that never follows redirects or decompresses.
pub fn visitor() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// The text of /metrics on the server at `base` (its URL), read with the metrics token `token`.
pub async fn metrics(base: &str, token: &str) -> String {
    visitor()
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// GET through the tunnel.
pub fn get(server: &Server, name: &str, path: &str) -> reqwest::RequestBuilder {
    visitor()
        .get(format!("{}{path}", server.url()))
        .header(header::HOST, host(server, name))
}

/// Polls until `name` is no longer routed (404). Bounded by the caller's timeout.
pub async fn until_gone(server: &Server, name: &str) {
    loop {
        if get(server, name, "/").send().await.unwrap().status() == 404 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
