//! Certificates on demand over ACME (Let's Encrypt or any RFC 8555 server), by TLS-ALPN-01 on
//! the server's own listener.
//!
//! A TLS handshake for a name without a certificate asks the manager for one and fails; the
//! visitor's retry a few seconds later gets the new certificate. Only the apex and names of
//! tunnels that are online are ever ordered (a scanner's random SNI costs nothing), a failed
//! name waits [`FAILURE_BACKOFF`] before another try, and at most [`ORDERS_PER_HOUR`] orders
//! start per hour, which keeps well inside Let's Encrypt's rate limits. Certificates and the
//! account are cached in a directory and reloaded on start; they are renewed after
//! [`RENEW_AFTER`].

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::{
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// ALPN protocol of TLS-ALPN-01 validation handshakes (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// Wait after a failed order before trying the same name again.
pub const FAILURE_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Orders started per hour at most, across all names.
pub const ORDERS_PER_HOUR: usize = 20;
/// Age at which a certificate is renewed (Let's Encrypt certificates last 90 days).
pub const RENEW_AFTER: Duration = Duration::from_secs(60 * 24 * 3600);

/// Where and how to get certificates.
#[derive(Debug, Clone)]
pub struct AcmeSettings {
    /// ACME directory URL, e.g. `https://acme-v02.api.letsencrypt.org/directory`.
    pub directory: String,
    /// Contact URLs for the account, e.g. `mailto:ops@example.com`.
    pub contact: Vec<String>,
    /// Where the account and certificates are kept.
    pub cache_dir: PathBuf,
    /// Extra root (PEM) to trust for the ACME server itself (test servers such as pebble).
    pub directory_root: Option<PathBuf>,
}

/// Why ACME could not start or an order failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The cache directory is unusable.
    #[error("ACME cache {path}: {source}")]
    Cache {
        /// The directory or file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The ACME server or the protocol failed.
    #[error("ACME: {0}")]
    Protocol(String),
}

fn protocol<E: std::fmt::Display>(e: E) -> AcmeError {
    AcmeError::Protocol(e.to_string())
}

#[derive(Serialize, Deserialize)]
struct CachedCert {
    cert_pem: String,
    key_pem: String,
    issued_unix: u64,
}

/// Certificates by name, plus live challenge certificates; the TLS config's resolver.
pub struct Acme {
    settings: AcmeSettings,
    certs: RwLock<HashMap<String, (Arc<CertifiedKey>, u64)>>,
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    wanted: mpsc::Sender<String>,
    wanted_rx: std::sync::Mutex<Option<mpsc::Receiver<String>>>,
}

impl std::fmt::Debug for Acme {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self
            .certs
            .read()
            .expect("certs lock")
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Acme")
            .field("settings", &self.settings)
            .field("certificates", &names)
            .finish()
    }
}

