//! This node's place in the cluster: its lease, and the names it claims under it.
//!
//! Each node holds one lease, kept alive from the cluster's own runtime. A name (or a TCP
//! tunnel's `tcp:PORT` key) is claimed by a transaction that creates `names/KEY` only if it is
//! absent, bound to the lease: so a name is exclusive across the cluster, and the names of a
//! node that dies go with its lease. The same client (same client id and token) may take its
//! name over from another node, which then ends its stale session.
//!
//! Fencing: the node counts its lease valid until the time it last *asked* for a renewal plus
//! two thirds of the TTL (etcd's clock starts later, when the request arrives). Past that, it
//! stops serving its names (every session ends, so its clients reconnect elsewhere) and refuses
//! new ones until a renewal succeeds again, so a node cut off from etcd has stopped serving a
//! name before etcd can give it to another node.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicI64, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use ggrok_tunnel::protocol::{Refusal, RefusalKind};
use rustls_pki_types::CertificateDer;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    store::{etcd, to_hex, EtcdStore, Holder, NodeInfo, ETCD_TIMEOUT, NAMES, NODES},
    ClusterSecret,
};
use crate::{registry::Claimant, store::StoreError};

/// The lease's TTL without `--cluster-lease-ttl`: a node cut off from etcd stops serving within
/// about 7 s, and a dead node's names are free after 10 s (its clients take them back at once
/// through another node anyway, by client id).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);

/// The TTLs `--cluster-lease-ttl` accepts: etcd grants no lease under 2 s (its minimum TTL, from
/// its election timeout), and past an hour a dead node's names would stay taken that long.
pub const LEASE_TTLS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(2)..=Duration::from_secs(3600);

/// The sentence of the 503 a connect gets when the node cannot claim names.
pub const UNAVAILABLE: &str = "cluster store unavailable";

/// A claim this node made.
struct Mine {
    session: u64,
    /// What it stored: a release deletes the key only while it still holds this.
    value: Vec<u8>,
    /// The etcd revision it was made at: a change to the key seen after it, by another node,
    /// is a takeover; one from before it (the watch lags behind the claim) is not.
    revision: i64,
}

/// How a node takes part in its cluster.
#[derive(Debug, Clone)]
pub struct Membership {
    /// The URL other nodes reach this one at (`--advertise`).
    pub advertise: String,
    /// Authenticates the nodes to each other.
    pub secret: ClusterSecret,
    /// The TTL of the node's lease, whole seconds within [`LEASE_TTLS`].
    pub lease_ttl: Duration,
    /// CAs trusted for other nodes' certificates besides the system's (`--cluster-ca`).
    pub peer_roots: Vec<CertificateDer<'static>>,
}

/// A node of the cluster.
pub struct Node {
    pub(super) store: Arc<EtcdStore>,
    id: String,
    advertise: String,
    secret: ClusterSecret,
    ttl: Duration,
    peer_roots: Vec<CertificateDer<'static>>,
    /// TLS to the nodes that advertise `https://`, made on the first such connection.
    peer_tls: std::sync::OnceLock<Arc<rustls::ClientConfig>>,
    lease: AtomicI64,
    /// Until when the lease is surely valid, from the last renewal: past it the node fences.
    valid_until: Mutex<Instant>,
    /// Whether the lease counts as held: names are served and claimed only then.
    held: tokio::sync::watch::Sender<bool>,
    /// The claims this node made and has not released: key → (session, the stored value).
    mine: Mutex<HashMap<String, Mine>>,
    nonce: AtomicU64,
    /// Sessions to the other nodes, for hops.
    pub(crate) peers: super::hop::Peers,
    /// Listeners on ports of other nodes' TCP tunnels (see `shadow`), by port.
    pub(crate) shadows: Mutex<HashMap<u16, tokio_util::sync::CancellationToken>>,
    /// Reads of names the local copy misses (see `lookup`).
    pub(super) lookups: super::lookup::Lookups,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("advertise", &self.advertise)
            .field("secret", &self.secret)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Where a name is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Place {
    /// Here (or on a node that is gone): the local registry decides.
    Local,
    /// Nowhere, by the local copy of the table: the local registry decides, unless a claim
    /// made elsewhere a moment ago has not reached the copy yet (see `lookup`).
    Nowhere,
    /// On another node, reached at this URL.
    Node { id: String, advertise: String },
}

impl Node {
    /// Joins the cluster of `store`: grants this node's lease, registers its address under it
    /// and keeps it alive.
    pub async fn join(store: Arc<EtcdStore>, member: Membership) -> Result<Arc<Node>, StoreError> {
        let node = Arc::new(Node {
            id: format!("{:016x}", rand::random::<u64>()),
            advertise: member.advertise,
            secret: member.secret,
            ttl: member
                .lease_ttl
                .clamp(*LEASE_TTLS.start(), *LEASE_TTLS.end()),
            peer_roots: member.peer_roots,
            peer_tls: std::sync::OnceLock::new(),
            lease: AtomicI64::new(0),
            valid_until: Mutex::new(Instant::now()),
            held: tokio::sync::watch::channel(false).0,
            mine: Mutex::new(HashMap::new()),
            nonce: AtomicU64::new(1),
            peers: Default::default(),
            shadows: Mutex::new(HashMap::new()),
            lookups: Default::default(),
            store,
        });
        let first = node.clone();
        let asked = Instant::now();
        node.store
            .background
            .run(async move { first.grant().await })
            .await
            .ok_or_else(|| StoreError::Cluster("the cluster's runtime stopped".into()))??;
        node.renewed(asked);
        node.store.background.spawn(node.clone().keep_alive());
        node.store.background.spawn(node.clone().watchdog());
        info!(node = %node.id, advertise = %node.advertise, "joined the cluster");
        Ok(node)
    }

