//! The PROXY protocol (v1 text or v2 binary) that TCP load balancers put at the start of a
//! connection to name the visitor, where no HTTP header can (TLS passes through them).
//!
//! Read only from `--trusted-proxy` addresses and only with `--proxy-protocol` (see
//! `visitor::behind_balancer`); from anyone else the bytes are served as HTTP or TLS, which
//! refuses them, so a forged header names nobody. A trusted peer that sends no header is
//! closed: taking its own address as the visitor's would put every visitor behind it under one
//! address (one `--allow-ip` verdict, one connect limit).

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest header accepted. A v1 header is at most 107 bytes; a v2 one is 16 plus its payload,
/// which the addresses (at most 216 bytes) and the TLVs load balancers add (a few dozen bytes
/// for AWS's VPC endpoint or GCP's PSC id) keep far below this.
pub(crate) const MAX_HEADER: usize = 4096;

/// Longest v1 header, `\r\n` included (the specification's figure).
const V1_MAX: usize = 107;

/// Why a connection from a trusted proxy was closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The connection did not start with a PROXY header, or the header is malformed.
    #[error("no valid PROXY protocol header")]
    Invalid,
    /// Longer than [`MAX_HEADER`] and still incomplete.
    #[error("PROXY protocol header over {MAX_HEADER} bytes")]
    TooLong,
    /// The peer closed or the read failed before the header was complete.
    #[error("connection ended before its PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// What a complete header says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// Its length in bytes: what follows is the connection's own data.
    pub len: usize,
    /// The visitor, or `None` for a connection the proxy made itself (v2 `LOCAL`, a health
    /// check) or an address family without one (v1 `UNKNOWN`, v2 `UNSPEC`/`UNIX`).
    pub source: Option<SocketAddr>,
}

/// Parses the header at the start of `buf`; `Ok(None)` when more bytes are needed.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<Header>, Error> {
    let result = HeaderResult::parse(buf);
    if result.is_incomplete() {
        // ppp reports a v1 line with missing fields as incomplete even once the line has
        // ended; a v1 header is one line of at most 107 bytes.
        let v1_over = buf.starts_with(b"PROXY")
            && (buf.len() >= V1_MAX || buf.windows(2).any(|w| w == b"\r\n"));
        return if v1_over {
            Err(Error::Invalid)
        } else if buf.len() >= MAX_HEADER {
            Err(Error::TooLong)
        } else {
            Ok(None)
        };
    }
    match result {
        HeaderResult::V1(Ok(h)) => Ok(Some(Header {
            len: h.header.len(),
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        })),
        HeaderResult::V2(Ok(h)) => Ok(Some(Header {
            len: h.len(),
            source: match (h.command, h.addresses) {
                (v2::Command::Local, _) => None,
                (_, v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::from((a.source_address, a.source_port)))
                }
                (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
            },
        })),
        HeaderResult::V1(Err(_)) | HeaderResult::V2(Err(_)) => Err(Error::Invalid),
    }
}

/// Reads the header at the start of `stream` into `buf` and returns the visitor it names
/// (`peer` when it names none). Bytes read past the header stay in `buf`. The caller bounds
/// the time.
pub(crate) async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    peer: SocketAddr,
) -> Result<SocketAddr, Error> {
    loop {
        if !buf.is_empty() {
            if let Some(header) = parse(buf)? {
                buf.advance(header.len);
                return Ok(header.source.unwrap_or(peer));
            }
        }
        buf.reserve(MAX_HEADER);
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: v2::Command, addresses: v2::Addresses) -> Vec<u8> {
        v2::Builder::with_addresses(v2::Version::Two | command, v2::Protocol::Stream, addresses)
            .build()
            .unwrap()
    }

    #[test]
    fn v1_and_v2_name_the_visitor() {
        let text = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nGET / HTTP/1.1\r\n";
        let h = parse(text).unwrap().unwrap();
        assert_eq!(h.source, Some("203.0.113.7:51000".parse().unwrap()));
        assert_eq!(&text[h.len..], b"GET / HTTP/1.1\r\n");
        let six = parse(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n").unwrap();
        assert_eq!(
            six.unwrap().source,
            Some("[2001:db8::7]:51000".parse().unwrap())
        );
        assert_eq!(parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap().source, None);

        let addrs = v2::IPv4::new([203, 0, 113, 7], [192, 0, 2, 1], 51000, 443);
        let mut bin = v2(v2::Command::Proxy, addrs.into());
        let len = bin.len();
        bin.extend_from_slice(b"\x16\x03\x01");
        let h = parse(&bin).unwrap().unwrap();
        assert_eq!(
            (h.len, h.source),
            (len, Some("203.0.113.7:51000".parse().unwrap()))
        );
        let local = v2(v2::Command::Local, v2::Addresses::Unspecified);
        assert_eq!(parse(&local).unwrap().unwrap().source, None);
    }

    #[test]
    fn partial_missing_and_oversized_headers() {
        assert!(parse(b"PROXY TCP4 203.0.").unwrap().is_none());
        assert!(parse(b"\r\n\r\n\0\r\nQUIT").unwrap().is_none());
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Err(Error::Invalid)
        ));
        assert!(matches!(
            parse(b"\x16\x03\x01\x02\x00"),
            Err(Error::Invalid)
        ));
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense\r\n"),
            Err(Error::Invalid)
        ));
        // A v2 header announcing a payload longer than the bound is refused once the bound is
        // read, not buffered to its announced 64 KiB.
        let mut big = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff".to_vec();
        big.resize(MAX_HEADER, 0);
        assert!(matches!(parse(&big), Err(Error::TooLong)));
    }

    #[tokio::test]
    async fn read_leaves_what_follows() {
        let sent = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nGET / HTTP/1.1\r\n".to_vec();
        let (mut near, mut far) = tokio::io::duplex(8);
        let writer = tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut far, &sent)
                .await
                .unwrap();
        });
        let mut buf = BytesMut::new();
        let peer = "127.0.0.1:1".parse().unwrap();
        let visitor = read(&mut near, &mut buf, peer).await.unwrap();
        assert_eq!(visitor, "203.0.113.7:51000".parse().unwrap());
        let mut rest = buf.to_vec();
        near.read_to_end(&mut rest).await.unwrap();
        writer.await.unwrap();
        assert_eq!(rest, b"GET / HTTP/1.1\r\n");
    }
}
