//! Helpers the soak and slow-transfer drivers share (`#[path]`-included: an example cannot
//! `use` another one).

use std::convert::Infallible;

use bytes::Bytes;
use http::Request;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;

/// The origins' response body.
pub type Body = BoxBody<Bytes, Infallible>;

/// The number in `key=N` of the request's query, 0 when absent or not a number.
pub fn query(req: &Request<Incoming>, key: &str) -> u64 {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// An environment setting, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
