//! Entry points for the fuzz targets in `fuzz/` and for the corpus regression test
//! (`tests/fuzz_corpus.rs`), so that both drive the real code the same way. Not an API.
//!
//! Each function takes untrusted bytes, must not panic on them, and panics when an invariant
//! breaks. Inputs are text (see each function) so that seeds are readable and a mutation of one
//! byte stays a meaningful change.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, OnceLock},
};

use base64::Engine;
use futures_util::FutureExt;
use ggrok_tunnel::{
    fuzzing::{client_reads_refusal, runtime, ClientVerdict},
    protocol::{self, Refusal, RefusalKind},
};
use http::{header, HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;

use crate::{
    config::{hash_token, Config, Tokens},
    connect,
    policy::{parse_net, Policy},
    router::{classify, request_host, Destination, Router},
    settings::Settings,
    state::Shared,
    store::Store,
    visitor::Visitor,
};

/// The domain every target serves.
const DOMAIN: &str = "tunnel.example.com";
/// The token a `tokens` server accepts.
const FLAG_TOKEN: &str = "fuzz-flag-token-0123456789";
/// In handshake inputs, replaced by the token of the `store` server's database.
const STORE_TOKEN: &[u8] = b"STORE_TOKEN";
/// In the `store` server's database, reserved for the token inputs can present.
const RESERVED_OURS: &str = "reserved";
/// In the `store` server's database, reserved for a token no input knows.
const RESERVED_OTHER: &str = "elsewhere";
/// Credentials the visitor-side Basic auth check of [`config`] is set up with.
const BASIC_CREDS: &str = "alice:s3cret";

/// How the server under test takes tokens.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// No tokens anywhere: anyone may connect.
    Open,
    /// One flag token, [`FLAG_TOKEN`].
    Tokens,
    /// Tokens and reservations in SQLite (in memory).
    Store,
}

struct Server {
    shared: Arc<Shared>,
    /// The `store` server's presentable token.
    store_token: Option<String>,
}

fn server(mode: Mode) -> &'static Server {
    static SERVERS: [OnceLock<Server>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    SERVERS[mode as usize].get_or_init(|| {
        let mut config = Config::new(DOMAIN);
        let mut store_token = None;
        match mode {
            Mode::Open => {}
            Mode::Tokens => config.tokens = Tokens::from_plain([FLAG_TOKEN]),
            Mode::Store => {
                let store = Store::in_memory().expect("in-memory store");
                let ours = store
                    .create_token("fuzz", &[RESERVED_OURS.to_owned()])
                    .expect("create token");
                store
                    .create_token("other", &[RESERVED_OTHER.to_owned()])
                    .expect("create token");
                store_token = Some(ours);
                config.store = Some(Arc::new(store));
            }
        }
        // No rate limits: every input comes from the same address.
        config.connect_rate = 0;
        config.tunnel_rate = 0;
        let shared = Arc::new(Shared::new(config));
        Server {
            shared,
            store_token,
        }
    })
}

/// Splits `data` at the first blank line.
fn split_blank(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&data[..i], Some(&data[i + 2..])),
        None => (data, None),
    }
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

