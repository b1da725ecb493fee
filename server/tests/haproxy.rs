//! A real HAProxy in front of the server: `option forwardfor` (HTTP) and `send-proxy`/
//! `send-proxy-v2` (TCP), on the main listener and on a TCP tunnel's port. The visitor connects from 127.0.0.2, HAProxy from 127.0.0.1, the only
//! trusted proxy; so what the server takes for the visitor's address is visible to
//! `--allow-ip` and in the `X-Forwarded-For` the origin gets.
//!
//! Needs the `haproxy` binary (scripts/deps.sh installs it); without it the tests say so and
//! pass.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::{Child, Command, Stdio},
};

use common::{
    origin::Origin,
    server::{config, Server},
    tunnels::tunnel_with,
    until_listening,
};
use ggrok_server::Config;
use ggrok_tunnel::{TunnelConfig, TunnelKind};
use http::header;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const VISITOR: [u8; 4] = [127, 0, 0, 2];

fn haproxy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
}

/// A free port on 127.0.0.1 for HAProxy to bind (HAProxy cannot report one it chose).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// HAProxy in the foreground with one frontend on a free port, killed on drop.
struct Haproxy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// `mode` is `http` or `tcp`; `frontend` and `server` are extra lines for each section.
    async fn start(
        bin: &PathBuf,
        mode: &str,
        frontend: &str,
        server: SocketAddr,
        server_opts: &str,
    ) -> Haproxy {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 64\n\
                 defaults\n  mode {mode}\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
                 frontend front\n  bind 127.0.0.1:{port}\n  {frontend}\n  default_backend back\n\
                 backend back\n  server ggrok {server} {server_opts}\n"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        // Ready once it accepts on its port.
        until_listening(port).await;
        Haproxy {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn trusting_loopback_one(proxy_protocol: bool) -> Config {
    Config {
        trusted_proxies: vec![ggrok_server::policy::parse_net("127.0.0.1/32").unwrap()],
        proxy_protocol,
        ..config()
    }
}

/// GET `/echo` on tunnel `name` through `front`, from 127.0.0.2, claiming to be 203.0.113.5.
async fn visit(front: &str, name: &str) -> reqwest::Response {
    reqwest::Client::builder()
        .local_address(IpAddr::from(VISITOR))
        .build()
        .unwrap()
        .get(format!("{front}/echo"))
        .header(header::HOST, format!("{name}.localhost"))
        .header("x-forwarded-for", "203.0.113.5")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn forwardfor_line_of_haproxy_names_the_visitor() {
    let Some(bin) = haproxy_binary() else {
        return eprintln!("SKIPPED: no haproxy binary (scripts/deps.sh installs it)");
    };
    let origin = Origin::start().await;
    let server = Server::start(trusting_loopback_one(false)).await;
    let proxy = Haproxy::start(&bin, "http", "option forwardfor", server.addr, "").await;
    let mut open = TunnelConfig::new(server.url(), origin.port());
    open.subdomain = Some("visitor".into());
    open.allow_ips = vec!["127.0.0.2/32".into()];
    let (_a, _) = tunnel_with(open).await;
    let mut forged = TunnelConfig::new(server.url(), origin.port());
    forged.subdomain = Some("forged".into());
    forged.allow_ips = vec!["203.0.113.0/24".into()];
    let (_b, _) = tunnel_with(forged).await;

    let r = visit(&proxy.url(), "visitor").await;
    assert_eq!(r.status(), 200);
    // The origin gets the whole chain; its rightmost entry is the visitor.
    assert_eq!(
        r.headers()["x-echo-x-forwarded-for"],
        "203.0.113.5, 127.0.0.2"
    );
    let r = visit(&proxy.url(), "forged").await;
    assert_eq!(
        r.status(),
        403,
        "the forged address must not pass --allow-ip"
    );
    drop(proxy);
    server.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_name_the_visitor() {
    let Some(bin) = haproxy_binary() else {
        return eprintln!("SKIPPED: no haproxy binary (scripts/deps.sh installs it)");
    };
    let origin = Origin::start().await;
    for send in ["send-proxy", "send-proxy-v2"] {
        let server = Server::start(trusting_loopback_one(true)).await;
        let proxy = Haproxy::start(&bin, "tcp", "", server.addr, send).await;
        // The client comes through the balancer too: every trusted connection needs a header.
        let mut open = TunnelConfig::new(proxy.url(), origin.port());
        open.subdomain = Some("visitor".into());
        open.allow_ips = vec!["127.0.0.2/32".into()];
        let (_a, _) = tunnel_with(open).await;
        let mut forged = TunnelConfig::new(proxy.url(), origin.port());
        forged.subdomain = Some("forged".into());
        forged.allow_ips = vec!["203.0.113.0/24".into()];
        let (_b, _) = tunnel_with(forged).await;

        let r = visit(&proxy.url(), "visitor").await;
        assert_eq!(r.status(), 200, "{send}");
        // 127.0.0.2 is not trusted: its own X-Forwarded-For is passed along, not believed.
        assert_eq!(
            r.headers()["x-echo-x-forwarded-for"],
            "203.0.113.5, 127.0.0.2",
            "{send}"
        );
        assert_eq!(visit(&proxy.url(), "forged").await.status(), 403, "{send}");

        // A trusted address that sends no header is closed without an answer.
        let mut direct = TcpStream::connect(server.addr).await.unwrap();
        direct
            .write_all(b"GET /echo HTTP/1.1\r\nHost: visitor.localhost\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = direct.read_to_end(&mut answer).await;
        assert!(
            answer.is_empty(),
            "{send}: {}",
            String::from_utf8_lossy(&answer)
        );

        // From an untrusted address a PROXY header is not believed: it is a bad request.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((VISITOR, 0))).unwrap();
        let mut untrusted = socket.connect(server.addr).await.unwrap();
        untrusted
            .write_all(
                b"PROXY TCP4 203.0.113.5 127.0.0.1 4711 80\r\n\
                  GET /echo HTTP/1.1\r\nHost: forged.localhost\r\n\r\n",
            )
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = untrusted.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400"), "{send}: {answer}");
        drop(proxy);
        server.stop().await;
    }
}

/// A local service that echoes each connection until EOF.
async fn echo() -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

/// Connects to `port` from 127.0.0.2, sends `data`, half-closes and reads until closed.
async fn tcp_visit(port: u16, data: &[u8]) -> Vec<u8> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((VISITOR, 0))).unwrap();
    let mut s = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    let _ = s.write_all(data).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out));
    let _ = read.await.expect("the connection should end at once");
    out
}

/// Opens a TCP tunnel through `front` (the main listener's balancer) to `local`, allowing
/// `allow`; returns the tunnel and its public port.
async fn tcp_tunnel(front: &Haproxy, local: u16, allow: &str) -> (ggrok_tunnel::Tunnel, u16) {
    let mut cfg = TunnelConfig::new(front.url(), local);
    cfg.kind = TunnelKind::Tcp { remote_port: None };
    cfg.local.host = "127.0.0.1".into();
    cfg.allow_ips = vec![allow.into()];
    let (t, url) = tunnel_with(cfg).await;
    let port = url.rsplit(':').next().unwrap().parse().unwrap();
    (t, port)
}

#[tokio::test]
async fn proxy_protocol_names_the_visitor_on_tcp_tunnel_ports() {
    let Some(bin) = haproxy_binary() else {
        return eprintln!("SKIPPED: no haproxy binary (scripts/deps.sh installs it)");
    };
    let local = echo().await;
    let low = free_port();
    let range = low.min(65_435)..=low.min(65_435) + 99;
    for send in ["send-proxy", "send-proxy-v2"] {
        let server = Server::start(Config {
            tcp_ports: Some(range.clone()),
            ..trusting_loopback_one(true)
        })
        .await;
        let front = Haproxy::start(&bin, "tcp", "", server.addr, send).await;
        // Only the real visitor's address passes; HAProxy's own (127.0.0.1) does not.
        let (visitor_only, port) = tcp_tunnel(&front, local, "127.0.0.2/32").await;
        let mut seen = visitor_only.connections().subscribe();
        let (_balancer_only, other) = tcp_tunnel(&front, local, "127.0.0.1/32").await;
        let to_port = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let balanced = Haproxy::start(&bin, "tcp", "", to_port(port), send).await;
        let balanced_other = Haproxy::start(&bin, "tcp", "", to_port(other), send).await;

        // The header is taken off: the service gets exactly what the visitor sent.
        assert_eq!(tcp_visit(balanced.port, b"hello").await, b"hello", "{send}");
        let conn = seen.recv().await.unwrap();
        assert!(conn.from.starts_with("127.0.0.2:"), "{send}: {}", conn.from);
        assert!(
            tcp_visit(balanced_other.port, b"hello").await.is_empty(),
            "{send}: the balancer's address must not pass for the visitor's"
        );

        // A trusted address that sends no header is closed with nothing forwarded.
        let mut direct = TcpStream::connect(to_port(port)).await.unwrap();
        let _ = direct.write_all(b"no header").await;
        let mut answer = Vec::new();
        let _ = direct.read_to_end(&mut answer).await;
        assert!(answer.is_empty(), "{send}: {answer:?}");
        drop((balanced, balanced_other, front));
        server.stop().await;
    }
}
