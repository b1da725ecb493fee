//! Faults inside one session: a stream whose reader stops reading, a local service that stops
//! reading an upload, and a network that silently stops delivering. The first two must stay on
//! their own stream (flow control per stream) with memory bounded; the last must be found by
//! the heartbeat, end its requests with a clean 502 and heal by reconnecting under the same name.
//! `bench/soak.sh` and `bench/slow.sh` do the same at scale; see docs/reliability.md.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{
    bodies::{big_chunks, big_sha256},
    origin::Origin,
    process::ServerBinary,
    relay::Relay,
    server::{config, Server},
    tunnels::{name_of, tunnel_with, wait_status},
    visitors::{get, visitor},
};
use futures_util::StreamExt;
use ggrok_server::Config;
use ggrok_tunnel::{
    protocol::{self, Heartbeat},
    Backoff, Status, TunnelConfig,
};
use http::header;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The stalled transfer: far more than every buffer on the way (sockets, stream windows) holds.
const STALLED: u64 = 256 << 20;
/// The transfer that must get through next to it.
const OTHER: u64 = 32 << 20;
/// Peak RSS allowed to the server process while the other transfer runs at full speed (the
/// bound `large_bodies.rs` uses; the allocator's share of it is large: ~16 MB with glibc,
/// ~60 MB with mimalloc). Without per-stream flow control the stalled 256 MiB would pile up
/// here. `bench/slow.sh` holds a slow transfer alone to the 64 MB.
const SERVER_LIMIT_KB: u64 = 100 * 1000;
/// Bytes of a stalled upload that may leave the visitor: socket buffers on both TCP hops, the
/// stream's window and hyper's read buffers, with room to spare. Without flow control
/// the whole body would go.
const UPLOAD_IN_FLIGHT: u64 = 64 << 20;
/// Generous: the transfer takes well under a second when the stall does not block it.
const DEADLINE: Duration = Duration::from_secs(60);

async fn tunnel_to(server: &ServerBinary, origin: &Origin, name: &str) -> ggrok_tunnel::Tunnel {
    let mut cfg = TunnelConfig::new(server.url(), origin.port());
    cfg.subdomain = Some(name.into());
    tunnel_with(cfg).await.0
}

fn public(server: &ServerBinary, name: &str, path: &str) -> (String, String) {
    (
        format!("{}{path}", server.url()),
        format!("{name}.localhost:{}", server.addr.port()),
    )
}

