//! The `tracing` filter every ggrok binary (CLI, server, desktop app) starts with.

/// `tracing` directives that every binary using this crate adds to its filter, whatever
/// `RUST_LOG` says: at trace level tungstenite logs the raw upgrade request (the token in
/// `Authorization`, the tunnel's Basic-auth password) and every frame's payload (visitors'
/// requests). Capped at info, not debug: a directive also raises a target to its level, and
/// tungstenite's debug lines ("Client handshake done.") would then open every normal run.
pub const QUIET_LOG_TARGETS: &[&str] = &["tungstenite=info", "tokio_tungstenite=info"];

/// The log filter for a binary using this crate: `RUST_LOG`, else `default`, plus
/// [`QUIET_LOG_TARGETS`].
pub fn log_filter(default: &str) -> tracing_subscriber::EnvFilter {
    QUIET_LOG_TARGETS.iter().fold(
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| default.into()),
        |f, d| f.add_directive(d.parse().expect("valid directive")),
    )
}
