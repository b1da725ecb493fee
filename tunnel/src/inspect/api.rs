//! The inspector's routes: the web page and the JSON API.
//!
//! The API follows ngrok's agent API where it fits (`/api/tunnels`, `/api/requests/http`): the
//! same paths, fields and filters, so scripts written for ngrok's inspector work. Where ggrok
//! has more to say the objects carry a `ggrok` field (the rows and exchanges the web page shows),
//! which ngrok's stability rules allow ("new fields on existing resources").

use std::{
    collections::BTreeMap,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Limited};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast::error::RecvError, mpsc, oneshot};

use super::{
    assets, export,
    guard::{self, Refusal},
    view::{Detail, Summary},
    Agent, Control, Inspected, StartError, TunnelRequest,
};
use crate::{
    client::Status,
    forward::{ReplayEdits, ReplayError},
    http_util::{self, Body, BoxError},
    traffic::{Exchange, Headers},
};

/// Largest API request body (a replay with an edited body).
pub const MAX_BODY: usize = 2 * 1024 * 1024;
/// Events queued for one live page before the slowest are dropped.
const EVENT_QUEUE: usize = 256;

/// What the web page may load and do: its own scripts and styles, requests to this origin only.
/// Traffic is rendered as text, and this keeps it so should a bug ever let markup through.
const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The inspector's state: the tunnels it shows and its own port (for the `Host` check).
pub struct App {
    agent: Agent,
    port: u16,
}

/// An API failure: a status and a message, as `{"error_code", "status_code", "msg"}` (ngrok's
/// error shape).
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    msg: String,
}

impl ApiError {
    fn new(status: StatusCode, msg: impl Into<String>) -> Self {
        Self {
            status,
            msg: msg.into(),
        }
    }

    fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }

    fn into_response(self) -> Response<Body> {
        let body = json!({
            "error_code": self.status.as_u16(),
            "status_code": self.status.as_u16(),
            "msg": self.msg,
            "details": {},
        });
        json_response(self.status, &body)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        let status = match r {
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Host(_) | Refusal::Origin => StatusCode::FORBIDDEN,
        };
        Self::new(status, r.to_string())
    }
}

impl From<ReplayError> for ApiError {
    fn from(e: ReplayError) -> Self {
        let status = match e {
            ReplayError::NotFound(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.to_string())
    }
}

fn with_security_headers(mut resp: Response<Body>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("default-src 'none'"));
    resp
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut resp = Response::new(http_util::full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// What `POST /api/requests/http` takes: ngrok's `id` and `tunnel_name`, and ggrok's `edits`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayInput {
    id: String,
    #[serde(default)]
    tunnel_name: Option<String>,
    #[serde(default)]
    edits: ReplayEdits,
}

/// `limit`, `tunnel_name`, `format` and `ids` of the request list.
#[derive(Debug, Default)]
struct ListQuery {
    limit: Option<usize>,
    tunnel_name: Option<String>,
    har: bool,
    ids: Option<Vec<u64>>,
}

impl ListQuery {
    fn parse(query: Option<&str>) -> Result<Self, ApiError> {
        let mut q = Self::default();
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match &*k {
                "limit" => {
                    q.limit = Some(
                        v.parse()
                            .map_err(|_| bad(format!("limit: not a number: {v}")))?,
                    )
                }
                "tunnel_name" => q.tunnel_name = Some(v.into_owned()),
                "format" if v == "har" => q.har = true,
                "format" if v == "json" => {}
                "format" => return Err(bad(format!("format: json or har, not {v}"))),
                "ids" => {
                    q.ids = Some(
                        v.split(',')
                            .filter(|s| !s.is_empty())
                            .map(|s| s.trim().parse())
                            .collect::<Result<_, _>>()
                            .map_err(|_| bad(format!("ids: comma-separated numbers, not {v}")))?,
                    )
                }
                // Unknown filters are ignored, as ngrok does.
                _ => {}
            }
        }
        Ok(q)
    }
}

/// A live page's event body: one Server-Sent Event per message, until `ended`.
struct EventBody {
    rx: mpsc::Receiver<Bytes>,
    ended: Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>,
}

impl http_body::Body for EventBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.ended.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        self.rx.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// One SSE message carrying `value`.
fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

