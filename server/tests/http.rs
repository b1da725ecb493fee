//! HTTP through a real tunnel: bodies, headers, statuses, concurrency, streaming, WebSocket,
//! error pages.

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use common::{
    origin::{gzip_bytes, pattern, sha256, Origin},
    server::{config, Server},
    tunnels::{name_of, tunnel, tunnel_with},
    visitors::{answers, get, header, host, visitor},
};
use futures_util::{SinkExt, StreamExt};
use ggrok_tunnel::{LocalTarget, TunnelConfig};
use http::header;
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

fn all_bytes() -> Vec<u8> {
    (0..=255u8).cycle().take(256 * 4).collect()
}

#[tokio::test]
async fn bodies_are_byte_exact_for_every_method() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, url) = tunnel(&server, origin.port(), Some("methods")).await;
    assert_eq!(
        url,
        format!("http://methods.localhost:{}", server.addr.port())
    );

    for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
        for body in [Vec::new(), all_bytes()] {
            let r = visitor()
                .request(
                    method.parse().unwrap(),
                    format!("{}/echo?q=1", server.url()),
                )
                .header(header::HOST, host(&server, "methods"))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{method}");
            assert_eq!(r.headers()["x-echo-method"], method);
            assert_eq!(r.headers()["x-echo-uri"], "/echo?q=1");
            assert_eq!(
                r.bytes().await.unwrap(),
                body,
                "{method} with {} bytes",
                body.len()
            );
        }
    }
    let r = visitor()
        .head(format!("{}/bytes?1000", server.url()))
        .header(header::HOST, host(&server, "methods"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_LENGTH], "1000");
    assert!(r.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn headers_statuses_redirects_and_encodings_pass_through() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("hdr")).await;

    let r = get(&server, "hdr", "/cookies").send().await.unwrap();
    let cookies: Vec<_> = r.headers().get_all(header::SET_COOKIE).iter().collect();
    // `Domain=localhost` would reach every tunnel: it is dropped (host-only); the tunnel's own
    // host stays.
    assert_eq!(
        cookies,
        [
            "a=1; Path=/",
            "b=2; HttpOnly",
            "c=3",
            "toss=1; Path=/",
            "own=1; Domain=hdr.localhost"
        ]
    );
    let multi: Vec<_> = r.headers().get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"]);

    let r = get(&server, "hdr", "/echo")
        .header("x-multi", "1")
        .header("x-multi", "2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-echo-x-multi"], "1|2");

    for code in [204u16, 304, 400, 404, 418, 500, 503] {
        let r = get(&server, "hdr", &format!("/status?{code}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), code);
        assert!(r
            .headers()
            .get(ggrok_tunnel::protocol::HEADER_ERROR)
            .is_none());
    }
    let r = get(&server, "hdr", "/status?302").send().await.unwrap();
    assert_eq!(r.status(), 302, "redirects are passed on, not followed");
    assert_eq!(r.headers()[header::LOCATION], "/elsewhere");

    let r = get(&server, "hdr", "/gzip")
        .header(header::ACCEPT_ENCODING, "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[header::CONTENT_ENCODING], "gzip");
    assert_eq!(r.bytes().await.unwrap(), gzip_bytes());
}

#[tokio::test]
async fn forwarded_headers_and_host_rewrite() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("fwd")).await;
    let r = get(&server, "fwd", "/echo").send().await.unwrap();
    let h = r.headers();
    assert_eq!(h["x-echo-host"], format!("localhost:{}", origin.port()));
    assert_eq!(h["x-echo-x-forwarded-host"], host(&server, "fwd"));
    assert_eq!(h["x-echo-x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-echo-x-forwarded-proto"], "http");

    let mut cfg = TunnelConfig::new(server.url(), origin.port());
    cfg.subdomain = Some("keep".into());
    cfg.local = LocalTarget::new("127.0.0.1", origin.port());
    cfg.local.host_header = ggrok_tunnel::HostHeader::Preserve;
    let (_k, _) = tunnel_with(cfg).await;
    let r = get(&server, "keep", "/echo")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-echo-host"], host(&server, "keep"));
    assert_eq!(
        r.headers()["x-echo-x-forwarded-for"],
        "203.0.113.9, 127.0.0.1"
    );
}

