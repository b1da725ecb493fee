//! Hostile HTTP/1.1 at the public side, sent byte by byte over raw TCP (a real client would
//! sanitise it): request smuggling, host confusion, odd names and paths, slow senders. Every
//! test counts what reached the origin, not just what the visitor was told.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use ggrok_tunnel::http_util::full;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Notify};

use common::{
    server::{config, Server},
    tunnels::{name_of, tunnel},
    visitors::{get, host},
};
use ggrok_server::Config;

/// A server with a tunnel `edge` to a fresh recording origin.
async fn setup(config: Config) -> (Server, Recorder, ggrok_tunnel::Tunnel) {
    let server = Server::start(config).await;
    let origin = Recorder::start().await;
    let (t, _) = tunnel(&server, origin.port(), Some("edge")).await;
    (server, origin, t)
}

/// A request to tunnel `edge` (or the apex when `host` says so) ending its head.
fn head(server: &Server, first: &str, extra: &str) -> String {
    format!("{first}\r\nHost: {}\r\n{extra}\r\n", host(server, "edge"))
}

/// A request the origin must never see.
fn smuggled(server: &Server) -> String {
    head(server, "GET /smuggled HTTP/1.1", "")
}

#[tokio::test]
async fn conflicting_framing_is_refused_and_never_smuggles_a_request() {
    let (server, origin, _t) = setup(config()).await;

    // Each case is sent with a second request pipelined behind it. Bodies that hyper and a
    // Content-Length-reading front end would frame differently hide `/smuggled` in between.
    let cases: &[(&str, &str, u16)] = &[
        // Two different lengths.
        ("Content-Length: 6\r\nContent-Length: 5\r\n", "hello!", 400),
        // Transfer codings that do not end in chunked, or that no one can read.
        ("Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n", 400),
        ("Transfer-Encoding: xchunked\r\n", "0\r\n\r\n", 400),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n",
            "0\r\n\r\n",
            400,
        ),
        // Obfuscated header names and folded values.
        ("Transfer-Encoding : chunked\r\n", "0\r\n\r\n", 400),
        ("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n", 400),
        // Chunked last, but with a coding ggrok would silently drop when relaying.
        ("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n", 501),
    ];
    for (headers, body, status) in cases {
        let mut raw = Raw::connect(server.addr).await;
        let request = head(&server, "POST /echo HTTP/1.1", headers) + body + &smuggled(&server);
        raw.send(request.as_bytes()).await;
        let r = raw.response().await;
        let got = r.as_ref().map(|r| r.status);
        assert!(
            got == Some(*status) || (got.is_none() && *status == 400),
            "{headers:?}: {r:?}"
        );
        assert!(
            raw.response().await.is_none(),
            "{headers:?}: one answer, then closed"
        );
        // 400s come from hyper's parser; 501 is ggrok's: clear, in the visitor's format.
        if *status == 501 {
            let r = r.unwrap();
            assert_eq!(r.header("ggrok-error"), Some("bad_request"));
            assert!(r.text().contains("chunked"), "{}", r.text());
        }
    }
    assert_eq!(
        origin.paths(),
        Vec::<String>::new(),
        "nothing reached the origin"
    );

    // A chunked body that turns out malformed once relaying began: 400, closed, and the
    // origin sees its request cut off rather than completed.
    let mut raw = Raw::connect(server.addr).await;
    let request = head(
        &server,
        "POST /bad-chunk HTTP/1.1",
        "Transfer-Encoding: chunked\r\n",
    ) + "5\r\nhello\r\nzz\r\n"
        + &smuggled(&server);
    raw.send(request.as_bytes()).await;
    let r = raw.response().await.unwrap();
    assert_eq!(
        (r.status, r.header("ggrok-error")),
        (400, Some("bad_request"))
    );
    assert!(raw.response().await.is_none(), "closed after the refusal");
    // Whether the origin saw the request start depends on how far it got before the visitor's
    // body broke; it must never see it complete. A request after it shows what arrived.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(head(&server, "GET /after-bad-chunk HTTP/1.1", "").as_bytes())
        .await;
    assert_eq!(raw.response().await.unwrap().status, 200);
    origin.wait_for(1).await;

    // Both Content-Length and chunked: hyper reads the body as chunked (RFC 9112 §6.3), drops
    // Content-Length and closes after answering, so the bytes behind it are never a request.
    // In either order of the two headers.
    for framing in [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
    ] {
        let mut raw = Raw::connect(server.addr).await;
        let request = head(&server, "POST /cl-te HTTP/1.1", framing)
            + "3\r\nabc\r\n0\r\n\r\n"
            + &smuggled(&server);
        raw.send(request.as_bytes()).await;
        let r = raw.response().await.unwrap();
        assert_eq!(r.status, 200, "{framing:?}");
        assert!(
            raw.response().await.is_none(),
            "{framing:?}: closed after the answer"
        );
    }
    let mut seen = origin.wait_for(3).await;
    if seen.iter().any(|s| s.uri == "/bad-chunk") {
        seen = origin.wait_for(4).await;
    }
    // The broken request, if it got far enough to be seen, was seen cut off.
    let (broken, seen): (Vec<_>, Vec<_>) = seen.into_iter().partition(|s| s.uri == "/bad-chunk");
    assert!(broken.iter().all(|s| s.body.is_none()), "{broken:?}");
    let paths: Vec<_> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert_eq!(paths, ["/after-bad-chunk", "/cl-te", "/cl-te"]);
    for s in seen.into_iter().skip(1) {
        assert_eq!(
            s.body.as_deref(),
            Some(&b"abc"[..]),
            "the chunked reading won"
        );
        assert!(
            !s.headers.contains_key("content-length"),
            "the origin sees one framing only: {:?}",
            s.headers
        );
    }
}

