//! HTTPS and wss:// with certificate files: clients connect over TLS, visitors get HTTP/2 or
//! HTTP/1.1 by ALPN, and forwarded requests say `X-Forwarded-Proto: https`.

use bytes::Bytes;
use common::{
    origin::Origin,
    server::Server,
    tls::tls_connector,
    tunnels::{tunnel_with, wait_status},
};
use ggrok_server::Config;
use ggrok_tunnel::TunnelConfig;
use http::{Request, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;

struct Pki {
    dir: tempfile::TempDir,
    cert_pem: String,
}

/// A self-signed certificate for 127.0.0.1 (the apex, by IP) and *.tunnel.test, in files.
fn pki() -> Pki {
    let names = ["127.0.0.1", "tunnel.test", "*.tunnel.test"]
        .map(String::from)
        .to_vec();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    Pki {
        dir,
        cert_pem: ck.cert.pem(),
    }
}

#[tokio::test]
async fn https_and_wss_with_certificate_files() {
    let pki = pki();
    let tls = ggrok_server::config::load_tls(
        &pki.dir.path().join("cert.pem"),
        &pki.dir.path().join("key.pem"),
    )
    .unwrap();
    let server = Server::start(Config {
        tls: Some(tls),
        ..Config::new("tunnel.test")
    })
    .await;
    let origin = Origin::start().await;

    // Without the CA the client refuses the server's certificate.
    let untrusted = ggrok_tunnel::Tunnel::start(TunnelConfig::new(
        format!("https://127.0.0.1:{}", server.addr.port()),
        origin.port(),
    ))
    .unwrap();
    let status = wait_status(&untrusted, |s| {
        matches!(s, ggrok_tunnel::Status::Reconnecting { .. })
    })
    .await;
    assert!(format!("{status:?}").contains("certificate"), "{status:?}");
    untrusted.stop().await;

    let mut cfg = TunnelConfig::new(
        format!("https://127.0.0.1:{}", server.addr.port()),
        origin.port(),
    );
    cfg.subdomain = Some("secure".into());
    cfg.ca_cert = Some(pki.dir.path().join("cert.pem"));
    let (_t, url) = tunnel_with(cfg).await;
    let authority = format!("secure.tunnel.test:{}", server.addr.port());
    assert_eq!(url, format!("https://{authority}"));

    for (alpn, version) in [
        (&b"h2"[..], Version::HTTP_2),
        (&b"http/1.1"[..], Version::HTTP_11),
    ] {
        let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let name = ServerName::try_from("secure.tunnel.test").unwrap();
        let tls = tls_connector(&pki.cert_pem, alpn)
            .connect(name, tcp)
            .await
            .unwrap();
        let req = Request::get(format!("https://{authority}/echo"))
            .header(http::header::HOST, &authority)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = if version == Version::HTTP_2 {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            let mut req = req;
            req.headers_mut().remove(http::header::HOST);
            send.send_request(req).await.unwrap()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .unwrap();
            tokio::spawn(conn);
            let (mut parts, body) = req.into_parts();
            parts.uri = "/echo".parse().unwrap();
            send.send_request(Request::from_parts(parts, body))
                .await
                .unwrap()
        };
        assert_eq!(resp.version(), version);
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-echo-x-forwarded-proto"], "https");
        assert_eq!(
            resp.headers()["x-echo-x-forwarded-host"],
            authority.as_str()
        );
        resp.into_body().collect().await.unwrap();
    }
}

#[test]
fn unreadable_certificate_files_are_clear_errors() {
    let missing = std::path::Path::new("/nonexistent/cert.pem");
    let err = ggrok_server::config::load_tls(missing, missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read the TLS certificate from /nonexistent/cert.pem"),
        "{err}"
    );
}
