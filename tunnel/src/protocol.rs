//! The wire protocol: every constant, header name and message shared by client and server.
//!
//! A session is one WebSocket opened with an HTTP upgrade to [`CONNECT_PATH`]. The upgrade request
//! carries the protocol version, the token and the wanted subdomain as headers; the server either
//! refuses it with an HTTP error whose JSON body is a [`Refusal`], or answers `101 Switching
//! Protocols` with the assigned name and public URL in [`HEADER_NAME`] / [`HEADER_URL`]. After the
//! upgrade the WebSocket's binary messages form one byte stream that carries a yamux session.
//! The server opens one yamux stream per public request; each stream carries plain HTTP/1.1.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Version of this protocol. Bumped on any incompatible change; both sides must agree exactly.
pub const PROTOCOL_VERSION: u32 = 1;

/// Path of the control endpoint on the server's apex domain.
pub const CONNECT_PATH: &str = "/_ggrok/connect";

/// Request header: the client's protocol version ([`PROTOCOL_VERSION`]).
pub const HEADER_VERSION: &str = "ggrok-protocol";
/// Request header: the subdomain the client wants (absent: the server picks one).
pub const HEADER_SUBDOMAIN: &str = "ggrok-subdomain";
/// Request header: a random id the client keeps across reconnects, so the server can give a
/// dropped client its name back and let it replace its own stale session.
pub const HEADER_CLIENT_ID: &str = "ggrok-client-id";
/// Request header: `user:password` that visitors must present (HTTP Basic) to use the tunnel.
/// Sent only to the server; the server keeps a hash and checks every public request.
pub const HEADER_BASIC_AUTH: &str = "ggrok-basic-auth";
/// Request header: comma-separated IP addresses or CIDR ranges; the server refuses public
/// requests from anywhere else.
pub const HEADER_ALLOW_IPS: &str = "ggrok-allow-ips";
/// Response header on `101`: the subdomain assigned to this session.
pub const HEADER_NAME: &str = "ggrok-name";
/// Response header on `101`: the public URL of the tunnel.
pub const HEADER_URL: &str = "ggrok-url";
/// Response header on pages that ggrok itself generated (not the user's service): the error kind.
pub const HEADER_ERROR: &str = "ggrok-error";

/// WebSocket close code (in the range for applications) of a session that a newer session of
/// the same client took over: two processes share one client id. The older one stops instead of
/// taking the tunnel back, which would make the two take turns forever.
pub const CLOSE_REPLACED: u16 = 4001;
/// WebSocket close code of a session whose token was revoked.
pub const CLOSE_REVOKED: u16 = 4002;
/// WebSocket close code of a session ended by the server shutting down (or restarting): the
/// client reconnects.
pub const CLOSE_SHUTDOWN: u16 = 4003;

/// Largest WebSocket message either side accepts. Writers send at most [`MAX_CHUNK`] per
/// message; the slack covers yamux framing. Anything bigger is an attack or a bug.
pub const MAX_MESSAGE: usize = 1024 * 1024;
/// Largest payload a writer puts in one WebSocket message: a full yamux window's frame, so a
/// large transfer costs one message per window rather than many small ones.
pub const MAX_CHUNK: usize = 256 * 1024;
/// Bytes the WebSocket writer may buffer before a write must wait for the socket, so a slow
/// network applies backpressure instead of growing memory.
pub const MAX_WRITE_BUFFER: usize = 4 * MAX_CHUNK;
/// Most bytes one socket read of the WebSocket takes. tungstenite zeroes and keeps this much
/// per connection (its default of 128 KiB made an idle tunnel cost ~140 KiB on the server and
/// zeroed 128 KiB per read); 32 KiB reads still move a large body with few system calls.
pub const READ_BUFFER: usize = 32 * 1024;

/// Streams one session may have open at once. Each holds at most one yamux window (256 KiB) of
/// unread data, so this also bounds a session's buffered bytes.
pub const MAX_STREAMS: usize = 4096;

/// How often each side pings. PaaS routers drop WebSockets idle for about 55 s.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Silence after which a peer is declared gone: two missed pings plus slack, so a vanished
/// client's name is freed well inside a minute.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(45);

/// Longest subdomain label DNS allows.
pub const MAX_NAME_LEN: usize = 63;

/// Why the server refused a session. Serialized as the JSON body of the refusing response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Machine-readable kind.
    pub error: RefusalKind,
    /// One sentence for a human.
    pub message: String,
}