#[tokio::test]
async fn many_slow_requests_run_concurrently() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("conc")).await;
    let started = std::time::Instant::now();
    let requests = (0..200).map(|_| async {
        let r = get(&server, "conc", "/slow").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "slow");
    });
    futures_util::future::join_all(requests).await;
    let elapsed = started.elapsed();
    let peak = origin.state.max_in_flight.load(Ordering::SeqCst);
    // Serialised, 200 × 500 ms would be 100 s and the origin would never see two at once.
    assert!(peak >= 50, "only {peak} requests were in flight at once");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    eprintln!("200 concurrent 500 ms requests took {elapsed:?}, peak in flight {peak}");
}

#[tokio::test]
async fn two_hundred_requests_are_in_flight_at_once() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("barrier")).await;
    // The origin answers none until all 200 wait there together.
    let requests = (0..200).map(|_| async {
        let r = get(&server, "barrier", "/barrier?200")
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "together");
    });
    futures_util::future::join_all(requests).await;
}

#[tokio::test]
async fn responses_stream_before_they_end() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("stream")).await;

    // The origin holds the rest of the body until we have the first chunk.
    let mut r = get(&server, "stream", "/gate").send().await.unwrap();
    assert_eq!(r.chunk().await.unwrap().unwrap(), "first\n");
    origin.state.gate.notify_one();
    assert_eq!(r.chunk().await.unwrap().unwrap(), "rest\n");
    assert!(r.chunk().await.unwrap().is_none());

    // Server-Sent Events arrive one by one.
    let mut r = get(&server, "stream", "/sse")
        .header(header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()[header::CONTENT_TYPE], "text/event-stream");
    for i in 0..3 {
        let chunk = r.chunk().await.unwrap().unwrap();
        assert_eq!(chunk, format!("id: {i}\ndata: event {i}\n\n"));
        origin.state.gate.notify_one();
    }
}

#[tokio::test]
async fn uploads_stream_to_the_origin_as_they_arrive() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("up")).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let request = tokio::spawn(
        visitor()
            .post(format!("{}/upload", server.url()))
            .header(header::HOST, host(&server, "up"))
            .body(body)
            .send(),
    );
    tx.send(Ok(b"first chunk".to_vec())).await.unwrap();
    // The origin must see the first chunk while the upload is still open.
    origin.state.reached.notified().await;
    tx.send(Ok(b" and the rest".to_vec())).await.unwrap();
    drop(tx);
    let r = request.await.unwrap().unwrap();
    let expected = format!("24 {}", sha256(b"first chunk and the rest"));
    assert_eq!(r.text().await.unwrap(), expected);
}

fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn websockets_pass_through() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (t, _) = tunnel(&server, origin.port(), Some("ws")).await;
    let mut req = format!("ws://{}/ws", server.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert(header::HOST, host(&server, "ws").parse().unwrap());
    let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (mut ws, resp) = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true)
        .await
        .unwrap();
    assert_eq!(resp.status(), 101);

    ws.send(Message::text("hello through the tunnel"))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("hello through the tunnel")
    );
    let big: Vec<u8> = pattern(0, 8 << 20);
    ws.send(Message::binary(big.clone())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Binary(b) => assert!(b == big, "8 MiB message corrupted"),
        other => panic!("expected binary, got {other:?}"),
    }
    ws.close(None).await.unwrap();
    let ex = t.traffic().recent();
    assert!(ex
        .iter()
        .any(|e| e.upgraded && e.path == "/ws" && e.status == Some(101)));
}

#[tokio::test]
async fn clear_error_pages() {
    let server = Server::start(config()).await;
    // Unknown tunnel: 404, HTML or JSON.
    let r = get(&server, "nobody", "/").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.headers()[ggrok_tunnel::protocol::HEADER_ERROR],
        "tunnel_not_found"
    );
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("No tunnel is online at nobody.localhost"));
    let r = get(&server, "nobody", "/")
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json_value().await;
    assert_eq!(v["error"], "tunnel_not_found");

    // Online tunnel, nothing listening locally: 502 naming the port.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (_t, _) = tunnel(&server, dead, Some("dead")).await;
    let r = get(&server, "dead", "/x").send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(
        r.headers()[ggrok_tunnel::protocol::HEADER_ERROR],
        "local_unreachable"
    );
    assert!(r
        .text()
        .await
        .unwrap()
        .contains(&format!("localhost:{dead}")));
}

