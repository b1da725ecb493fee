//! Tokens and reservations in etcd: the [`TokenStore`] of a cluster.
//!
//! Keys, under [`PREFIX`]:
//! - `tokens/HASH` (hex SHA-256 of the token) → JSON [`Record`]; the key's create revision is
//!   the token's id.
//! - `token-names/NAME` → `HASH`: names are unique, revoked tokens' names included.
//! - `reserved/KEY` (a subdomain, or `tcp:PORT`) → `HASH` of the token it is for.
//! - `names/KEY` → JSON [`Holder`]: who serves the name now, bound to its node's lease (see
//!   [`super::node`]).
//! - `nodes/ID` → JSON [`NodeInfo`]: a node's address, bound to its lease.
//!
//! Only hashes are stored, as in SQLite. Every node keeps a copy of these keys, read once and
//! then kept current by a watch from that revision, so a connect's token check costs no round
//! trip, and a revocation reaches every node as soon as etcd has it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::background::Background;
use crate::{
    config::{hash_token, TokenHash},
    store::{new_token, StoreError, TokenId, TokenInfo, TokenStore, Version},
};

/// Every key of ggrok's in etcd starts with this.
pub(crate) const PREFIX: &str = "ggrok/";
const TOKENS: &str = "ggrok/tokens/";
const TOKEN_NAMES: &str = "ggrok/token-names/";
const RESERVED: &str = "ggrok/reserved/";
pub(crate) const NAMES: &str = "ggrok/names/";
pub(crate) const NODES: &str = "ggrok/nodes/";

/// How long one etcd request may take before etcd counts as unreachable: long enough for a
/// loaded etcd, short enough that a connect refused with 503 is not left hanging.
pub(crate) const ETCD_TIMEOUT: Duration = Duration::from_secs(2);

/// A token as stored under `tokens/HASH`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    /// Unix seconds.
    created: i64,
    /// Unix seconds, if revoked.
    revoked: Option<i64>,
}

/// A token in the local copy.
#[derive(Debug, Clone)]
struct Token {
    id: TokenId,
    revoked: bool,
}

/// Who serves a name, as stored under `names/KEY`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Holder {
    /// The node's id.
    pub(crate) node: String,
    /// The client's id: the same client may take the name over from any node.
    pub(crate) client: String,
    /// Hex hash of the client's token, if it presented one.
    pub(crate) token: Option<String>,
    /// Tells this claim from the holder's earlier ones (a release deletes only its own).
    pub(crate) nonce: u64,
    /// The key's mod revision, in the local copy only.
    #[serde(skip)]
    pub(crate) revision: i64,
}

/// A node, as stored under `nodes/ID`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeInfo {
    /// Where the other nodes reach it (`--advertise`).
    pub(crate) advertise: String,
}

/// The local copy of the store's keys.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    tokens: HashMap<TokenHash, Token>,
    reserved: HashMap<String, TokenHash>,
    /// Names (and `tcp:PORT` keys) claimed anywhere in the cluster.
    pub(crate) names: HashMap<String, Holder>,
    /// Live nodes.
    pub(crate) nodes: HashMap<String, NodeInfo>,
    /// The etcd revision the copy is at.
    revision: i64,
}

/// What a change touched.
#[derive(Debug, Default, Clone, Copy)]
struct Touched {
    tokens: bool,
    names: bool,
}

impl Cache {
    /// `name` is `holder`'s since `revision`, unless the copy knows of a later change; whether
    /// it changed the copy.
    fn claimed(&mut self, name: &str, holder: Holder, revision: i64) -> bool {
        if self.names.get(name).is_some_and(|h| h.revision >= revision) {
            return false;
        }
        self.names
            .insert(name.to_owned(), Holder { revision, ..holder });
        true
    }

