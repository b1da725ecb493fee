//! TCP tunnels end to end on loopback: a real server with a port range, a real client, local
//! services and visitors on real sockets.
//!
//! Public ports come from a range around a port the OS just gave out. The server skips ports
//! something else holds when it picks one; a test that needs one port in particular takes one
//! that is free now and retries with another should it be taken in between.

use std::{ops::RangeInclusive, time::Duration};

use common::{
    bodies::{big_chunk, big_sha256, CHUNK},
    eventually,
    relay::Relay,
    server::{config, tcp_port_range, Server},
    tunnels::{tunnel_with, wait_status},
    until_listening,
    visitors::visitor,
};
use ggrok_server::{
    store::{Store, TokenStore},
    Config,
};
use ggrok_tunnel::{
    backoff::Backoff,
    protocol::{Heartbeat, RefusalKind},
    tcp::End,
    Status, Tunnel, TunnelConfig, TunnelKind,
};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A port of `range` that nothing holds now.
fn free_port_in(range: &RangeInclusive<u16>) -> u16 {
    range
        .clone()
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port in the range")
}

fn tcp_config(range: RangeInclusive<u16>) -> Config {
    Config {
        tcp_ports: Some(range),
        ..config()
    }
}

fn tcp_cfg(server: &Server, local: u16, remote: Option<u16>) -> TunnelConfig {
    let mut c = TunnelConfig::new(server.url(), local);
    c.kind = TunnelKind::Tcp {
        remote_port: remote,
    };
    c.local.host = "127.0.0.1".into();
    c.backoff = Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    c
}

/// The port of a `tcp://localhost:N` URL.
fn port_of(url: &str) -> u16 {
    let rest = url.strip_prefix("tcp://localhost:").expect(url);
    rest.parse().unwrap()
}

/// Starts a TCP tunnel and returns it with its public port.
async fn tcp_tunnel(cfg: TunnelConfig) -> (Tunnel, u16) {
    let (t, url) = tunnel_with(cfg).await;
    (t, port_of(&url))
}

/// The refusal a tunnel ends with.
async fn refused(cfg: TunnelConfig) -> (RefusalKind, String) {
    let t = Tunnel::start(cfg).unwrap();
    match t.online().await {
        Err(Status::Failed { kind, message }) => (kind, message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn visit(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port)).await.unwrap()
}

/// Sends `data`, half-closes, and returns everything the other side sent until it closed.
async fn exchange(port: u16, data: &[u8]) -> Vec<u8> {
    let mut s = visit(port).await;
    s.write_all(data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

/// Writes the `n`-byte large test body to `w`, then half-closes.
async fn write_big(w: &mut (impl AsyncWriteExt + Unpin), n: u64) {
    for k in 0..n.div_ceil(CHUNK) {
        w.write_all(&big_chunk(k, CHUNK.min(n - k * CHUNK) as usize))
            .await
            .unwrap();
    }
    w.shutdown().await.unwrap();
}

/// Reads to EOF; returns the length and SHA-256.
async fn read_hashed(r: &mut (impl AsyncReadExt + Unpin)) -> (u64, String) {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf).await.unwrap();
        if got == 0 {
            return (n, format!("{:x}", h.finalize()));
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
}

/// Waits (bounded) until a visitor's connection is closed by the other side; returns what
/// arrived before.
async fn closed_soon(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let _ = s.read_to_end(&mut out).await;
    })
    .await
    .expect("the connection should be closed at once");
    out
}

/// Asserts that a visitor to `port` is disconnected at once with nothing forwarded. The reset
/// may already be there when the connect completes.
async fn turned_away(port: u16) {
    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await {
        let _ = s.write_all(b"let me in").await;
        assert!(closed_soon(&mut s).await.is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_exact_both_ways_at_volume() {
    const SIZE: u64 = 256 << 20;
    let server = Server::start(tcp_config(tcp_port_range())).await;
    let (up, down, _t) = both_ways(&server, SIZE, |_| {}).await;
    let want = (SIZE, big_sha256(SIZE));
    assert_eq!(up, want, "visitor to local service");
    assert_eq!(down, want, "local service to visitor");
}

/// `size` bytes each way at once through a TCP tunnel of `server` (its client set up by `setup`)
/// between a visitor and a local service: what the local service read, what the visitor read,
/// and the tunnel.
async fn both_ways(
    server: &Server,
    size: u64,
    setup: impl FnOnce(&mut TunnelConfig),
) -> ((u64, String), (u64, String), Tunnel) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    let service = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move { write_big(&mut w, size).await });
        let got = read_hashed(&mut r).await;
        writer.await.unwrap();
        got
    });
    let mut cfg = tcp_cfg(server, local, None);
    setup(&mut cfg);
    let (t, port) = tcp_tunnel(cfg).await;
    let (mut r, mut w) = visit(port).await.into_split();
    let writer = tokio::spawn(async move { write_big(&mut w, size).await });
    let down = read_hashed(&mut r).await;
    writer.await.unwrap();
    (service.await.unwrap(), down, t)
}

