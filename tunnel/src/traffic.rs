//! What went through a tunnel: one [`Exchange`] per request, with headers and the first bytes of
//! each body, for the CLI's log, the desktop inspector and replay.
//!
//! Bodies are teed, never buffered: [`Recorded`] passes every frame on and keeps a copy of at most
//! `capture_limit` bytes. The exchange is published when the response body ends (or is dropped,
//! or the connection upgraded), so its duration and sizes are final.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as _, Frame, SizeHint};
use serde::Serialize;
use tokio::sync::broadcast;

use crate::http_util::{Body, BoxError};

/// Default number of bytes of each body kept for inspection.
pub const DEFAULT_CAPTURE_LIMIT: usize = 64 * 1024;
/// Largest capture limit a user may set: the ring keeps up to two bodies this size per exchange
/// (16 MiB × 2 × 500 exchanges at worst), so the bound is stated, not open.
pub const MAX_CAPTURE_LIMIT: usize = 16 * 1024 * 1024;

/// A capture limit as a user writes it: bytes, or with a `KiB`/`MiB` (or `K`/`M`, `KB`/`MB`,
/// read as binary units) suffix; at most [`MAX_CAPTURE_LIMIT`].
pub fn parse_capture_limit(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 65536, 512KiB, 1MiB)"))?;
    let scale = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        u => return Err(format!("unknown unit {u:?} (use KiB or MiB)")),
    };
    match n.checked_mul(scale) {
        Some(bytes) if bytes <= MAX_CAPTURE_LIMIT => Ok(bytes),
        _ => Err(format!("at most {} MiB", MAX_CAPTURE_LIMIT >> 20)),
    }
}

/// Default number of exchanges kept in the ring.
pub const DEFAULT_RING_SIZE: usize = 500;
/// Events buffered per subscriber before a slow subscriber starts missing (lagging) events.
pub const EVENT_BUFFER: usize = 1024;

/// One captured body.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CapturedBody {
    /// The first bytes, up to the capture limit.
    #[serde(serialize_with = "serialize_bytes")]
    pub data: Bytes,
    /// Bytes seen in total.
    pub size: u64,
    /// Whether `data` is shorter than the body.
    pub truncated: bool,
}

fn serialize_bytes<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(b.iter())
}

/// A request and its response as seen by the client engine.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    /// Unique within the process.
    pub id: u64,
    /// Unix time in milliseconds when the request arrived.
    pub started_ms: u64,
    /// Request method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Response status; `None` when no response came (local service down is a 502, not `None`).
    pub status: Option<u16>,
    /// From arrival to the end of the response body, in milliseconds.
    pub duration_ms: u64,
    /// The visitor's address as the server reported it (`X-Forwarded-For`).
    pub remote_addr: Option<String>,
    /// Whether the connection switched protocols (WebSocket).
    pub upgraded: bool,
    /// Request headers as forwarded to the local service.
    pub request_headers: Headers,
    /// Response headers.
    pub response_headers: Headers,
    /// Request body.
    pub request_body: CapturedBody,
    /// Response body.
    pub response_body: CapturedBody,
    /// Why the exchange failed, if it did.
    pub error: Option<String>,
    /// The frames of a WebSocket connection (`upgraded`), filled while it lasts.
    #[serde(skip)]
    pub frames: Option<Arc<crate::frames::FrameLog>>,
}

/// Recorded headers, in order, as text: values that are not UTF-8 are kept lossily.
///
/// A plain HTTP/1.1 exchange keeps the heads as they crossed the wire (the request as written to
/// the local service, the response as it came), copied in one piece, and reads them only when
/// the exchange is looked at: the CLI records every request and almost none is ever viewed, and
/// copying each header as text was about a tenth of the client's work per small request.
/// Decoded headers are one string and one list of offsets, two allocations whatever the number
/// of headers. A copy, never the connection's buffer, which the ring would keep alive.
/// Serializes as a list of `[name, value]` pairs.
#[derive(Clone, Default)]
pub struct Headers {
    /// A whole HTTP/1.1 head (start line, headers, empty line), read on first use.
    raw: Option<Bytes>,
    decoded: OnceLock<Decoded>,
}

#[derive(Clone, Default)]
struct Decoded {
    text: String,
    /// For each header, where its name ends and where its value ends in `text`.
    ends: Vec<(u32, u32)>,
}

impl Decoded {
    /// Adds one header.
    fn push(&mut self, name: &str, value: &str) {
        self.push_as(name, value, false);
    }

