//! HTTP helpers shared by the client engine and the server: the body type, hop-by-hop header
//! handling and ggrok's own error pages.

use bytes::Bytes;
use http::{header, uri::PathAndQuery, HeaderMap, HeaderValue, Response, StatusCode, Uri};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

use crate::protocol::PageKind;

/// Error type of bodies flowing through ggrok.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The one body type ggrok passes around: streamed, never buffered whole.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body holding `data`.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Turns any hyper body into a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1), with the two obsolete
/// ones proxies still meet.
const HOP_BY_HOP: [header::HeaderName; 9] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::HeaderName::from_static("keep-alive"),
    header::HeaderName::from_static("proxy-connection"),
];

/// The high bit of each byte of a word.
pub(crate) const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// `w`'s ASCII letters lowercased, eight bytes at once; `None` if a byte is not ASCII.
fn lower_word(w: u64) -> Option<u64> {
    if w & HIGH_BITS != 0 {
        return None;
    }
    // Below 0x80 nothing carries between bytes: the high bit of `b + 0x3f` is set from 'A' on,
    // that of `b + 0x25` from '[' on, so the two differ exactly for 'A'..='Z'.
    let upper =
        w.wrapping_add(0x3f3f_3f3f_3f3f_3f3f) & !w.wrapping_add(0x2525_2525_2525_2525) & HIGH_BITS;
    Some(w | upper >> 2)
}

/// Eight bytes as one word, for the byte-parallel checks here and in [`crate::head`].
pub(crate) fn word(bytes: &[u8]) -> u64 {
    u64::from_ne_bytes(bytes.try_into().expect("eight bytes"))
}

/// `bytes.make_ascii_lowercase()`, eight bytes at a time: every header name of every request
/// and answer is lowercased on its way into a stream's head. A tail shorter than a word is done
/// as the word ending with it, which overlaps the one before (lowercasing twice changes nothing);
/// a name shorter than a word, as two overlapping halves. Byte by byte, the tails of the usual
/// names were about as much work as their words.
pub fn make_lowercase(bytes: &mut [u8]) {
    fn lower(chunk: &mut [u8]) {
        let w = match *chunk {
            [a, b, c, d] => u64::from(u32::from_ne_bytes([a, b, c, d])),
            _ => word(chunk),
        };
        match lower_word(w) {
            Some(w) if chunk.len() == 4 => chunk.copy_from_slice(&(w as u32).to_ne_bytes()),
            Some(w) => chunk.copy_from_slice(&w.to_ne_bytes()),
            None => chunk.make_ascii_lowercase(),
        }
    }
    let n = bytes.len();
    match n {
        0..4 => bytes.make_ascii_lowercase(),
        4..8 => {
            lower(&mut bytes[..4]);
            lower(&mut bytes[n - 4..]);
        }
        _ => {
            bytes.chunks_exact_mut(8).for_each(lower);
            if n % 8 != 0 {
                lower(&mut bytes[n - 8..]);
            }
        }
    }
}

/// `name.eq_ignore_ascii_case(lower)` for `lower` in lowercase ASCII, eight bytes at a time, a
/// tail as the overlapping word that ends with it (see [`make_lowercase`]).
pub fn is_name(name: &[u8], lower: &[u8]) -> bool {
    fn same(x: &[u8], y: &[u8]) -> bool {
        match (x, y) {
            (&[a, b, c, d], &[e, f, g, h]) => {
                lower_word(u64::from(u32::from_ne_bytes([a, b, c, d])))
                    == Some(u64::from(u32::from_ne_bytes([e, f, g, h])))
            }
            _ => lower_word(word(x)) == Some(word(y)),
        }
    }
    let n = name.len();
    if n != lower.len() {
        return false;
    }
    match n {
        0..4 => name.eq_ignore_ascii_case(lower),
        4..8 => same(&name[..4], &lower[..4]) && same(&name[n - 4..], &lower[n - 4..]),
        _ => {
            name.chunks_exact(8)
                .zip(lower.chunks_exact(8))
                .all(|(x, y)| same(x, y))
                && same(&name[n - 8..], &lower[n - 8..])
        }
    }
}