trait JsonValue {
    async fn json_value(self) -> serde_json::Value;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

#[tokio::test]
async fn a_live_name_stays_with_its_holder() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (holder, _) = tunnel(&server, origin.port(), Some("mine")).await;
    let other = Origin::start().await;
    let newcomer = ggrok_tunnel::Tunnel::start({
        let mut c = TunnelConfig::new(server.url(), other.port());
        c.subdomain = Some("mine".into());
        c
    })
    .unwrap();
    match newcomer.online().await {
        Err(ggrok_tunnel::Status::Failed { kind, message }) => {
            assert_eq!(kind, ggrok_tunnel::protocol::RefusalKind::NameTaken);
            assert!(message.contains("in use"), "{message}");
        }
        other => panic!("newcomer should be refused, got {other:?}"),
    }
    let r = get(&server, "mine", "/echo")
        .body("still mine")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "still mine");
    assert!(matches!(
        *holder.status().borrow(),
        ggrok_tunnel::Status::Online { .. }
    ));
}

#[tokio::test]
async fn random_names_and_traffic_records() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (t, url) = tunnel(&server, origin.port(), None).await;
    let name = name_of(&url);
    ggrok_tunnel::protocol::validate_name(&name).unwrap();
    let mut events = t.traffic().subscribe();
    let r = get(&server, &name, "/echo?x=<img src=x onerror=alert(1)>")
        .header("x-trace", "t-1")
        .header(
            "x-bytes",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let e = events.recv().await.unwrap();
    assert_eq!(e.method, "GET");
    assert_eq!(e.status, Some(200));
    assert_eq!(&e.request_body.data[..], b"abc");
    assert_eq!(&e.response_body.data[..], b"abc");
    assert_eq!(e.remote_addr.as_deref(), Some("127.0.0.1"));
    // Headers as forwarded to the local service, and as it answered; bytes that are not
    // UTF-8 are shown lossily.
    assert_eq!(e.request_headers.get("X-Trace"), Some("t-1"));
    assert_eq!(e.request_headers.get("x-bytes"), Some("caf\u{fffd}"));
    assert_eq!(e.request_headers.get("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(e.response_headers.get("content-length"), Some("3"));

    // Replay goes to the origin again, with the recorded headers, as a new exchange.
    let again = t.replay(e.id).await.unwrap();
    assert_ne!(again.id, e.id);
    assert_eq!(again.status, Some(200));
    assert_eq!(&again.response_body.data[..], b"abc");
    assert_eq!(again.request_headers.get("x-trace"), Some("t-1"));
}

/// A visitor that leaves before its answer takes the local request along, as behind nginx: the
/// local service sees its connection close at once (a long poll is not held for nobody), and
/// the inspector records the request with why it has no answer. So does a tunnel that stops.
#[tokio::test]
async fn a_visitor_that_leaves_before_its_answer_closes_the_local_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(config()).await;
    // A local service that never answers: it says when a request arrived, and when its
    // connection closed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut local) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = 0;
                while !buf[..got].ends_with(b"\r\n\r\n") {
                    got += s.read(&mut buf[got..]).await.unwrap();
                }
                tx.send("request").unwrap();
                let end = s.read(&mut buf).await;
                assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
                tx.send("closed").unwrap();
            });
        }
    });
    let (t, _) = tunnel(&server, port, Some("leaver")).await;
    let mut events = t.traffic().subscribe();

    let mut v = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "GET /long-poll HTTP/1.1\r\nhost: {}\r\n\r\n",
        host(&server, "leaver")
    );
    v.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(local.recv().await, Some("request"));
    drop(v);
    cut_short(&mut local, &mut events, "/long-poll").await;

    // So does a tunnel that stops while a visitor waits.
    let mut v = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    v.write_all(head.replace("long-poll", "at-stop").as_bytes())
        .await
        .unwrap();
    assert_eq!(local.recv().await, Some("request"));
    t.stop().await;
    cut_short(&mut local, &mut events, "/at-stop").await;
}