    /// This node's id in the cluster.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The URL other nodes reach this one at.
    pub fn advertise(&self) -> &str {
        &self.advertise
    }

    /// The secret nodes authenticate each other with.
    pub fn secret(&self) -> &ClusterSecret {
        &self.secret
    }

    /// The TLS client configuration for sessions to nodes that advertise `https://`: their
    /// certificate must chain to the system's roots or to `--cluster-ca`. HTTP/1.1 only, which
    /// the WebSocket upgrade needs.
    pub(crate) fn peer_tls(&self) -> Arc<rustls::ClientConfig> {
        self.peer_tls
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                let system = rustls_native_certs::load_native_certs();
                for e in &system.errors {
                    debug!(%e, "a system root certificate could not be read");
                }
                roots.add_parsable_certificates(system.certs);
                for cert in &self.peer_roots {
                    // Checked when the settings were read.
                    let _ = roots.add(cert.clone());
                }
                let mut config = rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                Arc::new(config)
            })
            .clone()
    }

    /// Whether this node holds its lease: it serves and claims names only then.
    pub fn is_ready(&self) -> bool {
        *self.held.borrow()
    }

    /// Completes when the node stops holding its lease.
    pub(crate) async fn lease_lost(&self) {
        let mut held = self.held.subscribe();
        let _ = held.wait_for(|held| !held).await;
    }

    /// Ticks whenever names or nodes change anywhere in the cluster.
    pub(crate) fn names_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.store.names_changes.subscribe()
    }

    /// Where `key` is served, from the local copy: no etcd round trip.
    pub(crate) fn place(&self, key: &str) -> Place {
        let cache = self.store.cache();
        match cache.names.get(key) {
            Some(holder) if holder.node != self.id => match cache.nodes.get(&holder.node) {
                Some(node) => Place::Node {
                    id: holder.node.clone(),
                    advertise: node.advertise.clone(),
                },
                // Its node is gone (lease expired): the name is on its way out.
                None => Place::Local,
            },
            Some(_) => Place::Local,
            None => Place::Nowhere,
        }
    }

    /// The ports of `range` whose TCP tunnels other (live) nodes hold.
    pub(crate) fn tcp_held_elsewhere(&self, range: &std::ops::RangeInclusive<u16>) -> Vec<u16> {
        let cache = self.store.cache();
        cache
            .names
            .iter()
            .filter(|(_, h)| h.node != self.id && cache.nodes.contains_key(&h.node))
            .filter_map(|(key, _)| key.strip_prefix("tcp:")?.parse().ok())
            .filter(|port| range.contains(port))
            .collect()
    }

    /// Stops listening on `port` for another node (this node's own tunnel is taking it);
    /// whether there was such a listener, which then closes in a moment.
    pub(crate) fn unshadow(&self, port: u16) -> bool {
        let shadow = self.shadows.lock().expect("shadows lock").remove(&port);
        shadow.map(|cancel| cancel.cancel()).is_some()
    }

    /// Whether another node now holds `key`, which this node served.
    pub(crate) fn taken_elsewhere(&self, key: &str) -> bool {
        let since = self
            .mine
            .lock()
            .expect("claims lock")
            .get(key)
            .map_or(0, |m| m.revision);
        let cache = self.store.cache();
        cache
            .names
            .get(key)
            .is_some_and(|h| h.node != self.id && h.revision > since)
    }

    /// Grants a new lease and registers the node under it.
    async fn grant(&self) -> Result<(), StoreError> {
        let mut lease = self.store.client.lease_client();
        let granted = etcd(lease.grant(self.ttl.as_secs() as i64, None)).await?;
        let id = granted.id();
        let info = serde_json::to_vec(&NodeInfo {
            advertise: self.advertise.clone(),
        })
        .expect("node info serializes");
        let mut kv = self.store.client.kv_client();
        etcd(kv.put(
            format!("{NODES}{}", self.id),
            info,
            Some(PutOptions::new().with_lease(id)),
        ))
        .await?;
        self.lease.store(id, Ordering::SeqCst);
        Ok(())
    }

    /// Keeps the lease alive, and takes a new lease when the old one is gone.
    async fn keep_alive(self: Arc<Self>) {
        let every = self.ttl / 4;
        loop {
            let lease = self.lease.load(Ordering::SeqCst);
            let mut client = self.store.client.lease_client();
            match etcd(client.keep_alive(lease)).await {
                Ok((mut keeper, mut answers)) => loop {
                    let asked = Instant::now();
                    let sent = tokio::time::timeout(ETCD_TIMEOUT, keeper.keep_alive()).await;
                    if !matches!(sent, Ok(Ok(()))) {
                        break;
                    }
                    match tokio::time::timeout(ETCD_TIMEOUT, answers.message()).await {
                        Ok(Ok(Some(answer))) if answer.ttl() > 0 => self.renewed(asked),
                        Ok(Ok(Some(_))) => {
                            warn!("the cluster lease expired: taking a new one");
                            self.fence();
                            let asked = Instant::now();
                            match self.grant().await {
                                Ok(()) => self.renewed(asked),
                                Err(e) => debug!(%e, "cannot take a new cluster lease yet"),
                            }
                            break;
                        }
                        _ => break,
                    }
                    tokio::time::sleep_until(asked + every).await;
                },
                Err(e) => debug!(%e, "cannot renew the cluster lease yet"),
            }
            tokio::time::sleep(every.min(Duration::from_millis(250))).await;
        }
    }

    /// A renewal asked for at `asked` succeeded: the lease is valid until at least `asked` +
    /// TTL by etcd's clock.
    fn renewed(&self, asked: Instant) {
        *self.valid_until.lock().expect("lease lock") = asked + self.ttl * 2 / 3;
        if !self.held.send_replace(true) {
            info!("cluster lease held: serving");
        }
    }

    /// Fences the node once its lease may have run out: renewals stop moving `valid_until`.
    async fn watchdog(self: Arc<Self>) {
        loop {
            let until = *self.valid_until.lock().expect("lease lock");
            if Instant::now() < until {
                tokio::time::sleep_until(until).await;
                continue;
            }
            self.fence();
            // Until a renewal moves the deadline again.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops serving: every session of this node ends (its clients reconnect, to another
    /// node if this one stays cut off) and claims are refused until the lease is renewed.
    fn fence(&self) {
        if self.held.send_replace(false) {
            warn!("cluster lease not renewed in time: this node stops serving its names");
        }
        self.mine.lock().expect("claims lock").clear();
    }

    /// Claims `key` for `who`'s session `session`: creates `names/KEY` under this node's lease
    /// if nobody holds it, or takes it over from the same client (a reconnect, from any node)
    /// or from this node's own earlier session. Refuses with the registry's name-taken refusal
    /// otherwise, and with 503 [`UNAVAILABLE`] when etcd cannot be asked.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        key: &str,
        who: &Claimant,
        session: u64,
    ) -> Result<(), Refusal> {
        let unavailable = || Refusal::new(RefusalKind::Unavailable, UNAVAILABLE);
        if !self.is_ready() {
            return Err(unavailable());
        }
        let holder = Holder {
            node: self.id.clone(),
            client: who.client_id.clone(),
            token: who.token.as_ref().map(to_hex),
            nonce: self.nonce.fetch_add(1, Ordering::Relaxed),
            revision: 0,
        };
        let node = self.clone();
        let key_owned = key.to_owned();
        let claiming = holder.clone();
        let claimed = self
            .store
            .background
            .run(async move { node.claim_in_etcd(&key_owned, claiming).await })
            .await;
        match claimed {
            Some(Ok(Some((value, revision)))) => {
                self.store.claimed(key, holder, revision);
                let mine = Mine {
                    session,
                    value,
                    revision,
                };
                self.mine
                    .lock()
                    .expect("claims lock")
                    .insert(key.to_owned(), mine);
                Ok(())
            }
            Some(Ok(None)) => Err(Refusal::new(
                RefusalKind::NameTaken,
                format!("the subdomain {key:?} is in use by another client"),
            )),
            Some(Err(e)) => {
                warn!(%e, "cannot claim a name in the cluster");
                Err(unavailable())
            }
            None => Err(unavailable()),
        }
    }

    /// The claim's transactions: what was stored and at which revision, or `Ok(None)`:
    /// someone else holds the name.
    async fn claim_in_etcd(
        &self,
        key: &str,
        holder: Holder,
    ) -> Result<Option<(Vec<u8>, i64)>, StoreError> {
        let name_key = format!("{NAMES}{key}");
        let value = serde_json::to_vec(&holder).expect("a holder serializes");
        let mut kv = self.store.client.kv_client();
        for _ in 0..3 {
            let lease = self.lease.load(Ordering::SeqCst);
            let put = TxnOp::put(
                name_key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease)),
            );
            let create = Txn::new()
                .when([Compare::create_revision(
                    name_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([put.clone()]);
            let created = etcd(kv.txn(create)).await?;
            if created.succeeded() {
                return Ok(Some((value, revision_of(&created))));
            }
            let found = etcd(kv.get(name_key.clone(), None)).await?;
            let Some(current) = found.kvs().first() else {
                // Released in between: try again.
                continue;
            };
            let theirs: Option<Holder> = serde_json::from_slice(current.value()).ok();
            let ours = theirs.as_ref().is_some_and(|h| {
                h.node == self.id || (h.client == holder.client && h.token == holder.token)
            });
            if !ours {
                return Ok(None);
            }
            let take = Txn::new()
                .when([Compare::mod_revision(
                    name_key.clone(),
                    CompareOp::Equal,
                    current.mod_revision(),
                )])
                .and_then([put]);
            let taken = etcd(kv.txn(take)).await?;
            if taken.succeeded() {
                return Ok(Some((value, revision_of(&taken))));
            }
        }
        Err(StoreError::Cluster(
            "the name kept changing while it was claimed".into(),
        ))
    }

    /// Gives up session `session`'s claim on `key`: at once, or after `hold` (the reconnect
    /// grace, during which only the same client may take it, from any node). Only the claim
    /// this node made for that session is deleted, never a newer one.
    pub(crate) fn release(self: &Arc<Self>, key: &str, session: u64, hold: Option<Duration>) {
        let value = {
            let mut mine = self.mine.lock().expect("claims lock");
            match mine.get(key) {
                Some(m) if m.session == session => mine.remove(key).map(|m| m.value),
                _ => None,
            }
        };
        let Some(value) = value else { return };
        let name_key = format!("{NAMES}{key}");
        let client = self.store.client.clone();
        self.store.background.spawn(async move {
            if let Some(hold) = hold {
                tokio::time::sleep(hold).await;
            }
            let mut kv = client.kv_client();
            let delete = Txn::new()
                .when([Compare::value(name_key.clone(), CompareOp::Equal, value)])
                .and_then([TxnOp::delete(name_key, None)]);
            if let Err(e) = etcd(kv.txn(delete)).await {
                // The lease takes it with the node, at worst.
                debug!(%e, "cannot release a name in the cluster");
            }
        });
    }
}

/// The revision a transaction committed at: the mod revision of the keys it wrote.
fn revision_of(txn: &etcd_client::TxnResponse) -> i64 {
    txn.header().map_or(0, |h| h.revision())
}
