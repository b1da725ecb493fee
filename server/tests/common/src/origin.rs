//! The local service tests expose: a real HTTP/1.1 origin on 127.0.0.1 whose paths each
//! behave one way (echo, slow, streamed, upgrade, gated...).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use ggrok_tunnel::http_util::{boxed, empty, full, Body};
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::{net::TcpListener, sync::Notify};
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::bodies::pattern_body;

/// What the origin saw and controls tests can pull.
#[derive(Default)]
pub struct OriginState {
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// `/gate` and `/hang` wait for this.
    pub gate: Notify,
    /// Wakes `/barrier` waiters.
    pub barrier: Notify,
    /// Fired when a request reaches `/hang` or `/upload-stream` receives its first chunk.
    pub reached: Notify,
}

/// A running origin.
pub struct Origin {
    pub addr: SocketAddr,
    pub state: Arc<OriginState>,
}

/// Deterministic pattern bytes.
pub fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| ((offset + i) * 7 % 251) as u8)
        .collect()
}

pub fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

impl Origin {
    /// Starts an origin on a free port.
    pub async fn start() -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(OriginState::default());
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(origin(st, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Origin { addr, state }
    }

    /// Its port, for `ggrok http PORT`.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

fn resp(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .body(full(body.into()))
        .unwrap()
}

async fn origin(st: Arc<OriginState>, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    match path.as_str() {
        // Echo: body back, request facts in headers.
        "/echo" => {
            let mut b = Response::builder()
                .header("x-echo-method", req.method().as_str())
                .header("x-echo-uri", req.uri().to_string());
            for name in [
                "host",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-multi",
                "authorization",
            ] {
                let values: Vec<_> = req
                    .headers()
                    .get_all(name)
                    .iter()
                    .map(|v| v.to_str().unwrap().to_owned())
                    .collect();
                b = b.header(format!("x-echo-{name}"), values.join("|"));
            }
            let body = req.into_body().collect().await.unwrap().to_bytes();
            b.body(full(body)).unwrap()
        }
        "/status" => {
            let code: u16 = query.parse().unwrap();
            let mut b = Response::builder().status(code);
            if code == 302 {
                b = b.header(header::LOCATION, "/elsewhere");
            }
            b.body(empty()).unwrap()
        }
        "/cookies" => Response::builder()
            .header(header::SET_COOKIE, "a=1; Path=/")
            .header(header::SET_COOKIE, "b=2; HttpOnly")
            .header(header::SET_COOKIE, "c=3")
            // A tenant tossing a cookie at every tunnel, and one for its own host only.
            .header(header::SET_COOKIE, "toss=1; Domain=.localhost; Path=/")
            .header(header::SET_COOKIE, "own=1; Domain=hdr.localhost")
            .header("x-multi", "one")
            .header("x-multi", "two")
            .body(empty())
            .unwrap(),
        "/gzip" => Response::builder()
            .header(header::CONTENT_ENCODING, "gzip")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(full(gzip_bytes()))
            .unwrap(),
        "/slow" => {
            let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            st.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(500)).await;
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
            resp(200, "slow")
        }
        // Answers only once `n` requests are waiting here at the same time (or fails after 30 s):
        // proof that the tunnel carries them concurrently, independent of machine speed.
        "/barrier" => {
            let n: usize = query.parse().unwrap();
            let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            st.max_in_flight.fetch_max(now, Ordering::SeqCst);
            if now >= n {
                st.barrier.notify_waiters();
            }
            let waited = tokio::time::timeout(Duration::from_secs(30), async {
                while st.max_in_flight.load(Ordering::SeqCst) < n {
                    let notified = st.barrier.notified();
                    if st.max_in_flight.load(Ordering::SeqCst) >= n {
                        break;
                    }
                    notified.await;
                }
            })
            .await;
            st.in_flight.fetch_sub(1, Ordering::SeqCst);
            match waited {
                Ok(()) => resp(200, "together"),
                Err(_) => resp(500, "barrier timed out"),
            }
        }
        "/hang" => {
            st.reached.notify_one();
            st.gate.notified().await;
            resp(200, "released")
        }
        // First chunk now, the rest only when the test opens the gate.
        "/gate" => {
            let st2 = st.clone();
            let stream = futures_util::stream::unfold(0, move |i| {
                let st = st2.clone();
                async move {
                    match i {
                        0 => Some((
                            Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"first\n"))),
                            1,
                        )),
                        1 => {
                            st.gate.notified().await;
                            Some((Ok(Frame::data(Bytes::from_static(b"rest\n"))), 2))
                        }
                        _ => None,
                    }
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/plain")
                .body(boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/sse" => {
            let st2 = st.clone();
            let stream = futures_util::stream::unfold(0, move |i| {
                let st = st2.clone();
                async move {
                    if i == 3 {
                        return None;
                    }
                    if i > 0 {
                        st.gate.notified().await;
                    }
                    let ev = format!("id: {i}\ndata: event {i}\n\n");
                    Some((Ok::<_, Infallible>(Frame::data(Bytes::from(ev))), i + 1))
                }
            });
            Response::builder()
                .header(header::CONTENT_TYPE, "text/event-stream")
                .header(header::CACHE_CONTROL, "no-cache")
                .body(boxed(StreamBody::new(stream)))
                .unwrap()
        }
        "/bytes" => {
            let n: u64 = query.parse().unwrap();
            Response::builder()
                .header(header::CONTENT_LENGTH, n)
                .header(header::CONTENT_TYPE, "application/octet-stream")
                .body(pattern_body(n))
                .unwrap()
        }
        // Hashes the upload as it streams; signals on the first chunk.
        "/upload" => {
            let mut body = req.into_body();
            let mut hasher = Sha256::new();
            let mut n = 0u64;
            let mut first = true;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    if first && !data.is_empty() {
                        st.reached.notify_one();
                        first = false;
                    }
                    n += data.len() as u64;
                    hasher.update(&data);
                }
            }
            resp(200, format!("{n} {:x}", hasher.finalize()))
        }
        "/ws" => {
            let key = req
                .headers()
                .get(header::SEC_WEBSOCKET_KEY)
                .unwrap()
                .clone();
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let upgraded = on_upgrade.await.unwrap();
                let cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
                    .max_message_size(Some(64 << 20))
                    .max_frame_size(Some(64 << 20));
                let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(cfg),
                )
                .await;
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
            Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header(header::CONNECTION, "upgrade")
                .header(header::UPGRADE, "websocket")
                .header(
                    header::SEC_WEBSOCKET_ACCEPT,
                    tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
                )
                .body(empty())
                .unwrap()
        }
        _ => resp(404, "origin: no such path"),
    }
}

/// A gzip member holding "hello gzip\n" (mtime 0).
pub fn gzip_bytes() -> Vec<u8> {
    vec![
        0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xff, 0xcb, 0x48, 0xcd, 0xc9, 0xc9,
        0x57, 0x48, 0xaf, 0xca, 0x2c, 0xe0, 0x02, 0x00, 0x39, 0x7c, 0x63, 0x56, 0x0b, 0x00, 0x00,
        0x00,
    ]
}

/// A raw TCP local service on 127.0.0.1 that echoes each connection until EOF, then closes its
/// side; returns its port.
pub async fn tcp_echo() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
    port
}