    /// Adds one header, its name lowercased (as a header map has it) if `lowercase`.
    fn push_as(&mut self, name: &str, value: &str, lowercase: bool) {
        // Every parser in the path bounds a head far below 4 GiB.
        let end = |n: usize| u32::try_from(n).expect("headers under 4 GiB");
        let start = self.text.len();
        self.text.push_str(name);
        if lowercase {
            self.text[start..].make_ascii_lowercase();
        }
        let name_end = self.text.len();
        self.text.push_str(value);
        self.ends.push((end(name_end), end(self.text.len())));
    }

    /// The headers of a whole HTTP/1.1 head, a request's or a response's. The head was parsed
    /// when it crossed; a head that does not parse now (it cannot happen) records no headers.
    fn of_head(head: &[u8]) -> Self {
        // Each header takes a line: enough slots without a limit of our own.
        let lines = head.iter().filter(|b| **b == b'\n').count();
        let mut slots = vec![httparse::EMPTY_HEADER; lines];
        let mut response = httparse::Response::new(&mut slots);
        if let Ok(httparse::Status::Complete(_)) = response.parse(head) {
            return Self::of_fields(response.headers);
        }
        let mut slots = vec![httparse::EMPTY_HEADER; lines];
        let mut request = httparse::Request::new(&mut slots);
        match request.parse(head) {
            Ok(httparse::Status::Complete(_)) => Self::of_fields(request.headers),
            _ => Self::default(),
        }
    }

    fn of_fields(fields: &[httparse::Header<'_>]) -> Self {
        let size = fields.iter().map(|h| h.name.len() + h.value.len()).sum();
        let mut out = Self {
            text: String::with_capacity(size),
            ends: Vec::with_capacity(fields.len()),
        };
        for h in fields {
            out.push_as(h.name, &String::from_utf8_lossy(h.value), true);
        }
        out
    }
}

impl From<&HeaderMap> for Headers {
    /// A copy of `h`, in its iteration order.
    fn from(h: &HeaderMap) -> Self {
        let size = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
        let mut out = Decoded {
            text: String::with_capacity(size),
            ends: Vec::with_capacity(h.len()),
        };
        for (k, v) in h {
            match v.to_str() {
                // The usual case, checked faster than the lossy conversion would (measured:
                // `str::from_utf8` is slower on values this short).
                Ok(text) => out.push(k.as_str(), text),
                Err(_) => out.push(k.as_str(), &String::from_utf8_lossy(v.as_bytes())),
            }
        }
        Self::decoded(out)
    }
}

impl Headers {
    fn decoded(decoded: Decoded) -> Self {
        Self {
            raw: None,
            decoded: OnceLock::from(decoded),
        }
    }

    /// The headers of `head`, a whole HTTP/1.1 request or response head that was parsed when
    /// it crossed, read only when they are first looked at.
    pub(crate) fn of_head(head: Bytes) -> Self {
        Self {
            raw: Some(head),
            decoded: OnceLock::new(),
        }
    }

    fn get_decoded(&self) -> &Decoded {
        self.decoded.get_or_init(|| match &self.raw {
            Some(head) => Decoded::of_head(head),
            None => Decoded::default(),
        })
    }

    /// Adds one header.
    pub fn push(&mut self, name: &str, value: &str) {
        self.get_decoded();
        self.decoded
            .get_mut()
            .expect("decoded above")
            .push(name, value);
    }

    /// `(name, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        let d = self.get_decoded();
        let mut start = 0;
        d.ends.iter().map(move |&(name_end, value_end)| {
            let (name_end, value_end) = (name_end as usize, value_end as usize);
            let pair = (&d.text[start..name_end], &d.text[name_end..value_end]);
            start = value_end;
            pair
        })
    }

