//! Keeps one tenant's cookies to its own tunnel.
//!
//! Every tunnel is a sibling under one domain, so `Set-Cookie: sid=x; Domain=DOMAIN` from
//! `evil.DOMAIN` would reach `victim.DOMAIN` too (cookie tossing, session fixation). Browsers
//! refuse such cookies only when DOMAIN is on the Public Suffix List, which a self-hosted
//! domain usually is not. So a `Domain` attribute other than the tunnel's own host is dropped,
//! which makes the cookie host-only: set for, and sent to, that tunnel alone.

use http::{header, HeaderMap, HeaderValue};

/// Drops `Domain` attributes other than `NAME.DOMAIN` from the `Set-Cookie` headers of a
/// response from tunnel `name`.
pub(crate) fn narrow(h: &mut HeaderMap, name: &str, domain: &str) {
    if !h.contains_key(header::SET_COOKIE) {
        return;
    }
    let host = format!("{name}.{domain}");
    let values: Vec<HeaderValue> = h
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| narrowed(v, &host).unwrap_or_else(|| v.clone()))
        .collect();
    h.remove(header::SET_COOKIE);
    for v in values {
        h.append(header::SET_COOKIE, v);
    }
}

/// `cookie` without its foreign `Domain` attributes, or `None` if it has none.
fn narrowed(cookie: &HeaderValue, host: &str) -> Option<HeaderValue> {
    narrowed_bytes(cookie.as_bytes(), host)
        .map(|v| HeaderValue::from_bytes(&v).expect("a subset of a valid value"))
}

/// A `Set-Cookie` value of tunnel host `host` without its foreign `Domain` attributes, or `None`
/// if it has none.
pub(crate) fn narrowed_bytes(bytes: &[u8], host: &str) -> Option<Vec<u8>> {
    let mut parts = bytes.split(|&b| b == b';');
    let mut kept: Vec<&[u8]> = vec![parts.next().unwrap_or_default()];
    let mut dropped = false;
    for attr in parts {
        let (key, value) = match attr.iter().position(|&b| b == b'=') {
            Some(i) => (&attr[..i], &attr[i + 1..]),
            None => (attr, &attr[..0]),
        };
        if key.trim_ascii().eq_ignore_ascii_case(b"domain") {
            // RFC 6265 §5.2.3: a leading dot is ignored.
            let value = value.trim_ascii();
            let value = value.strip_prefix(b".").unwrap_or(value);
            if !value.eq_ignore_ascii_case(host.as_bytes()) {
                dropped = true;
                continue;
            }
        }
        kept.push(attr);
    }
    dropped.then(|| kept.join(&b';'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn narrow_all(cookies: &[&str]) -> Vec<String> {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        for c in cookies {
            h.append(header::SET_COOKIE, c.parse().unwrap());
        }
        narrow(&mut h, "app", "tunnel.example.com");
        assert_eq!(h[header::CONTENT_TYPE], "text/plain");
        h.get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn domains_other_than_the_tunnel_are_dropped() {
        assert_eq!(
            narrow_all(&[
                "sid=1; Domain=tunnel.example.com; Path=/; HttpOnly",
                "a=2; domain=.TUNNEL.example.com",
                "b=3;Domain=example.com;Secure",
                "c=4; Domain=victim.tunnel.example.com",
                "d=5; Domain=x.app.tunnel.example.com",
            ]),
            ["sid=1; Path=/; HttpOnly", "a=2", "b=3;Secure", "c=4", "d=5",]
        );
    }

    #[test]
    fn the_tunnels_own_host_and_host_only_cookies_pass_unchanged() {
        let same = [
            "sid=1; Domain=app.tunnel.example.com; Path=/",
            "a=2; Domain=.APP.tunnel.example.com",
            "b=3; Path=/; Max-Age=60",
            "c=domain=x; Path=/",
        ];
        assert_eq!(narrow_all(&same), same);
        // Several Domain attributes (the last one counts in browsers): every foreign one goes.
        assert_eq!(
            narrow_all(&["e=5; Domain=app.tunnel.example.com; Domain=example.com"]),
            ["e=5; Domain=app.tunnel.example.com"]
        );
    }
}
