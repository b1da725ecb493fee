//! Exchanges in other tools' formats: a `curl` command line and a HAR 1.2 log.
//!
//! Both aim at the local service, as replay does: the recorded headers are the ones forwarded to
//! it (its `Host`, hop-by-hop headers gone), so the command and the HAR entries repeat what the
//! local service saw.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::traffic::{CapturedBody, Exchange};

/// Headers curl computes itself from the command line; copying them would contradict it.
const CURL_COMPUTES: [&str; 3] = ["content-length", "transfer-encoding", "connection"];

/// `value` as one POSIX shell word: single quotes, each `'` closed, escaped and reopened.
pub fn shell_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// `data` as a `printf` format that prints exactly those bytes: octal escapes for everything
/// but printable ASCII, `%` and `\` escaped, and no `'`, so it can be single-quoted as is.
fn printf_format(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 2);
    for &b in data {
        match b {
            b'%' => out.push_str("%%"),
            b'\\' => out.push_str("\\\\"),
            b'\'' => out.push_str("\\047"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\{b:03o}")),
        }
    }
    out
}

/// A `curl` command that sends `e`'s request to `base` (`http://localhost:3000`): method,
/// path, headers and the captured body. A body that is not text goes through `printf`; a body
/// the capture limit cut is said in a comment line first, as the command sends only its start.
pub fn curl(e: &Exchange, base: &str) -> String {
    let body = &e.request_body.data;
    let text_body = std::str::from_utf8(body).ok().filter(|t| !t.contains('\0'));
    let mut out = String::new();
    if e.request_body.truncated {
        out.push_str(&format!(
            "# The request body was cut at {} of {} bytes: this sends only that part.\n",
            body.len(),
            e.request_body.size
        ));
    }
    if !body.is_empty() && text_body.is_none() {
        out.push_str("printf ");
        out.push_str(&shell_quote(&printf_format(body)));
        out.push_str(" | ");
    }
    out.push_str("curl");
    match e.method.as_str() {
        "GET" if body.is_empty() => {}
        "POST" if !body.is_empty() => {}
        "HEAD" => out.push_str(" --head"),
        m => {
            out.push_str(" -X ");
            out.push_str(&shell_quote(m));
        }
    }
    out.push(' ');
    out.push_str(&shell_quote(&format!("{base}{}", e.path)));
    for (k, v) in e.request_headers.iter() {
        if CURL_COMPUTES.iter().any(|c| k.eq_ignore_ascii_case(c)) {
            continue;
        }
        out.push_str(" \\\n  -H ");
        out.push_str(&shell_quote(&format!("{k}: {v}")));
    }
    if !body.is_empty() {
        out.push_str(" \\\n  --data-binary ");
        match text_body {
            Some(t) => out.push_str(&shell_quote(t)),
            None => out.push_str("@-"),
        }
    }
    out
}

/// RFC 3339 in UTC with milliseconds, as HAR and ngrok's API write times.
pub fn rfc3339_ms(unix_ms: u64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// A HAR 1.2 log of `exchanges` (in the given order), each with the base URL it was sent to.
pub fn har(exchanges: &[(&Exchange, String)]) -> Value {
    json!({
        "log": {
            "version": "1.2",
            "creator": { "name": "ggrok", "version": env!("CARGO_PKG_VERSION") },
            "entries": exchanges.iter().map(|(e, base)| har_entry(e, base)).collect::<Vec<_>>(),
        }
    })
}

fn har_headers(h: &crate::traffic::Headers) -> Vec<Value> {
    h.iter()
        .map(|(k, v)| json!({ "name": k, "value": v }))
        .collect()
}

/// A body as HAR has it: text when it is UTF-8, else base64 with `encoding`.
fn har_text(body: &CapturedBody) -> (String, Option<&'static str>) {
    match std::str::from_utf8(&body.data) {
        Ok(t) => (t.to_owned(), None),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&body.data),
            Some("base64"),
        ),
    }
}