/// Replaces every [`STORE_TOKEN`] in `v` with `token`.
fn substitute(v: &[u8], token: Option<&str>) -> Vec<u8> {
    let Some(token) = token else {
        return v.to_vec();
    };
    let mut out = Vec::with_capacity(v.len());
    let mut rest = v;
    while let Some(i) = rest
        .windows(STORE_TOKEN.len())
        .position(|w| w == STORE_TOKEN)
    {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(token.as_bytes());
        rest = &rest[i + STORE_TOKEN.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// A connect request and a refusal, as the server and the client see them.
///
/// Input (text):
/// ```text
/// open|tokens|store              which server answers (anything else: tokens)
/// name: value                    request headers, one a line, until a blank line
///
/// 409                            then a response the client reads: status line,
/// {"error":"name_taken",...}     and the body
/// ```
/// In `store` mode `STORE_TOKEN` in a header value stands for the database's token, which
/// has `reserved` reserved; `elsewhere` is reserved for another token.
///
/// Checks: what the server accepts (no `Origin`, the right version, a valid token when tokens
/// are on, a valid name, never a name reserved for another token); every refusal reaches the
/// client exactly as sent; the tunnel's Basic auth and allowlist admit what they were given;
/// forwarded headers are believed only from trusted proxies; the public URL is a URL of the
/// tunnel's name; the client never retries a refusal it cannot read unless it is a 5xx.
pub fn handshake(data: &[u8]) {
    let (request, response) = split_blank(data);
    let mut lines = request.split(|b| *b == b'\n');
    let mode = match trim(lines.next().unwrap_or_default()) {
        b"open" => Mode::Open,
        b"store" => Mode::Store,
        _ => Mode::Tokens,
    };
    let server = server(mode);
    let mut h = HeaderMap::new();
    for line in lines.take(64) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let value = substitute(trim(&line[colon + 1..]), server.store_token.as_deref());
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(trim(&line[..colon])),
            HeaderValue::from_bytes(&value),
        ) {
            h.append(name, value);
        }
    }
    server_checks(server, mode, &h);
    tcp_checks(&h);
    policy_checks(&h);
    forwarded_checks(&h);
    if let Some(response) = response {
        client_checks(response);
    }
}

/// The TCP port a connect request asks for: a number of 1..=65535, 0 (any), or a refusal; never
/// a port the header did not say.
fn tcp_checks(h: &HeaderMap) {
    let sent = h
        .get(protocol::HEADER_TCP_PORT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u16>().ok());
    match crate::tcp::wanted(h) {
        Ok(None) => assert!(!h.contains_key(protocol::HEADER_TCP_PORT)),
        Ok(Some(None)) => assert_eq!(sent, Some(0)),
        Ok(Some(Some(port))) => assert!(port > 0 && sent == Some(port)),
        Err(r) => {
            assert_eq!(r.error, RefusalKind::BadRequest);
            assert_eq!(sent, None);
        }
    }
}

fn server_checks(server: &Server, mode: Mode, h: &HeaderMap) {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    match connect::check(&server.shared, h) {
        Ok((claimant, wanted, key)) => {
            assert!(
                !h.contains_key(header::ORIGIN),
                "a browser page opened a tunnel"
            );
            let version = protocol::PROTOCOL_VERSION.to_string();
            assert_eq!(get(protocol::HEADER_VERSION), Some(version.as_str()));
            assert_eq!(get(header::SEC_WEBSOCKET_KEY.as_str()), Some(key.as_str()));
            let bearer = get(header::AUTHORIZATION.as_str())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            match mode {
                Mode::Open => assert_eq!(claimant.token, None),
                Mode::Tokens => {
                    assert_eq!(bearer, Some(FLAG_TOKEN), "accepted without the token");
                    assert_eq!(claimant.token, Some(hash_token(FLAG_TOKEN)));
                }
                Mode::Store => {
                    let token = server.store_token.as_deref();
                    assert_eq!(bearer, token, "accepted without the token");
                    assert_eq!(claimant.token, token.map(hash_token));
                }
            }
            if let Some(name) = &wanted {
                assert!(protocol::validate_name(name).is_ok(), "{name:?} accepted");
                let asked = get(protocol::HEADER_SUBDOMAIN).unwrap_or_default();
                assert_eq!(name, &asked.to_ascii_lowercase());
                if mode == Mode::Store {
                    assert_ne!(
                        name, RESERVED_OTHER,
                        "took a name reserved for another token"
                    );
                }
            }
            let id = &claimant.client_id;
            assert!(!id.is_empty() && id.len() <= 128, "client id {id:?}");
            if get(protocol::HEADER_CLIENT_ID) != Some(id.as_str()) {
                assert!(
                    id.starts_with("anon-"),
                    "client id {id:?} came from nowhere"
                );
            }
            for secure in [false, true] {
                url_checks(h, secure, wanted.as_deref().unwrap_or("app"));
            }
        }
        Err(refusal) => {
            let peer = SocketAddr::from(([192, 0, 2, 1], 40000));
            let resp = connect::refuse(&server.shared, peer, &refusal);
            let status = resp.status().as_u16();
            assert_eq!(status, refusal.error.status());
            let body = resp
                .into_body()
                .collect()
                .now_or_never()
                .expect("a refusal body is in memory")
                .expect("a refusal body cannot fail")
                .to_bytes();
            assert_eq!(
                client_reads_refusal(status, Some(body.to_vec())),
                Some(ClientVerdict::Refused(refusal)),
                "the client must read the refusal the server sent"
            );
        }
    }
}

/// The URL a client is told must be a URL, of the tunnel's name, with the right scheme.
fn url_checks(h: &HeaderMap, secure: bool, name: &str) {
    let url = connect::public_url(h, secure, name, DOMAIN);
    let uri: http::Uri = url
        .parse()
        .unwrap_or_else(|e| panic!("public URL {url:?} is not a URL: {e}"));
    assert_eq!(
        uri.scheme_str(),
        Some(if secure { "https" } else { "http" })
    );
    assert_eq!(
        uri.host(),
        Some(format!("{name}.{DOMAIN}").as_str()),
        "{url}"
    );
}

fn policy_checks(h: &HeaderMap) {
    let get = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let policy = match Policy::from_headers(h) {
        Ok(p) => p,
        Err(r) => {
            assert_eq!(r.error, RefusalKind::BadRequest);
            return;
        }
    };
    // An allowlist that was sent is never ignored.
    if let Some(v) = h.get(protocol::HEADER_ALLOW_IPS) {
        assert!(v.to_str().is_ok(), "an unreadable allowlist was accepted");
    }
    let nets: Vec<_> = get(protocol::HEADER_ALLOW_IPS)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_net(s).expect("an accepted allowlist parses"))
        .collect();
    // Every listed range admits its own addresses.
    let ips: Vec<IpAddr> = if nets.is_empty() {
        vec![IpAddr::from([203, 0, 113, 9])]
    } else {
        nets.iter()
            .flat_map(|n| [n.network(), n.broadcast()])
            .collect()
    };
    let none = HeaderMap::new();
    for ip in ips {
        // Any value counts, text or not: a password is bytes.
        match h
            .get(protocol::HEADER_BASIC_AUTH)
            .map(|v| v.as_bytes().trim_ascii())
        {
            Some(creds) => {
                assert!(policy.consumes_authorization());
                let mut ok = HeaderMap::new();
                let encoded = base64::engine::general_purpose::STANDARD.encode(creds);
                ok.insert(
                    header::AUTHORIZATION,
                    HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is ASCII"),
                );
                let passed = policy.check("app", ip, &ok, false);
                assert!(
                    passed.is_none(),
                    "{ip} with the right password got {:?}",
                    passed.map(|r| r.status())
                );
                let refused = policy.check("app", ip, &none, false).map(|r| r.status());
                assert_eq!(refused, Some(http::StatusCode::UNAUTHORIZED));
            }
            None => {
                assert!(!policy.consumes_authorization());
                let passed = policy.check("app", ip, &none, false);
                assert!(
                    passed.is_none(),
                    "{ip} is on the allowlist {nets:?} but got {:?}",
                    passed.map(|r| r.status())
                );
            }
        }
    }
}