/// Downloads `n` bytes of `/bytes` and checks them.
async fn download(server: &ServerBinary, name: &str, n: u64) {
    let (url, host) = public(server, name, &format!("/bytes?{n}"));
    let r = visitor()
        .get(url)
        .header(header::HOST, host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut hasher = Sha256::new();
    let mut got = 0u64;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        got += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(got, n);
    assert_eq!(format!("{:x}", hasher.finalize()), big_sha256(n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_holds_up_only_its_own_stream() {
    let server = ServerBinary::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_ggrok-server")));
    let origin = Origin::start().await;
    let _t = tunnel_to(&server, &origin, "stalldown").await;

    // A visitor that asks for a big body, reads the response head and then nothing.
    let (_, host) = public(&server, "stalldown", "");
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut stalled = BufReader::new(tcp);
    stalled
        .get_mut()
        .write_all(format!("GET /bytes?{STALLED} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        stalled.read_line(&mut line).await.unwrap();
        if line == "\r\n" {
            break;
        }
        head.push_str(&line);
    }
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {STALLED}")),
        "{head}"
    );

    // The same session carries another transfer to its end meanwhile.
    tokio::time::timeout(DEADLINE, download(&server, "stalldown", OTHER))
        .await
        .expect("a stalled stream must not block the session");
    let peak = server.peak_rss_kb();
    assert!(
        peak < SERVER_LIMIT_KB,
        "server peak RSS {peak} kB with a stalled reader"
    );

    // Nothing was lost while it waited: the stalled body is whole once read.
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < STALLED {
        let want = buf.len().min((STALLED - got) as usize);
        let n = stalled.read(&mut buf[..want]).await.unwrap();
        assert!(n > 0, "stalled body ended after {got} bytes");
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    assert_eq!(format!("{:x}", hasher.finalize()), big_sha256(STALLED));
    eprintln!("stalled download: server peak RSS {peak} kB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_service_that_stops_reading_an_upload_holds_up_only_its_own_stream() {
    let server = ServerBinary::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_ggrok-server")));
    let origin = Origin::start().await;
    let _t = tunnel_to(&server, &origin, "stallup").await;

    // `/hang` answers only when the gate opens and never reads the body: the visitor can send
    // only as much as the buffers on the way take.
    let taken = Arc::new(AtomicU64::new(0));
    let counted = taken.clone();
    let body = big_chunks(STALLED).map(move |c| {
        counted.fetch_add(c.len() as u64, Ordering::SeqCst);
        Ok::<_, std::io::Error>(c)
    });
    let (url, host) = public(&server, "stallup", "/hang");
    let stalled = tokio::spawn(
        visitor()
            .post(url)
            .header(header::HOST, host)
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    );
    origin.state.reached.notified().await;

    // Another upload on the same session goes through whole.
    let (url, host) = public(&server, "stallup", "/upload");
    let other = reqwest::Body::wrap_stream(big_chunks(OTHER).map(Ok::<_, std::io::Error>));
    let r = tokio::time::timeout(
        DEADLINE,
        visitor()
            .post(url)
            .header(header::HOST, host)
            .body(other)
            .send(),
    )
    .await
    .expect("a stalled stream must not block the session")
    .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        format!("{OTHER} {}", big_sha256(OTHER))
    );
    let sent = taken.load(Ordering::SeqCst);
    assert!(
        sent < UPLOAD_IN_FLIGHT,
        "{sent} bytes of the stalled upload left the visitor: nothing holds them back"
    );
    let peak = server.peak_rss_kb();
    assert!(
        peak < SERVER_LIMIT_KB,
        "server peak RSS {peak} kB with a stalled upload"
    );

    // Released, the stalled request ends one way or the other (the service answered without
    // reading the body, so the rest may be refused); it must not hang.
    origin.state.gate.notify_one();
    let outcome = tokio::time::timeout(DEADLINE, stalled)
        .await
        .expect("the released upload must end")
        .unwrap();
    if let Ok(r) = outcome {
        assert_eq!(r.status(), 200);
    }
    eprintln!("stalled upload: {sent} bytes taken from the visitor, server peak RSS {peak} kB");
}

#[tokio::test]
async fn a_network_that_stops_delivering_is_detected_and_the_tunnel_heals() {
    let heartbeat = Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(600),
    };
    let server = Server::start(Config {
        heartbeat,
        // Long enough that the name is still held for the client through the waits below.
        reconnect_grace: Duration::from_secs(60),
        metrics_token: Some(ggrok_server::config::hash_token("m")),
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let relay = Relay::start(server.addr).await;
    let mut cfg = TunnelConfig::new(format!("http://{}", relay.addr), origin.port());
    cfg.heartbeat = heartbeat;
    cfg.backoff = Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    // A random name: the healed tunnel must come back under the name it was given.
    let (t, url) = tunnel_with(cfg).await;
    let name = name_of(&url);

    let pending = tokio::spawn(get(&server, &name, "/hang").send());
    origin.state.reached.notified().await;
    relay.pause();

    // The server's heartbeat gives up on the session after `timeout`; the request in flight
    // is answered then, not when some TCP timer fires minutes later.
    let r = tokio::time::timeout(heartbeat.timeout + Duration::from_secs(5), pending)
        .await
        .expect("the request in flight must end once the heartbeat times out")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()[protocol::HEADER_ERROR], "tunnel_lost");

    // The client noticed too and, once the network delivers again, is back under its name.
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        wait_status(&t, |s| matches!(s, Status::Reconnecting { .. })),
    )
    .await
    .expect("the client should notice the silent server");
    assert!(matches!(s, Status::Reconnecting { .. }));

    // Once the server has let the session go it holds the name for the client. A visitor then
    // waits a while for the client and is told it is reconnecting, not that nothing is there.
    let offline = || async {
        let metrics = common::visitors::metrics(&server.url(), "m").await;
        metrics.lines().any(|l| l == "ggrok_tunnels_online 0")
    };
    while !offline().await {}
    let r = get(&server, &name, "/echo").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()[protocol::HEADER_ERROR], "tunnel_reconnecting");
    assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    // A request that arrives while the name is held is answered once the client is back.
    let waiting = tokio::spawn(get(&server, &name, "/echo").body("waited").send());
    relay.resume();
    let back = tokio::time::timeout(
        Duration::from_secs(10),
        wait_status(&t, |s| matches!(s, Status::Online { .. })),
    )
    .await
    .expect("the client should reconnect once the network is back");
    assert_eq!(
        back,
        Status::Online {
            url,
            name: name.clone()
        }
    );
    let r = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting request must be answered")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "waited");
    let r = get(&server, &name, "/echo")
        .body("healed")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "healed");
}
