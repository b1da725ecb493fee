//! TLS clients for servers with test certificates.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use ggrok_tunnel::http_util::empty;
use http::{header, Request};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

/// A TLS connector trusting exactly the certificates in `roots_pem`, offering `alpn`.
pub fn tls_connector(roots_pem: &str, alpn: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// GET `path` over HTTPS/1.1 at `addr` with SNI and Host `host`; the status and body.
pub async fn https_get(
    addr: SocketAddr,
    host: &str,
    roots_pem: &str,
    path: &str,
) -> std::io::Result<(u16, Bytes)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name =
        rustls_pki_types::ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?;
    let tls = tls_connector(roots_pem, b"http/1.1")
        .connect(name, tcp)
        .await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header(header::HOST, host)
        .body(empty())
        .unwrap();
    let resp = send
        .send_request(req)
        .await
        .map_err(std::io::Error::other)?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    Ok((status, body))
}