/// `X-Forwarded-*` are believed from trusted proxies only.
fn forwarded_checks(h: &HeaderMap) {
    let trusted = [parse_net("10.0.0.0/8").expect("static net")];
    let stranger = SocketAddr::from(([192, 0, 2, 1], 40000));
    let v = Visitor::direct(stranger, false).through(&trusted, h);
    assert_eq!(v.ip, stranger.ip(), "believed a stranger's X-Forwarded-For");
    assert!(
        !v.secure && !v.proxied,
        "believed a stranger's X-Forwarded-Proto"
    );

    // Through a trusted proxy: the entries of every X-Forwarded-For line, walked from the right,
    // trusted ones skipped; the first other one is the visitor. Only trusted ones: the
    // leftmost. Anything unreadable on the way: nothing is believed.
    let proxy = SocketAddr::from(([10, 1, 2, 3], 40000));
    let v = Visitor::direct(proxy, false).through(&trusted, h);
    let parse = |e: &str| {
        e.parse::<IpAddr>()
            .or_else(|_| e.parse::<SocketAddr>().map(|a| a.ip()))
            .ok()
            .map(|ip| ip.to_canonical())
    };
    let lines: Vec<_> = h.get_all(protocol::X_FORWARDED_FOR).iter().collect();
    let mut expected = None;
    'walk: for line in lines.iter().rev() {
        let Ok(text) = line.to_str() else {
            expected = None;
            break;
        };
        for e in text.rsplit(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some(ip) = parse(e) else {
                expected = None;
                break 'walk;
            };
            expected = Some(ip);
            if !trusted.iter().any(|net| net.contains(&ip)) {
                break 'walk;
            }
        }
    }
    let entries = lines;
    assert_eq!(v.proxied, expected.is_some(), "{entries:?}");
    assert_eq!(
        v.ip,
        expected.unwrap_or(proxy.ip()).to_canonical(),
        "{entries:?}"
    );
}