/// Whether a proxy keeps `name` to itself (RFC 9110 §7.6.1), besides the names `Connection`
/// lists. Sorted by length first: most names of a response are none of these, and most differ in
/// length from all of them.
pub fn hop_by_hop(name: &[u8]) -> bool {
    let is = |n: &str| is_name(name, n.as_bytes());
    match name.len() {
        2 => is("te"),
        7 => is("trailer") || is("upgrade"),
        10 => is("connection") || is("keep-alive"),
        16 => is("proxy-connection"),
        17 => is("transfer-encoding"),
        18 => is("proxy-authenticate"),
        19 => is("proxy-authorization"),
        _ => false,
    }
}

/// `uri` as an origin-form request target (path and query only), as the next hop gets it.
pub fn origin_form(uri: Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() && uri.path_and_query().is_some() {
        return uri;
    }
    let mut parts = uri.into_parts();
    parts.scheme = None;
    parts.authority = None;
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
}

/// Whether a request or response asks to switch protocols (WebSocket, HMR...).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Removes hop-by-hop headers, including those named in `Connection`. When the message is an
/// upgrade, `Connection: upgrade` and `Upgrade` are kept so the next hop can switch too.
/// `TE: trailers` is kept: it is the one value HTTP/2 allows, and gRPC requires it (servers use
/// it to detect proxies that would drop the trailers carrying the call's status).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names present is then cheaper than
    // a lookup for every hop-by-hop name. Headers named in `Connection` need a `Connection`.
    let mut present = headers.keys().filter(|name| HOP_BY_HOP.contains(name));
    let Some(first) = present.next() else {
        return;
    };
    // The next most common case: `Connection: keep-alive` (or `close`) alone, which names no
    // other header. Removing it is all there is to do.
    if first == header::CONNECTION && present.next().is_none() {
        let plain = headers.get_all(header::CONNECTION).iter().all(|v| {
            v.as_bytes().split(|b| *b == b',').all(|t| {
                let t = t.trim_ascii();
                t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
            })
        });
        if plain {
            headers.remove(header::CONNECTION);
            return;
        }
    }
    let upgrade = is_upgrade(headers);
    let upgrade_value = headers.get(header::UPGRADE).cloned();
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"trailers"));
    // `Connection: keep-alive` (or `close`) names no header of its own: skip those tokens, so
    // the usual response costs no allocation here.
    let named: Vec<header::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("keep-alive") && !t.eq_ignore_ascii_case("close"))
        .filter_map(|t| header::HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if let (true, Some(value)) = (upgrade, upgrade_value) {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Joins two upgraded connections (visitor side and origin side) until either closes.
pub async fn splice_upgrades(a: hyper::upgrade::OnUpgrade, b: hyper::upgrade::OnUpgrade) {
    let (a, b) = match tokio::try_join!(a, b) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(%e, "upgrade failed");
            return;
        }
    };
    splice(
        hyper_util::rt::TokioIo::new(a),
        hyper_util::rt::TokioIo::new(b),
    )
    .await;
}

/// Copies both ways between two connections until both directions have ended (each end's EOF
/// reaches the other as a shutdown of its write half) or either fails; returns the bytes copied
/// from `a` to `b` and from `b` to `a`, or `None` on failure.
pub async fn splice<A, B>(mut a: A, mut b: B) -> Option<(u64, u64)>
where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // 64 KiB buffers: WebSocket messages of several MiB (HMR bundles) cross in few reads.
    match tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024).await {
        Ok((up, down)) => {
            tracing::debug!(up, down, "upgraded connection closed");
            Some((up, down))
        }
        Err(e) => {
            tracing::debug!(%e, "upgraded connection broke");
            None
        }
    }
}

/// Whether the client prefers JSON (an `Accept` naming `application/json` before any HTML).
pub fn wants_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .is_some_and(|v| accept_wants_json(v.as_bytes()))
}

/// [`wants_json`] of one `Accept` value.
pub fn accept_wants_json(accept: &[u8]) -> bool {
    // The first of the two media ranges listed decides. (Every request asks this, and most
    // never need the answer: a pass over the items is cheaper than two substring searches.)
    for range in accept.split(|b| *b == b',') {
        let media = range
            .split(|b| *b == b';')
            .next()
            .unwrap_or(b"")
            .trim_ascii();
        if media.eq_ignore_ascii_case(b"application/json") {
            return true;
        }
        if media.eq_ignore_ascii_case(b"text/html") {
            return false;
        }
    }
    false
}