    /// The first value of `name` (case-insensitive).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Number of headers.
    pub fn len(&self) -> usize {
        self.get_decoded().ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

impl<'a> FromIterator<(&'a str, &'a str)> for Headers {
    fn from_iter<I: IntoIterator<Item = (&'a str, &'a str)>>(pairs: I) -> Self {
        let mut out = Self::default();
        for (k, v) in pairs {
            out.push(k, v);
        }
        out
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for Headers {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

/// Where exchanges go: a broadcast for live consumers and a bounded ring for inspection.
#[derive(Clone)]
pub struct Traffic {
    inner: Arc<TrafficInner>,
}

struct TrafficInner {
    events: broadcast::Sender<Arc<Exchange>>,
    ring: Mutex<VecDeque<Arc<Exchange>>>,
    ring_size: usize,
    /// Changed at run time by the app's setting; read once per body.
    capture_limit: AtomicUsize,
    /// Shared by sinks made with [`Traffic::sharing_ids`], so ids are unique across them.
    next_id: Arc<AtomicU64>,
}

impl Traffic {
    /// A sink keeping `ring_size` exchanges with bodies captured up to `capture_limit` bytes.
    pub fn new(ring_size: usize, capture_limit: usize) -> Self {
        Self::with_ids(ring_size, capture_limit, Arc::new(AtomicU64::new(1)))
    }

    /// Another sink whose exchange ids come from the same counter as this one's: tunnels of one
    /// process that share an inspector have ids unique across them.
    pub fn sharing_ids(&self, ring_size: usize, capture_limit: usize) -> Self {
        Self::with_ids(ring_size, capture_limit, self.inner.next_id.clone())
    }

    fn with_ids(ring_size: usize, capture_limit: usize, next_id: Arc<AtomicU64>) -> Self {
        Self {
            inner: Arc::new(TrafficInner {
                events: broadcast::channel(EVENT_BUFFER).0,
                ring: Mutex::new(VecDeque::with_capacity(ring_size.min(1024))),
                ring_size,
                capture_limit: AtomicUsize::new(capture_limit),
                next_id,
            }),
        }
    }

    /// Live exchanges from now on. A subscriber that falls more than [`EVENT_BUFFER`] behind
    /// gets `Lagged` and misses events rather than growing memory.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Exchange>> {
        self.inner.events.subscribe()
    }

    /// The recent exchanges, oldest first.
    pub fn recent(&self) -> Vec<Arc<Exchange>> {
        self.inner
            .ring
            .lock()
            .expect("ring lock")
            .iter()
            .cloned()
            .collect()
    }

    /// One recent exchange by id.
    pub fn get(&self, id: u64) -> Option<Arc<Exchange>> {
        self.inner
            .ring
            .lock()
            .expect("ring lock")
            .iter()
            .find(|e| e.id == id)
            .cloned()
    }

    /// Forgets the recent exchanges.
    pub fn clear(&self) {
        self.inner.ring.lock().expect("ring lock").clear();
    }

    /// Bytes of each body kept.
    pub fn capture_limit(&self) -> usize {
        self.inner.capture_limit.load(Ordering::Relaxed)
    }

    /// Keeps `limit` bytes of each body from now on (bodies under way keep theirs).
    pub fn set_capture_limit(&self, limit: usize) {
        self.inner.capture_limit.store(limit, Ordering::Relaxed);
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Stores and broadcasts a finished exchange.
    pub fn publish(&self, exchange: Exchange) {
        self.publish_shared(Arc::new(exchange));
    }

    fn publish_shared(&self, exchange: Arc<Exchange>) {
        {
            let mut ring = self.inner.ring.lock().expect("ring lock");
            if self.inner.ring_size == 0 {
                ring.clear();
            } else {
                while ring.len() >= self.inner.ring_size {
                    ring.pop_front();
                }
                ring.push_back(exchange.clone());
            }
        }
        // No subscribers is fine: the ring still has it.
        let _ = self.inner.events.send(exchange);
    }
}

impl std::fmt::Debug for Traffic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traffic")
            .field("ring_size", &self.inner.ring_size)
            .field("capture_limit", &self.capture_limit())
            .finish_non_exhaustive()
    }
}

impl Default for Traffic {
    fn default() -> Self {
        Self::new(DEFAULT_RING_SIZE, DEFAULT_CAPTURE_LIMIT)
    }
}

/// An exchange being assembled while its bodies stream. Published once, when the last
/// [`Recorded`] body referring to it is done with the response.
pub(crate) struct Pending {
    traffic: Traffic,
    started: Instant,
    /// Allocated where it will be published: the exchange is not moved again (it is large, and
    /// each move was a copy per request). Not shared until published, so always unique here.
    exchange: Mutex<Option<Arc<Exchange>>>,
}

impl Pending {
    pub(crate) fn new(traffic: Traffic, exchange: Exchange) -> Arc<Self> {
        Arc::new(Self {
            traffic,
            started: Instant::now(),
            exchange: Mutex::new(Some(Arc::new(exchange))),
        })
    }

    /// Changes the exchange if it is not published yet.
    pub(crate) fn update(&self, f: impl FnOnce(&mut Exchange)) {
        let mut exchange = self.exchange.lock().expect("pending lock");
        if let Some(e) = exchange.as_mut().and_then(Arc::get_mut) {
            f(e);
        }
    }

    /// Publishes the exchange (once).
    pub(crate) fn finish(&self) {
        let taken = self.exchange.lock().expect("pending lock").take();
        if let Some(mut e) = taken {
            if let Some(e) = Arc::get_mut(&mut e) {
                e.duration_ms = self.started.elapsed().as_millis() as u64;
            }
            self.traffic.publish_shared(e);
        }
    }
}

impl Drop for Pending {
    /// An exchange dropped before it was published was cut short with its local request: the
    /// visitor left before the answer, or the tunnel stopped. Recorded all the same.
    fn drop(&mut self) {
        if self.exchange.get_mut().is_ok_and(|e| e.is_some()) {
            self.update(|x| {
                if x.error.is_none() {
                    x.error = Some(ABANDONED.to_owned());
                }
            });
            self.finish();
        }
    }
}

/// The error of an exchange cut short before the local service answered.
pub const ABANDONED: &str = "cancelled: the visitor left (or the tunnel stopped) before the answer";

/// Which body of the exchange a [`Recorded`] copies.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Side {
    Request,
    Response,
}

/// A body that passes frames through and copies the first bytes into a [`Pending`] exchange.
/// A recorded response finishes the exchange when it ends or is dropped.
pub(crate) struct Recorded {
    inner: Body,
    pending: Arc<Pending>,
    side: Side,
    captured: BytesMut,
    size: u64,
    limit: usize,
    done: bool,
}

impl Recorded {
    pub(crate) fn new(inner: Body, pending: Arc<Pending>, side: Side) -> Self {
        let limit = pending.traffic.capture_limit();
        Self {
            inner,
            pending,
            side,
            captured: BytesMut::new(),
            size: 0,
            limit,
            done: false,
        }
    }

