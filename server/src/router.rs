//! Where a request goes: its host is parsed and classified (the apex, a tunnel, or foreign),
//! the request checked (one valid host, chunked-only transfer coding, the head under
//! [`MAX_HEAD`]: the 431 is decided here), then dispatched to [`connect`], [`proxy`] or
//! [`pages`].
//!
//! [`Router`] is a `hyper` [`Service`] over any body, so routing and pages are tested by
//! calling it, without a socket (axum's `app().oneshot(...)` pattern).

use std::{convert::Infallible, future::Future, net::IpAddr, pin::Pin, sync::Arc};

use bytes::Bytes;
use ggrok_tunnel::{
    http_util::{error_page, wants_json, Body, BoxError},
    protocol::{self, PageKind, CONNECT_PATH, HEALTH_PATH, METRICS_PATH, PEER_PATH},
};
use http::{header, Request, Response, StatusCode};
use hyper::service::Service;

use crate::{
    cluster::{hop, node::Place},
    connect, pages, proxy,
    state::Shared,
    visitor::Visitor,
};

/// Largest request head a visitor may send: hyper's read buffer stops a longer one (431 from
/// hyper), and [`Router`] refuses a head that fits the buffer but not this limit (431 here).
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// The requests of one connection: every request it carries is routed for its `visitor`.
#[derive(Clone)]
pub(crate) struct Router {
    shared: Arc<Shared>,
    visitor: Visitor,
    /// Requests another node of the cluster sent here (see `cluster::hop`): for tunnels only,
    /// never sent on again, their visitor as that node saw it.
    hopped: bool,
}

impl Router {
    /// The router of a connection from `visitor`.
    pub(crate) fn new(shared: Arc<Shared>, visitor: Visitor) -> Self {
        Self {
            shared,
            visitor,
            hopped: false,
        }
    }

    /// The router of a hop from another node, for `visitor`.
    pub(crate) fn hopped(shared: Arc<Shared>, visitor: Visitor) -> Self {
        Self {
            shared,
            visitor,
            hopped: true,
        }
    }

    /// Answers `req`. The connection's service calls this directly, so that serving a request
    /// costs no boxed future; [`Service::call`] wraps it for everyone else.
    pub(crate) async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<BoxError>,
    {
        let shared = &self.shared;
        let json = wants_json(req.headers());
        let host = match checked_host(&req) {
            Ok(host) => host,
            Err(refused) => return refused.page(shared, json),
        };
        let visitor = match self.hopped {
            // The node it came through already decided who the visitor is.
            true => self.visitor.clone(),
            false => self
                .visitor
                .clone()
                .through(&shared.config.trusted_proxies, req.headers()),
        };
        match classify(&host, &shared.config.domain) {
            Destination::Tunnel(name) => {
                if let Err(e) = protocol::validate_name(name) {
                    // No client can hold such a name, and no DNS name has such a label.
                    let message = format!("{name:?} cannot be a tunnel name: {e}.");
                    let status = StatusCode::BAD_REQUEST;
                    return pages::error(shared, status, PageKind::BadRequest, &message, json);
                }
                if let (Some(node), false) = (&shared.config.cluster, self.hopped) {
                    let place = match node.place(name) {
                        // Perhaps claimed through another node a moment ago: see `lookup`.
                        Place::Nowhere if !shared.registry.knows(name) => {
                            Box::pin(node.look_up(name, &shared.metrics)).await
                        }
                        place => place,
                    };
                    if let Place::Node { id, advertise } = place {
                        let to = (id.as_str(), advertise.as_str());
                        // Boxed: inline, the hop's state would size every request's future.
                        return Box::pin(hop::forward(shared, node, &visitor, to, name, req, json))
                            .await;
                    }
                }
                proxy::forward(shared, visitor, name, req, json).await
            }
            Destination::Apex if self.hopped => error_page(
                StatusCode::NOT_FOUND,
                PageKind::NotFound,
                "Only tunnels are served through another node.",
                json,
            ),
            Destination::Apex => match req.uri().path() {
                CONNECT_PATH => Box::pin(connect::accept(shared, visitor, req)).await,
                PEER_PATH if shared.config.cluster.is_some() => hop::accept(shared, &visitor, req),
                HEALTH_PATH => pages::health(shared),
                METRICS_PATH => pages::metrics(shared, &req),
                "/" => pages::landing(shared),
                _ => error_page(
                    StatusCode::NOT_FOUND,
                    PageKind::NotFound,
                    "This ggrok server has no such page.",
                    json,
                ),
            },
            Destination::Foreign => {
                let domain = &shared.config.domain;
                let message = format!("This server only serves tunnels at *.{domain}.");
                let status = StatusCode::NOT_FOUND;
                pages::error(shared, status, PageKind::TunnelNotFound, &message, json)
            }
        }
    }
}

