//! Server settings and the token set.

use std::{collections::HashSet, path::Path, sync::Arc, time::Duration};

use ggrok_tunnel::protocol::Heartbeat;
use sha2::{Digest, Sha256};

/// SHA-256 of a token. Only hashes are kept in memory, so a heap dump or a `Debug` print of the
/// configuration never shows a token.
pub type TokenHash = [u8; 32];

/// Hashes a token.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Loads a PEM certificate chain (e.g. a wildcard `*.DOMAIN` plus `DOMAIN` certificate) and
/// its private key into a TLS config that offers HTTP/2 and HTTP/1.1 by ALPN.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    fn read(p: &Path, what: &'static str) -> impl FnOnce(rustls_pki_types::pem::Error) -> TlsError {
        let path = p.display().to_string();
        move |e| TlsError::Read {
            what,
            path,
            reason: e.to_string(),
        }
    }
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(read(cert, "certificate"))?;
    if chain.is_empty() {
        return Err(TlsError::Read {
            what: "certificate",
            path: cert.display().to_string(),
            reason: "no certificate in file".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(read(key, "private key"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file is missing or not PEM.
    #[error("cannot read the TLS {what} from {path}: {reason}")]
    Read {
        /// Certificate or key.
        what: &'static str,
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Certificate and key do not form a usable pair.
    #[error("unusable TLS certificate or key: {0}")]
    Invalid(String),
}

/// The tokens the server accepts. Empty means open mode: anyone may connect.
#[derive(Clone, Default)]
pub struct Tokens(HashSet<TokenHash>);

impl Tokens {
    /// A set from plain tokens (flags, env), hashed at once. Blank entries are ignored.
    pub fn from_plain<I, S>(tokens: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self(
            tokens
                .into_iter()
                .map(|t| t.as_ref().trim().to_owned())
                .filter(|t| !t.is_empty())
                .map(|t| hash_token(&t))
                .collect(),
        )
    }

    /// Whether no token is configured.
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// The hash of `token` if it is accepted.
    pub fn check(&self, token: &str) -> Option<TokenHash> {
        let h = hash_token(token);
        self.0.contains(&h).then_some(h)
    }

    /// Whether `hash` is one of these tokens' hashes.
    pub fn contains_hash(&self, hash: &TokenHash) -> bool {
        self.0.contains(hash)
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the set is empty (same as [`Tokens::is_open`]).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} MASKED)", self.0.len())
    }
}

/// Everything `run` needs besides the listener.
#[derive(Clone)]
pub struct Config {
    /// Tunnels are served at `NAME.domain`; the apex serves the control endpoint.
    pub domain: String,
    /// Accepted tokens; empty for open mode.
    pub tokens: Tokens,
    /// Ping interval and peer timeout for sessions.
    pub heartbeat: Heartbeat,
    /// How long a dropped client's name stays held for it to reconnect.
    pub reconnect_grace: Duration,
    /// How long a visitor may take to send request headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// How long a request body may stall (nothing arrives while the tunnel waits for more)
    /// before the request is abandoned with 408 (slow-body guard).
    pub body_idle_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish.
    pub drain_timeout: Duration,
    /// Hash of the bearer token that `/metrics` requires; `None` disables `/metrics`.
    pub metrics_token: Option<TokenHash>,
    /// Serve HTTPS (and `wss://` for clients) with this certificate; `None` serves plain HTTP,
    /// for loopback or behind a TLS-terminating proxy.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Proxies whose `X-Forwarded-Proto`/`-For` are believed (a TLS-terminating proxy or PaaS
    /// router); from anyone else those headers are only passed along.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Connections from `trusted_proxies` start with a PROXY protocol header (v1 or v2) naming
    /// the visitor; one without is closed. For TCP load balancers, which cannot add headers.
    pub proxy_protocol: bool,
    /// Names nobody may claim in open mode (a trailing `*` makes an entry a prefix); names
    /// reserved for a token in the store are separate and work in any mode.
    pub reserved_names: Vec<String>,
    /// Connections open at once, visitors' and clients' alike, TCP tunnels' visitors included;
    /// 0: no limit. Past it the server stops accepting until one closes (the kernel's backlog
    /// holds the rest); a TCP tunnel's port resets new visitors instead.
    pub max_conns: usize,
    /// Connections one address may have open at once; 0: no limit. Not counted for
    /// `trusted_proxies` (every visitor behind them shares their address) unless
    /// `proxy_protocol` names the visitor.
    pub max_conns_per_ip: usize,
    /// Connect attempts allowed per client IP per minute (token guessing guard); 0: no limit.
    pub connect_rate: u32,
    /// Public requests allowed per tunnel per second; 0: no limit.
    pub tunnel_rate: u32,
    /// Live tunnels one token may hold; 0: no limit.
    pub max_tunnels_per_token: usize,
    /// Public ports TCP tunnels may get, bound on the IP address the server listens on;
    /// `None`: TCP tunnels are refused.
    pub tcp_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Live TCP tunnels one token may hold (counted apart from HTTP tunnels); 0: no limit.
    pub max_tcp_tunnels_per_token: usize,
    /// Visitor connections one TCP tunnel may have open at once; past it new ones are closed
    /// at once. 0: no limit.
    pub max_conns_per_tcp_tunnel: usize,
    /// Certificates over ACME; when set, `tls` is its resolver's config.
    pub acme: Option<Arc<crate::acme::Acme>>,
    /// Tokens and reserved names created with `ggrok-server token ...`; read on every connect.
    /// SQLite by default; etcd in a cluster.
    pub store: Option<Arc<dyn crate::store::TokenStore>>,
    /// How often the server looks whether `store` changed, to end the sessions of revoked
    /// tokens. A look while nothing changed costs one `PRAGMA data_version`.
    pub revocation_check: Duration,
    /// This server as a node of a cluster (`--cluster`): names are claimed in etcd, and
    /// `store` is the cluster's. `None`: a server on its own.
    pub cluster: Option<Arc<crate::cluster::Node>>,
    /// The newest hop format this node serves and sends between nodes
    /// ([`ggrok_tunnel::protocol::HOP_VERSION`]). `1` makes it speak only the format of nodes
    /// from before format 2: what tests of a cluster in the middle of an upgrade need.
    pub hop_version: u32,
    /// The most credit per stream this server accepts, offered to clients and nodes in
    /// [`ggrok_tunnel::protocol::HEADER_WINDOW`] (default
    /// [`ggrok_tunnel::protocol::MAX_STREAM_WINDOW`]): its readers grow a busy stream's window
    /// up to it for a peer that offers as much. `STREAM_WINDOW` offers nothing and never grows
    /// one, as servers from before growing windows: what tests of mixed versions need.
    pub stream_window: u32,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("domain", &self.domain)
            .field("tokens", &self.tokens)
            .field("heartbeat", &self.heartbeat)
            .field("reconnect_grace", &self.reconnect_grace)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("drain_timeout", &self.drain_timeout)
            .field("metrics_token", &self.metrics_token.map(|_| "MASKED"))
            .field("tls", &self.tls.is_some())
            .field("acme", &self.acme)
            .field("store", &self.store.is_some())
            .field("revocation_check", &self.revocation_check)
            .field("cluster", &self.cluster)
            .field("hop_version", &self.hop_version)
            .field("stream_window", &self.stream_window)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("reserved_names", &self.reserved_names)
            .field("max_conns", &self.max_conns)
            .field("max_conns_per_ip", &self.max_conns_per_ip)
            .field("connect_rate", &self.connect_rate)
            .field("tunnel_rate", &self.tunnel_rate)
            .field("max_tunnels_per_token", &self.max_tunnels_per_token)
            .field("tcp_ports", &self.tcp_ports)
            .field("max_tcp_tunnels_per_token", &self.max_tcp_tunnels_per_token)
            .field("max_conns_per_tcp_tunnel", &self.max_conns_per_tcp_tunnel)
            .finish()
    }
}

/// What an open server keeps anyone from claiming: names visitors take for the operator's own
/// services (a phishing page at `login.DOMAIN`, `mail.DOMAIN`), and every punycode (`xn--`)
/// name, since an internationalized name can look like any other (`аpple` in Cyrillic).
pub const DEFAULT_RESERVED_NAMES: &[&str] = &[
    "www",
    "api",
    "admin",
    "administrator",
    "mail",
    "email",
    "webmail",
    "smtp",
    "imap",
    "pop",
    "mx",
    "ns",
    "ns1",
    "ns2",
    "dns",
    "ftp",
    "metrics",
    "status",
    "login",
    "auth",
    "sso",
    "account",
    "accounts",
    "billing",
    "support",
    "help",
    "security",
    "dashboard",
    "console",
    "root",
    "autoconfig",
    "autodiscover",
    "ggrok",
    "xn--*",
];

impl Config {
    /// Whether `name` (lowercase) is one of `reserved_names`.
    pub fn is_reserved(&self, name: &str) -> bool {
        self.reserved_names
            .iter()
            .any(|r| match r.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name == r,
            })
    }

    /// Open mode for `domain` with default timings.
    pub fn new(domain: impl Into<String>) -> Self {
        Self {
            domain: domain.into().trim_end_matches('.').to_ascii_lowercase(),
            tokens: Tokens::default(),
            heartbeat: Heartbeat::default(),
            reconnect_grace: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            metrics_token: None,
            tls: None,
            acme: None,
            store: None,
            revocation_check: Duration::from_secs(2),
            cluster: None,
            hop_version: ggrok_tunnel::protocol::HOP_VERSION,
            stream_window: ggrok_tunnel::protocol::MAX_STREAM_WINDOW,
            trusted_proxies: Vec::new(),
            proxy_protocol: false,
            reserved_names: DEFAULT_RESERVED_NAMES
                .iter()
                .map(|&n| n.to_owned())
                .collect(),
            max_conns: 10_000,
            max_conns_per_ip: 256,
            connect_rate: 60,
            tunnel_rate: 0,
            max_tunnels_per_token: 20,
            tcp_ports: None,
            max_tcp_tunnels_per_token: 5,
            max_conns_per_tcp_tunnel: 1000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hashed_and_masked() {
        let t = Tokens::from_plain(["s3cret-token", " ", ""]);
        assert_eq!(t.len(), 1);
        assert!(t.check("s3cret-token").is_some());
        assert!(t.check("s3cret-tokeN").is_none());
        assert!(!format!("{t:?}").contains("s3cret"));
        let c = Config {
            tokens: t,
            ..Config::new("Example.COM.")
        };
        assert_eq!(c.domain, "example.com");
        assert!(c.is_reserved("www") && c.is_reserved("xn--pple-43d") && !c.is_reserved("myapp"));
        let none = Config {
            reserved_names: Vec::new(),
            ..Config::new("example.com")
        };
        assert!(!none.is_reserved("www"));
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