/// The local service's connection for `path` closes, and the exchange is recorded as cut short.
async fn cut_short(
    local: &mut tokio::sync::mpsc::UnboundedReceiver<&str>,
    events: &mut tokio::sync::broadcast::Receiver<Arc<ggrok_tunnel::Exchange>>,
    path: &str,
) {
    let closed = tokio::time::timeout(Duration::from_secs(10), local.recv()).await;
    assert_eq!(
        closed,
        Ok(Some("closed")),
        "the request for {path} outlived it"
    );
    let e = events.recv().await.unwrap();
    assert_eq!((e.path.as_str(), e.status), (path, None));
    assert_eq!(e.error.as_deref(), Some(ggrok_tunnel::traffic::ABANDONED));
}

#[tokio::test]
async fn hostile_public_requests_get_clear_errors() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("edge")).await;

    let r = get(&server, "edge", "/echo")
        .header("x-huge", "a".repeat(100 * 1024))
        .send()
        .await;
    match r {
        Ok(r) => assert_eq!(r.status(), 431),
        // hyper may close before the client finished sending the head: also a clear refusal.
        Err(e) => assert!(e.is_request() || e.is_connect(), "{e}"),
    }
    let long = "a".repeat(64);
    let r = get(&server, &long, "/").send().await.unwrap();
    assert_eq!(r.status(), 400, "no tunnel can have a 64-character name");
    let r = visitor()
        .get(server.url())
        .header(header::HOST, "edge.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // A path that is not UTF-8 (percent-encoded) passes through untouched.
    let r = get(&server, "edge", "/echo?%ff%fe").send().await.unwrap();
    assert_eq!(r.headers()["x-echo-uri"], "/echo?%ff%fe");
    // The tunnel still works.
    assert_eq!(
        get(&server, "edge", "/echo").send().await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn keep_alive_visitors_send_many_requests_on_one_connection() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("ka")).await;
    // One pooled connection carries every request (and so one tunnel stream serves them all).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    for i in 0..30 {
        let path = ["/echo", "/status?404", "/bytes?100000"][i % 3];
        let r = client
            .post(format!("{}{path}", server.url()))
            .header(header::HOST, host(&server, "ka"))
            .body(format!("request {i}"))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.bytes().await.unwrap();
        match i % 3 {
            0 => assert_eq!(body, format!("request {i}")),
            1 => assert_eq!(status, 404),
            _ => assert_eq!(body.len(), 100_000),
        }
    }
}

