//! How the client reaches the local service: plain TCP or TLS (trusting the OS roots, or any
//! certificate for development), HTTP/1.1 or HTTP/2 (h2c, or h2 by ALPN over TLS), and which
//! `Host` it is sent.

use std::sync::{Arc, Mutex};

use http::HeaderValue;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::http_util::{Body, BoxError};

/// The `Host` the local service gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HostHeader {
    /// The local target's `host:port` (most dev servers check it).
    #[default]
    Rewrite,
    /// The public host the visitor asked for.
    Preserve,
    /// This value.
    Value(HeaderValue),
}

impl std::str::FromStr for HostHeader {
    type Err = String;

    /// `rewrite`, `preserve`, or any other value to send as it is.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "rewrite" => Ok(Self::Rewrite),
            "preserve" => Ok(Self::Preserve),
            "" => Err("an empty Host header".to_owned()),
            v => HeaderValue::from_str(v)
                .map(Self::Value)
                .map_err(|_| format!("{v:?} is not a valid Host header value")),
        }
    }
}

/// The protocol spoken to the local service.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Upstream {
    /// TLS to the local service (an `https://` target), trusting the OS roots.
    pub tls: bool,
    /// With `tls`, accept any certificate: for self-signed development certificates. The
    /// handshake's signatures are still checked; who signed the certificate is not.
    pub insecure: bool,
    /// HTTP/2: h2c (prior knowledge) in plain text, h2 by ALPN over TLS. Needed for gRPC.
    pub http2: bool,
}

/// A connection to the local service.
pub(crate) type LocalIo = Either<TcpStream, tokio_rustls::client::TlsStream<TcpStream>>;

/// Turns TCP connections to the local service into what [`Upstream`] asks for, and keeps the
/// one HTTP/2 connection requests share.
pub(crate) struct Connector {
    upstream: Upstream,
    /// The TLS set-up, or why there is none (no usable OS roots): reported per request.
    tls: Option<Result<(tokio_rustls::TlsConnector, ServerName<'static>), String>>,
    h2: Mutex<Option<http2::SendRequest<Body>>>,
}

impl Connector {
    pub(crate) fn new(upstream: Upstream, host: &str) -> Self {
        let tls = upstream.tls.then(|| tls_setup(upstream, host));
        Self {
            upstream,
            tls,
            h2: Mutex::new(None),
        }
    }

    pub(crate) fn upstream(&self) -> Upstream {
        self.upstream
    }

    /// `tcp` as a connection to the local service: TLS first if asked for.
    pub(crate) async fn wrap(&self, tcp: TcpStream) -> Result<LocalIo, BoxError> {
        let Some(tls) = &self.tls else {
            return Ok(Either::Left(tcp));
        };
        let (connector, name) = tls.as_ref().map_err(|e| BoxError::from(e.clone()))?;
        match connector.connect(name.clone(), tcp).await {
            Ok(s) => Ok(Either::Right(s)),
            Err(e) => Err(tls_error(e, self.upstream.insecure).into()),
        }
    }

    /// The shared HTTP/2 connection if it is still open.
    pub(crate) fn h2_sender(&self) -> Option<http2::SendRequest<Body>> {
        let h2 = self.h2.lock().unwrap_or_else(|p| p.into_inner());
        h2.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    /// Starts HTTP/2 on `io` (its connection driven by a task of its own, as HTTP/2 multiplexes
    /// every request over it) and keeps it for the next requests.
    pub(crate) async fn h2_handshake(
        &self,
        io: LocalIo,
    ) -> Result<http2::SendRequest<Body>, BoxError> {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%e, "local HTTP/2 connection ended with an error");
            }
        });
        *self.h2.lock().unwrap_or_else(|p| p.into_inner()) = Some(sender.clone());
        Ok(sender)
    }
}

fn tls_setup(
    upstream: Upstream,
    host: &str,
) -> Result<(tokio_rustls::TlsConnector, ServerName<'static>), String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host:?} cannot be checked against a certificate ({e})"))?;
    let builder = rustls::ClientConfig::builder();
    let mut config = if upstream.insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(
                rustls::crypto::ring::default_provider(),
            )))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![if upstream.http2 {
        b"h2".to_vec()
    } else {
        b"http/1.1".to_vec()
    }];
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// A TLS failure said in terms of what to do about it.
fn tls_error(e: std::io::Error, insecure: bool) -> String {
    let untrusted = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
    if untrusted && !insecure {
        format!(
            "TLS: the local service's certificate is not trusted ({e}); for a self-signed \
             development certificate pass --upstream-insecure"
        )
    } else {
        format!("TLS: {e}")
    }
}

/// `--upstream-insecure`: any certificate chain is accepted, but the handshake must still be
/// signed by the certificate's key.
#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_header_values() {
        assert_eq!("rewrite".parse(), Ok(HostHeader::Rewrite));
        assert_eq!("preserve".parse(), Ok(HostHeader::Preserve));
        assert_eq!(
            "app.test:8080".parse(),
            Ok(HostHeader::Value(HeaderValue::from_static("app.test:8080")))
        );
        assert!("a\nb".parse::<HostHeader>().is_err());
        assert!("".parse::<HostHeader>().is_err());
    }
}