    /// Applies a change of `key` made at `revision`: `kv` put, or (`None`) the key deleted.
    fn apply(&mut self, key: &str, kv: Option<&KeyValue>, revision: i64) -> Touched {
        let json = |kv: Option<&KeyValue>| kv.map(|kv| kv.value().to_vec());
        if let Some(name) = key.strip_prefix(NAMES) {
            // This node's own claim, written through at its revision, is newer than what the
            // watch may still bring of the name before it.
            if self.names.get(name).is_some_and(|h| h.revision > revision) {
                return Touched::default();
            }
            let holder = kv.and_then(|kv| {
                let holder = serde_json::from_slice::<Holder>(kv.value()).ok()?;
                Some(Holder {
                    revision: kv.mod_revision(),
                    ..holder
                })
            });
            match holder {
                Some(holder) => self.names.insert(name.to_owned(), holder),
                None => self.names.remove(name),
            };
            return Touched {
                names: true,
                ..Touched::default()
            };
        }
        if let Some(id) = key.strip_prefix(NODES) {
            match json(kv).and_then(|v| serde_json::from_slice::<NodeInfo>(&v).ok()) {
                Some(node) => self.nodes.insert(id.to_owned(), node),
                None => self.nodes.remove(id),
            };
            return Touched {
                names: true,
                ..Touched::default()
            };
        }
        let tokens = Touched {
            tokens: true,
            ..Touched::default()
        };
        if let Some(hex) = key.strip_prefix(TOKENS) {
            let Some(hash) = from_hex(hex) else {
                return Touched::default();
            };
            match kv.and_then(|kv| {
                serde_json::from_slice::<Record>(kv.value())
                    .ok()
                    .map(|r| (kv, r))
            }) {
                Some((kv, record)) => {
                    self.tokens.insert(
                        hash,
                        Token {
                            id: kv.create_revision(),
                            revoked: record.revoked.is_some(),
                        },
                    );
                }
                None => {
                    self.tokens.remove(&hash);
                }
            }
            return tokens;
        }
        if let Some(name) = key.strip_prefix(RESERVED) {
            match kv.and_then(|kv| std::str::from_utf8(kv.value()).ok().and_then(from_hex)) {
                Some(hash) => {
                    self.reserved.insert(name.to_owned(), hash);
                }
                None => {
                    self.reserved.remove(name);
                }
            }
            return tokens;
        }
        Touched::default()
    }
}

/// Tokens and reservations in etcd, with a local copy kept current by a watch.
pub struct EtcdStore {
    pub(crate) client: Client,
    pub(crate) background: Arc<Background>,
    cache: Arc<Mutex<Cache>>,
    /// Ticks on every change to tokens or reservations.
    changes: tokio::sync::watch::Sender<u64>,
    /// Ticks on every change to names or nodes.
    pub(crate) names_changes: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").finish_non_exhaustive()
    }
}

/// How long etcd takes to answer, for the metrics: one histogram for the process, as every
/// node in it (one, but for tests) talks to the same kind of etcd.
pub(crate) static ETCD_LATENCY: std::sync::LazyLock<
    prometheus_client::metrics::histogram::Histogram,
> = std::sync::LazyLock::new(|| {
    // 0.5 ms .. ~4 s.
    prometheus_client::metrics::histogram::Histogram::new(
        prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 14),
    )
});

/// Maps a failed or timed-out etcd call to the error every caller reports.
pub(crate) async fn etcd<T>(
    call: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    let started = std::time::Instant::now();
    let answered = tokio::time::timeout(ETCD_TIMEOUT, call).await;
    ETCD_LATENCY.observe(started.elapsed().as_secs_f64());
    match answered {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(StoreError::Cluster(e.to_string())),
        Err(_) => Err(StoreError::Cluster(format!(
            "no answer from etcd within {} s",
            ETCD_TIMEOUT.as_secs()
        ))),
    }
}

