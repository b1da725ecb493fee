//! Settings from flags, environment (`GGROK_*`, `PORT`) and an optional TOML file, in that order
//! of precedence, turned into a [`Config`] with every problem explained.
//!
//! The same struct is the clap argument group and the TOML schema, so a setting cannot exist in
//! one and not the other. Unknown TOML keys are errors: a typo must not silently do nothing.

use std::{net::SocketAddr, ops::RangeInclusive, path::PathBuf, sync::Arc, time::Duration};

use ggrok_tunnel::{protocol::Heartbeat, secrets::mask};
use rustls_pki_types::CertificateDer;
use serde::Deserialize;

use crate::{
    acme::{Acme, AcmeSettings},
    cluster::{
        node::{DEFAULT_LEASE_TTL, LEASE_TTLS},
        ClusterSecret,
    },
    config::{hash_token, load_tls, Config, Tokens},
    policy::parse_net,
    store::Store,
};

/// Every server setting; `None` means "not given here".
#[derive(Clone, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on [default: 0.0.0.0:$PORT when PORT is set, else 127.0.0.1:8080].
    #[arg(long, env = "GGROK_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Domain whose subdomains are tunnels (NAME.DOMAIN); the apex serves the control endpoint
    /// [default: localhost].
    #[arg(long, env = "GGROK_DOMAIN")]
    pub domain: Option<String>,
    /// Token clients must present (repeatable). None here or in the database: open mode.
    #[arg(
        long = "token",
        env = "GGROK_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    #[serde(default)]
    pub tokens: Vec<String>,
    /// SQLite database of tokens and reserved subdomains, created if missing [default: ggrok.db].
    #[arg(long, env = "GGROK_DB", global = true)]
    pub db: Option<PathBuf>,
    /// PEM certificate chain for HTTPS/wss (a wildcard *.DOMAIN certificate that also covers DOMAIN).
    #[arg(long, env = "GGROK_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "GGROK_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Get certificates automatically over ACME (TLS-ALPN-01 on this listener, which must be
    /// reachable on port 443): from Let's Encrypt, or from --acme-directory.
    #[arg(long, env = "GGROK_ACME")]
    #[serde(default)]
    pub acme: bool,
    /// ACME directory URL [default: Let's Encrypt production].
    #[arg(long, env = "GGROK_ACME_DIRECTORY")]
    pub acme_directory: Option<String>,
    /// Contact e-mail for the ACME account.
    #[arg(long, env = "GGROK_ACME_EMAIL")]
    pub acme_email: Option<String>,
    /// Directory for the ACME account and certificates [default: acme-cache].
    #[arg(long, env = "GGROK_ACME_CACHE")]
    pub acme_cache: Option<PathBuf>,
    /// Extra CA (PEM) to trust for the ACME directory itself (private or test ACME servers).
    #[arg(long, env = "GGROK_ACME_DIRECTORY_CA")]
    pub acme_directory_ca: Option<PathBuf>,
    /// Bearer token that enables Prometheus metrics at /metrics on the apex domain.
    #[arg(long, env = "GGROK_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Seconds a dropped client's name stays held for it to reconnect [default: 10].
    #[arg(long, env = "GGROK_RECONNECT_GRACE")]
    pub reconnect_grace: Option<u64>,
    /// On SIGTERM, seconds that requests in flight may take to finish [default: 10].
    #[arg(long, env = "GGROK_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<u64>,
    /// Seconds a request body may send nothing before the request is abandoned [default: 60].
    #[arg(long, env = "GGROK_BODY_IDLE_TIMEOUT")]
    pub body_idle_timeout: Option<u64>,
    /// Address or CIDR of a TLS-terminating proxy in front of the server (repeatable): its
    /// X-Forwarded-Proto and X-Forwarded-For are believed; nobody else's are.
    #[arg(
        long = "trusted-proxy",
        env = "GGROK_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Connections from --trusted-proxy addresses start with a PROXY protocol header (v1 or v2,
    /// as TCP load balancers send) that names the visitor; one that does not is closed.
    #[arg(long, env = "GGROK_PROXY_PROTOCOL")]
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Names nobody may claim in open mode, comma-separated; `xn--*` is a prefix; an empty value
    /// reserves nothing [default: www, api, admin, mail, metrics, ... and xn--*; see
    /// docs/deploy.md].
    #[arg(long, env = "GGROK_RESERVED_NAMES", value_delimiter = ',', num_args = 0..)]
    pub reserved_names: Option<Vec<String>>,
    /// Connections open at once, TCP tunnels' visitors included, 0 for no limit [default:
    /// 10000]. Keep the process's file limit (LimitNOFILE) above it.
    #[arg(long, env = "GGROK_MAX_CONNS")]
    pub max_conns: Option<usize>,
    /// Connections one visitor address may have open at once, 0 for no limit [default: 256].
    #[arg(long, env = "GGROK_MAX_CONNS_PER_IP")]
    pub max_conns_per_ip: Option<usize>,
    /// Connect attempts allowed per client IP per minute, 0 for no limit [default: 60].
    #[arg(long, env = "GGROK_CONNECT_RATE")]
    pub connect_rate: Option<u32>,
    /// Public requests allowed per tunnel per second, 0 for no limit [default: 0].
    #[arg(long, env = "GGROK_TUNNEL_RATE")]
    pub tunnel_rate: Option<u32>,
    /// Tunnels one token may have online at once, 0 for no limit [default: 20].
    #[arg(long, env = "GGROK_MAX_TUNNELS_PER_TOKEN")]
    pub max_tunnels_per_token: Option<usize>,
    /// Public ports for TCP tunnels, LOW-HIGH (e.g. 20000-20999), bound on the IP address of
    /// --listen. Without it TCP tunnels are refused.
    #[arg(long, env = "GGROK_TCP_PORTS", value_name = "LOW-HIGH")]
    pub tcp_ports: Option<String>,
    /// TCP tunnels one token may have online at once (apart from HTTP tunnels), 0 for no limit
    /// [default: 5].
    #[arg(long, env = "GGROK_MAX_TCP_TUNNELS_PER_TOKEN")]
    pub max_tcp_tunnels_per_token: Option<usize>,
    /// Visitor connections one TCP tunnel may have open at once, 0 for no limit [default: 1000].
    #[arg(long, env = "GGROK_MAX_CONNS_PER_TCP_TUNNEL")]
    pub max_conns_per_tcp_tunnel: Option<usize>,
    /// Seconds between pings to each client [default: 20].
    #[arg(long, env = "GGROK_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Seconds of silence after which a client counts as gone and its name is freed [default: 45].
    #[arg(long, env = "GGROK_HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout: Option<u64>,
    /// Join the cluster whose state lives in this etcd (v3 API, etcd 3.4 or newer):
    /// etcd://HOST:PORT[,HOST:PORT...]. Tokens and reservations then live in etcd, and the
    /// admin commands act on it.
    #[arg(
        long,
        env = "GGROK_CLUSTER",
        value_name = "etcd://HOST:PORT[,...]",
        global = true
    )]
    pub cluster: Option<String>,
    /// Secret that authenticates the traffic between the nodes of a cluster; required with
    /// --cluster.
    #[arg(long, env = "GGROK_CLUSTER_SECRET", hide_env_values = true)]
    pub cluster_secret: Option<String>,
    /// URL other nodes of the cluster reach this node at [default: http://LISTEN, or
    /// https://LISTEN with TLS, when --listen is a specific address].
    #[arg(long, env = "GGROK_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    /// Seconds a node's cluster lease outlives its last renewal, from 2 to 3600 [default: 10]:
    /// a node cut off from etcd stops serving after two thirds of it, a dead node's names are
    /// free after it.
    #[arg(long, env = "GGROK_CLUSTER_LEASE_TTL", value_name = "SECONDS")]
    pub cluster_lease_ttl: Option<u64>,
    /// PEM file of CA certificates trusted, besides the system's, for the certificates of other
    /// nodes that advertise an https:// URL (a private CA).
    #[arg(long, env = "GGROK_CLUSTER_CA", value_name = "FILE")]
    pub cluster_ca: Option<PathBuf>,
    /// Threads serving requests [default: one per CPU core]. Each tunnel is served on the thread
    /// of its session; tunnels spread over the threads (see docs/deploy.md, "Threads").
    #[arg(long, env = "GGROK_WORKERS")]
    pub workers: Option<usize>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("listen", &self.listen)
            .field("domain", &self.domain)
            .field(
                "tokens",
                &self.tokens.iter().map(|t| mask(t)).collect::<Vec<_>>(),
            )
            .field("db", &self.db)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("metrics_token", &self.metrics_token.as_deref().map(mask))
            .field("acme", &self.acme)
            .field("acme_directory", &self.acme_directory)
            .field("acme_email", &self.acme_email)
            .field("acme_cache", &self.acme_cache)
            .field("reconnect_grace", &self.reconnect_grace)
            .field("drain_timeout", &self.drain_timeout)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
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
            .field("workers", &self.workers)
            .field("cluster", &self.cluster)
            .field("cluster_secret", &self.cluster_secret.as_deref().map(mask))
            .field("advertise", &self.advertise)
            .field("cluster_lease_ttl", &self.cluster_lease_ttl)
            .field("cluster_ca", &self.cluster_ca)
            .finish()
    }
}

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Not readable.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not valid TOML for these settings (unknown keys included).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What and where.
        message: String,
    },
}

