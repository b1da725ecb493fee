//! ggrok's tunnel core: the wire protocol and the client engine.
//!
//! A client holds one WebSocket to the server, and ggrok's multiplexer runs streams over it. The
//! server opens one stream per public request, with the request's head; the client forwards it to
//! the local service and streams the response back. Upgrades (WebSocket, HMR) turn the stream into
//! a byte pipe. Every stream has its own credit and the session a shared one, so a slow visitor
//! stalls only its own stream and memory stays bounded.
//!
//! Layout:
//! - [`protocol`]: every constant, header and message on the wire, name validation, limits.
//! - [`mux`]: streams over one WebSocket, with flow control and liveness.
//! - [`head`]: the request and response heads that open and answer a stream.
//! - [`mux_body`]: HTTP bodies read from and written into a stream.
//! - [`client`]: [`Tunnel::start`], status, reconnect with backoff.
//! - [`backoff`]: jittered exponential delays between retries.
//! - [`secrets`]: [`Secret`] and [`secrets::mask`], so tokens never reach a log.
//! - [`logging`]: the `tracing` filter every ggrok binary starts with.
//! - [`memory`]: no transparent huge pages for the binaries that use mimalloc.
//! - [`forward`]: the client's side of a stream: forward to the local service, replay.
//! - [`frames`]: WebSocket frames read as they pass an upgraded connection, for the inspector.
//! - [`upstream`]: TLS, HTTP/2 and the `Host` header towards the local service.
//! - `h1`: the client's own HTTP/1.1 client for plain-HTTP local services.
//! - [`driven`]: hyper's HTTP/1.1 client connections (TLS local services, upgrades), driven by
//!   the task that uses them.
//! - [`traffic`]: recorded exchanges for the log, the inspector and replay.
//! - [`http_util`]: body type, hop-by-hop headers and ggrok's own error pages.
//! - [`tcp`]: TCP tunnels: a visitor connection spliced to a local one, the connection log.
//! - [`stop`]: watching a stop signal beside work that wakes often.
//! - [`terminal`]: network text made safe to print on a terminal.
//! - [`inspect`]: the CLI's local inspector (web page and ngrok-shaped JSON API), and the
//!   traffic views, curl and HAR export the desktop app shares.
//! - [`saved`]: the saved servers and tunnels file the CLI and the desktop app share (feature
//!   `saved`).
//! - [`tokens`]: server tokens in the OS keyring, with a run-only memory fallback (feature
//!   `saved`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod backoff;
pub mod client;
pub mod driven;
pub mod forward;
pub mod frames;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod h1;
pub mod head;
pub mod http_util;
pub mod inspect;
pub mod logging;
pub mod memory;
pub mod mux;
pub mod mux_body;
pub mod protocol;
#[cfg(feature = "saved")]
pub mod saved;
pub mod secrets;
pub mod stop;
pub mod tcp;
pub mod terminal;
#[cfg(feature = "saved")]
pub mod tokens;
pub mod traffic;
pub mod upstream;
pub mod ws;

pub use backoff::Backoff;
pub use client::{ConfigError, Status, Tunnel, TunnelConfig, TunnelHandle, TunnelKind};
pub use forward::{LocalTarget, ReplayEdits, ReplayError};
pub use secrets::Secret;
pub use tcp::{Connection, Connections};
pub use traffic::{Exchange, Traffic};
pub use upstream::{HostHeader, Upstream};