fn client_checks(response: &[u8]) {
    let (status_line, body) = match response.iter().position(|b| *b == b'\n') {
        Some(i) => (&response[..i], &response[i + 1..]),
        None => (response, &[][..]),
    };
    let Some(status) = std::str::from_utf8(trim(status_line))
        .ok()
        .and_then(|s| s.parse::<u16>().ok())
    else {
        return;
    };
    let Some(verdict) = client_reads_refusal(status, Some(body.to_vec())) else {
        assert!(http::StatusCode::from_u16(status).is_err());
        return;
    };
    match (serde_json::from_slice::<Refusal>(body), verdict) {
        (Ok(sent), ClientVerdict::Refused(read)) => assert_eq!(sent, read),
        (Err(_), ClientVerdict::Retry(_)) => {
            assert!((500..600).contains(&status), "retrying a {status}")
        }
        (Err(_), ClientVerdict::Refused(r)) => {
            assert!(!(500..600).contains(&status), "giving up on a {status}");
            assert_eq!(r.error, RefusalKind::BadRequest);
        }
        (Ok(sent), verdict) => panic!("sent {sent:?}, the client read {verdict:?}"),
    }
}

/// Settings and the small parsers of untrusted or hand-written text.
///
/// Input: a TOML settings file; each of its first 64 lines is also fed, alone, to the line
/// parsers: CIDR/IP (`parse_net`, round trip through `Display`), subdomain validation (a valid
/// name is a DNS label and routes to itself), `Host` routing, the `PORT` variable, allowlist
/// headers, visitor Basic auth, token sets, the client's server URL and refusal JSON.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(text) = std::str::from_utf8(data) {
        settings_checks(text);
    }
    for line in text.lines().take(64) {
        line_checks(line);
    }
}

/// Where ACME may keep its (empty) cache while fuzzing: settings must never create
/// directories wherever an input says.
fn scratch_acme_cache() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("ggrok-fuzz-acme-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    })
    .clone()
}

fn settings_checks(text: &str) {
    let Ok(mut s) = toml::from_str::<Settings>(text) else {
        return;
    };
    // Files an input names are not read (it could name /dev/zero); a missing file is still
    // a problem `resolve` must report.
    for path in [
        &mut s.tls_cert,
        &mut s.tls_key,
        &mut s.acme_directory_ca,
        &mut s.cluster_ca,
    ] {
        if path.is_some() {
            *path = Some(PathBuf::from("/nonexistent/ggrok-fuzz.pem"));
        }
    }
    s.acme_cache = Some(scratch_acme_cache());

    let shown = format!("{s:?}");
    assert_eq!(format!("{:?}", s.clone().or(Settings::default())), shown);
    assert_eq!(format!("{:?}", Settings::default().or(s.clone())), shown);
    let secrets: Vec<&str> = s
        .tokens
        .iter()
        .chain(&s.metrics_token)
        .map(|t| t.as_str())
        .filter(|t| t.chars().count() >= 12)
        .collect();
    let public = format!(
        "{:?}",
        Settings {
            tokens: Vec::new(),
            metrics_token: None,
            ..s.clone()
        }
    );
    for secret in &secrets {
        if !public.contains(secret) {
            assert!(!shown.contains(secret), "settings Debug shows a secret");
        }
    }

    let resolved = match s.resolve(None) {
        Ok(r) => r,
        Err(problems) => {
            assert!(!problems.is_empty());
            return;
        }
    };
    let c = &resolved.config;
    assert_eq!(c.domain, c.domain.to_ascii_lowercase());
    assert!(
        c.domain
            .split('.')
            .all(|l| protocol::validate_name(l).is_ok()),
        "domain {:?} accepted",
        c.domain
    );
    assert!(!c.heartbeat.interval.is_zero() && c.heartbeat.timeout > c.heartbeat.interval);
    assert_eq!(c.trusted_proxies.len(), s.trusted_proxies.len());
    for t in &s.tokens {
        assert!(
            c.tokens.check(t.trim()).is_some(),
            "a configured token is refused"
        );
    }
    assert_eq!(
        c.metrics_token.is_some(),
        s.metrics_token
            .as_deref()
            .is_some_and(|t| !t.trim().is_empty())
    );
    assert_eq!(
        resolved.listen,
        s.listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)))
    );
    assert_eq!(c.tcp_ports.is_some(), s.tcp_ports.is_some());
    if let Some(ports) = &c.tcp_ports {
        assert!(*ports.start() >= 1 && ports.start() <= ports.end());
        assert!(
            !ports.contains(&resolved.listen.port()),
            "TCP ports over the listener"
        );
    }
    let config_shown = format!("{c:?}");
    for secret in &secrets {
        if !public.contains(secret) {
            assert!(
                !config_shown.contains(secret),
                "config Debug shows a secret"
            );
        }
    }
}

