//! The heads that open and answer a stream ([`crate::protocol::FRAME_OPEN`] and
//! [`crate::protocol::FRAME_HEADERS`] payloads), in a plain length-prefixed binary form.
//!
//! A request crosses the tunnel as its parsed parts, not as HTTP/1.1 text: the server has
//! parsed the visitor's request already and the client hands parts to its HTTP client, so
//! writing and parsing a text head in between was work done twice on every request. Names and
//! values are validated again on decoding, as the text parser would have: the peer is not
//! trusted.
//!
//! Layout (integers big-endian):
//! - request: `1u8`, method (`u8` length + bytes), target (`u32` length + origin-form bytes),
//!   headers;
//! - TCP connection: `2u8`, the visitor's address (`u16` length + `ip:port` text);
//! - response: status (`u16`), headers;
//! - trailers: headers;
//! - headers: count (`u16`), then per header name (`u16` length + bytes) and value (`u32`
//!   length + bytes), in order, repeated names repeated.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};

use crate::protocol::{OPEN_HTTP, OPEN_TCP, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO};

/// A head that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed head: {0}")]
pub struct HeadError(&'static str);

/// What a stream's opening head asks for.
#[derive(Debug)]
pub enum Open {
    /// An HTTP request: its head (the body follows as the stream's data).
    Http(http::request::Parts),
    /// A TCP connection from the visitor at this address (text, for logs).
    Tcp(String),
}

fn put_headers(out: &mut BytesMut, headers: &HeaderMap) {
    out.put_u16(headers.len().min(u16::MAX as usize) as u16);
    for (name, value) in headers.iter().take(u16::MAX as usize) {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
}

fn headers_len(headers: &HeaderMap) -> usize {
    2 + headers
        .iter()
        .map(|(k, v)| 6 + k.as_str().len() + v.len())
        .sum::<usize>()
}

/// The opening head of an HTTP request: method, origin-form target and headers.
pub fn encode_request(method: &Method, uri: &Uri, headers: &HeaderMap) -> Bytes {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = BytesMut::with_capacity(
        1 + 1 + method.as_str().len() + 4 + target.len() + headers_len(headers),
    );
    out.put_u8(OPEN_HTTP);
    out.put_u8(method.as_str().len() as u8);
    out.put_slice(method.as_str().as_bytes());
    out.put_u32(target.len() as u32);
    out.put_slice(target.as_bytes());
    put_headers(&mut out, headers);
    out.freeze()
}

/// The opening head of a TCP connection from `peer`.
pub fn encode_tcp(peer: &str) -> Bytes {
    let peer = &peer.as_bytes()[..peer.len().min(u16::MAX as usize)];
    let mut out = BytesMut::with_capacity(3 + peer.len());
    out.put_u8(OPEN_TCP);
    out.put_u16(peer.len() as u16);
    out.put_slice(peer);
    out.freeze()
}

/// The answering head of an HTTP response.
pub fn encode_response(status: StatusCode, headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::with_capacity(2 + headers_len(headers));
    out.put_u16(status.as_u16());
    put_headers(&mut out, headers);
    out.freeze()
}

/// A head written header by header, as they are parsed off the wire: an answering head (the
/// client, from the local service's answer) or an opening one (the server, from the visitor's
/// request). Names are lowercased, as a header map has them, so the peer's decoding finds its
/// standard names.
pub struct HeadWriter {
    out: BytesMut,
    /// Where the header count goes, once it is known.
    count_at: usize,
    count: u16,
}

/// The answering head's writer, by the name the client knows it.
pub type ResponseHeadWriter = HeadWriter;

impl HeadWriter {
    /// An answering head with `status`, room for `size` bytes of headers (with their lengths).
    pub fn new(status: StatusCode, size: usize) -> Self {
        let mut out = BytesMut::with_capacity(4 + size);
        out.put_u16(status.as_u16());
        Self::headers_from(out)
    }

    /// An opening head of an HTTP request: `method` (a token), `target` (origin form), room for
    /// `size` bytes of headers (with their lengths).
    pub fn request(method: &[u8], target: &[u8], size: usize) -> Self {
        Self::request_after(&[], method, target, size)
    }

    /// [`request`](Self::request)'s head after `prefix` (a hop's visitor part, see
    /// [`crate::protocol::HopHead::request_writer`]).
    pub fn request_after(prefix: &[u8], method: &[u8], target: &[u8], size: usize) -> Self {
        let mut out =
            BytesMut::with_capacity(prefix.len() + 8 + method.len() + target.len() + size);
        out.put_slice(prefix);
        out.put_u8(OPEN_HTTP);
        out.put_u8(method.len() as u8);
        out.put_slice(method);
        out.put_u32(target.len() as u32);
        out.put_slice(target);
        Self::headers_from(out)
    }

    fn headers_from(mut out: BytesMut) -> Self {
        let count_at = out.len();
        out.put_u16(0);
        Self {
            out,
            count_at,
            count: 0,
        }
    }

    /// Adds one header; headers past the format's limit of 65,535 are left out.
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        if self.count == u16::MAX || name.len() > u16::MAX as usize {
            return;
        }
        self.count += 1;
        self.out.put_u16(name.len() as u16);
        let start = self.out.len();
        self.out.put_slice(name);
        crate::http_util::make_lowercase(&mut self.out[start..]);
        self.out.put_u32(value.len() as u32);
        self.out.put_slice(value);
    }

    /// The encoded head, as [`encode_response`] or [`encode_request`] writes it.
    pub fn finish(mut self) -> Bytes {
        let at = self.count_at;
        self.out[at..at + 2].copy_from_slice(&self.count.to_be_bytes());
        self.out.freeze()
    }
}

/// Trailers that end a body.
pub fn encode_trailers(headers: &HeaderMap) -> Bytes {
    let mut out = BytesMut::with_capacity(headers_len(headers));
    put_headers(&mut out, headers);
    out.freeze()
}

/// The names the server adds to every request it forwards: not among `http`'s standard names,
/// so parsing would check and copy each into an allocation of its own.
const FORWARDED: [HeaderName; 3] = [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST];

fn header_name(bytes: &[u8]) -> Result<HeaderName, HeadError> {
    if bytes.starts_with(b"x-forwarded-") {
        if let Some(known) = FORWARDED.iter().find(|k| k.as_str().as_bytes() == bytes) {
            return Ok(known.clone());
        }
    }
    HeaderName::from_bytes(bytes).map_err(|_| HeadError("bad header name"))
}

/// Reads a head, handing out zero-copy slices of it.
struct Reader {
    buf: Bytes,
    pos: usize,
}

impl Reader {
    /// The next `n` bytes, borrowed: lengths and names need no reference to the buffer.
    fn slice(&mut self, n: usize) -> Result<&[u8], HeadError> {
        if self.buf.len() - self.pos < n {
            return Err(HeadError("cut off"));
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    /// The next `n` bytes as a zero-copy slice of the buffer (values keep it alive).
    fn take(&mut self, n: usize) -> Result<Bytes, HeadError> {
        if self.buf.len() - self.pos < n {
            return Err(HeadError("cut off"));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8, HeadError> {
        Ok(self.slice(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, HeadError> {
        let b = self.slice(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, HeadError> {
        let b = self.slice(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn headers(&mut self) -> Result<HeaderMap, HeadError> {
        let count = self.u16()? as usize;
        // Each header takes at least 6 bytes: a count beyond what is left is a lie.
        if count * 6 > self.buf.len() - self.pos {
            return Err(HeadError("more headers than bytes"));
        }
        let mut map = HeaderMap::with_capacity(count);
        for _ in 0..count {
            let n = self.u16()? as usize;
            let name = header_name(self.slice(n)?)?;
            let n = self.u32()? as usize;
            let value = self.take(n)?;
            let value =
                HeaderValue::from_maybe_shared(value).map_err(|_| HeadError("bad header value"))?;
            map.append(name, value);
        }
        Ok(map)
    }

    fn end(&self) -> Result<(), HeadError> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(HeadError("bytes after the end"))
        }
    }
}

/// Decodes an opening head.
pub fn decode_open(buf: Bytes) -> Result<Open, HeadError> {
    let mut r = Reader { buf, pos: 0 };
    match r.u8()? {
        OPEN_HTTP => {
            let n = r.u8()? as usize;
            let method = Method::from_bytes(r.slice(n)?).map_err(|_| HeadError("bad method"))?;
            let n = r.u32()? as usize;
            let target = r.take(n)?;
            if target.first() != Some(&b'/') && &target[..] != b"*" {
                return Err(HeadError("the target is not in origin form"));
            }
            let uri = Uri::from_maybe_shared(target).map_err(|_| HeadError("bad target"))?;
            let headers = r.headers()?;
            r.end()?;
            let mut req = http::Request::new(());
            *req.method_mut() = method;
            *req.uri_mut() = uri;
            *req.headers_mut() = headers;
            Ok(Open::Http(req.into_parts().0))
        }
        OPEN_TCP => {
            let n = r.u16()? as usize;
            let peer = String::from_utf8_lossy(r.slice(n)?).into_owned();
            r.end()?;
            Ok(Open::Tcp(peer))
        }
        _ => Err(HeadError("unknown stream kind")),
    }
}

/// An HTTP request's opening head read in place, for a client that writes it out as HTTP/1.1
/// without building a header map. Validated as [`decode_open`] validates: the method and the names
/// are tokens, the target is in origin form and the values are what [`HeaderValue`] accepts, so
/// none can carry a line break into the text written from them.
#[derive(Debug)]
pub struct RawRequest<'a> {
    /// The method.
    pub method: Method,
    /// The origin-form target (path and query), or `*`.
    pub target: &'a str,
    /// The headers in order: names as sent (the server sends them lowercase; tokens, so ASCII)
    /// and values, as bytes.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
}

/// Whether `b` may appear in a header name or a method (RFC 9110 §5.6.2, `tchar`).
fn is_tchar(b: u8) -> bool {
    TCHAR[b as usize]
}

/// The bytes a header name may hold (RFC 9110 `tchar`), as a table: a name is checked once per
/// request on the client, where a search of the symbols per byte cost more than the rest.
const TCHAR: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    table
};

/// A byte a header value may hold: visible, space, tab or obs-text.
fn is_value_byte(b: u8) -> bool {
    (b >= 0x20) & (b != 0x7f) | (b == b'\t')
}

/// Whether every byte of a header value passes [`is_value_byte`], eight bytes at a time (values
/// are most of a head's bytes); a word with a byte below 0x20 (a tab, say) or a DEL is checked
/// byte by byte.
fn valid_value(bytes: &[u8]) -> bool {
    use crate::http_util::{word, HIGH_BITS as HIGH};
    const ONES: u64 = 0x0101_0101_0101_0101;
    let word_ok = |chunk: &[u8]| {
        let w = word(chunk);
        // The classic "has a byte less than n" and "has a zero byte" tests: never a miss, and a
        // false hit only costs the check byte by byte.
        let below = w.wrapping_sub(ONES * 0x20) & !w & HIGH;
        let del = w ^ (ONES * 0x7f);
        let del = del.wrapping_sub(ONES) & !del & HIGH;
        below | del == 0 || all_bytes(chunk, is_value_byte)
    };
    if bytes.len() < 8 {
        return all_bytes(bytes, is_value_byte);
    }
    let mut chunks = bytes.chunks_exact(8);
    // The last word overlaps the one before it rather than leaving a tail byte by byte.
    (&mut chunks).fold(true, |all, chunk| all & word_ok(chunk))
        & (chunks.remainder().is_empty() || word_ok(&bytes[bytes.len() - 8..]))
}

/// Whether every byte of `bytes` passes `ok`, without stopping at the first that does not:
/// heads are almost always valid, and a loop without an early exit runs branch-free (and
/// vectorized where `ok` allows).
fn all_bytes(bytes: &[u8], ok: impl Fn(u8) -> bool) -> bool {
    bytes.iter().fold(true, |all, &b| all & ok(b))
}

/// Reads an opening head in place; `Ok(None)` when it opens something other than an HTTP
/// request (a TCP connection).
pub fn decode_request_raw(buf: &[u8]) -> Result<Option<RawRequest<'_>>, HeadError> {
    let mut cursor = Cursor(buf);
    if cursor.take(1)? != [OPEN_HTTP] {
        return Ok(None);
    }
    let n = cursor.take(1)?[0] as usize;
    let method = Method::from_bytes(cursor.take(n)?).map_err(|_| HeadError("bad method"))?;
    let n = u32::from_be_bytes(cursor.take(4)?.try_into().expect("four bytes")) as usize;
    let target = cursor.take(n)?;
    // What `Uri` accepts of an origin-form target, as far as it matters here: visible ASCII.
    if !(target.first() == Some(&b'/') || target == b"*")
        || !all_bytes(target, |b| (0x21..0x7f).contains(&b))
    {
        return Err(HeadError("the target is not in origin form"));
    }
    let target = std::str::from_utf8(target).map_err(|_| HeadError("bad target"))?;
    let headers = cursor.headers(Ok)?;
    Ok(Some(RawRequest {
        method,
        target,
        headers,
    }))
}

/// An answering head read in place, for a server that writes it out as HTTP/1.1 without
/// building a header map; validated as [`decode_response`] validates.
#[derive(Debug)]
pub struct RawResponse<'a> {
    /// The status.
    pub status: StatusCode,
    /// The headers in order, names (tokens, checked) and values as bytes.
    pub headers: Vec<(&'a [u8], &'a [u8])>,
}

/// Reads an answering head in place.
pub fn decode_response_raw(buf: &[u8]) -> Result<RawResponse<'_>, HeadError> {
    let mut cursor = Cursor(buf);
    let status = u16::from_be_bytes(cursor.take(2)?.try_into().expect("two bytes"));
    let status = StatusCode::from_u16(status).map_err(|_| HeadError("bad status"))?;
    let headers = cursor.headers(Ok)?;
    Ok(RawResponse { status, headers })
}

/// Reads a head in place: the raw decoders' walk over its bytes.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], HeadError> {
        if self.0.len() < n {
            return Err(HeadError("cut off"));
        }
        let (bytes, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(bytes)
    }

    /// The header list that ends every head, checked as header maps check theirs, each name as
    /// `name` gives it; nothing may follow it.
    fn headers<N>(
        mut self,
        name: impl Fn(&'a [u8]) -> Result<N, HeadError>,
    ) -> Result<Vec<(N, &'a [u8])>, HeadError> {
        let count = u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")) as usize;
        // Each header takes at least 6 bytes: a count beyond what is left is a lie.
        if count * 6 > self.0.len() {
            return Err(HeadError("more headers than bytes"));
        }
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let n = u16::from_be_bytes(self.take(2)?.try_into().expect("two bytes")) as usize;
            let bytes = self.take(n)?;
            if bytes.is_empty() || !all_bytes(bytes, is_tchar) {
                return Err(HeadError("bad header name"));
            }
            let name = name(bytes)?;
            let n = u32::from_be_bytes(self.take(4)?.try_into().expect("four bytes")) as usize;
            let value = self.take(n)?;
            if !valid_value(value) {
                return Err(HeadError("bad header value"));
            }
            headers.push((name, value));
        }
        if !self.0.is_empty() {
            return Err(HeadError("bytes after the end"));
        }
        Ok(headers)
    }
}

/// Decodes an answering head.
pub fn decode_response(buf: Bytes) -> Result<http::response::Parts, HeadError> {
    let mut r = Reader { buf, pos: 0 };
    let status = StatusCode::from_u16(r.u16()?).map_err(|_| HeadError("bad status"))?;
    let headers = r.headers()?;
    r.end()?;
    let mut resp = http::Response::new(());
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    Ok(resp.into_parts().0)
}

/// Decodes trailers.
pub fn decode_trailers(buf: Bytes) -> Result<HeaderMap, HeadError> {
    let mut r = Reader { buf, pos: 0 };
    let headers = r.headers()?;
    r.end()?;
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked_as_byte_by_byte() {
        for len in [1, 7, 8, 9, 16, 23] {
            for b in 0..=255u8 {
                for at in [0, len / 2, len - 1] {
                    let mut value = vec![b'v'; len];
                    value[at] = b;
                    assert_eq!(
                        valid_value(&value),
                        all_bytes(&value, is_value_byte),
                        "{value:?}"
                    );
                }
            }
        }
        // Mixed words, from bytes near the edges (a tiny LCG: no dependency for this).
        let edges = [
            0x00, 0x09, 0x0a, 0x1f, 0x20, 0x21, 0x7e, 0x7f, 0x80, 0x81, 0xa0, 0xfe, 0xff,
        ];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            let value: Vec<u8> = (0..11)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    edges[(seed >> 33) as usize % edges.len()]
                })
                .collect();
            assert_eq!(
                valid_value(&value),
                all_bytes(&value, is_value_byte),
                "{value:?}"
            );
        }
        assert!(valid_value(b"text/html;\tcharset=utf-8, caf\xc3\xa9"));
        assert!(!valid_value(b"text/html;\r\ncharset"));
    }

    #[test]
    fn requests_round_trip_with_repeated_and_odd_headers() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.insert("x-empty", HeaderValue::from_static(""));
        h.insert("x-bytes", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        let uri: Uri = "/p/a%20th?q=1&r".parse().unwrap();
        let head = encode_request(&Method::from_bytes(b"PURGE").unwrap(), &uri, &h);
        let Open::Http(parts) = decode_open(head).unwrap() else {
            panic!("not http")
        };
        assert_eq!(parts.method.as_str(), "PURGE");
        assert_eq!(parts.uri, uri);
        assert_eq!(parts.headers, h);
        let cookies: Vec<_> = parts.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "order kept");
    }

    #[test]
    fn answering_heads_read_in_place_as_decoded() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.insert("x-bytes", HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap());
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        let head = encode_response(StatusCode::IM_A_TEAPOT, &h);
        let raw = decode_response_raw(&head).unwrap();
        assert_eq!(raw.status, StatusCode::IM_A_TEAPOT);
        let want: Vec<(&[u8], &[u8])> = vec![
            (b"set-cookie", b"a=1"),
            (b"set-cookie", b"b=2"),
            (b"x-bytes", b"caf\xc3\xa9"),
        ];
        assert_eq!(raw.headers, want);
        // A line break in a value, a bad name, a cut: refused as the mapped decoding refuses.
        let mut w = HeadWriter::new(StatusCode::OK, 0);
        w.push(b"x-a", b"1\r\nx-injected: 1");
        let bad_value = w.finish();
        let mut w = HeadWriter::new(StatusCode::OK, 0);
        w.push(b"x a", b"1");
        let bad_name = w.finish();
        let cut = head.slice(..head.len() - 1);
        for bad in [bad_value, bad_name, cut, Bytes::from_static(&[0, 99, 0, 0])] {
            assert!(decode_response_raw(&bad).is_err(), "{bad:?}");
            assert!(decode_response(bad).is_err());
        }
    }

    #[test]
    fn a_request_head_written_header_by_header_is_the_encoded_one() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("app.example"));
        h.insert("x-forwarded-for", HeaderValue::from_static("192.0.2.1"));
        let uri: Uri = "/p?q=1".parse().unwrap();
        let mut w = HeadWriter::request(b"GET", b"/p?q=1", 0);
        w.push(b"Host", b"app.example");
        w.push(b"x-forwarded-for", b"192.0.2.1");
        assert_eq!(w.finish(), encode_request(&Method::GET, &uri, &h));
    }

    #[test]
    fn a_head_written_header_by_header_is_the_encoded_one() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        let mut w = ResponseHeadWriter::new(StatusCode::CREATED, 0);
        w.push(b"Set-Cookie", b"a=1");
        w.push(b"set-cookie", b"b=2");
        w.push(b"Content-Type", b"text/plain");
        let written = w.finish();
        assert_eq!(written, encode_response(StatusCode::CREATED, &h));
        let parts = decode_response(written).unwrap();
        assert_eq!((parts.status, parts.headers), (StatusCode::CREATED, h));
    }

    #[test]
    fn a_request_read_in_place_is_the_decoded_one() {
        let mut h = HeaderMap::new();
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.insert(
            "x-bytes",
            HeaderValue::from_bytes(b"caf\xc3\xa9\t!").unwrap(),
        );
        let uri: Uri = "/p/a%20th?q=1&r".parse().unwrap();
        let head = encode_request(&Method::PATCH, &uri, &h);
        let raw = decode_request_raw(&head).unwrap().unwrap();
        assert_eq!((raw.method, raw.target), (Method::PATCH, "/p/a%20th?q=1&r"));
        let pairs: Vec<_> = h
            .iter()
            .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
            .collect();
        assert_eq!(raw.headers, pairs);
        assert!(decode_request_raw(&encode_tcp("1.2.3.4:5"))
            .unwrap()
            .is_none());

        // Whatever `decode_open` refuses, this refuses.
        let mut bad_value = encode_request(&Method::GET, &uri, &h).to_vec();
        let at = bad_value.len() - 1;
        bad_value[at] = b'\n';
        let mut bad_name = encode_request(&Method::GET, &uri, &h).to_vec();
        let at = bad_name.windows(3).position(|w| w == b"set").unwrap();
        bad_name[at] = b' ';
        let mut bad_target = encode_request(&Method::GET, &uri, &h).to_vec();
        let at = bad_target.iter().position(|b| *b == b'?').unwrap();
        bad_target[at] = b' ';
        let cut = encode_request(&Method::GET, &uri, &h);
        for bad in [
            bad_value,
            bad_name,
            bad_target,
            cut[..cut.len() - 2].to_vec(),
            [&cut[..], b"x"].concat(),
        ] {
            assert!(decode_request_raw(&bad).is_err(), "{bad:?}");
            assert!(decode_open(Bytes::from(bad)).is_err());
        }
    }

    #[test]
    fn forwarded_names_decode_like_any_other() {
        let mut h = HeaderMap::new();
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-forwarded-port",
            "X-Forwarded-For-Real",
        ] {
            h.append(name, HeaderValue::from_static("v"));
        }
        let head = encode_request(&Method::GET, &"/".parse().unwrap(), &h);
        let Open::Http(parts) = decode_open(head).unwrap() else {
            panic!("not http")
        };
        assert_eq!(parts.headers, h);
        assert_eq!(parts.headers[X_FORWARDED_FOR], "v");
    }

    #[test]
    fn responses_trailers_and_tcp_round_trip() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        let parts = decode_response(encode_response(StatusCode::IM_A_TEAPOT, &h)).unwrap();
        assert_eq!(
            (parts.status, parts.headers),
            (StatusCode::IM_A_TEAPOT, h.clone())
        );
        assert_eq!(decode_trailers(encode_trailers(&h)).unwrap(), h);
        match decode_open(encode_tcp("127.0.0.1:5555")).unwrap() {
            Open::Tcp(peer) => assert_eq!(peer, "127.0.0.1:5555"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_heads_are_refused_not_trusted() {
        let good = encode_request(&Method::GET, &"/".parse().unwrap(), &HeaderMap::new());
        // Every truncation fails cleanly.
        for n in 0..good.len() {
            assert!(decode_open(good.slice(..n)).is_err(), "cut at {n}");
        }
        let mut extra = good.to_vec();
        extra.push(0);
        assert!(decode_open(extra.into()).is_err());
        // A header value with a newline would be a header injection in text form.
        let mut bad = vec![OPEN_HTTP, 3];
        bad.extend_from_slice(b"GET");
        bad.extend_from_slice(&1u32.to_be_bytes());
        bad.push(b'/');
        bad.extend_from_slice(&1u16.to_be_bytes());
        bad.extend_from_slice(&1u16.to_be_bytes());
        bad.push(b'x');
        bad.extend_from_slice(&4u32.to_be_bytes());
        bad.extend_from_slice(b"a\r\nb");
        assert_eq!(
            decode_open(bad.into()).unwrap_err(),
            HeadError("bad header value")
        );
        // Absolute targets and lying counts.
        let abs = encode_request(
            &Method::GET,
            &"http://evil/x".parse().unwrap(),
            &HeaderMap::new(),
        );
        assert!(decode_open(abs).is_ok(), "encoding writes origin form");
        let mut lie = vec![0u8, 200];
        lie.extend_from_slice(&u16::MAX.to_be_bytes());
        assert!(decode_response(lie.into()).is_err());
        assert!(decode_open(Bytes::from_static(&[9])).is_err());
    }

    #[test]
    fn names_and_values_are_checked_as_the_header_map_checks_them() {
        for b in 0..=u8::MAX {
            assert_eq!(
                is_tchar(b),
                http::HeaderName::from_bytes(&[b]).is_ok(),
                "name byte {b:#04x}"
            );
            let value = [b'a', b, b'z'];
            let ours = all_bytes(&value, is_value_byte);
            assert_eq!(
                ours,
                HeaderValue::from_bytes(&value).is_ok(),
                "value byte {b:#04x}"
            );
        }
    }
}