impl EtcdStore {
    /// Connects to the etcd at `endpoints` (`http://HOST:PORT`), reads the store's keys and
    /// starts watching them. Fails if etcd does not answer.
    pub async fn connect(endpoints: Vec<String>) -> Result<Arc<Self>, StoreError> {
        let background =
            Arc::new(Background::start().map_err(|e| StoreError::Cluster(e.to_string()))?);
        let options = ConnectOptions::new()
            .with_connect_timeout(ETCD_TIMEOUT)
            // A silent network (no reset) is noticed by HTTP/2 pings, so watches and the
            // keep-alive fail over instead of waiting forever.
            .with_keep_alive(Duration::from_secs(1), ETCD_TIMEOUT)
            .with_keep_alive_while_idle(true);
        // The client's connection task lives on the runtime that creates it: the cluster's.
        let client = background
            .run(async move { etcd(Client::connect(endpoints, Some(options))).await })
            .await
            .ok_or_else(|| StoreError::Cluster("the cluster's runtime stopped".into()))??;
        let store = Arc::new(Self {
            client,
            background,
            cache: Arc::new(Mutex::new(Cache::default())),
            changes: tokio::sync::watch::channel(0).0,
            names_changes: tokio::sync::watch::channel(0).0,
        });
        let first = store.clone();
        store
            .background
            .run(async move { first.sync().await })
            .await
            .ok_or_else(|| StoreError::Cluster("the cluster's runtime stopped".into()))??;
        let watcher = store.clone();
        store.background.spawn(async move { watcher.watch().await });
        Ok(store)
    }

