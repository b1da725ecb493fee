//! Shared helpers for tests: the embedded server on an ephemeral port, a counting origin and a
//! tiny HTTP client that sets `Host` so `NAME.localhost` needs no resolver.

use std::{
    convert::Infallible,
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::embedded::EmbeddedServer;

/// The embedded server on 127.0.0.1:0.
pub struct TestServer {
    pub port: u16,
    pub url: String,
    _server: EmbeddedServer,
}

impl TestServer {
    pub async fn start() -> Self {
        let server = EmbeddedServer::start(0).await.expect("embedded server");
        Self {
            port: server.addr.port(),
            url: server.url.clone(),
            _server: server,
        }
    }
}

/// A local service answering `origin saw PATH` and counting requests.
pub struct Origin {
    pub port: u16,
    hits: Arc<AtomicUsize>,
}

impl Origin {
    pub async fn start() -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let counter = counter.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let path = req
                            .uri()
                            .path_and_query()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default();
                        async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                                "origin saw {path}"
                            )))))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { port, hits }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// GET `path` from 127.0.0.1:`port` with `Host: host`; returns status and body text.
pub async fn get(port: u16, host: &str, path: &str) -> (u16, String) {
    get_with(port, host, path, &[]).await
}

/// [`get`] with extra request headers.
pub async fn get_with(
    port: u16,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