/// One connection moving bytes both ways through a TCP tunnel, for each pairing of a client and
/// a server that offer growing windows (`ggrok-window`) or do not (as before them): the bytes
/// arrive exact, and no side is sent credit it does not accept (which would end the session
/// midway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_are_exact_whether_or_not_both_sides_grow_windows() {
    use ggrok_tunnel::protocol::{MAX_STREAM_WINDOW, STREAM_WINDOW};
    const SIZE: u64 = 24 << 20;
    for (client_window, server_window) in [
        (MAX_STREAM_WINDOW, MAX_STREAM_WINDOW),
        (STREAM_WINDOW, MAX_STREAM_WINDOW),
        (MAX_STREAM_WINDOW, STREAM_WINDOW),
    ] {
        let server = Server::start(Config {
            stream_window: server_window,
            ..tcp_config(tcp_port_range())
        })
        .await;
        let (up, down, t) = both_ways(&server, SIZE, |cfg| cfg.stream_window = client_window).await;
        let want = (SIZE, big_sha256(SIZE));
        let case = format!("client offering {client_window}, server {server_window}");
        assert_eq!(down, want, "download, {case}");
        assert_eq!(up, want, "upload, {case}");
        t.stop().await;
        server.stop().await;
    }
}

#[tokio::test]
async fn a_half_close_reaches_the_service_and_its_answer_still_arrives() {
    let server = Server::start(tcp_config(tcp_port_range())).await;
    // Answers only after the visitor's EOF, with the size of what it got.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(format!("got {} bytes", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let (t, port) = tcp_tunnel(tcp_cfg(&server, local, None)).await;
    let mut events = t.connections().subscribe();
    assert_eq!(exchange(port, &[7u8; 3000]).await, b"got 3000 bytes");
    let opened = events.recv().await.unwrap();
    assert_eq!(opened.end, None);
    assert!(opened.from.starts_with("127.0.0.1:"), "{}", opened.from);
    let ended = events.recv().await.unwrap();
    assert_eq!(ended.id, opened.id);
    assert_eq!(ended.end, Some(End::Closed));
    assert_eq!((ended.bytes_up, ended.bytes_down), (3000, 14));
}