    pub(crate) fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().expect("cluster cache lock")
    }

    /// This node claimed `name` for `holder` at `revision`: its copy says so at once, so that
    /// its router sends the name's visitors to the session here rather than, until the watch
    /// brings the claim back, to the node that held the name before.
    pub(crate) fn claimed(&self, name: &str, holder: Holder, revision: i64) {
        if self.cache().claimed(name, holder, revision) {
            self.names_changes.send_modify(|n| *n += 1);
        }
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Reads every key into a fresh copy.
    async fn sync(&self) -> Result<(), StoreError> {
        let mut kv = self.client.kv_client();
        let resp = etcd(kv.get(PREFIX, Some(GetOptions::new().with_prefix()))).await?;
        let mut fresh = Cache {
            revision: resp.header().map_or(0, |h| h.revision()),
            ..Cache::default()
        };
        for kv in resp.kvs() {
            if let Ok(key) = kv.key_str() {
                fresh.apply(key, Some(kv), kv.mod_revision());
            }
        }
        *self.cache() = fresh;
        self.changed();
        self.names_changes.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Keeps the copy current: a watch from the copy's revision, made again when it breaks
    /// (after a full read if etcd compacted the history the copy needs).
    async fn watch(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut resync = false;
        loop {
            if resync {
                match self.sync().await {
                    Ok(()) => resync = false,
                    Err(e) => {
                        debug!(%e, "cannot read the cluster store yet");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                }
            }
            let from = self.cache().revision + 1;
            let options = WatchOptions::new().with_prefix().with_start_revision(from);
            let mut watch = self.client.watch_client();
            let mut stream = match etcd(watch.watch(PREFIX, Some(options))).await {
                Ok(stream) => stream,
                Err(e) => {
                    debug!(%e, "cannot watch the cluster store yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) => {
                        backoff = Duration::from_millis(100);
                        if resp.canceled() {
                            if resp.compact_revision() > 0 {
                                info!("cluster store history compacted: reading it again");
                                resync = true;
                            }
                            break;
                        }
                        let mut touched = Touched::default();
                        {
                            let mut cache = self.cache();
                            for event in resp.events() {
                                let Some(kv) = event.kv() else { continue };
                                let Ok(key) = kv.key_str() else { continue };
                                let kv = match event.event_type() {
                                    EventType::Put => Some(kv),
                                    EventType::Delete => None,
                                };
                                let t = cache.apply(
                                    key,
                                    kv,
                                    event.kv().map_or(0, KeyValue::mod_revision),
                                );
                                touched.tokens |= t.tokens;
                                touched.names |= t.names;
                            }
                            if let Some(h) = resp.header() {
                                cache.revision = cache.revision.max(h.revision());
                            }
                        }
                        if touched.tokens {
                            self.changed();
                        }
                        if touched.names {
                            self.names_changes.send_modify(|n| *n += 1);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        warn!(%e, "cluster store watch broke; watching again");
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Runs `work` on the cluster's runtime and blocks for its answer (admin commands).
    fn block<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.background
            .block(work)
            .unwrap_or_else(|| Err(StoreError::Cluster("the cluster's runtime stopped".into())))
    }

    /// The hash of the live token named `name`, and its key's mod revision.
    async fn live_token(client: &Client, name: &str) -> Result<(String, i64), StoreError> {
        let mut kv = client.kv_client();
        let resp = etcd(kv.get(format!("{TOKEN_NAMES}{name}"), None)).await?;
        let no_such = || StoreError::NoSuchToken(name.to_owned());
        let hex = resp
            .kvs()
            .first()
            .and_then(|kv| kv.value_str().ok())
            .ok_or_else(no_such)?
            .to_owned();
        let resp = etcd(kv.get(format!("{TOKENS}{hex}"), None)).await?;
        let kv = resp.kvs().first().ok_or_else(no_such)?;
        let record: Record = serde_json::from_slice(kv.value())
            .map_err(|e| StoreError::Cluster(format!("malformed token record: {e}")))?;
        if record.revoked.is_some() {
            return Err(no_such());
        }
        Ok((hex, kv.mod_revision()))
    }

    /// The name of the token whose hash is `hex`, for messages.
    async fn token_name(client: &Client, hex: &str) -> Result<String, StoreError> {
        let mut kv = client.kv_client();
        let resp = etcd(kv.get(format!("{TOKENS}{hex}"), None)).await?;
        Ok(resp
            .kvs()
            .first()
            .and_then(|kv| serde_json::from_slice::<Record>(kv.value()).ok())
            .map_or_else(|| "?".to_owned(), |r| r.name))
    }

    async fn create_token_async(
        client: Client,
        name: String,
        reserve: Vec<String>,
    ) -> Result<String, StoreError> {
        for sub in &reserve {
            ggrok_tunnel::protocol::validate_name(sub)?;
        }
        let token = new_token();
        let hex = to_hex(&hash_token(&token));
        let record = Record {
            name: name.clone(),
            created: unix_now(),
            revoked: None,
        };
        let name_key = format!("{TOKEN_NAMES}{name}");
        let mut when = vec![Compare::create_revision(
            name_key.clone(),
            CompareOp::Equal,
            0,
        )];
        let mut then = vec![
            TxnOp::put(name_key.clone(), hex.clone(), None),
            TxnOp::put(
                format!("{TOKENS}{hex}"),
                serde_json::to_vec(&record).expect("a record serializes"),
                None,
            ),
        ];
        for sub in &reserve {
            let key = format!("{RESERVED}{sub}");
            when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
            then.push(TxnOp::put(key, hex.clone(), None));
        }
        let mut kv = client.kv_client();
        let resp = etcd(kv.txn(Txn::new().when(when).and_then(then))).await?;
        if resp.succeeded() {
            return Ok(token);
        }
        // Say which condition failed.
        if !etcd(kv.get(name_key, None)).await?.kvs().is_empty() {
            return Err(StoreError::DuplicateName(name));
        }
        for sub in reserve {
            let resp = etcd(kv.get(format!("{RESERVED}{sub}"), None)).await?;
            if let Some(owner) = resp.kvs().first().and_then(|kv| kv.value_str().ok()) {
                let owner = Self::token_name(&client, owner).await?;
                return Err(StoreError::Reserved { name: sub, owner });
            }
        }
        Err(StoreError::Cluster(
            "the token was not created; try again".into(),
        ))
    }

    async fn list_async(client: Client) -> Result<Vec<TokenInfo>, StoreError> {
        let mut kv = client.kv_client();
        let tokens = etcd(kv.get(TOKENS, Some(GetOptions::new().with_prefix()))).await?;
        let reserved = etcd(kv.get(RESERVED, Some(GetOptions::new().with_prefix()))).await?;
        let mut by_hash: HashMap<&str, Vec<String>> = HashMap::new();
        for kv in reserved.kvs() {
            if let (Ok(key), Ok(hex)) = (kv.key_str(), kv.value_str()) {
                let name = key.trim_start_matches(RESERVED).to_owned();
                by_hash.entry(hex).or_default().push(name);
            }
        }
        let mut list = Vec::new();
        for kv in tokens.kvs() {
            let (Ok(key), Ok(record)) =
                (kv.key_str(), serde_json::from_slice::<Record>(kv.value()))
            else {
                continue;
            };
            let mut reserved = by_hash
                .remove(key.trim_start_matches(TOKENS))
                .unwrap_or_default();
            reserved.sort();
            list.push((
                kv.create_revision(),
                TokenInfo {
                    name: record.name,
                    created: record.created,
                    revoked: record.revoked,
                    reserved,
                },
            ));
        }
        list.sort_by_key(|(id, _)| *id);
        Ok(list.into_iter().map(|(_, t)| t).collect())
    }

    async fn revoke_async(client: Client, name: String) -> Result<(), StoreError> {
        let mut kv = client.kv_client();
        // Retried if the token changed between the read and the write (another admin).
        for _ in 0..5 {
            let (hex, revision) = Self::live_token(&client, &name).await?;
            let token_key = format!("{TOKENS}{hex}");
            let resp = etcd(kv.get(token_key.clone(), None)).await?;
            let Some(mut record) = resp
                .kvs()
                .first()
                .and_then(|kv| serde_json::from_slice::<Record>(kv.value()).ok())
            else {
                return Err(StoreError::NoSuchToken(name));
            };
            record.revoked = Some(unix_now());
            let reserved = etcd(kv.get(RESERVED, Some(GetOptions::new().with_prefix()))).await?;
            let mut then = vec![TxnOp::put(
                token_key.clone(),
                serde_json::to_vec(&record).expect("a record serializes"),
                None,
            )];
            for r in reserved.kvs() {
                if r.value() == hex.as_bytes() {
                    then.push(TxnOp::delete(r.key().to_vec(), None));
                }
            }
            let when = [Compare::mod_revision(token_key, CompareOp::Equal, revision)];
            if etcd(kv.txn(Txn::new().when(when).and_then(then)))
                .await?
                .succeeded()
            {
                return Ok(());
            }
        }
        Err(StoreError::Cluster(
            "the token kept changing while it was revoked; try again".into(),
        ))
    }

    async fn reserve_key_async(
        client: Client,
        key: String,
        token_name: String,
    ) -> Result<(), StoreError> {
        let mut kv = client.kv_client();
        for _ in 0..5 {
            let (hex, revision) = Self::live_token(&client, &token_name).await?;
            let reserved_key = format!("{RESERVED}{key}");
            let when = [
                Compare::create_revision(reserved_key.clone(), CompareOp::Equal, 0),
                // Not for a token revoked in the meantime.
                Compare::mod_revision(format!("{TOKENS}{hex}"), CompareOp::Equal, revision),
            ];
            let then = [TxnOp::put(reserved_key.clone(), hex.clone(), None)];
            if etcd(kv.txn(Txn::new().when(when).and_then(then)))
                .await?
                .succeeded()
            {
                return Ok(());
            }
            let resp = etcd(kv.get(reserved_key, None)).await?;
            match resp.kvs().first().and_then(|kv| kv.value_str().ok()) {
                Some(owner) if owner == hex => return Ok(()),
                Some(owner) => {
                    let owner = Self::token_name(&client, owner).await?;
                    return Err(StoreError::Reserved { name: key, owner });
                }
                // The token changed, or the reservation went in between: again.
                None => {}
            }
        }
        Err(StoreError::Cluster(
            "the reservation kept changing; try again".into(),
        ))
    }

    async fn release_key_async(client: Client, key: String) -> Result<bool, StoreError> {
        let mut kv = client.kv_client();
        let resp = etcd(kv.delete(format!("{RESERVED}{key}"), None)).await?;
        Ok(resp.deleted() > 0)
    }
}

impl TokenStore for EtcdStore {
    fn has_tokens(&self) -> Result<bool, StoreError> {
        Ok(!self.cache().tokens.is_empty())
    }

    fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenId>, StoreError> {
        Ok(self
            .cache()
            .tokens
            .get(hash)
            .filter(|t| !t.revoked)
            .map(|t| t.id))
    }

    fn is_revoked(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        Ok(self.cache().tokens.get(hash).is_some_and(|t| t.revoked))
    }

    fn reserved_for(&self, key: &str) -> Result<Option<TokenId>, StoreError> {
        let cache = self.cache();
        Ok(cache
            .reserved
            .get(key)
            .and_then(|hash| cache.tokens.get(hash))
            .map(|t| t.id))
    }

    fn reserved_ports(&self) -> Result<Vec<(u16, TokenId)>, StoreError> {
        let cache = self.cache();
        Ok(cache
            .reserved
            .iter()
            .filter_map(|(key, hash)| {
                let port = key.strip_prefix("tcp:")?.parse().ok()?;
                Some((port, cache.tokens.get(hash)?.id))
            })
            .collect())
    }

    fn version(&self) -> Result<Version, StoreError> {
        Ok(Version {
            others: self.cache().revision,
            ours: *self.changes.borrow(),
        })
    }

    fn blocks(&self) -> bool {
        false
    }

    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.changes.subscribe())
    }

    fn create_token(&self, name: &str, reserve: &[String]) -> Result<String, StoreError> {
        let (client, name, reserve) = (self.client.clone(), name.to_owned(), reserve.to_vec());
        self.block(Self::create_token_async(client, name, reserve))
    }

    fn list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        self.block(Self::list_async(self.client.clone()))
    }

    fn revoke(&self, name: &str) -> Result<(), StoreError> {
        self.block(Self::revoke_async(self.client.clone(), name.to_owned()))
    }

    fn reserve_key(&self, key: &str, token_name: &str) -> Result<(), StoreError> {
        let (client, key, token_name) =
            (self.client.clone(), key.to_owned(), token_name.to_owned());
        self.block(Self::reserve_key_async(client, key, token_name))
    }

    fn release_key(&self, key: &str) -> Result<bool, StoreError> {
        self.block(Self::release_key_async(self.client.clone(), key.to_owned()))
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub(crate) fn to_hex(hash: &TokenHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(hex: &str) -> Option<TokenHash> {
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node's own claim is in its copy at once, and what the watch still brings of the
    /// name from before it does not undo it; what comes after it does.
    #[test]
    fn a_claim_is_in_the_copy_before_the_watch_brings_it() {
        let holder = |node: &str| Holder {
            node: node.to_owned(),
            client: "laptop".to_owned(),
            token: None,
            nonce: 0,
            revision: 0,
        };
        let key = format!("{NAMES}app");
        let mut cache = Cache::default();
        assert!(cache.claimed("app", holder("b"), 7));
        // The other node's release of its earlier claim, at revision 6, arrives late.
        cache.apply(&key, None, 6);
        assert_eq!(cache.names["app"].node, "b");
        assert!(!cache.claimed("app", holder("b"), 7), "nothing new");
        // A later release does remove it.
        cache.apply(&key, None, 8);
        assert!(!cache.names.contains_key("app"));
    }

    #[test]
    fn hashes_round_trip_through_hex() {
        let hash = hash_token("ggrok_x");
        assert_eq!(from_hex(&to_hex(&hash)), Some(hash));
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(&"g".repeat(64)), None);
    }
}
