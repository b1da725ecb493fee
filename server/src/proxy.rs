//! Public requests through a tunnel: one yamux stream per request, HTTP/1.1 on it.

use std::net::SocketAddr;

use ggrok_tunnel::http_util::{
    self, boxed, error_page, is_upgrade, strip_hop_by_hop, wants_json, Body, PageKind,
};
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::Shared;

pub(crate) async fn forward(
    shared: &Shared,
    peer: SocketAddr,
    name: &str,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let json = wants_json(req.headers());
    let Some(mut control) = shared.registry.control(name) else {
        let message = format!("No tunnel is online at {name}.{}.", shared.config.domain);
        return error_page(
            StatusCode::NOT_FOUND,
            PageKind::TunnelNotFound,
            &message,
            json,
        );
    };
    let lost = |what: &str| {
        let message = format!(
            "The tunnel {name} is registered but its client {what}. Try again in a moment."
        );
        error_page(
            StatusCode::BAD_GATEWAY,
            PageKind::TunnelLost,
            &message,
            json,
        )
    };

    let visitor_upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    let public_host = parts.headers.get(header::HOST).cloned();
    strip_hop_by_hop(&mut parts.headers);
    add_forwarded(&mut parts.headers, peer, public_host);
    parts.uri = parts
        .uri
        .path_and_query()
        .and_then(|p| Uri::try_from(p.as_str()).ok())
        .unwrap_or_else(|| Uri::from_static("/"));

    let stream = match control.open_stream().await {
        Ok(s) => s,
        Err(e) => {
            debug!(%e, "open stream failed");
            return lost("is not answering (session closing)");
        }
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    {
        Ok(pair) => pair,
        Err(e) => {
            debug!(%e, "stream handshake failed");
            return lost("is not answering");
        }
    };
    shared.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            debug!(%e, "tunnel stream ended with an error");
        }
    });
    let mut resp = match sender
        .send_request(Request::from_parts(parts, boxed(body)))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            debug!(%e, "request through tunnel failed");
            return lost("went away while handling the request");
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(visitor) = visitor_upgrade {
            let tunnel = hyper::upgrade::on(&mut resp);
            shared.spawn(http_util::splice_upgrades(visitor, tunnel));
        }
        let (parts, _) = resp.into_parts();
        return Response::from_parts(parts, http_util::empty());
    }
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The visitor speaks to us, not to the origin: answer in our own HTTP version.
    parts.version = http::Version::default();
    Response::from_parts(parts, boxed(body))
}

/// Adds `X-Forwarded-For/-Proto/-Host` the way common proxies do (appending to a visitor's
/// `X-Forwarded-For` rather than trusting or discarding it).
fn add_forwarded(h: &mut http::HeaderMap, peer: SocketAddr, public_host: Option<HeaderValue>) {
    let ip = peer.ip().to_canonical().to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
    if let Some(host) = public_host {
        h.insert("x-forwarded-host", host.clone());
        // The client rewrites Host for the local service; it needs one to start from.
        h.insert(header::HOST, host);
    }
}
