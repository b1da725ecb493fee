//! Large test bodies: streamed, deterministic, checked by SHA-256 without holding them.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::StreamExt;
use ggrok_tunnel::http_util::{boxed, Body};
use http_body_util::StreamBody;
use hyper::body::Frame;
use sha2::{Digest, Sha256};

use crate::origin::pattern;

/// Size of the chunks of [`big_chunk`].
pub const CHUNK: u64 = 64 * 1024;

/// Chunk `k` of a large test body: a fixed pseudo-random block stamped with `k`, so that
/// gigabytes cost a copy per chunk, not arithmetic per byte, and any reordering shows.
pub fn big_chunk(k: u64, len: usize) -> Bytes {
    static BLOCK: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let block = BLOCK.get_or_init(|| pattern(12345, CHUNK as usize));
    let mut chunk = block[..len].to_vec();
    let stamp = k.to_be_bytes();
    let n = stamp.len().min(len);
    chunk[..n].copy_from_slice(&stamp[..n]);
    Bytes::from(chunk)
}

/// The chunks of an `n`-byte large test body.
pub fn big_chunks(n: u64) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::iter(
        (0..n.div_ceil(CHUNK)).map(move |k| big_chunk(k, CHUNK.min(n - k * CHUNK) as usize)),
    )
}

/// SHA-256 of the `n`-byte large test body.
pub fn big_sha256(n: u64) -> String {
    let mut h = Sha256::new();
    for k in 0..n.div_ceil(CHUNK) {
        h.update(big_chunk(k, CHUNK.min(n - k * CHUNK) as usize));
    }
    format!("{:x}", h.finalize())
}

/// A streamed body of `n` bytes (see [`big_chunk`]).
pub fn pattern_body(n: u64) -> Body {
    boxed(StreamBody::new(
        big_chunks(n).map(|b| Ok::<_, Infallible>(Frame::data(b))),
    ))
}
