//! Settings' "Test connection": is a ggrok server there (`GET /healthz`), and does it take the
//! token? The server has no endpoint that checks a token alone, so the token is tried by opening
//! one session with it, which is closed again before the answer is given: no tunnel is left.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use ggrok_tunnel::{
    protocol::{RefusalKind, HEALTH_BODY, HEALTH_PATH},
    Status, Tunnel, TunnelConfig,
};
use http::{header, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;

/// Enough for `ok` and any short error page's start; a bigger answer is not a ggrok server's.
const HEALTH_MAX_BODY: usize = 1024;

/// How long each step of the test (the health check, the session) waits for the server.
pub const TEST_WAIT: Duration = Duration::from_secs(10);

/// What "Test connection" found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerCheck {
    /// The server answered its health check and a session opened with the token.
    pub ok: bool,
    /// How far the test got, for the UI to style and for tests to tell the cases apart.
    pub outcome: Outcome,
    /// A sentence for the form.
    pub message: String,
}

/// How far "Test connection" got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// No connection, a TLS failure or no answer in time.
    Unreachable,
    /// Something answered, but its `/healthz` is not a ggrok server's.
    NotGgrok,
    /// A ggrok server that refused the session (a token missing or wrong, or another refusal).
    Refused,
    /// A ggrok server that accepted the session.
    Connected,
}

impl ServerCheck {
    fn new(outcome: Outcome, message: impl Into<String>) -> Self {
        ServerCheck {
            ok: outcome == Outcome::Connected,
            outcome,
            message: message.into(),
        }
    }
}

/// Tests the server at `config.server` (a URL already validated by `connect_url`) with
/// `config.token`.
pub async fn check(mut config: TunnelConfig) -> ServerCheck {
    let url = config.server.clone();
    match tokio::time::timeout(TEST_WAIT, health(&url)).await {
        Err(_) => {
            return ServerCheck::new(
                Outcome::Unreachable,
                format!("Cannot reach the server: no answer within {} s.", TEST_WAIT.as_secs()),
            )
        }
        Ok(Err(Health::Unreachable(why))) => {
            return ServerCheck::new(Outcome::Unreachable, format!("Cannot reach the server: {why}."))
        }
        Ok(Err(Health::Other(what))) => {
            return ServerCheck::new(
                Outcome::NotGgrok,
                format!("Something answers at {url}, but it is not a ggrok server: GET {HEALTH_PATH} gave {what}."),
            )
        }
        Ok(Ok(())) => {}
    }
    let has_token = config.token.is_some();
    config.ring_size = 0;
    let tunnel = match Tunnel::start(config) {
        Ok(t) => t,
        Err(e) => return ServerCheck::new(Outcome::Unreachable, e.to_string()),
    };
    let mut status = tunnel.status();
    let outcome = tokio::time::timeout(TEST_WAIT, async {
        loop {
            match status.borrow_and_update().clone() {
                Status::Connecting => {}
                s => return s,
            }
            if status.changed().await.is_err() {
                return Status::Stopped;
            }
        }
    })
    .await;
    tunnel.stop().await;
    match outcome {
        Ok(Status::Online { .. }) if has_token => ServerCheck::new(
            Outcome::Connected,
            "A ggrok server; the token was accepted.",
        ),
        Ok(Status::Online { .. }) => {
            ServerCheck::new(Outcome::Connected, "A ggrok server; it needs no token.")
        }
        Ok(Status::Failed { kind, message }) => {
            let message = match kind {
                RefusalKind::Unauthorized => {
                    format!("A ggrok server, but it refused the token: {message}")
                }
                _ => format!("A ggrok server, but it refused the session: {message}"),
            };
            ServerCheck::new(Outcome::Refused, message)
        }
        Ok(Status::Reconnecting { reason, .. }) => ServerCheck::new(
            Outcome::Unreachable,
            format!("A ggrok server answers {HEALTH_PATH}, but a session could not open: {reason}"),
        ),
        Ok(_) => ServerCheck::new(Outcome::Unreachable, "The test was stopped."),
        Err(_) => ServerCheck::new(
            Outcome::Unreachable,
            format!(
                "A ggrok server answers {HEALTH_PATH}, but no session opened within {} s.",
                TEST_WAIT.as_secs()
            ),
        ),
    }
}

/// Why the health check failed.
enum Health {
    /// No HTTP answer: the reason.
    Unreachable(String),
    /// An HTTP answer that is not a ggrok server's: what it was.
    Other(String),
}

/// `GET {url}/healthz`, over TLS (the system's roots) for `https`.
async fn health(url: &str) -> Result<(), Health> {
    let unreachable = |e: &dyn std::fmt::Display| Health::Unreachable(e.to_string());
    let uri: Uri = url.parse().map_err(|e| unreachable(&e))?;
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| unreachable(&e))?;
    let authority = uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let request = Request::get(HEALTH_PATH)
        .header(header::HOST, authority)
        .header(
            header::USER_AGENT,
            concat!("ggrok-desktop/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::<Bytes>::new())
        .map_err(|e| unreachable(&e))?;
    let (status, body) = if tls {
        let name = rustls_pki_types::ServerName::try_from(host).map_err(|e| unreachable(&e))?;
        let stream = tls_connector()
            .connect(name, tcp)
            .await
            .map_err(|e| Health::Unreachable(format!("TLS: {e}")))?;
        send(stream, request).await?
    } else {
        send(tcp, request).await?
    };
    if status == StatusCode::OK && body == HEALTH_BODY {
        Ok(())
    } else if status == StatusCode::OK {
        Err(Health::Other("200 OK with another body".into()))
    } else {
        Err(Health::Other(status.to_string()))
    }
}

/// Sends `request` on a fresh HTTP/1.1 connection and reads a short body.
async fn send<S>(stream: S, request: Request<Empty<Bytes>>) -> Result<(StatusCode, String), Health>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let unreachable = |e: &dyn std::fmt::Display| Health::Unreachable(e.to_string());
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| unreachable(&e))?;
    let conn = tokio::spawn(conn);
    let response = sender
        .send_request(request)
        .await
        // An HTTP/1 parse error means something other than HTTP answered.
        .map_err(|e| {
            if e.is_parse() {
                Health::Other(format!("no HTTP answer ({e})"))
            } else {
                unreachable(&e)
            }
        })?;
    let status = response.status();
    let body = Limited::new(response.into_body(), HEALTH_MAX_BODY)
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    conn.abort();
    Ok((status, body))
}

fn tls_connector() -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}
