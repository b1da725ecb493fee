//! Protection a client asks for on its public URL (HTTP Basic auth, an IP allowlist), enforced
//! by the server before a request enters the tunnel, and the server's own rate limits.

use std::{net::IpAddr, num::NonZeroU32, sync::Arc};

use base64::Engine;
use ggrok_tunnel::{
    http_util::{error_page, full, Body},
    protocol::{self, PageKind, Refusal, RefusalKind},
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
        let bad = |m: String| Refusal::new(RefusalKind::BadRequest, m);
        // A header that is there must count: read as text, a password with non-ASCII
        // characters used to count as no password at all and leave the tunnel open.
        let basic_auth = match h
            .get(protocol::HEADER_BASIC_AUTH)
            .map(|v| v.as_bytes().trim_ascii())
        {
            Some(v) if v.contains(&b':') && !v.starts_with(b":") => Some(Sha256::digest(v).into()),
            Some(_) => return Err(bad("basic auth must look like user:password".into())),
            None => None,
        };
        let allow = match h.get(protocol::HEADER_ALLOW_IPS) {
            Some(list) => list
                .to_str()
                .map_err(|_| bad("the allowed IP list must be ASCII".into()))?
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
        // An allowlist that was asked for but names no one must not mean everyone.
        if allow.is_empty() && h.contains_key(protocol::HEADER_ALLOW_IPS) {
            return Err(bad("the allowed IP list is empty".into()));
        }
        Ok(Policy { basic_auth, allow })
    }

    /// Whether the allowlist lets `ip` in (TCP visitors, who have no request to answer).
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        // A range may be written in either form (found by fuzzing: `::ffff:0:0/95`).
        let mapped = match ip {
            IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
            v6 => v6,
        };
        self.allow.is_empty()
            || self
                .allow
                .iter()
                .any(|net| net.contains(&ip) || net.contains(&mapped))
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
        if !self.allows(ip) {
            let message = format!("Your address {ip} may not use this tunnel.");
            return Some(error_page(
                StatusCode::FORBIDDEN,
                PageKind::Forbidden,
                &message,
                json,
            ));
        }
        if self.basic_auth.is_some() {
            let presented = h.get(header::AUTHORIZATION).map(|v| v.as_bytes());
            if !self.authorizes(presented) {
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

    /// Whether a request whose first `Authorization` value is `presented` passes the tunnel's
    /// Basic auth (any request does when it has none): the value must be text, `Basic ` and
    /// the base64 of `user:password`.
    pub fn authorizes(&self, presented: Option<&[u8]>) -> bool {
        let Some(expected) = self.basic_auth else {
            return true;
        };
        // What `HeaderValue::to_str` takes as text: visible ASCII, spaces and tabs.
        let text = |v: &&[u8]| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
        let presented = presented
            .filter(text)
            .and_then(|v| v.strip_prefix(b"Basic "))
            .and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim_ascii())
                    .ok()
            })
            .map(|creds| <[u8; 32]>::from(Sha256::digest(&creds)));
        presented == Some(expected)
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
    let net = s
        .parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))?;
    // Visitor addresses are compared in canonical form (IPv4-mapped IPv6 as IPv4), so a
    // mapped range must be too, or `::ffff:10.0.0.0/104` would admit nobody.
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .ok()
                .map(IpNet::V4),
            None => Some(net),
        },
        _ => Some(net),
    }
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

/// Open connections per address, capped: one address cannot hold every slot of a tunnel (a
/// client serves at most 4,096 streams) or of the server with idle connections.
#[derive(Clone)]
pub struct ConnCounter {
    max: usize,
    open: Arc<std::sync::Mutex<std::collections::HashMap<IpAddr, usize>>>,
}

/// One open connection of an address; dropping it gives the place back.
pub struct ConnGuard {
    counter: ConnCounter,
    ip: IpAddr,
}