impl<B> Service<Request<B>> for Router
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<B>) -> Self::Future {
        let router = self.clone();
        Box::pin(async move { Ok(router.handle(req).await) })
    }
}

/// Why a request is refused before it is routed.
#[derive(Debug, PartialEq, Eq)]
enum Unroutable {
    /// No usable host; [`request_host`] says why.
    Host(&'static str),
    /// A transfer coding other than plain `chunked`.
    TransferCoding,
    /// A method longer than a head frame carries (255 bytes).
    MethodTooLong,
    /// A head over [`MAX_HEAD`].
    HeadTooLarge,
}

impl Unroutable {
    /// The page that refuses the request: 400 or 501 closing the connection (a body ggrok will
    /// not read may follow), or 431.
    fn page(self, shared: &Shared, json: bool) -> Response<Body> {
        match self {
            Self::Host(message) => {
                pages::refuse_and_close(shared, StatusCode::BAD_REQUEST, message, json)
            }
            Self::TransferCoding => {
                let message = "Only the chunked transfer coding is supported.";
                pages::refuse_and_close(shared, StatusCode::NOT_IMPLEMENTED, message, json)
            }
            Self::MethodTooLong => {
                let message = "Methods longer than 255 bytes are not supported.";
                pages::refuse_and_close(shared, StatusCode::NOT_IMPLEMENTED, message, json)
            }
            Self::HeadTooLarge => {
                let message = format!("Request headers over {} KiB are refused.", MAX_HEAD / 1024);
                let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
                pages::error(shared, status, PageKind::BadRequest, &message, json)
            }
        }
    }
}

/// The host `req` is for, once the request is found fit to route.
fn checked_host<B>(req: &Request<B>) -> Result<String, Unroutable> {
    let host = request_host(req).map_err(Unroutable::Host)?;
    if unsupported_transfer_coding(req.headers()) {
        return Err(Unroutable::TransferCoding);
    }
    if req.method().as_str().len() > u8::MAX as usize {
        return Err(Unroutable::MethodTooLong);
    }
    if head_len(req) > MAX_HEAD {
        return Err(Unroutable::HeadTooLarge);
    }
    Ok(host)
}

/// The size of `req`'s head as [`MAX_HEAD`] counts it: hyper's read buffer bounds memory, not
/// the head, so the documented limit is enforced on the parsed parts.
pub(crate) fn head_len<B>(req: &Request<B>) -> usize {
    let headers: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    let uri = req.uri();
    // The target's length as sent (`Uri`'s `Display`), without formatting it.
    let target = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len());
    headers + target
}

/// Whether `name` is served here: the apex, or a tunnel online now. ACME asks before it orders
/// a certificate for a name a TLS client asked for.
pub(crate) fn is_served(shared: &Shared, name: &str) -> bool {
    let domain = &shared.config.domain;
    name == domain
        || matches!(classify(name, domain), Destination::Tunnel(sub) if shared.registry.endpoint(sub).is_some())
}