fn line_checks(line: &str) {
    if let Some(net) = parse_net(line) {
        let shown = net.to_string();
        assert_eq!(parse_net(&shown), Some(net), "{line:?} -> {shown:?}");
        assert!(net.contains(&net.network()) && net.contains(&net.broadcast()));
    }

    if protocol::validate_name(line).is_ok() {
        assert!((1..=protocol::MAX_NAME_LEN).contains(&line.len()));
        assert!(line
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        assert!(!line.starts_with('-') && !line.ends_with('-'));
        // A valid name is reachable: every way a visitor may spell its host routes to it.
        for host in [
            format!("{line}.{DOMAIN}"),
            format!("{}.{DOMAIN}:8443", line.to_ascii_uppercase()),
            format!("{line}.{DOMAIN}."),
        ] {
            let routed = route(&host);
            assert_eq!(routed.as_deref(), Some(line), "{host:?}");
        }
    }

    if let Ok(v) = HeaderValue::from_str(line) {
        let req = Request::builder()
            .header(header::HOST, v.clone())
            .body(())
            .expect("request");
        // Refused hosts (Err) never route: they stand in as the empty host here.
        let host = request_host(&req).unwrap_or_default();
        assert_eq!(host, host.to_ascii_lowercase());
        assert!(!host.ends_with('.'));
        match classify(&host, DOMAIN) {
            Destination::Tunnel(name) => {
                assert!(!name.is_empty() && !name.contains('.'), "{host:?}");
                assert_eq!(format!("{name}.{DOMAIN}"), host);
            }
            Destination::Apex => assert!(
                host.is_empty() || host == DOMAIN || host.parse::<IpAddr>().is_ok(),
                "{host:?} served as the apex"
            ),
            Destination::Foreign => assert_ne!(host, DOMAIN),
        }
        // Longer lines would be a 431, which router_checks does not model.
        if line.len() < 1024 {
            router_checks(v.clone());
        }

        let mut h = HeaderMap::new();
        h.insert(protocol::HEADER_ALLOW_IPS, v.clone());
        // The list must be ASCII text: a header may carry obs-text bytes, and Unicode spaces
        // (found by fuzzing: U+00A0) would otherwise trim away here but not in the header.
        // And it must name at least one network: an empty list is refused, not read as
        // "everyone" (issue 18, item 3).
        let entries: Vec<&str> = line
            .trim()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let all_parse = line.is_ascii()
            && !entries.is_empty()
            && entries.iter().all(|s| parse_net(s).is_some());
        assert_eq!(Policy::from_headers(&h).is_ok(), all_parse, "{line:?}");

        // Visitors: only the tunnel's own credentials pass Basic auth.
        let mut h = HeaderMap::new();
        h.insert(
            protocol::HEADER_BASIC_AUTH,
            HeaderValue::from_static(BASIC_CREDS),
        );
        let guarded = Policy::from_headers(&h).expect("static policy");
        let mut visitor = HeaderMap::new();
        visitor.insert(header::AUTHORIZATION, v.clone());
        if guarded
            .check("app", IpAddr::from([192, 0, 2, 1]), &visitor, false)
            .is_none()
        {
            let decoded = line.strip_prefix("Basic ").and_then(|b| {
                base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .ok()
            });
            assert_eq!(decoded.as_deref(), Some(BASIC_CREDS.as_bytes()), "{line:?}");
        }
    }

    match Settings::default().resolve(Some(line)) {
        Ok(r) => assert_eq!(Ok(r.listen.port()), line.trim().parse::<u16>()),
        Err(_) => assert!(line.trim().parse::<u16>().is_err(), "PORT={line:?} refused"),
    }

    let tokens = Tokens::from_plain([line]);
    assert_eq!(tokens.is_open(), line.trim().is_empty());
    if !line.trim().is_empty() {
        assert!(tokens.check(line.trim()).is_some());
    }

    let client = ggrok_tunnel::TunnelConfig::new(line, 3000);
    if let Ok(url) = client.connect_url() {
        assert!(
            url.starts_with("ws://") || url.starts_with("wss://"),
            "{url}"
        );
        assert!(url.ends_with(protocol::CONNECT_PATH), "{url}");
    }

    if let Ok(r) = serde_json::from_str::<Refusal>(line) {
        let json = serde_json::to_string(&r).expect("refusal serializes");
        assert_eq!(serde_json::from_str::<Refusal>(&json).ok(), Some(r));
    }
}

/// The OPEN head of a stream another node opened on a session between nodes, as the holder
/// reads it (`protocol::decode_hop`, either hop format, and `cluster::plain::read`, which reads
/// plain requests in place); input: the head's bytes.
///
/// Checks: decoding never panics; a format-2 head re-encodes to one that decodes to the same
/// visitor and request, and a format-1 head to the same [`protocol::HopHead`]; a format-2
/// request goes through the holder's [`Router`] for hopped requests (no tunnel is online) and
/// is answered at once, as its host's classification says, never with a `101`. A head read as
/// plain is one the router would forward to that tunnel ([`hop_plain_checks`]).
pub fn hop(data: &[u8]) {
    hop_plain_checks(data);
    let decoded = protocol::decode_hop(bytes::Bytes::copy_from_slice(data));
    let (visitor, parts) = match decoded {
        Err(_) => return,
        Ok(protocol::HopOpen::Text(head)) => {
            assert_ne!(data.first(), Some(&protocol::HOP_HTTP));
            assert_eq!(protocol::HopHead::decode(&head.encode()), Some(head));
            return;
        }
        Ok(protocol::HopOpen::Request(visitor, parts)) => (visitor, parts),
    };
    assert_eq!(visitor.tcp_port, None, "a format-2 head names no port");
    let again = visitor.encode_request(&parts.method, &parts.uri, &parts.headers);
    match protocol::decode_hop(again) {
        Ok(protocol::HopOpen::Request(v, p)) => {
            assert_eq!(v, visitor);
            assert_eq!(
                (&p.method, &p.uri, &p.headers),
                (&parts.method, &parts.uri, &parts.headers)
            );
        }
        other => panic!("a decoded hop head does not round-trip: {other:?}"),
    }
    let req = Request::from_parts(parts, http_body_util::Empty::<bytes::Bytes>::new());
    // The status, and whether it comes after the transfer coding and size checks.
    let (expected, after_checks) = match request_host(&req) {
        Err(_) => (400, false),
        Ok(h) => match classify(&h, DOMAIN) {
            Destination::Tunnel(name) if protocol::validate_name(name).is_err() => (400, true),
            // Hopped requests are for tunnels only.
            Destination::Tunnel(_) | Destination::Foreign | Destination::Apex => (404, true),
        },
    };
    let router = Router::hopped(server(Mode::Open).shared.clone(), Visitor::hopped(visitor));
    let resp = router
        .handle(req)
        .now_or_never()
        .expect("a hopped request for no tunnel never waits");
    let status = resp.status().as_u16();
    // After the host, the transfer coding (501) and the head's size (431) are checked, before
    // the name is.
    let unroutable = after_checks && matches!(status, 431 | 501);
    assert!(status == expected || unroutable, "{status}, not {expected}");
}

/// A hop head the holder reads as plain (`cluster::plain::read`) is one `protocol::decode_hop`
/// decodes, that the router would forward to the tunnel read (a host that routes there, no
/// transfer coding, a head within its limit), whose password check and JSON preference agree
/// with the router's, and whose opening head for the tunnel decodes to the one the router's
/// `proxy::to_origin` makes of it, with or without the tunnel's own credentials.
fn hop_plain_checks(data: &[u8]) {
    use crate::cluster::plain;
    use ggrok_tunnel::head;

    let Some(plain) = plain::read(data, DOMAIN) else {
        return;
    };
    let decode = || match protocol::decode_hop(bytes::Bytes::copy_from_slice(data)) {
        Ok(protocol::HopOpen::Request(visitor, parts)) => (visitor, parts),
        other => panic!("a head read as plain does not decode: {other:?}"),
    };
    let (visitor, parts) = decode();
    assert_eq!(Visitor::hopped(visitor).ip, plain.visitor.ip);
    let req = Request::from_parts(parts, ());
    let host = request_host(&req).expect("a plain request's host is usable");
    assert_eq!(classify(&host, DOMAIN), Destination::Tunnel(plain.name));
    assert!(protocol::validate_name(plain.name).is_ok());
    assert!(!req.headers().contains_key(header::TRANSFER_ENCODING));
    assert!(!ggrok_tunnel::http_util::is_upgrade(req.headers()));
    assert!(crate::router::head_len(&req) <= crate::router::MAX_HEAD);
    assert_eq!(
        plain.json(),
        ggrok_tunnel::http_util::wants_json(req.headers())
    );
    let mut h = HeaderMap::new();
    h.insert(
        protocol::HEADER_BASIC_AUTH,
        HeaderValue::from_static(BASIC_CREDS),
    );
    let policy = Policy::from_headers(&h).expect("a valid policy");
    let ip = plain.visitor.ip;
    assert_eq!(
        plain.authorized(&policy),
        policy.check(plain.name, ip, req.headers(), false).is_none()
    );

    for consumes in [false, true] {
        let Ok(head::Open::Http(open)) = head::decode_open(plain.open(consumes)) else {
            panic!("the tunnel's opening head of a plain hop does not decode");
        };
        let (visitor, mut expected) = decode();
        crate::proxy::to_origin(&mut expected, &Visitor::hopped(visitor), consumes);
        assert_eq!(
            (&open.method, &open.uri, &open.headers),
            (&expected.method, &expected.uri, &expected.headers),
            "consumes_authorization: {consumes}"
        );
    }
}

/// The [`Router`] answers `GET /` for `host` as the host's classification says, without a
/// socket: the landing page on the apex, 400 for an unusable host or an invalid name, 404 for
/// any other name (no tunnel is ever online here) and for foreign hosts.
fn router_checks(host: HeaderValue) {
    let stranger = SocketAddr::from(([192, 0, 2, 1], 40000));
    let router = Router::new(
        server(Mode::Open).shared.clone(),
        Visitor::direct(stranger, false),
    );
    let req = Request::get("/")
        .header(header::HOST, host.clone())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let expected = match request_host(&req) {
        Err(_) => 400,
        Ok(h) => match classify(&h, DOMAIN) {
            Destination::Apex => 200,
            Destination::Tunnel(name) if protocol::validate_name(name).is_err() => 400,
            Destination::Tunnel(_) | Destination::Foreign => 404,
        },
    };
    let resp = router
        .handle(req)
        .now_or_never()
        .expect("routing to no tunnel never waits");
    assert_eq!(resp.status().as_u16(), expected, "{host:?}");
}

/// The tunnel a visitor's `Host` reaches, if any.
fn route(host: &str) -> Option<String> {
    let req = Request::builder()
        .header(header::HOST, host)
        .body(())
        .ok()?;
    match classify(&request_host(&req).ok()?, DOMAIN) {
        Destination::Tunnel(name) => Some(name.to_owned()),
        _ => None,
    }
}

/// A visitor's bytes as the server's own HTTP/1.1 reads them (`h1::parse`), beside hyper's
/// reading of the same bytes, which serves every request that path does not take; input: the
/// bytes a connection sends.
///
/// Checks: reading never panics; a request read as plain is one hyper reads too, with the same
/// method, target and body, so the two can never disagree on where a request ends (smuggling);
/// its opening head decodes, carries every header hyper saw except hop-by-hop ones and the
/// `X-Forwarded-*` the server writes itself once each, and a host that names the tunnel read.
pub fn visitor_head(data: &[u8]) {
    use crate::h1::{parse, Read, MAX_HEADERS};
    use ggrok_tunnel::{head, http_util::hop_by_hop};

    let visitor = Visitor::direct("192.0.2.1:5000".parse().expect("address"), false);
    let mut slots = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let Read::Plain(plain) = parse(data, DOMAIN, &mut slots) else {
        return;
    };
    assert!(plain.head_len + plain.body_len <= data.len());
    let Ok(head::Open::Http(open)) = head::decode_open(plain.open_local(&visitor)) else {
        panic!("the opening head of a plain request does not decode");
    };
    for name in open.headers.keys() {
        assert!(!hop_by_hop(name.as_str().as_bytes()), "{name} passed on");
    }
    for name in ["x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"] {
        assert_eq!(open.headers.get_all(name).iter().count(), 1, "{name}");
    }
    let host = open
        .headers
        .get(header::HOST)
        .expect("a plain request has a host");
    assert_eq!(
        route(host.to_str().expect("ASCII")).as_deref(),
        Some(plain.name)
    );

    let Some(seen) = hyper_reads(data) else {
        panic!("hyper refuses a request read as plain");
    };
    // The hop's opening head to the node holding the tunnel: what `hop::forward` writes of the
    // request hyper reads, the visitor first.
    match protocol::decode_hop(plain.open_hop(&visitor)) {
        Ok(protocol::HopOpen::Request(v, parts)) => {
            assert_eq!((v.ip, v.secure, v.proxied), (visitor.ip, false, false));
            assert_eq!(
                (&parts.method, &parts.uri, &parts.headers),
                (seen.method(), seen.uri(), seen.headers())
            );
        }
        other => panic!("the hop's opening head of a plain request: {other:?}"),
    }
    assert_eq!(seen.method(), &open.method);
    assert_eq!(seen.uri(), &open.uri);
    let body = &data[plain.head_len..plain.head_len + plain.body_len];
    let seen_body = seen.body().as_deref();
    assert_eq!(seen_body, Some(body), "the body ends where hyper ends it");
    for (name, value) in seen.headers() {
        let forwarded = name.as_str().starts_with("x-forwarded-");
        if !forwarded && !hop_by_hop(name.as_str().as_bytes()) {
            let passed = open.headers.get_all(name).iter().any(|v| v == value);
            assert!(passed, "{name}: {value:?} was not passed on");
        }
    }
}

/// The first request hyper's HTTP/1.1 server (with `listener.rs`'s limits) reads off `data`, its body `None` if it ended in an error; `None` if hyper read no request.
fn hyper_reads(data: &[u8]) -> Option<http::Request<Option<bytes::Bytes>>> {
    use std::sync::Mutex;
    use tokio::io::AsyncWriteExt;

    let first: Arc<Mutex<Option<http::Request<Option<bytes::Bytes>>>>> = Arc::default();
    let seen = first.clone();
    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let seen = seen.clone();
        async move {
            let (parts, body) = req.into_parts();
            let limited = http_body_util::Limited::new(body, 2 * crate::router::MAX_HEAD);
            let body = limited.collect().await.ok().map(|b| b.to_bytes());
            seen.lock()
                .expect("lock")
                .get_or_insert(Request::from_parts(parts, body));
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                bytes::Bytes,
            >::new()))
        }
    });
    runtime().block_on(async {
        let (mut visitor, server) = tokio::io::duplex(data.len() + 1);
        visitor.write_all(data).await.expect("pipe");
        visitor.shutdown().await.expect("pipe");
        // `half_close`: the end of the input must not abandon the request before it is read
        // (reading is what is compared; hyper parses the same either way).
        let conn = hyper::server::conn::http1::Builder::new()
            .max_buf_size(crate::router::MAX_HEAD)
            .half_close(true)
            .serve_connection(hyper_util::rt::TokioIo::new(server), service);
        // Answers go to the visitor's side of the pipe, which nobody reads: dropping it on
        // the way lets hyper's writes fail instead of filling the pipe.
        drop(visitor);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), conn).await;
    });
    let first = first.lock().expect("lock").take();
    first
}
