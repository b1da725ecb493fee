//! Public requests through a tunnel: HTTP/1.1 over yamux streams of the tunnel's session.

use std::{sync::Mutex, time::Instant};

use ggrok_tunnel::{
    http_util::{self, boxed, is_upgrade, strip_hop_by_hop, wants_json, Body, PageKind},
    protocol::HEADER_ERROR,
};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::{body::Incoming, client::conn::http1::SendRequest};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::{Shared, Visitor};

/// How long a request waits for a tunnel whose session is still starting.
const SESSION_START: std::time::Duration = std::time::Duration::from_secs(5);

/// The tunnel stream a visitor connection last used, kept for its next request: HTTP/1.1
/// requests on one connection are sequential, so one stream serves them all, saving a stream
/// open and a handshake per request.
#[derive(Default)]
pub(crate) struct Upstream(Mutex<Option<Cached>>);

struct Cached {
    name: String,
    session: u64,
    sender: SendRequest<Body>,
}

pub(crate) async fn forward(
    shared: &Shared,
    visitor: Visitor,
    name: &str,
    upstream: Option<&Upstream>,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let json = wants_json(req.headers());
    let started = Instant::now();
    let Some(crate::registry::Route {
        session,
        control,
        policy,
    }) = shared.registry.route_when_ready(name, SESSION_START).await
    else {
        let message = format!("No tunnel is online at {name}.{}.", shared.config.domain);
        return crate::ggrok_error(
            shared,
            StatusCode::NOT_FOUND,
            PageKind::TunnelNotFound,
            &message,
            json,
        );
    };
    if let Some(refused) = policy.check(name, visitor.ip, req.headers(), json) {
        shared
            .metrics
            .error(if refused.status() == StatusCode::FORBIDDEN {
                "forbidden"
            } else {
                "unauthorized"
            });
        return refused;
    }
    if !shared.request_limit.allow(&name.to_owned()) {
        let message =
            format!("The tunnel {name} gets more requests than this server allows. Slow down.");
        return crate::ggrok_error(
            shared,
            StatusCode::TOO_MANY_REQUESTS,
            PageKind::RateLimited,
            &message,
            json,
        );
    }
    let lost = |what: &str| {
        let message = format!(
            "The tunnel {name} is registered but its client {what}. Try again in a moment."
        );
        crate::ggrok_error(
            shared,
            StatusCode::BAD_GATEWAY,
            PageKind::TunnelLost,
            &message,
            json,
        )
    };

    let visitor_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let body = shared.metrics.count_body(name, true, boxed(body));
    // HTTP/2 visitors name the host in the URI authority instead of a Host header.
    let public_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        let authority = parts.uri.authority()?;
        HeaderValue::from_str(authority.as_str()).ok()
    });
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers);
    if policy.consumes_authorization() {
        // The tunnel's password is for ggrok, not for the local service.
        parts.headers.remove(header::AUTHORIZATION);
    }
    add_forwarded(&mut parts.headers, visitor, public_host);
    parts.uri = parts
        .uri
        .path_and_query()
        .and_then(|p| Uri::try_from(p.as_str()).ok())
        .unwrap_or_else(|| Uri::from_static("/"));

    let cached = upstream
        .and_then(|u| u.0.lock().expect("upstream lock").take())
        .filter(|c| c.name == name && c.session == session && !c.sender.is_closed());
    let reusable = match cached {
        // Ready once the previous response has been read to its end.
        Some(mut c) => c.sender.ready().await.is_ok().then_some(c.sender),
        None => None,
    };
    let mut sender = match reusable {
        Some(sender) => sender,
        None => match open(shared, control).await {
            Ok(sender) => sender,
            Err(what) => return lost(what),
        },
    };
    let mut resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            debug!(%e, "request through tunnel failed");
            return lost("went away while handling the request");
        }
    };
    shared.metrics.request(name, started.elapsed());
    if let Some(kind) = resp
        .headers()
        .get(HEADER_ERROR)
        .and_then(|v| v.to_str().ok())
    {
        shared.metrics.error(kind);
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        // The stream now belongs to the upgraded connection; it is not cached.
        if let Some(visitor_io) = visitor_upgrade {
            let tunnel_io = hyper::upgrade::on(&mut resp);
            shared.spawn(http_util::splice_upgrades(visitor_io, tunnel_io));
        }
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, http_util::empty());
    }
    if let Some(u) = upstream {
        *u.0.lock().expect("upstream lock") = Some(Cached {
            name: name.to_owned(),
            session,
            sender,
        });
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The visitor speaks to us, not to the origin: answer in our own HTTP version.
    parts.version = http::Version::default();
    Response::from_parts(parts, shared.metrics.count_body(name, false, boxed(body)))
}

/// Opens a stream on the session and starts HTTP/1.1 on it.
async fn open(
    shared: &Shared,
    mut control: tokio_yamux::Control,
) -> Result<SendRequest<Body>, &'static str> {
    let stream = control.open_stream().await.map_err(|e| {
        debug!(%e, "open stream failed");
        "is not answering (session closing)"
    })?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| {
            debug!(%e, "stream handshake failed");
            "is not answering"
        })?;
    shared.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%e, "tunnel stream ended with an error");
        }
    });
    Ok(sender)
}

/// Adds `X-Forwarded-For/-Proto/-Host` the way common proxies do (appending to a visitor's
/// `X-Forwarded-For` rather than trusting or discarding it).
fn add_forwarded(h: &mut http::HeaderMap, visitor: Visitor, public_host: Option<HeaderValue>) {
    let ip = visitor.ip.to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        // A trusted proxy already appended the visitor; the rightmost entry is theirs.
        Some(prev) if visitor.proxied => prev.to_owned(),
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    let proto = if visitor.secure { "https" } else { "http" };
    h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Some(host) = public_host {
        h.insert("x-forwarded-host", host.clone());
        // The client rewrites Host for the local service; it needs one to start from.
        h.insert(header::HOST, host);
    }
}
