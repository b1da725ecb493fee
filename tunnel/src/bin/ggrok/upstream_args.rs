//! `ggrok http`'s local target (`3000`, `host:3000`, `https://localhost:8443`) and the flags
//! that say how to talk to it: `--upstream-insecure`, `--upstream-protocol`, `--host-header`.

use clap::{Args, ValueEnum};
use ggrok_tunnel::{HostHeader, LocalTarget, Upstream};

/// Where `ggrok http` forwards to, as typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https://` given.
    pub tls: bool,
    /// The host, if given.
    pub host: Option<String>,
    /// The port.
    pub port: u16,
}

/// Parses `3000`, `localhost:3000`, `http://localhost:3000` or `https://localhost:8443`
/// (`https://host` alone is port 443, `http://host` 80).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let port = |p: &str| match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{p:?} is not a port (1-65535)")),
        Ok(p) => Ok(p),
    };
    let (tls, rest) = match s.split_once("://") {
        Some((scheme, rest)) => match scheme.to_ascii_lowercase().as_str() {
            "http" => (Some(false), rest),
            "https" => (Some(true), rest),
            other => return Err(format!("unsupported scheme {other:?}: use http or https")),
        },
        None => (None, s),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(format!(
            "{s:?}: a path cannot be given, only a scheme, host and port"
        ));
    }
    if tls.is_none() && !rest.contains(':') {
        return Ok(Target {
            tls: false,
            host: None,
            port: port(rest)?,
        });
    }
    let authority: http::uri::Authority = rest
        .parse()
        .map_err(|_| format!("{s:?} is not a port, host:port or URL"))?;
    let port = match authority.port() {
        Some(p) => port(p.as_str())?,
        None if tls == Some(true) => 443,
        None if tls == Some(false) => 80,
        None => return Err(format!("{s:?} has no port")),
    };
    // `[::1]` is written bracketed in a URL but resolved without the brackets.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    Ok(Target {
        tls: tls.unwrap_or(false),
        host: Some(host.to_owned()),
        port,
    })
}

/// HTTP version towards the local service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum UpstreamProtocol {
    // Plain comments, not docs: documented values would turn `--help` into the long form.
    // HTTP/1.1 (with WebSocket and other upgrades).
    #[default]
    Http1,
    // HTTP/2: h2c prior knowledge, or h2 by ALPN over TLS. For gRPC services.
    Http2,
}

/// How to talk to the local service.
#[derive(Args, Debug)]
pub struct UpstreamArgs {
    /// Accept the local service's certificate whoever signed it (self-signed development
    /// certificates), for an https:// target.
    #[arg(long)]
    upstream_insecure: bool,
    /// HTTP version spoken to the local service; http2 for gRPC.
    #[arg(long, value_enum, default_value_t = UpstreamProtocol::Http1)]
    upstream_protocol: UpstreamProtocol,
    /// Host header the local service gets: `rewrite` (to the local host:port), `preserve` (the
    /// public host), or a value.
    #[arg(long, value_name = "VALUE|rewrite|preserve", value_parser = parse_host_header)]
    host_header: Option<HostHeader>,
    /// Same as `--host-header preserve` (the flag of earlier versions).
    #[arg(long, hide = true, conflicts_with = "host_header")]
    keep_host: bool,
}

fn parse_host_header(s: &str) -> Result<HostHeader, String> {
    s.parse()
}

/// The local target of `ggrok http`: `target` as typed, `--local-host` for a bare port.
pub fn local_target(
    target: &Target,
    local_host: String,
    args: UpstreamArgs,
) -> anyhow::Result<LocalTarget> {
    if args.upstream_insecure && !target.tls {
        anyhow::bail!("--upstream-insecure is for an https:// target");
    }
    let mut local = LocalTarget::new(target.host.clone().unwrap_or(local_host), target.port);
    local.upstream = Upstream {
        tls: target.tls,
        insecure: args.upstream_insecure,
        http2: args.upstream_protocol == UpstreamProtocol::Http2,
    };
    local.host_header = match (args.host_header, args.keep_host) {
        (Some(h), _) => h,
        (None, true) => HostHeader::Preserve,
        (None, false) => HostHeader::Rewrite,
    };
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let t = |tls, host: Option<&str>, port| Target {
            tls,
            host: host.map(str::to_owned),
            port,
        };
        assert_eq!(parse_target("3000"), Ok(t(false, None, 3000)));
        assert_eq!(
            parse_target("127.0.0.1:3000"),
            Ok(t(false, Some("127.0.0.1"), 3000))
        );
        assert_eq!(
            parse_target("https://localhost:8443"),
            Ok(t(true, Some("localhost"), 8443))
        );
        assert_eq!(
            parse_target("https://dev.test/"),
            Ok(t(true, Some("dev.test"), 443))
        );
        assert_eq!(
            parse_target("http://[::1]:8080"),
            Ok(t(false, Some("::1"), 8080))
        );
        for bad in ["0", "70000", "x", "ftp://a:1", "https://a:1/path", "a:"] {
            assert!(parse_target(bad).is_err(), "{bad}");
        }
    }
}