/// ngrok writes header names in Go's canonical form (`Content-Type`) and values as lists.
fn header_map(h: &Headers) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in h.iter() {
        let mut name = String::with_capacity(k.len());
        let mut upper = true;
        for c in k.chars() {
            name.push(if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            upper = c == '-';
        }
        out.entry(name).or_default().push(v.to_owned());
    }
    out
}

impl App {
    /// The inspector of `agent`'s tunnels, listening on `port`.
    pub fn new(agent: Agent, port: u16) -> Self {
        Self { agent, port }
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let resp = match self.route(req).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        };
        with_security_headers(resp)
    }

    async fn route(&self, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, ApiError> {
        guard::check(req.method(), req.headers(), self.port)?;
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let segments: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        match (req.method().clone(), segments.as_slice()) {
            (Method::GET, ["api"]) => Ok(json_response(
                StatusCode::OK,
                &json!({ "uri": "/api", "tunnels": "/api/tunnels", "requests": "/api/requests/http" }),
            )),
            (Method::GET, ["api", "tunnels"]) => {
                let tunnels: Vec<Value> = self.agent.tunnels().iter().map(tunnel_json).collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "tunnels": tunnels, "uri": "/api/tunnels" }),
                ))
            }
            (Method::POST, ["api", "tunnels"]) => self.start(req).await,
            (Method::GET, ["api", "tunnels", name]) => {
                let t = self.tunnel(Some(name))?;
                Ok(json_response(StatusCode::OK, &tunnel_json(&t)))
            }
            (Method::DELETE, ["api", "tunnels", name]) => self.stop(name).await,
            (Method::GET, ["api", "requests", "http"]) => self.list(query.as_deref()),
            (Method::GET, ["api", "requests", "http", id]) => {
                let (t, e) = self.exchange(id, None)?;
                Ok(json_response(StatusCode::OK, &request_json(&t, &e, true)))
            }
            (Method::POST, ["api", "requests", "http"]) => self.replay(req).await,
            (Method::DELETE, ["api", "requests", "http"]) => {
                let name = ListQuery::parse(query.as_deref())?.tunnel_name;
                for t in &self.agent.tunnels() {
                    if name.as_deref().is_none_or(|n| n == t.name) {
                        t.handle.traffic().clear();
                    }
                }
                Ok(Response::builder()
                    .status(StatusCode::NO_CONTENT)
                    .body(http_util::empty())
                    .expect("static response"))
            }
            (Method::GET, ["api", "events"]) => Ok(self.events()),
            (Method::GET, _) if !path.starts_with("/api") => Ok(self.page(&path)),
            (_, ["api", ..]) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no route {} {path}", req.method()),
            )),
            _ => Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "the web page is read with GET",
            )),
        }
    }

    fn tunnel(&self, name: Option<&str>) -> Result<Inspected, ApiError> {
        let tunnels = self.agent.tunnels();
        match name {
            Some(name) => tunnels
                .into_iter()
                .find(|t| t.name == name)
                .ok_or_else(|| ApiError::not_found(format!("tunnel {name}"))),
            None => tunnels
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::not_found("tunnel")),
        }
    }

    /// `POST /api/tunnels`: asks the program that runs the tunnels for one more.
    async fn start(&self, req: Request<hyper::body::Incoming>) -> Result<Response<Body>, ApiError> {
        let control = self.control()?;
        let input: TunnelRequest = json_body(req, "a tunnel").await?;
        let (tx, rx) = oneshot::channel();
        control
            .send(Control::Start(input, tx))
            .await
            .map_err(|_| stopping())?;
        match rx.await.map_err(|_| stopping())? {
            Ok(t) => Ok(json_response(StatusCode::CREATED, &tunnel_json(&t))),
            Err(e @ StartError::Invalid(_)) => {
                Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string()))
            }
            Err(e @ StartError::Refused(_)) => {
                Err(ApiError::new(StatusCode::BAD_GATEWAY, e.to_string()))
            }
        }
    }

    /// `DELETE /api/tunnels/{name}`: asks for the tunnel to be stopped.
    async fn stop(&self, name: &str) -> Result<Response<Body>, ApiError> {
        let control = self.control()?;
        let (tx, rx) = oneshot::channel();
        control
            .send(Control::Stop(name.to_owned(), tx))
            .await
            .map_err(|_| stopping())?;
        if !rx.await.map_err(|_| stopping())? {
            return Err(ApiError::not_found(format!("tunnel {name}")));
        }
        Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(http_util::empty())
            .expect("static response"))
    }

    fn control(&self) -> Result<&mpsc::Sender<Control>, ApiError> {
        self.agent.control.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this inspector does not start or stop tunnels",
            )
        })
    }

    /// The exchange `id` (ids are unique across the tunnels), and its tunnel.
    fn exchange(
        &self,
        id: &str,
        tunnel_name: Option<&str>,
    ) -> Result<(Inspected, Arc<Exchange>), ApiError> {
        let n: u64 = id
            .parse()
            .map_err(|_| ApiError::not_found(format!("request {id}")))?;
        self.agent
            .tunnels()
            .into_iter()
            .filter(|t| tunnel_name.is_none_or(|name| name == t.name))
            .find_map(|t| t.handle.traffic().get(n).map(|e| (t, e)))
            .ok_or_else(|| ApiError::not_found(format!("request {id}")))
    }

    fn list(&self, query: Option<&str>) -> Result<Response<Body>, ApiError> {
        let q = ListQuery::parse(query)?;
        if let Some(name) = &q.tunnel_name {
            self.tunnel(Some(name))?;
        }
        // Newest first across the tunnels, as ngrok lists them.
        let tunnels = self.agent.tunnels();
        let mut rows: Vec<(&Inspected, Arc<Exchange>)> = tunnels
            .iter()
            .filter(|t| q.tunnel_name.as_deref().is_none_or(|n| n == t.name))
            .flat_map(|t| t.handle.traffic().recent().into_iter().map(move |e| (t, e)))
            .filter(|(_, e)| q.ids.as_ref().is_none_or(|ids| ids.contains(&e.id)))
            .collect();
        rows.sort_by_key(|(_, e)| std::cmp::Reverse(e.id));
        rows.truncate(q.limit.unwrap_or(usize::MAX));
        if q.har {
            let entries: Vec<(&Exchange, String)> =
                rows.iter().map(|(t, e)| (&**e, local_base(t))).collect();
            let har = export::har(&entries);
            let mut resp = json_response(StatusCode::OK, &har);
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"ggrok.har\""),
            );
            return Ok(resp);
        }
        let requests: Vec<Value> = rows
            .iter()
            .map(|(t, e)| request_json(t, e, false))
            .collect();
        Ok(json_response(
            StatusCode::OK,
            &json!({ "uri": "/api/requests/http", "requests": requests }),
        ))
    }

    async fn replay(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<Body>, ApiError> {
        let input: ReplayInput = json_body(req, "a replay request").await?;
        let (t, e) = self.exchange(&input.id, input.tunnel_name.as_deref())?;
        let new = t.handle.replay(e.id, input.edits).await?;
        Ok(json_response(StatusCode::OK, &request_json(&t, &new, true)))
    }

    /// Live rows and statuses of every tunnel, as Server-Sent Events in the shape the desktop
    /// app's events have (`{type: "traffic" | "status", tunnelId, ...}`).
    fn events(&self) -> Response<Body> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        // How soon the page reconnects when the stream ends.
        let _ = tx.try_send(Bytes::from_static(b"retry: 500\n\n"));
        // The set of tunnels changed: the stream ends, and the page reconnects within the
        // `retry` it was given and loads the lists again. Watched before the set is read, so
        // that no change in between goes unseen.
        let mut changes = self.agent.changes();
        changes.mark_unchanged();
        for t in &self.agent.tunnels() {
            let (tx, name) = (tx.clone(), t.name.clone());
            let mut traffic = t.handle.traffic().subscribe();
            let mut status = t.handle.watch_status();
            let handle = t.handle.clone();
            tokio::spawn(async move {
                let state = |s: Status| {
                    json!({ "type": "status", "tunnelId": name, "state": {
                        "status": s, "requests": handle.traffic().recent().len(), "localWarning": null,
                    }})
                };
                let first = status.borrow_and_update().clone();
                if tx.send(sse(&state(first))).await.is_err() {
                    return;
                }
                loop {
                    let msg = tokio::select! {
                        _ = tx.closed() => return,
                        changed = status.changed() => match changed {
                            Ok(()) => state(status.borrow_and_update().clone()),
                            Err(_) => return,
                        },
                        e = traffic.recv() => match e {
                            Ok(e) => json!({ "type": "traffic", "tunnelId": name, "exchange": Summary::from(&*e) }),
                            // The page reloads the list when told it missed rows.
                            Err(RecvError::Lagged(n)) => json!({ "type": "lagged", "tunnelId": name, "missed": n }),
                            Err(RecvError::Closed) => return,
                        },
                    };
                    // A page that does not read is dropped rather than queued for.
                    if tx.try_send(sse(&msg)).is_err() {
                        return;
                    }
                }
            });
        }
        let ended = Box::pin(async move {
            let _ = changes.changed().await;
        });
        let mut resp = Response::new(EventBody { rx, ended }.boxed());
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        resp
    }

    fn page(&self, path: &str) -> Response<Body> {
        let Some((data, ctype)) = assets::get(path) else {
            let (status, text) = if assets::embedded() {
                (StatusCode::NOT_FOUND, "Not found.".to_owned())
            } else {
                (
                    StatusCode::NOT_FOUND,
                    "This ggrok was built without the web inspector (ui/dist-inspector was \
                     missing: run `npm ci && npm run build:ui`, then build ggrok again). The \
                     JSON API works: GET /api/requests/http.\n"
                        .to_owned(),
                )
            };
            let mut resp = Response::new(http_util::full(text));
            *resp.status_mut() = status;
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return resp;
        };
        let mut resp = Response::new(http_util::full(Bytes::from_static(data)));
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        );
        resp
    }
}