/// The shard whose session serves `host`, if a tunnel online now holds it, or in a cluster the
/// shard whose session to the node that holds it carries its hops (see [`crate::shard`]).
pub(crate) fn shard_of(shared: &Shared, host: &str) -> Option<usize> {
    let Destination::Tunnel(name) = classify(host, &shared.config.domain) else {
        return None;
    };
    if let Some(endpoint) = shared.registry.endpoint(name) {
        return endpoint.shard;
    }
    let node = shared.config.cluster.as_ref()?;
    match node.place(name) {
        Place::Node { id, .. } => node.peers.shard(&id),
        _ => None,
    }
}

/// Where a request goes, decided by its Host.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Destination<'a> {
    /// The server itself: the apex domain, an IP address, or no host at all.
    Apex,
    /// The tunnel of this name (one label under the domain; not yet checked to be valid).
    Tunnel(&'a str),
    /// Anything else: another domain, or more than one label under ours.
    Foreign,
}

/// Where a request for `host` (as [`request_host`] gives it) goes on a server for `domain`.
pub(crate) fn classify<'a>(host: &'a str, domain: &str) -> Destination<'a> {
    // Only hex digits, dots and colons can make an IP literal: names skip the parse.
    let ip_shaped = || {
        host.bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':')
    };
    if host.is_empty() || host == domain || (ip_shaped() && host.parse::<IpAddr>().is_ok()) {
        return Destination::Apex;
    }
    match host.strip_suffix(domain).and_then(|p| p.strip_suffix('.')) {
        Some(name) if !name.is_empty() && !name.contains('.') => Destination::Tunnel(name),
        _ => Destination::Foreign,
    }
}

/// The request's host, lowercased, without port, brackets or a trailing dot; or why there is
/// no usable one. The request-target's authority (absolute form, HTTP/2 `:authority`) wins over
/// `Host`, as RFC 9112 §3.2.2 says, so a proxy in front that follows the RFC routes the same way.
pub(crate) fn request_host<B>(req: &Request<B>) -> Result<String, &'static str> {
    let authority = match req.uri().authority() {
        Some(a) => a.clone(),
        None => {
            let mut hosts = req.headers().get_all(header::HOST).iter();
            let (first, second) = (hosts.next(), hosts.next());
            let value = match (first, second) {
                (_, Some(_)) => return Err("A request may carry only one Host header."),
                (Some(v), None) => v,
                // HTTP/1.0 predates Host: such a request is for the server itself.
                (None, None) if req.version() <= http::Version::HTTP_10 => return Ok(String::new()),
                (None, None) if req.version() == http::Version::HTTP_11 => {
                    return Err("HTTP/1.1 requests need a Host header.")
                }
                (None, None) => return Ok(String::new()),
            };
            let value = value.to_str().map_err(|_| {
                "The Host header must be ASCII: write international names in their xn-- form."
            })?;
            if value.is_empty() {
                // Allowed when the target has no authority: the server's own endpoints.
                return Ok(String::new());
            }
            value
                .parse::<http::uri::Authority>()
                .map_err(|_| "The Host header is not a valid host[:port].")?
        }
    };
    if authority.as_str().contains('@') {
        return Err("A host may not carry user information (user@host).");
    }
    // The port plays no part in routing, but a malformed one makes the whole host doubtful.
    let host = authority.host();
    let port = &authority.as_str()[host.len()..];
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err("The Host header is not a valid host[:port].");
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    // One trailing dot is a fully qualified name; more is no name at all.
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.ends_with('.') {
        return Err("The Host header is not a valid host[:port].");
    }
    Ok(host.to_ascii_lowercase())
}