/// A small page naming the problem: HTML, or JSON when the client asked for it.
pub fn error_page(status: StatusCode, kind: PageKind, message: &str, json: bool) -> Response<Body> {
    let (content_type, body) = if json {
        let body = serde_json::json!({ "error": kind.code(), "status": status.as_u16(), "message": message });
        ("application/json", body.to_string())
    } else {
        let title = format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
        let body = format!(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">\
             <h1>{t}</h1><p>{m}</p><hr><p><small>ggrok</small></p></body></html>\n",
            t = escape_html(&title),
            m = escape_html(message)
        );
        ("text/html; charset=utf-8", body)
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-store")
        .header(crate::protocol::HEADER_ERROR, kind.code())
        .body(full(body))
        .expect("static response parts are valid")
}

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lowercase_and_compare_as_the_byte_by_byte_way_does() {
        // Every byte value, at every position of words and tails.
        for len in 0..=26 {
            for b in 0..=255u8 {
                let mut name: Vec<u8> = (0..len)
                    .map(|i| b"Content-Length-X-Forwarded"[i % 26])
                    .collect();
                if len > 0 {
                    name[(b as usize) % len] = b;
                }
                let mut fast = name.clone();
                make_lowercase(&mut fast);
                assert_eq!(fast, name.to_ascii_lowercase(), "{name:?}");
                let lower = name.to_ascii_lowercase();
                // (`is_name` compares with ASCII names only.)
                if lower.is_ascii() {
                    assert!(is_name(&name, &lower), "{name:?}");
                }
                for other in [
                    &b"content-length"[..],
                    b"connection",
                    b"x-forwarded-for",
                    b"",
                ] {
                    assert_eq!(
                        is_name(&name, other),
                        name.eq_ignore_ascii_case(other),
                        "{name:?}"
                    );
                }
            }
        }
        assert!(is_name(b"Transfer-Encoding", b"transfer-encoding"));
        assert!(!is_name(b"Transfer-Encodinh", b"transfer-encoding"));
        assert!(!is_name(b"Transfer\xc0Encoding", b"transfer-encoding"));
    }

    #[test]
    fn origin_form_keeps_path_and_query_only() {
        for (given, sent) in [
            ("/a/b?c=1", "/a/b?c=1"),
            ("http://app.example.com:8080/x?y", "/x?y"),
            ("https://app.example.com", "/"),
            ("*", "*"),
            ("/%FF%FE", "/%FF%FE"),
        ] {
            let uri: Uri = given.parse().unwrap();
            assert_eq!(origin_form(uri).to_string(), sent, "{given}");
        }
    }

    #[test]
    fn strips_hop_by_hop_but_keeps_upgrade() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert!(is_upgrade(&h));

        // Each kind alone is found by the quick check that skips clean messages.
        for name in ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"] {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static("x"));
            h.insert("x-kept", HeaderValue::from_static("1"));
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{name} is stripped");
        }

        // `Connection` alone: plain tokens take the short path, a named header does not.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        h.append(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "the header Connection names goes too");
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert(header::TE, HeaderValue::from_static("gzip, Trailers"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.get(header::TE).unwrap(), "trailers", "gRPC's TE stays");
    }

    #[test]
    fn error_pages_escape_and_negotiate() {
        let r = error_page(
            StatusCode::BAD_GATEWAY,
            PageKind::LocalUnreachable,
            "<b>x</b>",
            false,
        );
        assert_eq!(r.status(), 502);
        assert_eq!(
            r.headers()[crate::protocol::HEADER_ERROR],
            "local_unreachable"
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/html"),
        );
        assert!(wants_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/html,application/json"),
        );
        assert!(!wants_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("image/webp, Application/JSON;q=0.9, text/html;q=0.8"),
        );
        assert!(wants_json(&h), "parameters and case do not matter");
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json-seq, */*"),
        );
        assert!(!wants_json(&h), "another type is not JSON");
        assert!(!wants_json(&HeaderMap::new()));
        assert_eq!(
            escape_html("<a href='x'>&"),
            "&lt;a href=&#39;x&#39;&gt;&amp;"
        );
    }
}