impl Acme {
    /// Prepares the cache directory and loads cached certificates.
    pub fn new(settings: AcmeSettings) -> Result<Arc<Acme>, AcmeError> {
        let cache = |source| AcmeError::Cache {
            path: settings.cache_dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(&settings.cache_dir).map_err(cache)?;
        let mut certs = HashMap::new();
        for entry in std::fs::read_dir(&settings.cache_dir)
            .map_err(cache)?
            .flatten()
        {
            let path = entry.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".cert.json"))
            else {
                continue;
            };
            match std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<CachedCert>(&b).ok())
            {
                Some(c) => match certified_key(&c.cert_pem, &c.key_pem) {
                    Ok(key) => {
                        certs.insert(name.to_owned(), (key, c.issued_unix));
                    }
                    Err(e) => {
                        warn!(%e, file = %path.display(), "ignoring unusable cached certificate")
                    }
                },
                None => warn!(file = %path.display(), "ignoring unreadable cached certificate"),
            }
        }
        // Bounded: a flood of handshakes for missing names drops requests, not memory.
        let (tx, rx) = mpsc::channel(256);
        Ok(Arc::new(Acme {
            settings,
            certs: RwLock::new(certs),
            challenges: RwLock::new(HashMap::new()),
            wanted: tx,
            wanted_rx: std::sync::Mutex::new(Some(rx)),
        }))
    }

    /// A TLS config serving the certificates (HTTP/2, HTTP/1.1, and ACME validation by ALPN).
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
        Arc::new(config)
    }

    /// Names that currently have a certificate.
    pub fn names(&self) -> Vec<String> {
        self.certs
            .read()
            .expect("certs lock")
            .keys()
            .cloned()
            .collect()
    }

    /// Asks for a certificate for `name` (deduplicated and filtered by the manager).
    pub fn request(&self, name: &str) {
        let _ = self.wanted.try_send(name.to_owned());
    }

    /// Orders certificates as they are asked for, for names `allowed` accepts, and renews old
    /// ones. Runs until the process ends; call once.
    pub async fn manage(self: Arc<Self>, allowed: impl Fn(&str) -> bool + Send + 'static) {
        let Some(mut rx) = self.wanted_rx.lock().expect("acme lock").take() else {
            return;
        };
        let mut account: Option<Account> = None;
        let mut failed: HashMap<String, Instant> = HashMap::new();
        let mut recent: Vec<Instant> = Vec::new();
        let mut renew = tokio::time::interval(Duration::from_secs(12 * 3600));
        loop {
            let name = tokio::select! {
                Some(name) = rx.recv() => name,
                _ = renew.tick() => {
                    for name in self.due_for_renewal() {
                        self.request(&name);
                    }
                    continue;
                }
                else => return,
            };
            let now = Instant::now();
            let fresh = self
                .certs
                .read()
                .expect("certs lock")
                .get(&name)
                .is_some_and(|(_, t)| !due(*t));
            if fresh || !allowed(&name) || failed.get(&name).is_some_and(|t| now < *t) {
                continue;
            }
            recent.retain(|t| now.duration_since(*t) < Duration::from_secs(3600));
            if recent.len() >= ORDERS_PER_HOUR {
                warn!(%name, "ACME order rate reached; not ordering now");
                continue;
            }
            recent.push(now);
            let result = async {
                if account.is_none() {
                    account = Some(self.account().await?);
                }
                self.order(account.as_ref().expect("set above"), &name)
                    .await
            }
            .await;
            match result {
                Ok(()) => {
                    failed.remove(&name);
                    info!(%name, "certificate issued");
                }
                Err(e) => {
                    warn!(%name, %e, "certificate order failed");
                    failed.insert(name, now + FAILURE_BACKOFF);
                }
            }
        }
    }

    fn due_for_renewal(&self) -> Vec<String> {
        let certs = self.certs.read().expect("certs lock");
        certs
            .iter()
            .filter(|(_, (_, t))| due(*t))
            .map(|(n, _)| n.clone())
            .collect()
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let builder = || match &self.settings.directory_root {
            Some(root) => Account::builder_with_root(root).map_err(protocol),
            None => Account::builder().map_err(protocol),
        };
        let path = self.settings.cache_dir.join("account.json");
        if let Some(creds) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<AccountCredentials>(&b).ok())
        {
            return builder()?.from_credentials(creds).await.map_err(protocol);
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = builder()?
            .create(&new, self.settings.directory.clone(), None)
            .await
            .map_err(protocol)?;
        write_private(&path, &serde_json::to_vec(&creds).map_err(protocol)?)?;
        Ok(account)
    }

    async fn order(&self, account: &Account, name: &str) -> Result<(), AcmeError> {
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(protocol)?;
        let mut challenged = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(protocol)?;
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let mut challenge = authz.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| {
                AcmeError::Protocol("the ACME server offers no tls-alpn-01 challenge".into())
            })?;
            let domain = challenge.identifier().to_string();
            let proof = challenge_cert(&domain, challenge.key_authorization().digest().as_ref())?;
            self.challenges
                .write()
                .expect("challenges lock")
                .insert(domain.clone(), proof);
            challenged.push(domain);
            challenge.set_ready().await.map_err(protocol)?;
        }
        let retries = RetryPolicy::new().timeout(Duration::from_secs(90));
        let status = order.poll_ready(&retries).await;
        {
            let mut challenges = self.challenges.write().expect("challenges lock");
            for domain in &challenged {
                challenges.remove(domain);
            }
        }
        match status.map_err(protocol)? {
            OrderStatus::Ready => {}
            other => return Err(AcmeError::Protocol(format!("order ended {other:?}"))),
        }
        let key_pem = order.finalize().await.map_err(protocol)?;
        let cert_pem = order.poll_certificate(&retries).await.map_err(protocol)?;
        let key = certified_key(&cert_pem, &key_pem)?;
        let issued_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let cached = CachedCert {
            cert_pem,
            key_pem,
            issued_unix,
        };
        let path = self.settings.cache_dir.join(format!("{name}.cert.json"));
        write_private(&path, &serde_json::to_vec(&cached).map_err(protocol)?)?;
        self.certs
            .write()
            .expect("certs lock")
            .insert(name.to_owned(), (key, issued_unix));
        Ok(())
    }
}

impl ResolvesServerCert for Acme {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        let validation = hello
            .alpn()
            .is_some_and(|mut alpn| alpn.any(|p| p == ACME_TLS_ALPN));
        if validation {
            return self
                .challenges
                .read()
                .expect("challenges lock")
                .get(&name)
                .cloned();
        }
        if let Some((key, _)) = self.certs.read().expect("certs lock").get(&name) {
            return Some(key.clone());
        }
        self.request(&name);
        None
    }
}

fn due(issued_unix: u64) -> bool {
    let issued = UNIX_EPOCH + Duration::from_secs(issued_unix);
    SystemTime::now()
        .duration_since(issued)
        .is_ok_and(|age| age >= RENEW_AFTER)
}

/// The self-signed certificate proving control of `domain` (RFC 8737 `acmeIdentifier`).
fn challenge_cert(domain: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, AcmeError> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).map_err(protocol)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(protocol)?;
    let cert = params.self_signed(&key).map_err(protocol)?;
    // Not `certified_key`: its key-match check parses the certificate with webpki, which
    // rejects the critical acmeIdentifier extension that validation requires.
    let der = rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).map_err(protocol)?;
    let signer = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(protocol)?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signer,
    )))
}

fn certified_key(cert_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, AcmeError> {
    use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(protocol)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(protocol)?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(Arc::new(
        CertifiedKey::from_der(chain, key, &provider).map_err(protocol)?,
    ))
}

/// Writes a file readable by the owner only (it holds private keys).
fn write_private(path: &std::path::Path, data: &[u8]) -> Result<(), AcmeError> {
    let err = |source| AcmeError::Cache {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    #[cfg(unix)]
    {
        use std::{io::Write, os::unix::fs::OpenOptionsExt};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(data).map_err(err)?;
    }
    #[cfg(not(unix))]
    std::fs::write(&tmp, data).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