/// Transfer codings other than plain `chunked` (hyper accepts `gzip, chunked`): relaying them
/// would drop the coding the sender applied, so they are refused instead (RFC 9112 §6.1: 501).
fn unsupported_transfer_coding(h: &http::HeaderMap) -> bool {
    h.get_all(header::TRANSFER_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;
    use http_body_util::{BodyExt, Full};

    use super::*;
    use crate::config::{hash_token, Config};

    /// The router of a connection from 127.0.0.1 to a server for `localhost`.
    fn router(config: Config) -> (Router, Arc<Shared>) {
        let shared = Arc::new(Shared::new(config));
        let visitor = Visitor::direct("127.0.0.1:40000".parse().unwrap(), false);
        (Router::new(shared.clone(), visitor), shared)
    }

    /// Sends `req` through `router` as a connection would, without one.
    async fn oneshot(
        router: &Router,
        req: Request<Full<Bytes>>,
    ) -> (StatusCode, HeaderMap, String) {
        let resp = router.call(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    fn get(host: &str, path: &str) -> http::request::Builder {
        Request::get(path).header(header::HOST, host)
    }

    fn empty() -> Full<Bytes> {
        Full::new(Bytes::new())
    }

    fn code(h: &HeaderMap) -> &str {
        h.get(protocol::HEADER_ERROR).unwrap().to_str().unwrap()
    }

    #[tokio::test]
    async fn apex_serves_the_servers_own_pages() {
        let (r, _) = router(Config::new("localhost"));
        let (status, _, body) =
            oneshot(&r, get("localhost:8080", "/").body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("NAME.localhost"), "{body}");
        let health = get("127.0.0.1", HEALTH_PATH).body(empty()).unwrap();
        assert_eq!(oneshot(&r, health).await.2, "ok\n");
        let (status, h, _) = oneshot(&r, get("localhost", "/nope").body(empty()).unwrap()).await;
        assert_eq!((status, code(&h)), (StatusCode::NOT_FOUND, "not_found"));
        // The cluster's endpoint is no page of a server on its own.
        let peer = get("localhost", PEER_PATH).body(empty()).unwrap();
        let (status, h, _) = oneshot(&r, peer).await;
        assert_eq!((status, code(&h)), (StatusCode::NOT_FOUND, "not_found"));
    }

    #[tokio::test]
    async fn metrics_need_their_token() {
        let (r, _) = router(Config::new("localhost"));
        let req = || get("localhost", METRICS_PATH);
        let (status, _, _) = oneshot(&r, req().body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "disabled");
        let (r, _) = router(Config {
            metrics_token: Some(hash_token("m-token")),
            ..Config::new("localhost")
        });
        let (status, _, _) = oneshot(&r, req().body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let with = req().header(header::AUTHORIZATION, "Bearer m-token");
        let (status, _, body) = oneshot(&r, with.body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.contains("ggrok_tunnels_online"), "{body}");
    }

    #[tokio::test]
    async fn tunnel_hosts_are_checked_and_counted() {
        let (r, shared) = router(Config::new("localhost"));
        let json = |host: &str| {
            get(host, "/x")
                .header(header::ACCEPT, "application/json")
                .body(empty())
                .unwrap()
        };
        let (status, h, body) = oneshot(&r, json("app.localhost")).await;
        assert_eq!(
            (status, code(&h)),
            (StatusCode::NOT_FOUND, "tunnel_not_found")
        );
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(page["error"], "tunnel_not_found");
        assert!(page["message"].as_str().unwrap().contains("app.localhost"));
        let (status, h, _) = oneshot(&r, json("-app.localhost")).await;
        assert_eq!((status, code(&h)), (StatusCode::BAD_REQUEST, "bad_request"));
        let (status, h, _) = oneshot(&r, json("evil.example")).await;
        assert_eq!(
            (status, code(&h)),
            (StatusCode::NOT_FOUND, "tunnel_not_found")
        );
        let metrics = shared.metrics.encode(0);
        assert!(
            metrics.contains(r#"ggrok_errors_total{kind="tunnel_not_found"} 2"#),
            "{metrics}"
        );
    }

    #[tokio::test]
    async fn unroutable_requests_are_refused_and_close_the_connection() {
        let (r, _) = router(Config::new("localhost"));
        let two_hosts = get("a.localhost", "/")
            .header(header::HOST, "b.localhost")
            .body(empty())
            .unwrap();
        let gzip = get("app.localhost", "/")
            .header(header::TRANSFER_ENCODING, "gzip, chunked")
            .body(empty())
            .unwrap();
        // The head frame carries a method of at most 255 bytes.
        let long = Request::builder()
            .method(http::Method::from_bytes("M".repeat(256).as_bytes()).unwrap())
            .uri("/")
            .header(header::HOST, "app.localhost")
            .body(empty())
            .unwrap();
        for (req, want) in [
            (two_hosts, StatusCode::BAD_REQUEST),
            (gzip, StatusCode::NOT_IMPLEMENTED),
            (long, StatusCode::NOT_IMPLEMENTED),
        ] {
            let (status, h, _) = oneshot(&r, req).await;
            assert_eq!(status, want);
            assert_eq!(h[header::CONNECTION], "close");
        }
    }

    #[tokio::test]
    async fn a_head_over_the_limit_gets_431() {
        let (r, _) = router(Config::new("localhost"));
        let under = get("app.localhost", "/").header("x-big", "a".repeat(MAX_HEAD / 2));
        let (status, _, _) = oneshot(&r, under.body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "routed");
        let over = get("app.localhost", "/")
            .header("x-big", "a".repeat(MAX_HEAD / 2))
            .header("x-more", "b".repeat(MAX_HEAD / 2));
        let (status, h, body) = oneshot(&r, over.body(empty()).unwrap()).await;
        assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        assert_eq!(code(&h), "bad_request");
        assert!(body.contains("64 KiB"), "{body}");
    }

    #[tokio::test]
    async fn connect_without_a_websocket_is_refused_in_json() {
        let (r, _) = router(Config::new("localhost"));
        let req = get("localhost", CONNECT_PATH).body(empty()).unwrap();
        let (status, _, body) = oneshot(&r, req).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let refusal: protocol::Refusal = serde_json::from_str(&body).unwrap();
        assert_eq!(refusal.error, protocol::RefusalKind::BadRequest);
    }

    #[test]
    fn hosts_route_by_subdomain() {
        assert_eq!(
            classify("app.localhost", "localhost"),
            Destination::Tunnel("app")
        );
        assert_eq!(classify("localhost", "localhost"), Destination::Apex);
        assert_eq!(classify("127.0.0.1", "localhost"), Destination::Apex);
        assert_eq!(classify("::1", "localhost"), Destination::Apex);
        assert_eq!(classify("fe80::a:1", "localhost"), Destination::Apex);
        assert_eq!(classify("beef.dead", "dead"), Destination::Tunnel("beef"));
        assert_eq!(classify("a.b.localhost", "localhost"), Destination::Foreign);
        assert_eq!(classify("evil.com", "localhost"), Destination::Foreign);
        assert_eq!(classify("xlocalhost", "localhost"), Destination::Foreign);
        assert_eq!(classify(".localhost", "localhost"), Destination::Foreign);
    }

    #[test]
    fn host_header_parsing() {
        let req = |h: &str| Request::builder().header(header::HOST, h).body(()).unwrap();
        let host = |h: &str| request_host(&req(h));
        assert_eq!(host("App.Example.com:8080").unwrap(), "app.example.com");
        assert_eq!(host("[::1]:80").unwrap(), "::1");
        assert_eq!(host("example.com.").unwrap(), "example.com");
        assert_eq!(host("").unwrap(), "");
        for bad in [
            "a@b.example.com",
            "example.com:",
            "example.com:http",
            "example.com:99999",
            "example.com:+80",
            "exa mple.com",
            "example.com/x",
            "example.com..",
        ] {
            assert!(host(bad).is_err(), "{bad}");
        }
        let two = Request::builder()
            .header(header::HOST, "a.example.com")
            .header(header::HOST, "b.example.com")
            .body(())
            .unwrap();
        assert!(request_host(&two).is_err());
        let none = Request::builder().body(()).unwrap();
        assert!(request_host(&none).is_err(), "HTTP/1.1 without Host");
        let old = Request::builder()
            .version(http::Version::HTTP_10)
            .body(())
            .unwrap();
        assert_eq!(request_host(&old).unwrap(), "");
        let absolute = Request::builder()
            .uri("http://a.example.com/x")
            .header(header::HOST, "b.example.com")
            .body(())
            .unwrap();
        assert_eq!(request_host(&absolute).unwrap(), "a.example.com");
    }
}