#[tokio::test]
async fn a_reset_on_either_side_resets_the_other() {
    let server = Server::start(tcp_config(tcp_port_range())).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    let (t, port) = tcp_tunnel(tcp_cfg(&server, local, None)).await;
    let mut events = t.connections().subscribe();

    // The local service resets: the visitor sees a reset, not an orderly end.
    let mut v = visit(port).await;
    v.write_all(b"hello").await.unwrap();
    let (mut s, _) = l.accept().await.unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).await.unwrap();
    s.set_zero_linger().unwrap();
    drop(s);
    let mut rest = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), v.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(
        got.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    events.recv().await.unwrap();
    let ended = events.recv().await.unwrap();
    assert!(
        matches!(ended.end, Some(End::LocalReset { .. })),
        "{ended:?}"
    );

    // The visitor resets: the local service sees a reset.
    let v = visit(port).await;
    let (mut s, _) = l.accept().await.unwrap();
    v.set_zero_linger().unwrap();
    drop(v);
    let mut rest = Vec::new();
    let got = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_eq!(
        got.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset)
    );
    events.recv().await.unwrap();
    let ended = events.recv().await.unwrap();
    assert!(
        matches!(ended.end, Some(End::VisitorReset { .. })),
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_connection_open_when_the_tunnel_stops_is_recorded_as_cut() {
    let server = Server::start(tcp_config(tcp_port_range())).await;
    let (t, port) = tcp_tunnel(tcp_cfg(&server, common::origin::tcp_echo().await, None)).await;
    let mut events = t.connections().subscribe();
    let mut v = visit(port).await;
    v.write_all(b"abc").await.unwrap();
    let mut b = [0u8; 3];
    v.read_exact(&mut b).await.unwrap();
    let opened = events.recv().await.unwrap();
    t.stop().await;
    let ended = events.recv().await.unwrap();
    assert_eq!(ended.id, opened.id);
    assert_eq!(ended.end, Some(End::Cut));
    assert_eq!((ended.bytes_up, ended.bytes_down), (3, 3));
    assert!(closed_soon(&mut v).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_connections_at_once() {
    let server = Server::start(tcp_config(tcp_port_range())).await;
    let (_t, port) = tcp_tunnel(tcp_cfg(&server, common::origin::tcp_echo().await, None)).await;
    let visits = (0..200u32).map(|i| {
        tokio::spawn(async move {
            let data = format!("connection {i} ").repeat(100 + i as usize);
            assert_eq!(exchange(port, data.as_bytes()).await, data.as_bytes());
        })
    });
    for v in futures_util::future::join_all(visits).await {
        v.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_that_stops_reading_holds_up_only_its_own_connection() {
    let server = Server::start(tcp_config(tcp_port_range())).await;
    // Connection one gets a firehose; its writer counts what the tunnel took.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        tokio::spawn(async move {
            let chunk = vec![1u8; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {
                counter.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        });
        // The second connection gets an echo.
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let (_t, port) = tcp_tunnel(tcp_cfg(&server, local, None)).await;
    let _stalled = visit(port).await;
    // Until the writer stops advancing: everything in between is full. Socket buffers on both
    // ends and one stream window, not the whole stream; a tunnel that buffers without bound
    // fails here rather than filling memory until the test is killed.
    const BOUND: u64 = 32 << 20;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if now > 0 && now == last {
            break;
        }
        assert!(
            now < BOUND,
            "{now} bytes were taken from a service whose visitor reads nothing"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service could still write after 20 s ({now} bytes): nothing holds it back"
        );
        last = now;
    }
    // The same tunnel still serves another connection.
    assert_eq!(exchange(port, b"still here").await, b"still here");
}

#[tokio::test]
async fn a_dead_local_port_closes_the_visitor_at_once_and_says_why() {
    let server = Server::start(tcp_config(tcp_port_range())).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (t, port) = tcp_tunnel(tcp_cfg(&server, dead, None)).await;
    let mut events = t.connections().subscribe();
    turned_away(port).await;
    events.recv().await.unwrap();
    let ended = events.recv().await.unwrap();
    match &ended.end {
        Some(End::Unreachable { reason }) => {
            assert!(
                reason.contains(&format!("cannot connect to 127.0.0.1:{dead}")),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn taken_out_of_range_and_disabled_ports_are_refused() {
    let range = tcp_port_range();
    let server = Server::start(tcp_config(range.clone())).await;
    let local = common::origin::tcp_echo().await;
    let (_holder, port) = tcp_tunnel(tcp_cfg(&server, local, None)).await;
    let (kind, message) = refused(tcp_cfg(&server, local, Some(port))).await;
    assert_eq!(kind, RefusalKind::PortTaken, "{message}");
    assert!(message.contains(&format!("port {port}")), "{message}");
    // The holder keeps it.
    assert_eq!(exchange(port, b"mine").await, b"mine");

    let outside = range.end() + 1;
    let (kind, message) = refused(tcp_cfg(&server, local, Some(outside))).await;
    assert_eq!(kind, RefusalKind::PortOutOfRange, "{message}");
    assert!(
        message.contains(&format!("{}-{}", range.start(), range.end())),
        "{message}"
    );

    // Something else on the host listens on a port of the range.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", free_port_in(&range))).unwrap();
    let squatted = squatter.local_addr().unwrap().port();
    let (kind, message) = refused(tcp_cfg(&server, local, Some(squatted))).await;
    assert_eq!(kind, RefusalKind::PortTaken, "{message}");
    assert!(message.contains("in use on the server"), "{message}");

    let plain = Server::start(config()).await;
    let (kind, message) = refused(tcp_cfg(&plain, local, None)).await;
    assert_eq!(kind, RefusalKind::TcpDisabled, "{message}");
    assert!(message.contains("--tcp-ports"), "{message}");
}

#[tokio::test]
async fn reserved_ports_go_only_to_their_token_and_tcp_tunnels_are_capped_per_token() {
    let range = tcp_port_range();
    let store = Store::in_memory().unwrap();
    let ops = store.create_token("ops", &[]).unwrap();
    let dev = store.create_token("dev", &[]).unwrap();
    let port = free_port_in(&range);
    store.reserve_port(port, "ops").unwrap();
    let server = Server::start(Config {
        store: Some(std::sync::Arc::new(store)),
        max_tcp_tunnels_per_token: 2,
        ..tcp_config(range)
    })
    .await;
    let local = common::origin::tcp_echo().await;
    let with = |token: &str, remote| {
        let mut c = tcp_cfg(&server, local, remote);
        c.token = Some(ggrok_tunnel::Secret::new(token));
        c
    };
    let (kind, message) = refused(with(&dev, Some(port))).await;
    assert_eq!(kind, RefusalKind::PortReserved, "{message}");
    let (_a, got) = tcp_tunnel(with(&ops, Some(port))).await;
    assert_eq!(got, port);
    // Picked ports are never reserved ones; the cap counts TCP tunnels only.
    let (_b, picked) = tcp_tunnel(with(&dev, None)).await;
    assert_ne!(picked, port);
    let (_c, _) = tcp_tunnel(with(&dev, None)).await;
    let (kind, message) = refused(with(&dev, None)).await;
    assert_eq!(kind, RefusalKind::TooManyTunnels);
    assert!(message.contains("2 TCP tunnels online"), "{message}");
    let mut http = TunnelConfig::new(server.url(), local);
    http.token = Some(ggrok_tunnel::Secret::new(&dev));
    tunnel_with(http).await;
}

#[tokio::test]
async fn a_dropped_client_gets_its_port_back_and_nobody_else_meanwhile() {
    let server = Server::start(Config {
        heartbeat: Heartbeat {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(600),
        },
        reconnect_grace: Duration::from_secs(30),
        ..tcp_config(tcp_port_range())
    })
    .await;
    let local = common::origin::tcp_echo().await;
    let relay = Relay::start(server.addr).await;
    let mut cfg = tcp_cfg(&server, local, None);
    cfg.server = format!("http://{}", relay.addr);
    cfg.client_id = Some("laptop".into());
    let (_ghost, port) = tcp_tunnel(cfg).await;
    // The network stops delivering; the server notices and holds the port.
    relay.pause();
    let (kind, message) = eventually(Duration::from_secs(10), || async {
        let refusal = refused(tcp_cfg(&server, local, Some(port))).await;
        refusal
            .1
            .contains("held for its previous client")
            .then_some(refusal)
    })
    .await;
    assert_eq!(kind, RefusalKind::PortTaken, "{message}");
    let mut back = tcp_cfg(&server, local, Some(port));
    back.client_id = Some("laptop".into());
    let (_back, again) = tcp_tunnel(back).await;
    assert_eq!(again, port);
    assert_eq!(exchange(port, b"back").await, b"back");
}

#[tokio::test]
async fn a_client_back_before_the_server_noticed_the_drop_gets_its_port_at_once() {
    let server = Server::start(tcp_config(tcp_port_range())).await;
    let local = common::origin::tcp_echo().await;
    let relay = Relay::start(server.addr).await;
    let mut cfg = tcp_cfg(&server, local, None);
    cfg.server = format!("http://{}", relay.addr);
    cfg.client_id = Some("laptop".into());
    let (_ghost, port) = tcp_tunnel(cfg).await;
    // The old session is silent, and the server still counts it live (and its listener open).
    relay.pause();
    let mut back = tcp_cfg(&server, local, Some(port));
    back.client_id = Some("laptop".into());
    let (_back, again) = tokio::time::timeout(Duration::from_secs(5), tcp_tunnel(back))
        .await
        .expect("the replaced session's port is taken over");
    assert_eq!(again, port);
    assert_eq!(exchange(port, b"back").await, b"back");
}

#[tokio::test]
async fn after_a_server_restart_the_client_comes_back_on_the_same_port() {
    let range = tcp_port_range();
    let server = Server::start(tcp_config(range.clone())).await;
    let addr = server.addr;
    let (t, port) = tcp_tunnel(tcp_cfg(&server, common::origin::tcp_echo().await, None)).await;
    assert_eq!(exchange(port, b"before").await, b"before");
    server.stop().await;
    wait_status(&t, |s| matches!(s, Status::Reconnecting { .. })).await;
    let _server = Server::start_at(addr, tcp_config(range)).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        wait_status(&t, |s| matches!(s, Status::Online { .. })),
    )
    .await
    .expect("back online within 5 s");
    assert_eq!(exchange(port, b"after").await, b"after");
}

#[tokio::test]
async fn the_allowlist_and_the_connection_limit_apply_to_visitors() {
    let server = Server::start(Config {
        max_conns_per_tcp_tunnel: 2,
        ..tcp_config(tcp_port_range())
    })
    .await;
    let local = common::origin::tcp_echo().await;
    let mut elsewhere = tcp_cfg(&server, local, None);
    elsewhere.allow_ips = vec!["192.0.2.0/24".into()];
    let (t, port) = tcp_tunnel(elsewhere).await;
    let mut events = t.connections().subscribe();
    turned_away(port).await;
    assert!(events.try_recv().is_err(), "nothing reached the client");

    let mut here = tcp_cfg(&server, local, None);
    here.allow_ips = vec!["127.0.0.1/32".into()];
    let (_t, port) = tcp_tunnel(here).await;
    let mut open = Vec::new();
    for i in 0..2u8 {
        let mut s = visit(port).await;
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8];
        s.read_exact(&mut b).await.unwrap();
        open.push(s);
    }
    // Over the limit.
    turned_away(port).await;
    drop(open.pop());
    // The freed place is taken back once the server has seen the close.
    eventually(Duration::from_secs(5), || async {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let _ = s.write_all(b"x").await;
        let mut b = [0u8];
        s.read_exact(&mut b).await.ok()
    })
    .await;
}

#[tokio::test]
async fn visitors_count_under_the_servers_connection_limit() {
    let server = Server::start(Config {
        max_conns: 3,
        max_conns_per_ip: 0,
        ..tcp_config(tcp_port_range())
    })
    .await;
    let local = common::origin::tcp_echo().await;
    let (_t, port) = tcp_tunnel(tcp_cfg(&server, local, None)).await;
    // The main listener takes a place before it accepts, so it always holds one for its next
    // connection: two visitors fill the server.
    let mut open = Vec::new();
    for i in 0..2u8 {
        let mut s = visit(port).await;
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8];
        s.read_exact(&mut b).await.unwrap();
        open.push(s);
    }
    // A third visitor is reset at once...
    turned_away(port).await;
    // ...the main listener serves the one it held a place for, and then waits for a visitor
    // to leave.
    let healthz = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut buf = [0u8; 256];
    let mut first = TcpStream::connect(server.addr).await.unwrap();
    first.write_all(healthz).await.unwrap();
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    second.write_all(healthz).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(300), second.read(&mut buf)).await;
    assert!(waited.is_err(), "answered past --max-conns");
    drop(open.pop());
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut buf))
        .await
        .expect("served once a TCP visitor left")
        .unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_connections_and_bytes_and_anonymous_pages_name_no_port() {
    let server = Server::start(Config {
        metrics_token: Some(ggrok_server::config::hash_token("metrics-secret")),
        ..tcp_config(tcp_port_range())
    })
    .await;
    let (_t, port) = tcp_tunnel(tcp_cfg(&server, common::origin::tcp_echo().await, None)).await;
    let tunnel = format!("tunnel=\"tcp:{port}\"");
    // Polls /metrics (for at most 5 s) until every series in `want` reads as given.
    let url = server.url();
    let until = |want: Vec<String>| {
        let url = url.clone();
        eventually(Duration::from_secs(5), move || {
            let (url, want) = (url.clone(), want.clone());
            async move {
                let text = common::visitors::metrics(&url, "metrics-secret").await;
                want.iter().all(|w| text.contains(w.as_str())).then_some(())
            }
        })
    };
    // Counted while the connection is still open, as the bytes pass.
    let mut open = visit(port).await;
    open.write_all(b"12345").await.unwrap();
    let mut back = [0u8; 5];
    open.read_exact(&mut back).await.unwrap();
    until(vec![
        format!("ggrok_tcp_connections_total{{{tunnel}}} 1"),
        format!("ggrok_tcp_connections_open{{{tunnel}}} 1"),
        format!("ggrok_bytes_total{{{tunnel},direction=\"In\"}} 5"),
        format!("ggrok_bytes_total{{{tunnel},direction=\"Out\"}} 5"),
    ])
    .await;
    // And counted closed once it is.
    drop(open);
    until(vec![format!("ggrok_tcp_connections_open{{{tunnel}}} 0")]).await;
    for path in ["/", "/metrics"] {
        let page = visitor()
            .get(format!("{}{path}", server.url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(!page.contains(&port.to_string()), "{path}: {page}");
    }
}

/// OpenSSH through the tunnel: `sshd` on a free loopback port with a throwaway host key and an
/// authorized key, and `ssh ... true` through the public port.
#[tokio::test]
async fn openssh_works_through_the_tunnel() {
    let sshd = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let Some(sshd) = sshd else {
        eprintln!("SKIPPED: sshd is not installed (apt-get install openssh-server)");
        return;
    };
    let whoami = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    let user = String::from_utf8(whoami.stdout).unwrap().trim().to_owned();
    // sshd refuses to start as root without its privilege separation directory, which Debian's
    // service scripts create at boot and a container never boots.
    let privsep = std::path::Path::new("/run/sshd");
    if user == "root" && !privsep.exists() && std::fs::create_dir_all(privsep).is_err() {
        eprintln!("SKIPPED: sshd needs /run/sshd, which could not be created");
        return;
    }
    let dir = tempdir();
    let keygen = |file: &str| {
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.join(file))
            .status()
            .unwrap()
            .success();
        assert!(ok, "ssh-keygen");
    };
    keygen("host_key");
    keygen("user_key");
    std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ssh_port = listener.local_addr().unwrap().port();
    drop(listener);
    let config = dir.join("sshd_config");
    std::fs::write(
        &config,
        format!(
            "Port {ssh_port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n\
             AuthorizedKeysFile {dir}/authorized_keys\nPidFile {dir}/sshd.pid\n\
             StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nAllowUsers {user}\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    // -D: stays in the foreground (a child this test can kill); -e: logs to stderr.
    let mut daemon = KillOnDrop(
        std::process::Command::new(sshd)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&config)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    until_listening(ssh_port).await;
    assert!(daemon.0.try_wait().unwrap().is_none(), "sshd exited");

    let server = Server::start(tcp_config(tcp_port_range())).await;
    let (_t, port) = tcp_tunnel(tcp_cfg(&server, ssh_port, None)).await;
    let out = tokio::process::Command::new("ssh")
        .args([
            "-F",
            "/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
        ])
        .args(["-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR"])
        .arg("-i")
        .arg(dir.join("user_key"))
        .args(["-p", &port.to_string(), &format!("{user}@127.0.0.1")])
        .arg("echo through-the-tunnel")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "ssh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through-the-tunnel\n");
    let _ = std::fs::remove_dir_all(&dir);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ggrok-ssh-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `ggrok-server --db DB ARGS...`: success, stdout, stderr.
fn admin(db: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ggrok-server"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn the_admin_command_reserves_and_releases_ports_on_a_running_server() {
    let dir = tempdir();
    let db = dir.join("tokens.db");
    let (ok, ops, _) = admin(&db, &["token", "create", "--name", "ops"]);
    assert!(ok);
    let (ok, dev, _) = admin(&db, &["token", "create", "--name", "dev"]);
    assert!(ok);
    let range = tcp_port_range();
    let port = free_port_in(&range);
    let p = port.to_string();
    let (ok, _, err) = admin(&db, &["reserve", "--port", &p, "--token-name", "ops"]);
    assert!(ok, "{err}");
    assert_eq!(
        err.trim(),
        format!("port {port} reserved for token \"ops\"")
    );
    let (_, list, _) = admin(&db, &["token", "list"]);
    assert!(list.contains(&format!("tcp:{port}")), "{list}");
    let server = Server::start(Config {
        store: Some(std::sync::Arc::new(Store::open(&db).unwrap())),
        ..tcp_config(range)
    })
    .await;
    let local = common::origin::tcp_echo().await;
    let with = |token: &str| {
        let mut c = tcp_cfg(&server, local, Some(port));
        c.token = Some(ggrok_tunnel::Secret::new(token.trim()));
        c
    };
    let (kind, message) = refused(with(&dev)).await;
    assert_eq!(kind, RefusalKind::PortReserved, "{message}");
    let (t, got) = tcp_tunnel(with(&ops)).await;
    assert_eq!(got, port, "the reserved port goes to its token");
    // A stopped tunnel gives its port up at once.
    t.stop().await;

    let (ok, _, err) = admin(&db, &["release", "--port", &p]);
    assert!(ok && err.trim() == format!("port {port} released"), "{err}");
    let (t, got) = tcp_tunnel(with(&dev)).await;
    assert_eq!(got, port, "free for anyone once released");
    t.stop().await;
    let (ok, _, err) = admin(&db, &["release", "--port", &p]);
    assert!(!ok && err.contains("was not reserved"), "{err}");
    let (ok, _, err) = admin(&db, &["reserve", "--port", "0", "--for", "ops"]);
    assert!(!ok && err.contains("0"), "{err}");
    let (ok, _, _) = admin(&db, &["reserve", "--for", "ops"]);
    assert!(!ok, "a subdomain or a port is required");
    let _ = std::fs::remove_dir_all(&dir);
}
