//! A 1 GiB download and a 256 MiB upload through the tunnel with matching checksums, while the
//! server (a separate process) and the client (this process, which also hosts the origin and
//! the visitor) each stay under 100 MB of peak RSS. Only flow control makes that possible: the
//! origin and the visitor run at different speeds and nothing may buffer whole bodies.

use common::{
    bodies::{big_chunks, big_sha256},
    origin::Origin,
    process::{proc_status_kb, ServerBinary},
    tunnels::tunnel_with,
    visitors::visitor,
};
use futures_util::StreamExt;
use http::header;
use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;
const LIMIT_KB: u64 = 100 * 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gigabyte_down_and_256_mib_up_in_bounded_memory() {
    let server = ServerBinary::spawn(std::path::Path::new(env!("CARGO_BIN_EXE_ggrok-server")));
    let origin = Origin::start().await;
    let mut cfg = ggrok_tunnel::TunnelConfig::new(format!("http://{}", server.addr), origin.port());
    cfg.subdomain = Some("big".into());
    let (_t, _) = tunnel_with(cfg).await;
    let public = format!("http://{}", server.addr);
    let host = format!("big.localhost:{}", server.addr.port());

    let started = std::time::Instant::now();
    let r = visitor()
        .get(format!("{public}/bytes?{GIB}"))
        .header(header::HOST, &host)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[header::CONTENT_LENGTH], GIB.to_string());
    let mut stream = r.bytes_stream();
    let mut hasher = Sha256::new();
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        hasher.update(&chunk);
    }
    assert_eq!(n, GIB);
    assert_eq!(
        format!("{:x}", hasher.finalize()),
        big_sha256(GIB),
        "download corrupted"
    );
    let down = started.elapsed();

    let started = std::time::Instant::now();
    let size = 256 << 20;
    let body = reqwest::Body::wrap_stream(big_chunks(size).map(Ok::<_, std::io::Error>));
    let r = visitor()
        .post(format!("{public}/upload"))
        .header(header::HOST, &host)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        format!("{size} {}", big_sha256(size)),
        "upload corrupted"
    );
    let up = started.elapsed();

    let server_kb = server.peak_rss_kb();
    let client_kb = proc_status_kb("self", "VmHWM");
    eprintln!("1 GiB down in {down:?}, 256 MiB up in {up:?}; peak RSS: server {server_kb} kB, client+origin+visitor {client_kb} kB");
    assert!(server_kb < LIMIT_KB, "server peak RSS {server_kb} kB");
    assert!(client_kb < LIMIT_KB, "client peak RSS {client_kb} kB");
}
