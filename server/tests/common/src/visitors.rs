//! Visitors: real HTTP clients reaching tunnels through a test [`Server`].

use std::time::Duration;

use http::header;

use crate::server::Server;

/// The `Host` header value that reaches tunnel `name` on `server`.
pub fn host(server: &Server, name: &str) -> String {
    format!("{name}.localhost:{}", server.addr.port())
}

/// A visitor: a real HTTP client that never follows redirects or decompresses.
pub fn visitor() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// The text of /metrics on the server at `base` (its URL), read with the metrics token `token`.
pub async fn metrics(base: &str, token: &str) -> String {
    visitor()
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// GET through the tunnel.
pub fn get(server: &Server, name: &str, path: &str) -> reqwest::RequestBuilder {
    visitor()
        .get(format!("{}{path}", server.url()))
        .header(header::HOST, host(server, name))
}

/// Polls until `name` is no longer routed (404). Bounded by the caller's timeout.
pub async fn until_gone(server: &Server, name: &str) {
    loop {
        if get(server, name, "/").send().await.unwrap().status() == 404 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One answer read off a raw connection: status, headers (names lowercased) and body.
pub type Answer = (u16, Vec<(String, String)>, Vec<u8>);

/// Reads `n` answers off `bytes`, as a visitor reads them; `head_of` says which ones answer a
/// `HEAD` (no body whatever the length).
pub fn answers(mut bytes: &[u8], head_of: &[bool]) -> Vec<Answer> {
    let mut out = Vec::new();
    for &head in head_of {
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut slots);
        let httparse::Status::Complete(n) = resp.parse(bytes).unwrap() else {
            panic!(
                "answer {} cut off: {:?}",
                out.len(),
                String::from_utf8_lossy(bytes)
            );
        };
        let status = resp.code.unwrap();
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.to_vec()).unwrap();
                (h.name.to_ascii_lowercase(), value)
            })
            .collect();
        bytes = &bytes[n..];
        let get = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let mut body = Vec::new();
        if head || status == 204 || status == 304 {
        } else if get("transfer-encoding") == Some("chunked") {
            loop {
                let line_end = bytes.windows(2).position(|w| w == b"\r\n").unwrap();
                let size =
                    usize::from_str_radix(std::str::from_utf8(&bytes[..line_end]).unwrap(), 16)
                        .unwrap();
                bytes = &bytes[line_end + 2..];
                body.extend_from_slice(&bytes[..size]);
                assert_eq!(&bytes[size..size + 2], b"\r\n");
                bytes = &bytes[size + 2..];
                if size == 0 {
                    break;
                }
            }
        } else {
            let len: usize = get("content-length").unwrap().parse().unwrap();
            body.extend_from_slice(&bytes[..len]);
            bytes = &bytes[len..];
        }
        out.push((status, headers, body));
    }
    assert!(bytes.is_empty(), "bytes after the last answer: {bytes:?}");
    out
}

/// The first value of header `name` (lowercase) in `answer`.
pub fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer
        .1
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// How many times header `name` (lowercase) is in `answer`.
pub fn header_count(answer: &Answer, name: &str) -> usize {
    answer.1.iter().filter(|(k, _)| k == name).count()
}