/// The JSON body of `req`, `what` it should be (for the error).
async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request<hyper::body::Incoming>,
    what: &str,
) -> Result<T, ApiError> {
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the request body could not be read: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("not {what}: {e}")))
}

/// The program that runs the tunnels is ending.
fn stopping() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ggrok is stopping")
}

/// `http://localhost:3000`: where the tunnel's requests go, the base of curl and HAR URLs.
fn local_base(t: &Inspected) -> String {
    format!("http://{}", t.handle.local().authority())
}

/// A tunnel as ngrok's `/api/tunnels` lists it, with ggrok's status.
fn tunnel_json(t: &Inspected) -> Value {
    let status = t.handle.status();
    let public_url = match &status {
        Status::Online { url, .. } => url.clone(),
        _ => String::new(),
    };
    let proto = public_url.split("://").next().unwrap_or("http").to_owned();
    let proto = if proto.is_empty() {
        "http".to_owned()
    } else {
        proto
    };
    // ngrok's `addr`: a URL for HTTP, `host:port` for TCP.
    let addr = if proto == "tcp" {
        t.handle.local().authority()
    } else {
        local_base(t)
    };
    json!({
        "name": t.name,
        "uri": format!("/api/tunnels/{}", t.name),
        "public_url": public_url,
        "proto": proto,
        "config": { "addr": addr, "inspect": proto != "tcp" },
        "ggrok": {
            "status": status,
            "requests": t.handle.traffic().recent().len(),
            "localHost": t.handle.local().host,
            "localPort": t.handle.local().port,
        },
    })
}

