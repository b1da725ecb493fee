//! Protection a client asks for on its public URL (HTTP Basic auth, an IP allowlist), enforced
//! by the server before a request enters the tunnel, and the server's own rate limits.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc};

use base64::Engine;
use ggrok_tunnel::{
    http_util::{error_page, full, Body, PageKind},
    protocol::{self, Refusal, RefusalKind},
};
use governor::{DefaultKeyedRateLimiter, Quota};
use http::{header, HeaderMap, Response, StatusCode};
use ipnet::IpNet;
use sha2::{Digest, Sha256};

/// What a tunnel requires of its visitors.
#[derive(Debug, Default)]
pub struct Policy {
    /// SHA-256 of `user:password`.
    basic_auth: Option<[u8; 32]>,
    /// Allowed visitor networks; empty allows everyone.
    allow: Vec<IpNet>,
}

impl Policy {
    /// Reads the policy headers of a connect request.
    pub fn from_headers(h: &HeaderMap) -> Result<Policy, Refusal> {
        let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
        let bad = |m: String| Refusal::new(RefusalKind::BadRequest, m);
        let basic_auth = match get(protocol::HEADER_BASIC_AUTH) {
            Some(v) if v.contains(':') && !v.starts_with(':') => {
                Some(Sha256::digest(v.as_bytes()).into())
            }
            Some(_) => return Err(bad("basic auth must look like user:password".into())),
            None => None,
        };
        let allow = match get(protocol::HEADER_ALLOW_IPS) {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    parse_net(s)
                        .ok_or_else(|| bad(format!("{s:?} is not an IP address or CIDR range")))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        Ok(Policy { basic_auth, allow })
    }

    /// `None` when the visitor may pass; otherwise the response to give instead.
    pub fn check(
        &self,
        name: &str,
        ip: IpAddr,
        h: &HeaderMap,
        json: bool,
    ) -> Option<Response<Body>> {
        let ip = ip.to_canonical();
        if !self.allow.is_empty() && !self.allow.iter().any(|net| net.contains(&ip)) {
            let message = format!("Your address {ip} may not use this tunnel.");
            return Some(error_page(
                StatusCode::FORBIDDEN,
                PageKind::Forbidden,
                &message,
                json,
            ));
        }
        if let Some(expected) = self.basic_auth {
            let presented = h
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .map(|creds| <[u8; 32]>::from(Sha256::digest(&creds)));
            if presented != Some(expected) {
                return Some(
                    Response::builder()
                        .status(StatusCode::UNAUTHORIZED)
                        .header(
                            header::WWW_AUTHENTICATE,
                            format!("Basic realm=\"ggrok {name}\", charset=\"UTF-8\""),
                        )
                        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
                        .header(protocol::HEADER_ERROR, PageKind::Unauthorized.code())
                        .body(full("This tunnel needs a user name and password.\n"))
                        .expect("static response"),
                );
            }
        }
        None
    }

    /// Whether the visitor's `Authorization` header belongs to ggrok (and must not reach the
    /// local service).
    pub fn consumes_authorization(&self) -> bool {
        self.basic_auth.is_some()
    }
}

/// An IP address (as a /32 or /128) or a CIDR range.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
}

/// Per-key token buckets; `None` when the limit is off.
pub struct Limiter<K: std::hash::Hash + Eq + Clone>(Option<DefaultKeyedRateLimiter<K>>);

impl<K: std::hash::Hash + Eq + Clone> Limiter<K> {
    /// `per_second` requests per second with a burst of one second's worth; 0 disables.
    pub fn per_second(per_second: u32) -> Self {
        Self(
            NonZeroU32::new(per_second).map(|n| governor::RateLimiter::keyed(Quota::per_second(n))),
        )
    }

    /// `per_minute` attempts per minute with a burst of a minute's worth; 0 disables.
    pub fn per_minute(per_minute: u32) -> Self {
        Self(
            NonZeroU32::new(per_minute).map(|n| governor::RateLimiter::keyed(Quota::per_minute(n))),
        )
    }

    /// Takes one unit for `key`; false when over the limit.
    pub fn allow(&self, key: &K) -> bool {
        self.0.as_ref().is_none_or(|l| l.check_key(key).is_ok())
    }

    /// Forgets keys whose buckets are full again, so memory follows active keys only.
    pub fn sweep(&self) {
        if let Some(l) = &self.0 {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }
}

/// A shared policy handle.
pub type SharedPolicy = Arc<Policy>;

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn allowlists_and_basic_auth() {
        let mut h = HeaderMap::new();
        h.insert(
            protocol::HEADER_ALLOW_IPS,
            HeaderValue::from_static("10.0.0.0/8, 192.0.2.7"),
        );
        h.insert(
            protocol::HEADER_BASIC_AUTH,
            HeaderValue::from_static("alice:s3cret"),
        );
        let p = Policy::from_headers(&h).unwrap();
        let none = HeaderMap::new();
        assert_eq!(
            p.check("app", "203.0.113.1".parse().unwrap(), &none, false)
                .unwrap()
                .status(),
            403
        );
        assert_eq!(
            p.check("app", "10.1.2.3".parse().unwrap(), &none, false)
                .unwrap()
                .status(),
            401
        );
        let mut ok = HeaderMap::new();
        ok.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6czNjcmV0"),
        );
        assert!(p
            .check("app", "192.0.2.7".parse().unwrap(), &ok, false)
            .is_none());
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert!(p
            .check("app", "::ffff:10.0.0.1".parse().unwrap(), &ok, false)
            .is_none());

        let mut bad = HeaderMap::new();
        bad.insert(
            protocol::HEADER_ALLOW_IPS,
            HeaderValue::from_static("10.0.0.0/33"),
        );
        assert_eq!(
            Policy::from_headers(&bad).unwrap_err().error,
            RefusalKind::BadRequest
        );
    }

    #[test]
    fn limiters_limit_per_key() {
        let l = Limiter::per_minute(3);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        assert!((0..3).all(|_| l.allow(&a)));
        assert!(!l.allow(&a));
        assert!(l.allow(&b));
        assert!(Limiter::<IpAddr>::per_minute(0).allow(&a));
    }
}