#[tokio::test]
async fn a_request_hidden_in_a_body_stays_body() {
    let (server, origin, _t) = setup(config()).await;
    let hidden = smuggled(&server);
    let carrier = |path: &str, host: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {}\r\n\r\n{hidden}",
            hidden.len()
        )
    };
    let edge = host(&server, "edge");
    let last = head(&server, "GET /last HTTP/1.1", "Connection: close\r\n");

    // Pipelined: three requests in one write; the origin reads the middle one as body.
    let mut raw = Raw::connect(server.addr).await;
    let all = carrier("/first", &edge) + &carrier("/second", &edge) + &last;
    raw.send(all.as_bytes()).await;
    for _ in 0..3 {
        assert_eq!(raw.response().await.unwrap().status, 200);
    }
    assert!(raw.response().await.is_none());
    let seen = origin.wait_for(3).await;
    assert_eq!(origin.paths(), ["/first", "/second", "/last"]);
    assert_eq!(
        seen[0].body.as_deref(),
        Some(hidden.as_bytes()),
        "byte-exact"
    );

    // Keep-alive: one request at a time, answers read in between; also through the server's
    // own answers that never read the body (an offline tunnel, the apex, a refused host).
    let apex = format!("localhost:{}", server.addr.port());
    let offline = host(&server, "offline");
    let mut raw = Raw::connect(server.addr).await;
    for (request, status) in [
        (carrier("/keep", &edge), 200),
        (carrier("/", &offline), 404),
        (carrier("/healthz", &apex), 200),
        (carrier("/nope", &apex), 404),
        (carrier("/keep", &edge), 200),
    ] {
        raw.send(request.as_bytes()).await;
        let r = raw.response().await.unwrap();
        assert_eq!(r.status, status, "{request}");
    }
    raw.send(last.as_bytes()).await;
    assert_eq!(raw.response().await.unwrap().status, 200);
    origin.wait_for(6).await;
    assert_eq!(
        origin.paths(),
        ["/first", "/second", "/last", "/keep", "/keep", "/last"],
        "no request hidden in a body reached the origin"
    );
}