/// Settings resolved into what the server runs with.
pub struct Resolved {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The token database path.
    pub db: PathBuf,
    /// Everything else (the store is opened by the caller, which may be a check only).
    pub config: Config,
    /// With `--cluster`: the etcd to join and how this node is reached.
    pub cluster: Option<ClusterSettings>,
}

/// How a node joins its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// The etcd members (`http://HOST:PORT`).
    pub endpoints: Vec<String>,
    /// Authenticates the nodes to each other.
    pub secret: ClusterSecret,
    /// Where the other nodes reach this one.
    pub advertise: String,
    /// The TTL of the node's lease.
    pub lease_ttl: Duration,
    /// CAs trusted for other nodes' certificates besides the system's (`--cluster-ca`).
    pub peer_roots: Vec<CertificateDer<'static>>,
}

impl Settings {
    /// Reads a TOML settings file.
    pub fn from_file(path: &std::path::Path) -> Result<Settings, FileError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: p.clone(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| FileError::Parse {
            path: p,
            message: e.to_string(),
        })
    }

    /// `self` where given, else `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            listen: self.listen.or(lower.listen),
            domain: self.domain.or(lower.domain),
            tokens: if self.tokens.is_empty() {
                lower.tokens
            } else {
                self.tokens
            },
            db: self.db.or(lower.db),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            metrics_token: self.metrics_token.or(lower.metrics_token),
            acme: self.acme || lower.acme,
            acme_directory: self.acme_directory.or(lower.acme_directory),
            acme_email: self.acme_email.or(lower.acme_email),
            acme_cache: self.acme_cache.or(lower.acme_cache),
            acme_directory_ca: self.acme_directory_ca.or(lower.acme_directory_ca),
            reconnect_grace: self.reconnect_grace.or(lower.reconnect_grace),
            drain_timeout: self.drain_timeout.or(lower.drain_timeout),
            body_idle_timeout: self.body_idle_timeout.or(lower.body_idle_timeout),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            heartbeat_timeout: self.heartbeat_timeout.or(lower.heartbeat_timeout),
            trusted_proxies: if self.trusted_proxies.is_empty() {
                lower.trusted_proxies
            } else {
                self.trusted_proxies
            },
            proxy_protocol: self.proxy_protocol || lower.proxy_protocol,
            reserved_names: self.reserved_names.or(lower.reserved_names),
            max_conns: self.max_conns.or(lower.max_conns),
            max_conns_per_ip: self.max_conns_per_ip.or(lower.max_conns_per_ip),
            connect_rate: self.connect_rate.or(lower.connect_rate),
            tunnel_rate: self.tunnel_rate.or(lower.tunnel_rate),
            max_tunnels_per_token: self.max_tunnels_per_token.or(lower.max_tunnels_per_token),
            tcp_ports: self.tcp_ports.or(lower.tcp_ports),
            max_tcp_tunnels_per_token: self
                .max_tcp_tunnels_per_token
                .or(lower.max_tcp_tunnels_per_token),
            max_conns_per_tcp_tunnel: self
                .max_conns_per_tcp_tunnel
                .or(lower.max_conns_per_tcp_tunnel),
            workers: self.workers.or(lower.workers),
            cluster: self.cluster.or(lower.cluster),
            cluster_secret: self.cluster_secret.or(lower.cluster_secret),
            advertise: self.advertise.or(lower.advertise),
            cluster_lease_ttl: self.cluster_lease_ttl.or(lower.cluster_lease_ttl),
            cluster_ca: self.cluster_ca.or(lower.cluster_ca),
        }
    }

    /// Applies defaults and checks everything that can be checked without binding: `port` is
    /// the `PORT` environment variable. Returns every problem, not just the first.
    pub fn resolve(&self, port: Option<&str>) -> Result<Resolved, Vec<String>> {
        let mut problems = Vec::new();
        let listen = self.listen_addr(port, &mut problems);
        let domain = self.domain(&mut problems);
        let heartbeat = self.timings(&mut problems);
        let tls = self.tls(&mut problems);
        let acme = self.acme(tls.is_some(), &mut problems);
        let tls = acme.as_ref().map(|a| a.server_config()).or(tls);
        let trusted_proxies = self.trusted_proxies(&mut problems);
        let tcp_ports = self.tcp_ports(listen, &mut problems);
        let cluster = self.cluster(listen, tls.is_some(), &mut problems);
        if self.tokens.iter().any(|t| t.trim().len() < 16) {
            problems.push(
                "tokens must be at least 16 characters (use `ggrok-server token create`)"
                    .to_owned(),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let defaults = Config::new("localhost");
        let secs = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default));
        let config = Config {
            trusted_proxies,
            proxy_protocol: self.proxy_protocol,
            reserved_names: match &self.reserved_names {
                Some(names) => names
                    .iter()
                    .map(|n| n.trim().to_ascii_lowercase())
                    .filter(|n| !n.is_empty())
                    .collect(),
                None => defaults.reserved_names.clone(),
            },
            acme,
            max_conns: self.max_conns.unwrap_or(defaults.max_conns),
            max_conns_per_ip: self.max_conns_per_ip.unwrap_or(defaults.max_conns_per_ip),
            connect_rate: self.connect_rate.unwrap_or(defaults.connect_rate),
            tunnel_rate: self.tunnel_rate.unwrap_or(defaults.tunnel_rate),
            max_tunnels_per_token: self
                .max_tunnels_per_token
                .unwrap_or(defaults.max_tunnels_per_token),
            tcp_ports,
            max_tcp_tunnels_per_token: self
                .max_tcp_tunnels_per_token
                .unwrap_or(defaults.max_tcp_tunnels_per_token),
            max_conns_per_tcp_tunnel: self
                .max_conns_per_tcp_tunnel
                .unwrap_or(defaults.max_conns_per_tcp_tunnel),
            tokens: Tokens::from_plain(&self.tokens),
            heartbeat,
            reconnect_grace: secs(self.reconnect_grace, 10),
            drain_timeout: secs(self.drain_timeout, 10),
            body_idle_timeout: secs(self.body_idle_timeout, 60),
            metrics_token: self
                .metrics_token
                .as_deref()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(hash_token),
            tls,
            ..Config::new(domain)
        };
        Ok(Resolved {
            listen,
            db: self.db.clone().unwrap_or_else(|| PathBuf::from("ggrok.db")),
            config,
            cluster,
        })
    }

    /// The etcd endpoints of `--cluster`, for the admin commands (which need no secret: they
    /// only write the store). `Ok(None)` without `--cluster`.
    pub fn cluster_endpoints(&self) -> Result<Option<Vec<String>>, String> {
        self.cluster
            .as_deref()
            .map(crate::cluster::parse_endpoints)
            .transpose()
    }

    fn cluster(
        &self,
        listen: SocketAddr,
        tls: bool,
        problems: &mut Vec<String>,
    ) -> Option<ClusterSettings> {
        let endpoints = match self.cluster_endpoints() {
            Ok(Some(endpoints)) => endpoints,
            Ok(None) => return None,
            Err(e) => {
                problems.push(e);
                return None;
            }
        };
        let secret = self
            .cluster_secret
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        let secret = match secret {
            Some(s) if s.len() >= 16 => ClusterSecret::new(s),
            Some(_) => {
                problems.push("cluster_secret must be at least 16 characters".to_owned());
                return None;
            }
            None => {
                problems.push(
                    "cluster needs cluster_secret (--cluster-secret or GGROK_CLUSTER_SECRET), the same on every node"
                        .to_owned(),
                );
                return None;
            }
        };
        let advertise = match &self.advertise {
            Some(url) => {
                let url = url.trim().trim_end_matches('/');
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.parse::<http::Uri>().is_err()
                {
                    problems.push(format!(
                        "advertise {url:?} should be the URL other nodes reach this one at, like http://10.0.0.5:8080"
                    ));
                    return None;
                }
                url.to_owned()
            }
            None if !listen.ip().is_unspecified() => {
                format!("{}://{listen}", if tls { "https" } else { "http" })
            }
            None => {
                problems.push(format!(
                    "cluster needs advertise (--advertise or GGROK_ADVERTISE): listening on {listen}, this node cannot tell the others its address"
                ));
                return None;
            }
        };
        let lease_ttl = match self.cluster_lease_ttl {
            None => DEFAULT_LEASE_TTL,
            Some(secs) if LEASE_TTLS.contains(&Duration::from_secs(secs)) => {
                Duration::from_secs(secs)
            }
            Some(secs) => {
                problems.push(format!(
                    "cluster_lease_ttl must be from {} to {} seconds, not {secs} (etcd grants no shorter lease; a longer one would keep a dead node's names taken that long)",
                    LEASE_TTLS.start().as_secs(),
                    LEASE_TTLS.end().as_secs()
                ));
                return None;
            }
        };
        let peer_roots = match &self.cluster_ca {
            None => Vec::new(),
            Some(path) => match read_certificates(path) {
                Ok(certs) => certs,
                Err(e) => {
                    problems.push(format!("cluster_ca {}: {e}", path.display()));
                    return None;
                }
            },
        };
        Some(ClusterSettings {
            endpoints,
            secret,
            advertise,
            lease_ttl,
            peer_roots,
        })
    }

    /// `listen`, else every interface on `PORT` (a PaaS's), else 127.0.0.1:8080.
    fn listen_addr(&self, port: Option<&str>, problems: &mut Vec<String>) -> SocketAddr {
        let fallback = SocketAddr::from(([127, 0, 0, 1], 8080));
        match (self.listen, port) {
            (Some(addr), _) => addr,
            (None, Some(port)) => match port.trim().parse::<u16>() {
                Ok(port) => SocketAddr::from(([0, 0, 0, 0], port)),
                Err(_) => {
                    problems.push(format!("PORT={port:?} is not a port number"));
                    fallback
                }
            },
            (None, None) => fallback,
        }
    }

    /// The domain, lowercase and without a trailing dot.
    fn domain(&self, problems: &mut Vec<String>) -> String {
        let domain = self.domain.as_deref().unwrap_or("localhost");
        let normalized = domain.trim_end_matches('.').to_ascii_lowercase();
        if normalized.is_empty()
            || normalized
                .split('.')
                .any(|label| ggrok_tunnel::protocol::validate_name(label).is_err())
        {
            problems.push(format!(
                "domain {domain:?} is not a DNS name like tunnel.example.com"
            ));
        }
        normalized
    }

    /// The heartbeat, once the timings that must be positive or ordered are found to be.
    fn timings(&self, problems: &mut Vec<String>) -> Heartbeat {
        let secs = |v: Option<u64>, default: u64| Duration::from_secs(v.unwrap_or(default));
        let heartbeat = Heartbeat {
            interval: secs(self.heartbeat_interval, 20),
            timeout: secs(self.heartbeat_timeout, 45),
        };
        if heartbeat.interval.is_zero() {
            problems.push("heartbeat_interval must be at least 1 second".to_owned());
        }
        if self.workers == Some(0) {
            problems.push("workers must be at least 1".to_owned());
        }
        if self.body_idle_timeout == Some(0) {
            // Zero would abandon every body that is not already there in full.
            problems.push("body_idle_timeout must be at least 1 second".to_owned());
        }
        if heartbeat.timeout <= heartbeat.interval {
            problems.push(format!(
                "heartbeat_timeout ({}s) must be longer than heartbeat_interval ({}s), or live clients are dropped",
                heartbeat.timeout.as_secs(),
                heartbeat.interval.as_secs()
            ));
        }
        heartbeat
    }

    /// TLS from `tls_cert` and `tls_key`, given both or neither.
    fn tls(&self, problems: &mut Vec<String>) -> Option<Arc<rustls::ServerConfig>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => match load_tls(cert, key) {
                Ok(tls) => Some(tls),
                Err(e) => {
                    problems.push(e.to_string());
                    None
                }
            },
            (None, None) => None,
            _ => {
                problems.push("tls_cert and tls_key must be given together".to_owned());
                None
            }
        }
    }

    /// ACME when asked for, unless certificate files are given too (`with_files`). Set up only
    /// when nothing else is wrong: it reads and may create the cache directory.
    fn acme(&self, with_files: bool, problems: &mut Vec<String>) -> Option<Arc<Acme>> {
        let acme_on = self.acme || self.acme_directory.is_some();
        if acme_on && with_files {
            problems.push("use either tls_cert/tls_key or ACME, not both".to_owned());
        }
        if !acme_on || !problems.is_empty() {
            return None;
        }
        let settings = AcmeSettings {
            directory: self
                .acme_directory
                .clone()
                .unwrap_or_else(|| "https://acme-v02.api.letsencrypt.org/directory".to_owned()),
            contact: self
                .acme_email
                .iter()
                .map(|e| format!("mailto:{e}"))
                .collect(),
            cache_dir: self
                .acme_cache
                .clone()
                .unwrap_or_else(|| PathBuf::from("acme-cache")),
            directory_root: self.acme_directory_ca.clone(),
        };
        match Acme::new(settings) {
            Ok(acme) => Some(acme),
            Err(e) => {
                problems.push(e.to_string());
                None
            }
        }
    }

    /// The `trusted_proxy` networks; `proxy_protocol` needs at least one.
    fn trusted_proxies(&self, problems: &mut Vec<String>) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::new();
        for p in &self.trusted_proxies {
            match parse_net(p) {
                Some(net) => nets.push(net),
                None => problems.push(format!(
                    "trusted proxy {p:?} is not an IP address or CIDR range"
                )),
            }
        }
        if self.proxy_protocol && nets.is_empty() {
            problems.push(
                "proxy_protocol needs trusted_proxy: the addresses of the load balancers that send it"
                    .to_owned(),
            );
        }
        nets
    }

    /// The public port range for TCP tunnels, if any, clear of the port the server listens on.
    fn tcp_ports(
        &self,
        listen: SocketAddr,
        problems: &mut Vec<String>,
    ) -> Option<RangeInclusive<u16>> {
        match parse_port_range(self.tcp_ports.as_deref()?) {
            Ok(range) if range.contains(&listen.port()) => {
                problems.push(format!(
                    "tcp_ports {}-{} contains the port the server listens on ({})",
                    range.start(),
                    range.end(),
                    listen.port()
                ));
                None
            }
            Ok(range) => Some(range),
            Err(e) => {
                problems.push(e);
                None
            }
        }
    }

    /// `check-config`: every problem and warning, and a summary with secrets masked.
    pub fn check(&self, port: Option<&str>) -> (bool, String) {
        let mut out = String::new();
        let resolved = match self.resolve(port) {
            Ok(r) => r,
            Err(problems) => {
                for p in problems {
                    out.push_str(&format!("error: {p}\n"));
                }
                return (false, out);
            }
        };
        // In a cluster the store is etcd's: its tokens are not looked at here.
        let opened = match &resolved.cluster {
            Some(_) => None,
            None => Some(Store::open(&resolved.db)),
        };
        let stored = match opened {
            None => true,
            Some(Ok(store)) => store.has_tokens().unwrap_or(false),
            Some(Err(e)) => {
                out.push_str(&format!(
                    "error: token database {}: {e}\n",
                    resolved.db.display()
                ));
                return (false, out);
            }
        };
        let c = &resolved.config;
        if c.tokens.is_open() && !stored {
            out.push_str(
                "warning: no tokens: open mode, anyone who can reach the server may open tunnels\n",
            );
        }
        if c.tls.is_none() && !resolved.listen.ip().is_loopback() {
            out.push_str(
                "warning: no TLS: serve behind a TLS-terminating proxy, or give tls_cert and tls_key\n",
            );
        }
        let tcp = match &c.tcp_ports {
            Some(r) => format!("ports {}-{}", r.start(), r.end()),
            None => "off".to_owned(),
        };
        out.push_str(&format!(
            "ok: listening on {}, tunnels at *.{}, {} flag token(s), database {} ({}), TLS {}, metrics {}, TCP {tcp}\n",
            resolved.listen,
            c.domain,
            c.tokens.len(),
            resolved.db.display(),
            if stored { "has tokens" } else { "no tokens" },
            if c.tls.is_some() { "on" } else { "off" },
            if c.metrics_token.is_some() { "on" } else { "off" },
        ));
        if let Some(cluster) = &resolved.cluster {
            out.push_str(&format!(
                "ok: cluster on etcd {}, advertised as {}, cluster secret set, lease {}s\n",
                cluster.endpoints.join(","),
                cluster.advertise,
                cluster.lease_ttl.as_secs()
            ));
        }
        (true, out)
    }
}