/// A captured request as ngrok's API has it; `detail` adds the exchange as the web page shows
/// it (bodies, curl) where the list has its row only.
fn request_json(t: &Inspected, e: &Exchange, detail: bool) -> Value {
    let response = e.status.map(|code| {
        let reason = StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        json!({
            "status": format!("{code} {reason}").trim_end().to_owned(),
            "status_code": code,
            "proto": "HTTP/1.1",
            "headers": header_map(&e.response_headers),
        })
    });
    let ggrok = if detail {
        let mut d = serde_json::to_value(Detail::from(e)).unwrap_or(Value::Null);
        d["curl"] = json!(export::curl(e, &local_base(t)));
        d
    } else {
        serde_json::to_value(Summary::from(e)).unwrap_or(Value::Null)
    };
    json!({
        "uri": format!("/api/requests/http/{}", e.id),
        "id": e.id.to_string(),
        "tunnel_name": t.name,
        "remote_addr": e.remote_addr,
        "start": export::rfc3339_ms(e.started_ms),
        // Nanoseconds, as ngrok's (Go's) durations.
        "duration": e.duration_ms.saturating_mul(1_000_000),
        "request": {
            "method": e.method,
            "proto": "HTTP/1.1",
            "headers": header_map(&e.request_headers),
            "uri": e.path,
        },
        "response": response,
        "ggrok": ggrok,
    })
}