#[tokio::test]
async fn hosts_are_read_strictly_and_one_way() {
    let (server, origin, _t) = setup(config()).await;
    let port = server.addr.port();
    let one = |target: &str, headers: &str| {
        format!("GET {target} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n")
    };
    let addr = server.addr;
    let ask = move |request: String| async move {
        let mut raw = Raw::connect(addr).await;
        raw.send(request.as_bytes()).await;
        raw.response().await.expect("an answer")
    };

    // Spellings of the same host all reach the tunnel.
    for host in [
        format!("edge.localhost:{port}"),
        "edge.localhost".to_owned(),
        "EDGE.LocalHost:1".to_owned(),
        format!("edge.localhost.:{port}"),
    ] {
        let r = ask(one("/ok", &format!("Host: {host}\r\n"))).await;
        let n = origin.paths().len();
        assert_eq!((r.status, r.text()), (200, format!("seen {n}")), "{host}");
    }
    let reached = origin.paths().len();
    assert_eq!(reached, 4);

    // Hosts that are no host, or two: 400 with the reason, never a guess.
    for (headers, reason) in [
        ("".to_owned(), "need a Host"),
        (
            format!("Host: edge.localhost:{port}\r\nHost: other.localhost\r\n"),
            "only one Host",
        ),
        (
            format!("Host: user@edge.localhost:{port}\r\n"),
            "user information",
        ),
        ("Host: edge.localhost:abc\r\n".to_owned(), "host[:port]"),
        ("Host: edge.localhost:\r\n".to_owned(), "host[:port]"),
        ("Host: edge.localhost:99999\r\n".to_owned(), "host[:port]"),
        ("Host: édge.localhost\r\n".to_owned(), "xn--"),
        (
            "Host: a_b.localhost\r\n".to_owned(),
            "cannot be a tunnel name",
        ),
    ] {
        let r = ask(one("/no", &headers)).await;
        assert_eq!(r.status, 400, "{headers:?}");
        assert_eq!(r.header("ggrok-error"), Some("bad_request"), "{headers:?}");
        assert!(r.text().contains(reason), "{headers:?}: {}", r.text());
        assert!(r.header("content-type").unwrap().contains("text/html"));
    }
    // The same refusal as JSON when asked for.
    let r = ask(one("/no", "Accept: application/json\r\n")).await;
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!((r.status, v["error"].as_str()), (400, Some("bad_request")));

    // Empty labels and deeper names are not ours.
    let r = ask(one("/", "Host: edge..localhost\r\n")).await;
    assert_eq!(
        (r.status, r.header("ggrok-error")),
        (404, Some("tunnel_not_found"))
    );

    // International names reach tunnels only in their xn-- form: a valid label, not online.
    let r = ask(one("/", "Host: xn--dge-9na.localhost\r\n")).await;
    assert_eq!(
        (r.status, r.header("ggrok-error")),
        (404, Some("tunnel_not_found"))
    );

    // An absolute-form target names the host; Host is ignored (RFC 9112 §3.2.2), both ways.
    let r = ask(one(
        &format!("http://edge.localhost:{port}/absolute"),
        "Host: other.localhost\r\n",
    ))
    .await;
    assert_eq!(r.status, 200);
    let seen = origin.wait_for(reached + 1).await;
    let last = seen.last().unwrap();
    assert_eq!(
        last.uri, "/absolute",
        "the origin gets an origin-form target"
    );
    assert_eq!(
        last.headers["x-forwarded-host"],
        format!("edge.localhost:{port}")
    );
    let r = ask(one(
        "http://other.localhost/absolute",
        &format!("Host: edge.localhost:{port}\r\n"),
    ))
    .await;
    assert_eq!(
        (r.status, r.header("ggrok-error")),
        (404, Some("tunnel_not_found"))
    );

    // HTTP/1.0 without Host is for the server itself: its pages, in the visitor's format.
    for (request, status) in [
        ("GET /healthz HTTP/1.0\r\n\r\n", 200),
        ("GET /x HTTP/1.0\r\n\r\n", 404),
        ("GET /x HTTP/1.0\r\nAccept: application/json\r\n\r\n", 404),
    ] {
        let r = ask(request.to_owned()).await;
        assert_eq!(r.status, status, "{request:?}");
        if request.contains("json") {
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["error"], "not_found");
        }
    }
    // Empty Host: allowed by RFC 9112 for targets without authority; the apex again.
    let r = ask(one("/healthz", "Host:\r\n")).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        origin.paths().len(),
        reached + 1,
        "none of these reached the origin"
    );
}

#[tokio::test]
async fn names_of_63_characters_work_and_longer_ones_are_refused_clearly() {
    let server = Server::start(config()).await;
    let origin = Recorder::start().await;
    let longest = format!("a{}z", "-0".repeat(30) + "b");
    assert_eq!(longest.len(), 63);
    let (_t, url) = tunnel(&server, origin.port(), Some(&longest)).await;
    assert_eq!(name_of(&url), longest);
    let r = get(&server, &longest, "/long").send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "seen 1");

    let too_long = "a".repeat(64);
    let r = get(&server, &too_long, "/")
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"], "bad_request");
    assert!(v["message"].as_str().unwrap().contains("63"), "{v}");
    assert_eq!(origin.paths(), ["/long"]);
}

