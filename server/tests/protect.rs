//! Protection of public URLs and of the server: per-tunnel basic auth and IP allowlists asked
//! for by the client and enforced by the server, rate limits and tunnels per token.

use std::time::Duration;

use common::{
    eventually,
    origin::Origin,
    server::{config, Server},
    tunnels::{tunnel, tunnel_with},
    visitors::get,
};
use ggrok_server::{Config, Tokens};
use ggrok_tunnel::{protocol, Secret, Status, Tunnel, TunnelConfig};
use http::header;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn basic_auth_is_enforced_by_the_server_and_not_forwarded() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let mut c = TunnelConfig::new(server.url(), origin.port());
    c.subdomain = Some("locked".into());
    c.basic_auth = Some(Secret::new("alice:wonderland"));
    let (_t, _) = tunnel_with(c).await;

    let r = get(&server, "locked", "/echo").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()[header::WWW_AUTHENTICATE],
        "Basic realm=\"ggrok locked\", charset=\"UTF-8\""
    );
    let r = get(&server, "locked", "/echo")
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = get(&server, "locked", "/echo")
        .basic_auth("alice", Some("wonderland"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-echo-authorization"],
        "",
        "the tunnel password must not reach the origin"
    );
}

#[tokio::test]
async fn ip_allowlists_are_enforced() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    for (name, allow, status) in [
        ("elsewhere", "10.0.0.0/8", 403),
        ("here", "10.0.0.0/8,127.0.0.1", 200),
    ] {
        let mut c = TunnelConfig::new(server.url(), origin.port());
        c.subdomain = Some(name.into());
        c.allow_ips = allow.split(',').map(str::to_owned).collect();
        let (t, _) = tunnel_with(c).await;
        let r = get(&server, name, "/echo").send().await.unwrap();
        assert_eq!(r.status(), status, "{name}");
        t.stop().await;
    }
    let mut c = TunnelConfig::new(server.url(), origin.port());
    c.allow_ips = vec!["10.0.0.0/8".into(), " ".into()];
    assert!(matches!(
        Tunnel::start(c),
        Err(ggrok_tunnel::client::ConfigError::AllowIp)
    ));
    let mut c = TunnelConfig::new(server.url(), origin.port());
    c.allow_ips = vec!["not-an-ip".into()];
    match Tunnel::start(c).unwrap().online().await {
        Err(Status::Failed { message, .. }) => assert!(message.contains("not-an-ip"), "{message}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_per_tunnel_are_rate_limited() {
    let server = Server::start(Config {
        tunnel_rate: 5,
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("busy")).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(
            get(&server, "busy", "/echo")
                .send()
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert!(
        statuses.contains(&200) && statuses.contains(&429),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn connect_attempts_per_address_are_rate_limited() {
    let server = Server::start(Config {
        connect_rate: 3,
        ..config()
    })
    .await;
    let mut kinds = Vec::new();
    for _ in 0..5 {
        let mut req = format!("ws://{}{}", server.addr, protocol::CONNECT_PATH)
            .into_client_request()
            .unwrap();
        // A wrong version: each attempt is refused, but only the rate limit says 429.
        req.headers_mut()
            .insert(protocol::HEADER_VERSION, 999.into());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                kinds.push(resp.status().as_u16())
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(kinds, [426, 426, 426, 429, 429]);
}

#[tokio::test]
async fn tunnels_per_token_are_capped() {
    let server = Server::start(Config {
        tokens: Tokens::from_plain(["one-token-for-all-0123"]),
        max_tunnels_per_token: 2,
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let start = || {
        let mut c = TunnelConfig::new(server.url(), origin.port());
        c.token = Some(Secret::new("one-token-for-all-0123"));
        c.backoff.min = Duration::from_millis(50);
        Tunnel::start(c).unwrap()
    };
    let (a, b, c) = (start(), start(), start());
    let results = [a.online().await, b.online().await, c.online().await];
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(Status::Failed { .. })))
        .count();
    assert_eq!(refused, 1, "{results:?}");
}

#[tokio::test]
async fn forwarded_headers_are_believed_only_from_trusted_proxies() {
    let origin = Origin::start().await;
    for trusted in [false, true] {
        let proxies = if trusted {
            vec![ggrok_server::policy::parse_net("127.0.0.0/8").unwrap()]
        } else {
            vec![]
        };
        let server = Server::start(Config {
            trusted_proxies: proxies,
            ..config()
        })
        .await;
        let mut c = TunnelConfig::new(server.url(), origin.port());
        c.subdomain = Some("proxied".into());
        c.allow_ips = vec!["203.0.113.0/24".into()];
        let (_t, _) = tunnel_with(c).await;
        let r = get(&server, "proxied", "/echo")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await
            .unwrap();
        if trusted {
            // The proxy vouches for the visitor's address and scheme.
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["x-echo-x-forwarded-proto"], "https");
            assert_eq!(r.headers()["x-echo-x-forwarded-for"], "203.0.113.5");
        } else {
            // Anyone else claiming to be 203.0.113.5 is still 127.0.0.1.
            assert_eq!(r.status(), 403);
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn visitor_connections_per_address_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(Config {
        max_conns_per_ip: 3,
        ..config()
    })
    .await;
    let from = |ip: [u8; 4]| {
        let addr = server.addr;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(std::net::SocketAddr::from((ip, 0))).unwrap();
            socket.connect(addr).await.unwrap()
        }
    };
    // What a connection gets for one request: the status line, or nothing when closed.
    let ask = |mut s: tokio::net::TcpStream| async move {
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or("")
            .to_owned()
    };
    // Three idle connections: each proven open by the server with one keep-alive request.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut s = from([127, 0, 0, 1]).await;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        idle.push(s);
    }
    assert_eq!(
        ask(from([127, 0, 0, 1]).await).await,
        "",
        "a fourth from the same address"
    );
    assert_eq!(
        ask(from([127, 0, 0, 2]).await).await,
        "HTTP/1.1 200 OK",
        "another address"
    );
    // Closing one gives its place back (once the server has seen the close).
    drop(idle.pop());
    eventually(Duration::from_secs(10), || async {
        (ask(from([127, 0, 0, 1]).await).await == "HTTP/1.1 200 OK").then_some(())
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn past_max_conns_the_server_waits_for_a_close_before_accepting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(Config {
        max_conns: 2,
        ..config()
    })
    .await;
    let keep_alive = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(keep_alive).await.unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        open.push(s);
    }
    // The third waits in the kernel's backlog, unanswered...
    let mut third = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    third.write_all(keep_alive).await.unwrap();
    let mut buf = [0u8; 256];
    let waited = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(waited.is_err(), "answered past the cap");
    // ...and is served once a connection closes.
    drop(open.pop());
    let n = tokio::time::timeout(Duration::from_secs(10), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    server.stop().await;
}