impl ConnCounter {
    /// At most `max` connections per address at once; 0 disables.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            open: Default::default(),
        }
    }

    /// A place for one more connection from `ip`, or `None` when it has `max` open. Memory
    /// follows the addresses with connections open: an address is forgotten at its last close.
    pub fn try_open(&self, ip: IpAddr) -> Option<ConnGuard> {
        if self.max == 0 {
            return Some(ConnGuard {
                counter: Self::new(0),
                ip,
            });
        }
        let mut open = self.open.lock().expect("connection counter lock");
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            counter: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.counter.max == 0 {
            return;
        }
        let mut open = self.counter.open.lock().expect("connection counter lock");
        if let std::collections::hash_map::Entry::Occupied(mut e) = open.entry(self.ip) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
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
        // The raw check the holder of a hopped request uses: the first value, as text.
        assert!(p.authorizes(Some(b"Basic YWxpY2U6czNjcmV0")));
        assert!(p.authorizes(Some(b"Basic  YWxpY2U6czNjcmV0\t")));
        for bad in [
            &b"Basic YWxpY2U6czNjcmV0\xff"[..],
            b"basic YWxpY2U6czNjcmV0",
            b"Basic YWxpY2U6czNjcmV1",
            b"",
        ] {
            assert!(!p.authorizes(Some(bad)), "{bad:?}");
        }
        assert!(!p.authorizes(None));
        assert!(Policy::default().authorizes(None));
        // IPv4-mapped IPv6 peers count as their IPv4 address.
        assert!(p
            .check("app", "::ffff:10.0.0.1".parse().unwrap(), &ok, false)
            .is_none());

        // Found by fuzzing: an IPv4-mapped range used to admit nobody.
        let mut mapped = HeaderMap::new();
        mapped.insert(
            protocol::HEADER_ALLOW_IPS,
            HeaderValue::from_static("::ffff:10.0.0.0/104"),
        );
        let p = Policy::from_headers(&mapped).unwrap();
        assert!(p
            .check("app", "10.0.0.1".parse().unwrap(), &none, false)
            .is_none());
        assert!(p
            .check("app", "11.0.0.1".parse().unwrap(), &none, false)
            .is_some());

        // Found by fuzzing: a non-ASCII password used to count as none.
        let mut utf8 = HeaderMap::new();
        utf8.insert(
            protocol::HEADER_BASIC_AUTH,
            HeaderValue::from_bytes("alice:pässword".as_bytes()).unwrap(),
        );
        let p = Policy::from_headers(&utf8).unwrap();
        assert_eq!(
            p.check("app", "10.0.0.1".parse().unwrap(), &none, false)
                .unwrap()
                .status(),
            401
        );
        let mut ok = HeaderMap::new();
        let creds = base64::engine::general_purpose::STANDARD.encode("alice:pässword");
        ok.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {creds}")).unwrap(),
        );
        assert!(p
            .check("app", "10.0.0.1".parse().unwrap(), &ok, false)
            .is_none());
        let mut latin = HeaderMap::new();
        latin.insert(
            protocol::HEADER_ALLOW_IPS,
            HeaderValue::from_bytes(b"10.0.0.0/8,\xe9").unwrap(),
        );
        assert!(Policy::from_headers(&latin).is_err());

        for blank in ["", " ", " , ,"] {
            let mut empty = HeaderMap::new();
            empty.insert(protocol::HEADER_ALLOW_IPS, HeaderValue::from_static(blank));
            assert_eq!(
                Policy::from_headers(&empty).unwrap_err().error,
                RefusalKind::BadRequest,
                "{blank:?}"
            );
        }

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
    fn connections_per_address_are_capped_and_forgotten_at_the_last_close() {
        let c = ConnCounter::new(2);
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let first = c.try_open(a).unwrap();
        let _second = c.try_open(a).unwrap();
        assert!(c.try_open(a).is_none());
        assert!(c.try_open(b).is_some());
        drop(first);
        let _third = c.try_open(a).unwrap();
        drop(_third);
        drop(_second);
        assert!(c.open.lock().unwrap().is_empty());
        let off = ConnCounter::new(0);
        let held: Vec<_> = (0..10).map(|_| off.try_open(a).unwrap()).collect();
        assert_eq!(held.len(), 10);
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