#[tokio::test]
async fn paths_that_are_not_utf8_are_refused_raw_and_relayed_exactly_when_encoded() {
    let (server, origin, _t) = setup(config()).await;
    let mut raw = Raw::connect(server.addr).await;
    let mut request = b"GET /caf\xc3\xa9/\xff HTTP/1.1\r\n".to_vec();
    request.extend_from_slice(format!("Host: {}\r\n\r\n", host(&server, "edge")).as_bytes());
    raw.send(&request).await;
    if let Some(r) = raw.response().await {
        assert_eq!(r.status, 400);
    }
    assert!(raw.response().await.is_none(), "closed after the refusal");

    let mut raw = Raw::connect(server.addr).await;
    let target = "/%FF%FE/caf%C3%A9?q=%C0&r=%e9%ZZ";
    raw.send(
        head(
            &server,
            &format!("GET {target} HTTP/1.1"),
            "Connection: close\r\n",
        )
        .as_bytes(),
    )
    .await;
    assert_eq!(raw.response().await.unwrap().status, 200);
    assert_eq!(origin.paths(), [target], "byte-exact, case and all");
}

#[tokio::test]
async fn a_head_trickled_byte_by_byte_is_cut_off_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (server, origin, _t) = setup(Config {
        header_read_timeout: Duration::from_secs(1),
        ..config()
    })
    .await;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut rx, mut tx) = stream.into_split();
    // The server's answer (if any) and its close, read while the trickle goes on.
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ = rx.read_to_end(&mut answer).await;
        let _ = closed_tx.send(answer);
    });
    let start = head(&server, "GET /slow HTTP/1.1", "");
    // Never finishes the head: a header line that goes on forever.
    let endless = start[..start.len() - 2]
        .bytes()
        .chain(b"X-Pad: ".iter().copied())
        .chain(std::iter::repeat(b'a'));
    let mut cut_off = None;
    for (sent, byte) in endless.enumerate() {
        if let Ok(answer) = closed.try_recv() {
            cut_off = Some(answer);
            break;
        }
        if tx.write_all(&[byte]).await.is_err() {
            cut_off = Some((&mut closed).await.unwrap());
            break;
        }
        // 20 bytes a second, for up to a minute: a slow client that never stops, far below
        // the head size limit.
        assert!(sent < 20 * 60, "a trickling client was never cut off");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = String::from_utf8_lossy(&cut_off.unwrap()).into_owned();
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(origin.paths().is_empty());
}

#[tokio::test]
async fn a_kept_alive_connection_gets_a_full_header_timeout_after_each_answer() {
    let timeout = Duration::from_secs(1);
    let (server, origin, _t) = setup(Config {
        header_read_timeout: timeout,
        ..config()
    })
    .await;
    let mut raw = Raw::connect(server.addr).await;
    // Requests 0.7 s apart: together longer than the timeout, each well within it of the last
    // answer, so the connection serves them all.
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        let request = head(&server, &format!("GET /kept/{i} HTTP/1.1"), "");
        assert!(
            raw.send(request.as_bytes()).await,
            "closed before request {i}"
        );
        let answer = raw.response().await;
        assert_eq!(answer.map(|r| r.status), Some(200), "request {i}");
    }
    // Then idle: closed once a whole timeout has passed since the last answer, not before.
    let idle = std::time::Instant::now();
    assert!(raw.response().await.is_none());
    let waited = idle.elapsed();
    assert!(
        waited >= timeout.mul_f32(0.8),
        "closed after {waited:?} of idleness"
    );
    assert_eq!(origin.paths(), ["/kept/0", "/kept/1", "/kept/2"]);
}