#[tokio::test]
async fn health_and_metrics_on_the_apex() {
    let server = Server::start(ggrok_server::Config {
        metrics_token: Some(ggrok_server::config::hash_token("metrics-secret")),
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("metered")).await;
    let r = get(&server, "metered", "/echo")
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap(), "12345");
    get(&server, "ghost", "/").send().await.unwrap();

    let r = visitor()
        .get(format!("{}/healthz", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "ok\n");
    let r = visitor()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = visitor()
        .get(format!("{}/metrics", server.url()))
        .bearer_auth("metrics-secret")
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    for line in [
        "ggrok_tunnels_online 1",
        r#"ggrok_requests_total{tunnel="metered"} 1"#,
        r#"ggrok_bytes_total{tunnel="metered",direction="In"} 5"#,
        r#"ggrok_bytes_total{tunnel="metered",direction="Out"} 5"#,
        r#"ggrok_errors_total{kind="tunnel_not_found"} 1"#,
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

/// An origin that counts the connections it accepts and answers every request `200 ok`; with
/// `close_after_each`, it closes each connection right after its first response, without
/// saying so (like a keep-alive timeout firing).
async fn counting_origin(close_after_each: bool) -> (u16, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    // GET requests only: a head ends the request.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if s.write_all(ok).await.is_err() || close_after_each {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, accepted)
}

#[tokio::test]
async fn local_connections_are_reused_across_requests_and_visitor_connections() {
    let server = Server::start(config()).await;
    let (port, accepted) = counting_origin(false).await;
    let (_t, _) = tunnel(&server, port, Some("reuse")).await;
    // One visitor connection, sequential requests.
    let keep_alive = visitor();
    for i in 0..20 {
        let r = keep_alive
            .get(format!("{}/k{i}", server.url()))
            .header(header::HOST, host(&server, "reuse"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    // A new visitor connection (a new tunnel stream) per request.
    for i in 0..20 {
        let fresh = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        let r = fresh
            .get(format!("{}/f{i}", server.url()))
            .header(header::HOST, host(&server, "reuse"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "one local connection");
}

#[tokio::test]
async fn a_local_service_closing_idle_connections_loses_no_request() {
    let server = Server::start(config()).await;
    let (port, accepted) = counting_origin(true).await;
    let (_t, _) = tunnel(&server, port, Some("closer")).await;
    let client = visitor();
    for i in 0..30 {
        let r = client
            .get(format!("{}/c{i}", server.url()))
            .header(header::HOST, host(&server, "closer"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(r.text().await.unwrap(), "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 30);
}

/// A visitor speaking HTTP/2 with prior knowledge on the plain-text port (gRPC clients do) is
/// served over HTTP/2, request and response bodies whole; HTTP/1.1 on the same port is unchanged.
#[tokio::test]
async fn h2c_prior_knowledge_visitors_are_served() {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, url) = tunnel(&server, origin.port(), Some("h2c")).await;

    let io = TokioIo::new(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("{url}/echo"))
        .body(http_body_util::Full::new(bytes::Bytes::from(all_bytes())))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-echo-method"], "POST");
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, all_bytes());

    let r = get(&server, "h2c", "/echo").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), http::Version::HTTP_11);
}

/// Plain requests sent back to back are answered in order on the server's own HTTP/1.1 path,
/// small bodies that came with their heads included; a body in pieces or too large for it moves
/// the connection to hyper, which answers it and the rest.
#[tokio::test]
async fn pipelined_requests_and_bodies_share_one_visitor_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("pipe")).await;
    let host = host(&server, "pipe");
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let requests = format!(
        "GET /echo?1 HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 203.0.113.9\r\n\
         Keep-Alive: timeout=5\r\nConnection: keep-alive\r\nX-Forwarded-Proto: https\r\n\r\n\
         HEAD /bytes?100 HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /cookies HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\n\r\nhello\
         PUT /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 11\r\n\r\nhello"
    );
    conn.write_all(requests.as_bytes()).await.unwrap();
    let large = pattern(0, 100_000);
    let rest = format!(
        " world\
         POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n",
        large.len()
    );
    conn.write_all(rest.as_bytes()).await.unwrap();
    conn.write_all(&large).await.unwrap();
    let last = format!("GET /status?204 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    conn.write_all(last.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    // The server closes after the request that asked it to.
    conn.read_to_end(&mut bytes).await.unwrap();
    let got = answers(&bytes, &[false, true, false, false, false, false, false]);

    let echo = &got[0];
    assert_eq!(echo.0, 200);
    assert_eq!(header(echo, "x-echo-uri"), Some("/echo?1"));
    assert_eq!(
        header(echo, "x-echo-x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(header(echo, "x-echo-x-forwarded-proto"), Some("http"));
    assert_eq!(header(echo, "x-echo-x-forwarded-host"), Some(host.as_str()));
    assert!(header(echo, "date").is_some(), "{echo:?}");

    let head = &got[1];
    assert_eq!((head.0, header(head, "content-length")), (200, Some("100")));
    assert!(head.2.is_empty());

    let cookies: Vec<&str> = got[2]
        .1
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    // Narrowed to the tunnel's own host, in order.
    assert_eq!(
        cookies,
        [
            "a=1; Path=/",
            "b=2; HttpOnly",
            "c=3",
            "toss=1; Path=/",
            "own=1"
        ]
    );

    assert_eq!((got[3].0, &got[3].2[..]), (200, &b"hello"[..]));
    assert_eq!(header(&got[4], "x-echo-method"), Some("PUT"));
    assert_eq!(&got[4].2[..], b"hello world");
    assert_eq!((got[5].0, got[5].2 == large), (200, true));
    assert_eq!(got[6].0, 204);
}