/// The certificates of the PEM file at `path`: at least one, each one a valid CA root.
fn read_certificates(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in file".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in &certs {
        roots.add(cert.clone()).map_err(|e| e.to_string())?;
    }
    Ok(certs)
}

/// Reads `LOW-HIGH` (or a single port) as an inclusive range of ports.
fn parse_port_range(s: &str) -> Result<RangeInclusive<u16>, String> {
    let bad = || {
        format!("tcp_ports {s:?} should be LOW-HIGH, like 20000-20999, with ports from 1 to 65535")
    };
    let (low, high) = s.split_once('-').unwrap_or((s, s));
    let port = |p: &str| p.trim().parse::<u16>().ok().filter(|&p| p > 0);
    match (port(low), port(high)) {
        (Some(low), Some(high)) if low <= high => Ok(low..=high),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_port_ranges() {
        assert_eq!(parse_port_range("20000-20999"), Ok(20000..=20999));
        assert_eq!(parse_port_range(" 22 - 22 "), Ok(22..=22));
        assert_eq!(parse_port_range("2222"), Ok(2222..=2222));
        for bad in ["", "0-10", "10-9", "1-65536", "a-b", "1-2-3"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        let file: Settings =
            toml::from_str("tcp_ports = \"30000-30009\"\nlisten = \"127.0.0.1:8080\"\n").unwrap();
        let c = file.resolve(None).unwrap().config;
        assert_eq!(c.tcp_ports, Some(30000..=30009));
        let clash = Settings {
            tcp_ports: Some("8000-8100".into()),
            ..Settings::default()
        };
        let problems = clash.resolve(None).err().unwrap();
        assert!(problems[0].contains("contains the port"), "{problems:?}");
    }

    #[test]
    fn flags_beat_the_file_and_defaults_fill_the_rest() {
        let file: Settings = toml::from_str(
            "domain = \"tunnel.example.com\"\nreconnect_grace = 30\ntokens = [\"file-token-0123456789\"]\n",
        )
        .unwrap();
        let flags = Settings {
            reconnect_grace: Some(5),
            ..Settings::default()
        };
        let r = flags.or(file).resolve(None).unwrap();
        assert_eq!(r.config.domain, "tunnel.example.com");
        assert_eq!(r.config.reconnect_grace, Duration::from_secs(5));
        assert!(r.config.tokens.check("file-token-0123456789").is_some());
        assert_eq!(r.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(
            Settings::default().resolve(Some("9000")).unwrap().listen,
            "0.0.0.0:9000".parse().unwrap()
        );
    }

    #[test]
    fn problems_are_all_reported() {
        let bad = Settings {
            domain: Some("not a domain".into()),
            heartbeat_interval: Some(30),
            heartbeat_timeout: Some(10),
            tls_cert: Some("/nonexistent.pem".into()),
            tokens: vec!["short".into()],
            body_idle_timeout: Some(0),
            workers: Some(0),
            ..Settings::default()
        };
        let problems = bad.resolve(Some("eighty")).err().unwrap();
        assert_eq!(problems.len(), 7, "{problems:#?}");
        let unknown = toml::from_str::<Settings>("domian = \"x\"")
            .err()
            .unwrap()
            .to_string();
        assert!(unknown.contains("unknown field `domian`"), "{unknown}");
    }

    #[test]
    fn proxy_protocol_needs_trusted_proxies_and_reserved_names_can_be_emptied() {
        let alone = Settings {
            proxy_protocol: true,
            ..Settings::default()
        };
        let problems = alone.resolve(None).err().unwrap();
        assert!(
            problems[0].contains("proxy_protocol needs trusted_proxy"),
            "{problems:?}"
        );
        let file: Settings = toml::from_str(
            "proxy_protocol = true\ntrusted_proxies = [\"10.0.0.0/8\"]\nreserved_names = []\n",
        )
        .unwrap();
        let c = file.resolve(None).unwrap().config;
        assert!(c.proxy_protocol && !c.is_reserved("www"));
        let flag = Settings {
            reserved_names: Some(vec!["".into()]),
            ..Settings::default()
        };
        assert!(!flag.resolve(None).unwrap().config.is_reserved("www"));
        assert!(Settings::default()
            .resolve(None)
            .unwrap()
            .config
            .is_reserved("www"));
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let s = Settings {
            tokens: vec!["supersecret-token-value".into()],
            metrics_token: Some("metrics-secret-value".into()),
            cluster: Some("etcd://127.0.0.1:2379".into()),
            cluster_secret: Some("cluster-secret-value".into()),
            ..Settings::default()
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("supersecret")
                && !shown.contains("metrics-secret")
                && !shown.contains("cluster-secret"),
            "{shown}"
        );
        let resolved = s.resolve(None).ok().unwrap();
        let shown = format!("{:?}", resolved.cluster);
        assert!(!shown.contains("cluster-secret"), "{shown}");
    }

    #[test]
    fn a_cluster_needs_its_secret_and_an_address_for_the_other_nodes() {
        let cluster = |secret: Option<&str>, listen: &str, advertise: Option<&str>| Settings {
            cluster: Some("etcd://10.0.0.1:2379,10.0.0.2:2379".into()),
            cluster_secret: secret.map(str::to_owned),
            listen: Some(listen.parse().unwrap()),
            advertise: advertise.map(str::to_owned),
            ..Settings::default()
        };
        let problems = cluster(None, "10.0.0.5:8080", None)
            .resolve(None)
            .err()
            .unwrap();
        assert!(problems[0].contains("cluster_secret"), "{problems:?}");
        let problems = cluster(Some("short"), "10.0.0.5:8080", None)
            .resolve(None)
            .err()
            .unwrap();
        assert!(problems[0].contains("16 characters"), "{problems:?}");
        let problems = cluster(Some("a-long-cluster-secret"), "0.0.0.0:8080", None)
            .resolve(None)
            .err()
            .unwrap();
        assert!(problems[0].contains("advertise"), "{problems:?}");
        let ok = cluster(Some("a-long-cluster-secret"), "10.0.0.5:8080", None)
            .resolve(None)
            .ok()
            .unwrap()
            .cluster
            .unwrap();
        assert_eq!(ok.advertise, "http://10.0.0.5:8080");
        assert_eq!(
            ok.endpoints,
            ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
        );
        let ok = cluster(
            Some("a-long-cluster-secret"),
            "0.0.0.0:8080",
            Some("http://node1.internal:8080/"),
        )
        .resolve(None)
        .ok()
        .unwrap()
        .cluster
        .unwrap();
        assert_eq!(ok.advertise, "http://node1.internal:8080");
        let none = Settings::default().resolve(None).ok().unwrap();
        assert!(none.cluster.is_none());
    }

    #[test]
    fn a_node_serving_tls_advertises_https_and_reads_its_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["tunnel.test".to_owned()]).unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        let node = |ca: Option<PathBuf>| {
            Settings {
                cluster: Some("etcd://10.0.0.1:2379".into()),
                cluster_secret: Some("a-long-cluster-secret".into()),
                listen: Some("10.0.0.5:443".parse().unwrap()),
                tls_cert: Some(cert.clone()),
                tls_key: Some(key.clone()),
                cluster_ca: ca,
                ..Settings::default()
            }
            .resolve(None)
        };
        let cluster = node(None).ok().unwrap().cluster.unwrap();
        assert_eq!(cluster.advertise, "https://10.0.0.5:443");
        assert!(cluster.peer_roots.is_empty());
        let cluster = node(Some(cert.clone())).ok().unwrap().cluster.unwrap();
        assert_eq!(cluster.peer_roots.len(), 1);
        for bad in [key.clone(), dir.path().join("missing.pem")] {
            let problems = node(Some(bad.clone())).err().unwrap();
            assert!(
                problems[0].starts_with(&format!("cluster_ca {}: ", bad.display())),
                "{problems:?}"
            );
        }
    }

    #[test]
    fn the_cluster_lease_ttl_is_checked() {
        let with_ttl = |ttl: Option<u64>| {
            Settings {
                cluster: Some("etcd://10.0.0.1:2379".into()),
                cluster_secret: Some("a-long-cluster-secret".into()),
                listen: Some("10.0.0.5:8080".parse().unwrap()),
                cluster_lease_ttl: ttl,
                ..Settings::default()
            }
            .resolve(None)
        };
        let ttl = |r: Result<Resolved, Vec<String>>| r.ok().unwrap().cluster.unwrap().lease_ttl;
        assert_eq!(ttl(with_ttl(None)), Duration::from_secs(10));
        assert_eq!(ttl(with_ttl(Some(2))), Duration::from_secs(2));
        assert_eq!(ttl(with_ttl(Some(3600))), Duration::from_secs(3600));
        for bad in [0, 1, 3601, u64::MAX] {
            let problems = with_ttl(Some(bad)).err().unwrap();
            assert!(
                problems[0].contains("cluster_lease_ttl must be from 2 to 3600 seconds"),
                "{problems:?}"
            );
        }
    }
}