#[tokio::test]
async fn a_stalled_body_is_abandoned_but_a_slow_one_is_not() {
    let (server, origin, _t) = setup(Config {
        body_idle_timeout: Duration::from_secs(2),
        ..config()
    })
    .await;
    // Slow but steady: 40 bytes, one every 100 ms, longer in all than the idle limit.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(
        head(
            &server,
            "POST /steady HTTP/1.1",
            "Content-Length: 40
",
        )
        .as_bytes(),
    )
    .await;
    for _ in 0..40 {
        assert!(raw.send(b"x").await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(raw.response().await.unwrap().text(), "seen 1");

    // Stalled: 10 of 100 bytes, then nothing, with the connection held open.
    let mut raw = Raw::connect(server.addr).await;
    raw.send(
        head(
            &server,
            "POST /stalled HTTP/1.1",
            "Content-Length: 100
Accept: application/json
",
        )
        .as_bytes(),
    )
    .await;
    raw.send(b"0123456789").await;
    let r = raw.response().await.unwrap();
    assert_eq!(r.status, 408);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["message"].as_str().unwrap().contains("stalled"), "{v}");
    assert!(raw.response().await.is_none(), "the connection is closed");
    // The origin saw the request start, and its body cut off rather than completed.
    let seen = origin.wait_for(2).await;
    assert_eq!(seen[1].uri, "/stalled");
    assert_eq!(seen[1].body, None);
}

/// A request as [`Recorder`] received it.
#[derive(Debug, Clone)]
struct Seen {
    /// The request-target as the origin parsed it, byte for byte.
    uri: String,
    headers: http::HeaderMap,
    /// The whole body, or `None` when it ended in an error (cut off).
    body: Option<Bytes>,
}

/// An origin that records every request it receives (once its body ended) and answers
/// `200 seen N`: for tests that must know exactly which requests reached the origin.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<Seen>>>,
    /// Fires after each recorded request.
    recorded: Arc<Notify>,
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::new(Notify::new());
        let (log, note) = (seen.clone(), recorded.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (log, note) = (log.clone(), note.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (log, note) = (log.clone(), note.clone());
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body.collect().await.ok().map(|b| b.to_bytes());
                            let n = {
                                let mut log = log.lock().unwrap();
                                log.push(Seen {
                                    uri: parts.uri.to_string(),
                                    headers: parts.headers,
                                    body,
                                });
                                log.len()
                            };
                            note.notify_waiters();
                            Ok::<_, Infallible>(Response::new(full(format!("seen {n}"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Recorder {
            addr,
            seen,
            recorded,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Paths of every request received so far, in order.
    fn paths(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.uri).collect()
    }

    /// Waits until `n` requests were recorded.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        loop {
            let note = self.recorded.notified();
            tokio::pin!(note);
            note.as_mut().enable();
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            note.await;
        }
    }
}

/// A response read off a [`Raw`] connection.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A visitor speaking HTTP/1.1 by hand over TCP, for requests a real client would refuse to
/// send. Reads give up (panic) after 30 s: a guard against hanging, never a wait for readiness.
struct Raw {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

const RAW_GUARD: Duration = Duration::from_secs(30);

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    /// Writes `bytes`; false if the server already closed.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.is_ok()
    }

    /// Reads more; false at end of stream (or reset).
    async fn fill(&mut self) -> bool {
        use tokio::io::AsyncReadExt;
        let mut chunk = [0u8; 16 * 1024];
        let read = tokio::time::timeout(RAW_GUARD, self.stream.read(&mut chunk))
            .await
            .expect("the server neither answered nor closed the connection");
        match read {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// The next response, or `None` if the connection closed first.
    async fn response(&mut self) -> Option<RawResponse> {
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            if !self.fill().await {
                assert!(self.buf.is_empty(), "truncated response: {:?}", self.text());
                return None;
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let mut r = RawResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if let Some(len) = r.header("content-length") {
            let len: usize = len.parse().unwrap();
            while self.buf.len() < len {
                assert!(self.fill().await, "truncated body");
            }
            r.body = self.buf.drain(..len).collect();
        } else if r
            .header("transfer-encoding")
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
        {
            loop {
                let line_end = loop {
                    if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    assert!(self.fill().await, "truncated chunk");
                };
                let size = std::str::from_utf8(&self.buf[..line_end]).unwrap();
                let size =
                    usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
                while self.buf.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "truncated chunk");
                }
                r.body
                    .extend_from_slice(&self.buf[line_end + 2..line_end + 2 + size]);
                self.buf.drain(..line_end + 2 + size + 2);
                if size == 0 {
                    break;
                }
            }
        } else if !(r.status == 204 || r.status == 304 || (100..200).contains(&r.status)) {
            // Delimited by the end of the connection.
            while self.fill().await {}
            r.body = std::mem::take(&mut self.buf);
        }
        Some(r)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf).into_owned()
    }
}