    fn store(&mut self, error: Option<String>) {
        if self.done {
            return;
        }
        self.done = true;
        let body = CapturedBody {
            data: std::mem::take(&mut self.captured).freeze(),
            size: self.size,
            truncated: self.size > self.limit as u64,
        };
        let side = self.side;
        self.pending.update(|e| {
            match side {
                Side::Request => e.request_body = body,
                Side::Response => e.response_body = body,
            }
            if error.is_some() && e.error.is_none() {
                e.error = error;
            }
        });
        if let Side::Response = side {
            self.pending.finish();
        }
    }
}

impl http_body::Body for Recorded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.size += data.len() as u64;
                    let room = this.limit.saturating_sub(this.captured.len());
                    let kept = &data[..room.min(data.len())];
                    if this.captured.capacity() == 0 {
                        // The first piece (of most bodies, the only one): allocated at its size
                        // at once rather than through the growth path.
                        this.captured = BytesMut::from(kept);
                    } else {
                        this.captured.extend_from_slice(kept);
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => {
                let msg = format!("body aborted: {e}");
                this.store(Some(msg));
            }
            Poll::Ready(None) => this.store(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // Dropped before its end: the visitor went away mid-body.
        let error = (!self.inner.is_end_stream()).then(|| "body not read to the end".to_owned());
        self.store(error);
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn blank(t: &Traffic) -> Exchange {
        Exchange {
            id: t.next_id(),
            started_ms: now_ms(),
            method: "GET".into(),
            path: "/".into(),
            status: Some(200),
            duration_ms: 0,
            remote_addr: None,
            upgraded: false,
            request_headers: Headers::default(),
            response_headers: Headers::default(),
            request_body: CapturedBody::default(),
            response_body: CapturedBody::default(),
            error: None,
            frames: None,
        }
    }

    #[test]
    fn capture_limits_as_users_write_them() {
        assert_eq!(parse_capture_limit("4096"), Ok(4096));
        assert_eq!(parse_capture_limit("64KiB"), Ok(64 << 10));
        assert_eq!(parse_capture_limit("1 MiB"), Ok(1 << 20));
        assert_eq!(parse_capture_limit("2m"), Ok(2 << 20));
        assert_eq!(parse_capture_limit("0"), Ok(0));
        assert!(parse_capture_limit("17MiB")
            .unwrap_err()
            .contains("at most 16 MiB"));
        assert!(parse_capture_limit("1GiB")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_capture_limit("lots")
            .unwrap_err()
            .contains("not a size"));
        assert!(parse_capture_limit("99999999999999999999").is_err());
    }

    #[test]
    fn ring_is_bounded() {
        let t = Traffic::new(3, 16);
        for _ in 0..10 {
            t.publish(blank(&t));
        }
        let ids: Vec<u64> = t.recent().iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![8, 9, 10]);
        assert!(t.get(1).is_none());
        assert!(t.get(9).is_some());
    }

    #[tokio::test]
    async fn recorded_body_captures_a_capped_prefix_and_publishes_once() {
        let t = Traffic::new(10, 4);
        let mut rx = t.subscribe();
        let pending = Pending::new(t.clone(), blank(&t));
        let body = Recorded::new(
            crate::http_util::full("hello world"),
            pending.clone(),
            Side::Response,
        );
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello world");
        let e = rx.recv().await.unwrap();
        assert_eq!(&e.response_body.data[..], b"hell");
        assert_eq!(e.response_body.size, 11);
        assert!(e.response_body.truncated);
        pending.finish();
        assert!(rx.try_recv().is_err(), "published twice");
    }

    /// The headers both recording tests send, as the inspector shows them.
    const RECORDED: [(&str, &str); 6] = [
        ("content-type", "text/plain"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
        ("x-empty", ""),
        ("x-bytes", "caf\u{fffd}"),
        ("x-utf8", "café"),
    ];

    #[test]
    fn headers_keep_order_repeats_and_text() {
        let mut h = HeaderMap::new();
        h.insert("content-type", "text/plain".parse().unwrap());
        h.append("set-cookie", "a=1".parse().unwrap());
        h.append("set-cookie", "b=2".parse().unwrap());
        h.insert("x-empty", http::HeaderValue::from_static(""));
        h.insert(
            "x-bytes",
            http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        );
        h.insert(
            "x-utf8",
            http::HeaderValue::from_bytes("café".as_bytes()).unwrap(),
        );
        let recorded = Headers::from(&h);
        assert_eq!(recorded.iter().collect::<Vec<_>>(), RECORDED);
        assert_eq!(recorded.len(), 6);
        assert_eq!(recorded.get("Content-Type"), Some("text/plain"));
        assert_eq!(recorded.get("set-cookie"), Some("a=1"));
        assert_eq!(recorded.get("missing"), None);
        assert_eq!(
            serde_json::to_string(&recorded).unwrap(),
            "[[\"content-type\",\"text/plain\"],[\"set-cookie\",\"a=1\"],[\"set-cookie\",\"b=2\"],\
             [\"x-empty\",\"\"],[\"x-bytes\",\"caf\u{fffd}\"],[\"x-utf8\",\"café\"]]"
        );
        assert_eq!(format!("{:?}", Headers::default()), "[]");
        assert!(Headers::default().is_empty());
        let rebuilt: Headers = recorded.iter().collect();
        assert_eq!(rebuilt, recorded);
    }

    #[test]
    fn heads_kept_whole_read_as_the_same_headers() {
        let response = Bytes::from_static(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\n\
              set-cookie: b=2\r\nX-Empty:\r\nX-Bytes: caf\xe9\r\nX-UTF8: caf\xc3\xa9\r\n\r\n",
        );
        let recorded = Headers::of_head(response);
        assert_eq!(recorded.iter().collect::<Vec<_>>(), RECORDED);
        assert_eq!(recorded.get("SET-COOKIE"), Some("a=1"));

        let mut request = Headers::of_head(Bytes::from_static(
            b"POST /a?b HTTP/1.1\r\nhost: app.example\r\ncontent-length: 2\r\n\r\n",
        ));
        assert_eq!(
            request.iter().collect::<Vec<_>>(),
            [("host", "app.example"), ("content-length", "2")]
        );
        // Clones and added headers see the decoded form.
        request.push("x-added", "1");
        assert_eq!(request.clone().len(), 3);
        assert_eq!(
            serde_json::to_string(&request).unwrap(),
            "[[\"host\",\"app.example\"],[\"content-length\",\"2\"],[\"x-added\",\"1\"]]"
        );
        // Empty lines before the start line are skipped, as the parser skipped them.
        let late = Headers::of_head(Bytes::from_static(b"\r\nHTTP/1.1 200 OK\r\nA: b\r\n\r\n"));
        assert_eq!(late.iter().collect::<Vec<_>>(), [("a", "b")]);
        // A head cut short (it cannot happen: heads are kept after they parsed) reads as none.
        assert!(Headers::of_head(Bytes::from_static(b"HTTP/1.1 200 OK\r\nA: b")).is_empty());
    }
}
