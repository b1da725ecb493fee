//! Who may talk to the inspector: a browser on this machine showing the inspector's own page,
//! and scripts (curl, pyngrok). Not another web page, whatever its tricks.

use http::{header, HeaderMap, Method};

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The `Host` header is not this port on loopback: a page on another name that resolves
    /// to 127.0.0.1 (DNS rebinding), or no `Host` at all.
    #[error("the Host header must be 127.0.0.1:{0}, localhost:{0} or [::1]:{0}")]
    Host(u16),
    /// A page of another origin sent it.
    #[error("cross-origin requests are refused")]
    Origin,
    /// A call that changes something without a JSON body.
    #[error("send a JSON body with Content-Type: application/json")]
    NotJson,
}

/// The `Host` values this inspector answers to.
fn host_allowed(host: &str, port: u16) -> bool {
    let Some((name, p)) = host.rsplit_once(':') else {
        return false;
    };
    p.parse() == Ok(port)
        && (name == "127.0.0.1" || name.eq_ignore_ascii_case("localhost") || name == "[::1]")
}

/// Checks a request's headers before it is routed.
pub fn check(method: &Method, headers: &HeaderMap, port: u16) -> Result<(), Refusal> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or(Refusal::Host(port))?;
    if !host_allowed(host, port) {
        return Err(Refusal::Host(port));
    }
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    // Browsers send Origin with every POST and DELETE; curl and scripts send none.
    if let Some(origin) = headers.get(header::ORIGIN) {
        let same = origin
            .to_str()
            .ok()
            .and_then(|o| o.strip_prefix("http://"))
            .is_some_and(|o| o.eq_ignore_ascii_case(host));
        if !same {
            return Err(Refusal::Origin);
        }
    }
    // Also refused when a browser says so, whatever the Origin (defence in depth).
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err(Refusal::Origin);
        }
    }
    if *method == Method::POST {
        let json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(Refusal::NotJson);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn only_loopback_names_of_this_port() {
        for host in [
            "127.0.0.1:4040",
            "localhost:4040",
            "LOCALHOST:4040",
            "[::1]:4040",
        ] {
            assert_eq!(
                check(&Method::GET, &headers(&[("host", host)]), 4040),
                Ok(()),
                "{host}"
            );
        }
        for host in [
            "evil.example:4040",
            "127.0.0.1:4041",
            "127.0.0.1",
            "localhost.evil.example:4040",
            "127.0.0.2:4040",
        ] {
            assert_eq!(
                check(&Method::GET, &headers(&[("host", host)]), 4040),
                Err(Refusal::Host(4040)),
                "{host}"
            );
        }
        assert_eq!(
            check(&Method::GET, &HeaderMap::new(), 4040),
            Err(Refusal::Host(4040))
        );
    }

    #[test]
    fn changes_need_json_and_the_same_origin() {
        let json = ("content-type", "application/json; charset=utf-8");
        let host = ("host", "127.0.0.1:4040");
        let post = |h: &[(&str, &str)]| check(&Method::POST, &headers(h), 4040);
        assert_eq!(post(&[host, json]), Ok(()), "curl: no Origin");
        assert_eq!(
            post(&[host, json, ("origin", "http://127.0.0.1:4040")]),
            Ok(())
        );
        assert_eq!(
            post(&[host, ("content-type", "text/plain")]),
            Err(Refusal::NotJson)
        );
        assert_eq!(post(&[host]), Err(Refusal::NotJson));
        assert_eq!(
            post(&[host, json, ("origin", "http://evil.example")]),
            Err(Refusal::Origin)
        );
        assert_eq!(
            post(&[host, json, ("origin", "http://localhost:4040")]),
            Err(Refusal::Origin),
            "another origin, though on this machine"
        );
        assert_eq!(
            post(&[host, json, ("origin", "null")]),
            Err(Refusal::Origin)
        );
        assert_eq!(
            post(&[host, json, ("sec-fetch-site", "cross-site")]),
            Err(Refusal::Origin)
        );
        let delete = check(
            &Method::DELETE,
            &headers(&[host, ("origin", "http://evil.example")]),
            4040,
        );
        assert_eq!(delete, Err(Refusal::Origin));
        assert_eq!(check(&Method::DELETE, &headers(&[host]), 4040), Ok(()));
    }
}
