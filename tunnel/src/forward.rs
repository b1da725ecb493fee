//! The client's side of a stream: serve the HTTP/1.1 request that arrives on it by forwarding it
//! to the local service, record the exchange, and splice upgraded connections.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    http_util::{self, boxed, error_page, is_upgrade, strip_hop_by_hop, Body, BoxError, PageKind},
    traffic::{header_pairs, now_ms, CapturedBody, Exchange, Pending, Recorded, Side, Traffic},
};

/// Where requests go on the developer's machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalTarget {
    /// Host name or address (`localhost` by default).
    pub host: String,
    /// Port of the local service.
    pub port: u16,
    /// Keep the public `Host` header instead of rewriting it to `host:port`.
    pub keep_host: bool,
}

impl LocalTarget {
    /// `host:port`, bracketing IPv6 addresses.
    pub fn authority(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why a captured exchange cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The exchange is no longer in the ring.
    #[error("exchange {0} is no longer in the recent traffic")]
    NotFound(u64),
    /// Only part of the request body was captured.
    #[error(
        "the request body ({0} bytes) was larger than the capture limit, so it cannot be replayed"
    )]
    BodyTruncated(u64),
    /// The capture is not a valid request (it came from the internet).
    #[error("the captured request is not valid: {0}")]
    Invalid(String),
    /// WebSocket and other upgrades are live connections, not requests.
    #[error("upgraded connections cannot be replayed")]
    Upgrade,
}

/// Forwards requests to the local service and records them.
pub struct Forwarder {
    target: LocalTarget,
    authority: String,
    host_header: HeaderValue,
    client: Client<HttpConnector, Body>,
    traffic: Traffic,
}

impl Forwarder {
    /// A forwarder to `target` that records into `traffic`.
    pub fn new(target: LocalTarget, traffic: Traffic) -> Arc<Self> {
        let authority = target.authority();
        let host_header = HeaderValue::from_str(&authority)
            .unwrap_or_else(|_| HeaderValue::from_static("localhost"));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(64)
            .build(connector);
        Arc::new(Self {
            target,
            authority,
            host_header,
            client,
            traffic,
        })
    }

    /// The recorded traffic.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Serves HTTP/1.1 on one tunnel stream until the server closes it.
    pub async fn serve<S>(self: Arc<Self>, io: S) -> Result<(), hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| self.clone().handle(req));
        hyper::server::conn::http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(io), service)
            .with_upgrades()
            .await
    }

    async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let on_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let remote = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .map(|v| v.trim().to_owned());
        let req = req.map(boxed);
        let (_, resp) = self.forward(req, remote, on_upgrade).await;
        Ok(resp)
    }

    /// Sends `req` to the local service; returns the exchange id and the response to give back.
    async fn forward(
        &self,
        req: Request<Body>,
        remote: Option<String>,
        on_upgrade: Option<hyper::upgrade::OnUpgrade>,
    ) -> (u64, Response<Body>) {
        let (mut parts, body) = req.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_owned();
        strip_hop_by_hop(&mut parts.headers);
        if !self.target.keep_host {
            parts.headers.insert(header::HOST, self.host_header.clone());
        }
        let upgrade = on_upgrade.is_some() && is_upgrade(&parts.headers);
        let id = self.traffic.next_id();
        let pending = Pending::new(
            self.traffic.clone(),
            Exchange {
                id,
                started_ms: now_ms(),
                method: parts.method.to_string(),
                path: path.clone(),
                status: None,
                duration_ms: 0,
                remote_addr: remote,
                upgraded: false,
                request_headers: header_pairs(&parts.headers),
                response_headers: Vec::new(),
                request_body: CapturedBody::default(),
                response_body: CapturedBody::default(),
                error: None,
            },
        );
        let body = Recorded::new(body, pending.clone(), Side::Request).boxed();

        let result = if upgrade {
            parts.uri = Uri::try_from(path.as_str()).unwrap_or_else(|_| Uri::from_static("/"));
            self.send_upgrade(Request::from_parts(parts, body)).await
        } else {
            match Uri::try_from(format!("http://{}{}", self.authority, path)) {
                Ok(uri) => {
                    parts.uri = uri;
                    self.client
                        .request(Request::from_parts(parts, body))
                        .await
                        .map_err(|e| {
                            // The legacy client's Display is terse; its source says what happened.
                            let cause = std::error::Error::source(&e).map(|s| s.to_string());
                            BoxError::from(cause.unwrap_or_else(|| e.to_string()))
                        })
                }
                Err(e) => Err(e.into()),
            }
        };

        let mut resp = match result {
            Ok(resp) => resp,
            Err(e) => {
                let message = format!(
                    "The tunnel is online, but ggrok could not reach the local service at {} ({e}). \
                     Is it running?",
                    self.authority
                );
                pending.update(|x| {
                    x.status = Some(502);
                    x.error = Some(message.clone());
                });
                pending.finish();
                return (
                    id,
                    error_page(
                        StatusCode::BAD_GATEWAY,
                        PageKind::LocalUnreachable,
                        &message,
                        false,
                    ),
                );
            }
        };

        pending.update(|x| {
            x.status = Some(resp.status().as_u16());
            x.response_headers = header_pairs(resp.headers());
        });
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(visitor) = on_upgrade {
                let local = hyper::upgrade::on(&mut resp);
                tokio::spawn(http_util::splice_upgrades(visitor, local));
                pending.update(|x| x.upgraded = true);
            }
            pending.finish();
            let (parts, _) = resp.into_parts();
            return (id, Response::from_parts(parts, http_util::empty()));
        }
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.version = http::Version::default();
        let body = Recorded::new(boxed(body), pending, Side::Response).boxed();
        (id, Response::from_parts(parts, body))
    }

    /// Upgrades need a connection of their own that can be taken over after `101`.
    async fn send_upgrade(&self, req: Request<Body>) -> Result<Response<Incoming>, BoxError> {
        let stream =
            tokio::net::TcpStream::connect((self.target.host.as_str(), self.target.port)).await?;
        stream.set_nodelay(true)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(%e, "local upgrade connection ended");
            }
        });
        Ok(sender.send_request(req).await?)
    }

    /// Sends a captured request to the local service again and records it as a new exchange.
    pub async fn replay(&self, id: u64) -> Result<Arc<Exchange>, ReplayError> {
        let original = self.traffic.get(id).ok_or(ReplayError::NotFound(id))?;
        if original.upgraded {
            return Err(ReplayError::Upgrade);
        }
        if original.request_body.truncated {
            return Err(ReplayError::BodyTruncated(original.request_body.size));
        }
        let method = Method::from_bytes(original.method.as_bytes())
            .map_err(|e| ReplayError::Invalid(e.to_string()))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(original.path.as_str());
        for (k, v) in &original.request_headers {
            // Framing is recomputed for the captured body.
            if k.eq_ignore_ascii_case("content-length")
                || k.eq_ignore_ascii_case("transfer-encoding")
            {
                continue;
            }
            builder = builder.header(k.as_str(), v.as_str());
        }
        let body = http_util::full(Bytes::clone(&original.request_body.data));
        let req = builder
            .body(body)
            .map_err(|e| ReplayError::Invalid(e.to_string()))?;
        let (new_id, resp) = self.forward(req, Some("replay".to_owned()), None).await;
        // Reading the body to its end publishes the exchange.
        let _ = resp.into_body().collect().await;
        self.traffic
            .get(new_id)
            .ok_or(ReplayError::NotFound(new_id))
    }
}