/// The kinds of [`Refusal`]. Every kind except [`RefusalKind::Unavailable`] and
/// [`RefusalKind::RateLimited`] is final: retrying the same request cannot succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// Missing or unknown token.
    Unauthorized,
    /// The name is held by another live client (or held for one that just dropped).
    NameTaken,
    /// The name is reserved for a different token.
    NameReserved,
    /// The name is not a valid DNS label.
    InvalidName,
    /// Client and server speak different protocol versions.
    VersionMismatch,
    /// The upgrade request itself was malformed.
    BadRequest,
    /// The server cannot take the session now (shutting down, database down); retry later.
    Unavailable,
    /// Too many connect attempts from this address; retry later.
    RateLimited,
    /// The token already has as many tunnels as the server allows.
    TooManyTunnels,
}

impl RefusalKind {
    /// HTTP status the server answers with.
    pub fn status(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::NameTaken => 409,
            Self::NameReserved => 403,
            Self::InvalidName | Self::BadRequest => 400,
            Self::VersionMismatch => 426,
            Self::Unavailable => 503,
            Self::RateLimited => 429,
            Self::TooManyTunnels => 403,
        }
    }

    /// The wire name (as in the JSON body).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::NameTaken => "name_taken",
            Self::NameReserved => "name_reserved",
            Self::InvalidName => "invalid_name",
            Self::VersionMismatch => "version_mismatch",
            Self::BadRequest => "bad_request",
            Self::Unavailable => "unavailable",
            Self::RateLimited => "rate_limited",
            Self::TooManyTunnels => "too_many_tunnels",
        }
    }

    /// Whether a client should give up rather than retry.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Unavailable | Self::RateLimited)
    }
}

impl Refusal {
    /// A refusal of `kind` with a human message.
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Self {
        Self {
            error: kind,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Why a subdomain is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Empty string.
    #[error("subdomain is empty")]
    Empty,
    /// Longer than a DNS label may be.
    #[error("subdomain is {0} characters long; at most {MAX_NAME_LEN} are allowed")]
    TooLong(usize),
    /// A character outside `[a-z0-9-]`.
    #[error("subdomain may contain only a-z, 0-9 and '-' (found {0:?})")]
    BadChar(char),
    /// An uppercase letter: names are lowercase so that one name is one URL.
    #[error("subdomain must be lowercase (found {0:?})")]
    Uppercase(char),
    /// Starts or ends with a hyphen.
    #[error("subdomain may not start or end with '-'")]
    EdgeHyphen,
}

/// Checks that `name` is a lowercase DNS label: `[a-z0-9-]`, 1–63 characters, no edge hyphens.
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.chars().count()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(if c.is_ascii_uppercase() {
            NameError::Uppercase(c)
        } else {
            NameError::BadChar(c)
        });
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err(NameError::EdgeHyphen);
    }
    Ok(())
}

/// yamux settings both sides use. yamux's own keepalive is off: liveness is WebSocket ping/pong
/// (see [`crate::ws_io`]), which PaaS routers also see.
pub fn yamux_config() -> tokio_yamux::Config {
    tokio_yamux::Config {
        enable_keepalive: false,
        max_stream_count: MAX_STREAMS,
        accept_backlog: MAX_STREAMS,
        // A stalled peer that stops reading is caught by the heartbeat; this only bounds a write
        // that the socket never takes.
        connection_write_timeout: PEER_TIMEOUT,
        ..tokio_yamux::Config::default()
    }
}

/// WebSocket limits both sides use.
pub fn websocket_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(MAX_CHUNK)
        .max_write_buffer_size(MAX_WRITE_BUFFER + MAX_MESSAGE)
}

/// Liveness settings for one side of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// How often to ping.
    pub interval: Duration,
    /// Silence after which the peer is declared gone.
    pub timeout: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            interval: PING_INTERVAL,
            timeout: PEER_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(validate_name("myapp"), Ok(()));
        assert_eq!(validate_name("a-1"), Ok(()));
        assert_eq!(validate_name(&"a".repeat(63)), Ok(()));
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"a".repeat(64)), Err(NameError::TooLong(64)));
        assert_eq!(validate_name("My"), Err(NameError::Uppercase('M')));
        assert_eq!(validate_name("a_b"), Err(NameError::BadChar('_')));
        assert_eq!(validate_name("a.b"), Err(NameError::BadChar('.')));
        assert_eq!(validate_name("-a"), Err(NameError::EdgeHyphen));
        assert_eq!(validate_name("a-"), Err(NameError::EdgeHyphen));
    }

    #[test]
    fn refusal_json_round_trip() {
        let r = Refusal::new(RefusalKind::NameTaken, "taken");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(json, r#"{"error":"name_taken","message":"taken"}"#);
        assert_eq!(serde_json::from_str::<Refusal>(&json).unwrap(), r);
        for kind in [
            RefusalKind::Unauthorized,
            RefusalKind::VersionMismatch,
            RefusalKind::Unavailable,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }
}
