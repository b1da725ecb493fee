//! The pages the server writes itself: its error pages (counted in the metrics), the landing
//! page, `/healthz` and `/metrics`. The codes they carry are [`PageKind`]s.

use ggrok_tunnel::{
    http_util::{error_page, escape_html, full, Body},
    protocol::{self, PageKind},
};
use http::{header, Request, Response, StatusCode};

use crate::{config::hash_token, state::Shared};

/// An error page of ggrok's own, counted in the metrics.
pub(crate) fn error(
    shared: &Shared,
    status: StatusCode,
    kind: PageKind,
    message: &str,
    json: bool,
) -> Response<Body> {
    shared.metrics.error(kind);
    error_page(status, kind, message, json)
}

/// A refusal after which the connection closes: a request hyper framed but ggrok refuses to
/// relay may have a body ggrok will not read, and nothing after it on the connection can be
/// trusted to start a new request.
pub(crate) fn refuse_and_close(
    shared: &Shared,
    status: StatusCode,
    message: &str,
    json: bool,
) -> Response<Body> {
    let mut resp = error(shared, status, PageKind::BadRequest, message, json);
    resp.headers_mut()
        .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
    resp
}

/// `/metrics`, only with the configured bearer token.
pub(crate) fn metrics<B>(shared: &Shared, req: &Request<B>) -> Response<Body> {
    let Some(expected) = shared.config.metrics_token else {
        return error_page(
            StatusCode::NOT_FOUND,
            PageKind::NotFound,
            "Metrics are not enabled on this server.",
            false,
        );
    };
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| hash_token(t.trim()));
    if presented != Some(expected) {
        return Response::builder()
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, "Bearer")
            .body(full("metrics need the metrics token\n"))
            .expect("static response");
    }
    Response::builder()
        .header(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
        .body(full({
            if let Some(node) = &shared.config.cluster {
                shared.metrics.set_peers(node.peers.open());
            }
            shared.metrics.encode(shared.registry.online())
        }))
        .expect("static response")
}

/// `/healthz`: answered by the server itself, whatever its tunnels do.
pub(crate) fn health(shared: &Shared) -> Response<Body> {
    if shared
        .config
        .cluster
        .as_ref()
        .is_some_and(|n| !n.is_ready())
    {
        // A load balancer's health check then sends no new clients here.
        return Response::builder()
            .status(StatusCode::SERVICE_UNAVAILABLE)
            .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(full("not ready: this node holds no cluster lease\n"))
            .expect("static response");
    }
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(full(protocol::HEALTH_BODY))
        .expect("static response")
}

/// `/` on the apex: what this server is and where its tunnels are.
pub(crate) fn landing(shared: &Shared) -> Response<Body> {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>ggrok server</title></head>\
         <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\"><h1>ggrok server</h1>\
         <p>Tunnels are served at <code>NAME.{}</code>.</p></body></html>\n",
        escape_html(&shared.config.domain),
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
        .body(full(body))
        .expect("static response")
}
