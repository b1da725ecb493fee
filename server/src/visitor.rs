//! Who is on the other end of a connection: the peer's address, or the visitor a trusted proxy
//! names (`X-Forwarded-For`/`-Proto` headers, or a PROXY protocol header from a TCP load
//! balancer). Routing, forwarding headers, `--allow-ip`, rate limits and public URLs use it.

use std::net::{IpAddr, SocketAddr};

use ggrok_tunnel::protocol::{X_FORWARDED_FOR, X_FORWARDED_PROTO};
use tracing::debug;

use crate::{proxy_protocol, state::Shared};

/// Who sent a request and how: what routing, forwarding headers and URLs depend on.
#[derive(Debug, Clone)]
pub(crate) struct Visitor {
    pub(crate) peer: SocketAddr,
    /// The visitor's address: the peer's, or what a trusted proxy says in `X-Forwarded-For`.
    pub(crate) ip: IpAddr,
    /// `ip` as text for `X-Forwarded-For`, formatted once per connection rather than per request.
    pub(crate) ip_value: http::HeaderValue,
    /// Came over TLS (ours, or a trusted proxy's); decides `X-Forwarded-Proto` and URL schemes.
    pub(crate) secure: bool,
    /// Came through a trusted proxy, whose `X-Forwarded-For` already names the visitor.
    pub(crate) proxied: bool,
}

impl Visitor {
    /// A visitor that connected straight to us (`secure`: over our TLS).
    pub(crate) fn direct(peer: SocketAddr, secure: bool) -> Self {
        let ip = peer.ip().to_canonical();
        Visitor {
            peer,
            ip,
            ip_value: ip_value(ip),
            secure,
            proxied: false,
        }
    }

    /// The visitor of a request another node of the cluster hopped here, as that node saw it.
    pub(crate) fn hopped(head: ggrok_tunnel::protocol::HopHead) -> Self {
        let ip = head.ip.to_canonical();
        Visitor {
            peer: SocketAddr::new(ip, 0),
            ip,
            ip_value: ip_value(ip),
            secure: head.secure,
            proxied: head.proxied,
        }
    }

    /// Believes `X-Forwarded-Proto`/`-For` only from a trusted proxy.
    pub(crate) fn through(self, trusted: &[ipnet::IpNet], h: &http::HeaderMap) -> Self {
        if !is_trusted(trusted, self.ip) {
            return self;
        }
        let secure = self.secure
            || h.get(X_FORWARDED_PROTO)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
        match forwarded_for(trusted, h) {
            Some(ip) => Visitor {
                ip,
                ip_value: ip_value(ip),
                secure,
                proxied: true,
                ..self
            },
            None => Visitor { secure, ..self },
        }
    }
}

/// Whether `ip` is one of the `--trusted-proxy` networks.
pub(crate) fn is_trusted(trusted: &[ipnet::IpNet], ip: IpAddr) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// The visitor that `X-Forwarded-For` names, read as its proxies wrote it: each proxy appends
/// the address it got the request from, on the last line or on a line of its own (HAProxy's
/// `option forwardfor`). So the entries of every line are walked from the right, past the
/// trusted proxies; the first other address is the visitor, and everything left of it is
/// whatever the visitor chose to send. Only trusted entries: the leftmost. An entry that is
/// not an address where a trusted proxy should have written one: `None`, believe nothing.
fn forwarded_for(trusted: &[ipnet::IpNet], h: &http::HeaderMap) -> Option<IpAddr> {
    let mut leftmost = None;
    for line in h.get_all(X_FORWARDED_FOR).iter().rev() {
        for entry in line.to_str().ok()?.rsplit(',').map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            // Some proxies (Azure's) add the port: `1.2.3.4:5678`, `[2001:db8::1]:5678`.
            let ip = entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|a| a.ip()))
                .ok()?
                .to_canonical();
            if !is_trusted(trusted, ip) {
                return Some(ip);
            }
            leftmost = Some(ip);
        }
    }
    leftmost
}

fn ip_value(ip: IpAddr) -> http::HeaderValue {
    http::HeaderValue::try_from(ip.to_string()).expect("an IP address is a valid header value")
}

/// The visitor behind a trusted TCP load balancer, from the PROXY protocol header that starts
/// `stream` (see [`crate::proxy_protocol`]); bytes read past it are left in `head`. `None`: close the
/// connection. Anyone else's connection is left untouched: its address is the visitor's.
pub(crate) async fn behind_balancer(
    shared: &Shared,
    stream: &mut tokio::net::TcpStream,
    head: &mut bytes::BytesMut,
    peer: SocketAddr,
) -> Option<SocketAddr> {
    if !shared.config.proxy_protocol
        || !is_trusted(&shared.config.trusted_proxies, peer.ip().to_canonical())
    {
        return Some(peer);
    }
    let read = proxy_protocol::read(stream, head, peer);
    match tokio::time::timeout(shared.config.header_read_timeout, read).await {
        Ok(Ok(visitor)) => Some(visitor),
        Ok(Err(e)) => {
            debug!(%e, %peer, "closing a trusted proxy's connection");
            None
        }
        Err(_) => {
            debug!(%peer, "trusted proxy sent no PROXY protocol header in time");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy;

    #[test]
    fn forwarded_for_is_walked_from_the_right_past_trusted_proxies() {
        let trusted = [
            policy::parse_net("10.0.0.0/8").unwrap(),
            policy::parse_net("2001:db8::/32").unwrap(),
        ];
        let walk = |lines: &[&str]| {
            let mut h = http::HeaderMap::new();
            for line in lines {
                h.append(X_FORWARDED_FOR, line.parse().unwrap());
            }
            forwarded_for(&trusted, &h).map(|ip| ip.to_string())
        };
        let ip = |s: &str| Some(s.to_owned());
        // HAProxy's `option forwardfor` adds a line after the visitor's forged one.
        assert_eq!(walk(&["203.0.113.66", "198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(walk(&["203.0.113.66, 198.51.100.7"]), ip("198.51.100.7"));
        // Trusted hops are skipped, whichever line they are on.
        assert_eq!(
            walk(&["203.0.113.66, 198.51.100.7", "10.1.2.3", "10.0.0.9"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            walk(&["203.0.113.66,198.51.100.7 ,10.0.0.1,"]),
            ip("198.51.100.7")
        );
        assert_eq!(
            walk(&["[2001:db9::1]:4711", "2001:db8::2"]),
            ip("2001:db9::1")
        );
        assert_eq!(walk(&["::ffff:198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(walk(&["198.51.100.7:4711"]), ip("198.51.100.7"));
        // Only proxies: the one farthest out.
        assert_eq!(walk(&["10.0.0.2, 10.0.0.1"]), ip("10.0.0.2"));
        // Garbage where a trusted proxy writes: nothing is believed.
        assert_eq!(walk(&["198.51.100.7, unknown"]), None);
        assert_eq!(walk(&["198.51.100.7", "10.0.0.1, _hidden"]), None);
        // Garbage the visitor put left of its own address does not matter.
        assert_eq!(walk(&["unknown, 198.51.100.7"]), ip("198.51.100.7"));
        assert_eq!(walk(&[]), None);
        assert_eq!(walk(&[" , "]), None);
    }
}