fn har_entry(e: &Exchange, base: &str) -> Value {
    let query: Vec<Value> = e
        .path
        .split_once('?')
        .map(|(_, q)| {
            form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| json!({ "name": k, "value": v }))
                .collect()
        })
        .unwrap_or_default();
    let mut request = json!({
        "method": e.method,
        "url": format!("{base}{}", e.path),
        "httpVersion": "HTTP/1.1",
        "cookies": [],
        "headers": har_headers(&e.request_headers),
        "queryString": query,
        "headersSize": -1,
        "bodySize": e.request_body.size,
    });
    if e.request_body.size > 0 {
        let (text, encoding) = har_text(&e.request_body);
        let mime = e.request_headers.get("content-type").unwrap_or("");
        request["postData"] = json!({ "mimeType": mime, "text": text });
        if let Some(enc) = encoding {
            // Not in HAR 1.2's postData, but read by the tools that import HAR (Chrome's).
            request["postData"]["encoding"] = json!(enc);
        }
    }
    let status = e.status.unwrap_or(0);
    let (text, encoding) = har_text(&e.response_body);
    let mut content = json!({
        "size": e.response_body.size,
        "mimeType": e.response_headers.get("content-type").unwrap_or(""),
        "text": text,
    });
    if let Some(enc) = encoding {
        content["encoding"] = json!(enc);
    }
    let mut notes = Vec::new();
    for (side, body) in [("request", &e.request_body), ("response", &e.response_body)] {
        if body.truncated {
            notes.push(format!(
                "{side} body cut at {} of {} bytes",
                body.data.len(),
                body.size
            ));
        }
    }
    if let Some(err) = &e.error {
        notes.push(err.clone());
    }
    let mut entry = json!({
        "startedDateTime": rfc3339_ms(e.started_ms),
        "time": e.duration_ms,
        "request": request,
        "response": {
            "status": status,
            "statusText": http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or(""),
            "httpVersion": "HTTP/1.1",
            "cookies": [],
            "headers": har_headers(&e.response_headers),
            "content": content,
            "redirectURL": e.response_headers.get("location").unwrap_or(""),
            "headersSize": -1,
            "bodySize": e.response_body.size,
        },
        "cache": {},
        "timings": { "send": 0, "wait": e.duration_ms, "receive": 0 },
    });
    if !notes.is_empty() {
        entry["comment"] = json!(notes.join("; "));
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traffic::Headers;
    use bytes::Bytes;

    fn exchange(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Exchange {
        Exchange {
            id: 1,
            started_ms: 1_700_000_000_123,
            method: method.into(),
            path: path.into(),
            status: Some(201),
            duration_ms: 7,
            remote_addr: None,
            upgraded: false,
            request_headers: headers.iter().copied().collect::<Headers>(),
            response_headers: [("content-type", "text/plain")].into_iter().collect(),
            request_body: CapturedBody {
                data: Bytes::copy_from_slice(body),
                size: body.len() as u64,
                truncated: false,
            },
            response_body: CapturedBody {
                data: Bytes::from_static(&[0xff, 0x00]),
                size: 2,
                truncated: false,
            },
            error: None,
            frames: None,
        }
    }

    #[test]
    fn shell_quoting_survives_quotes_and_expansions() {
        assert_eq!(shell_quote("plain"), "'plain'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(
            shell_quote("$(rm -rf ~) `x` \"y\""),
            "'$(rm -rf ~) `x` \"y\"'"
        );
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn curl_repeats_method_path_headers_and_body() {
        let e = exchange(
            "PUT",
            "/a?b=1&c='2'",
            &[
                ("host", "localhost:3000"),
                ("content-type", "application/json"),
                ("content-length", "12"),
                ("x-quote", "it's"),
            ],
            b"{\"n\":\"o'k\"}",
        );
        assert_eq!(
            curl(&e, "http://localhost:3000"),
            "curl -X 'PUT' 'http://localhost:3000/a?b=1&c='\\''2'\\''' \\\n  \
             -H 'host: localhost:3000' \\\n  \
             -H 'content-type: application/json' \\\n  \
             -H 'x-quote: it'\\''s' \\\n  \
             --data-binary '{\"n\":\"o'\\''k\"}'"
        );
        let get = exchange("GET", "/", &[], b"");
        assert_eq!(curl(&get, "http://h:1"), "curl 'http://h:1/'");
        let post = exchange("POST", "/", &[], b"x");
        assert_eq!(
            curl(&post, "http://h:1"),
            "curl 'http://h:1/' \\\n  --data-binary 'x'"
        );
        let head = exchange("HEAD", "/", &[], b"");
        assert_eq!(curl(&head, "http://h:1"), "curl --head 'http://h:1/'");
    }

    #[test]
    fn curl_pipes_a_binary_body_through_printf_and_says_when_it_was_cut() {
        let mut e = exchange("POST", "/up", &[], b"\x00\xff%\\'a\n");
        e.request_body.size = 100;
        e.request_body.truncated = true;
        assert_eq!(
            curl(&e, "http://h:1"),
            "# The request body was cut at 7 of 100 bytes: this sends only that part.\n\
             printf '\\000\\377%%\\\\\\047a\\012' | curl 'http://h:1/up' \\\n  --data-binary @-"
        );
    }

    #[test]
    fn har_entries_are_well_formed() {
        let e = exchange(
            "POST",
            "/p?q=a%20b&r",
            &[("content-type", "text/plain")],
            b"hi",
        );
        let log = har(&[(&e, "http://localhost:3000".to_owned())]);
        let entry = &log["log"]["entries"][0];
        assert_eq!(log["log"]["version"], "1.2");
        assert_eq!(entry["startedDateTime"], "2023-11-14T22:13:20.123Z");
        assert_eq!(entry["request"]["url"], "http://localhost:3000/p?q=a%20b&r");
        assert_eq!(
            entry["request"]["queryString"],
            json!([{ "name": "q", "value": "a b" }, { "name": "r", "value": "" }])
        );
        assert_eq!(
            entry["request"]["postData"],
            json!({ "mimeType": "text/plain", "text": "hi" })
        );
        assert_eq!(entry["response"]["status"], 201);
        assert_eq!(entry["response"]["statusText"], "Created");
        assert_eq!(
            entry["response"]["content"],
            json!({ "size": 2, "mimeType": "text/plain", "text": "/wA=", "encoding": "base64" })
        );
        assert!(entry.get("comment").is_none());
    }
}
