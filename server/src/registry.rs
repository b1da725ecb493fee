//! Which client holds which name.
//!
//! A name is `Live` while a session holds it. When the session ends it becomes `Held` for the
//! reconnect grace period: only the same client (same client id) or the same token may take it
//! then, so a client that drops and comes back gets its URL back and nobody else can grab it
//! in between. A live name can be taken over only by the client that holds it (its old session
//! is stale: the client reconnected before the server noticed the drop).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ggrok_tunnel::protocol::{Refusal, RefusalKind};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::{config::TokenHash, metrics::TunnelMetrics, policy::SharedPolicy};

/// Who is asking for a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimant {
    /// The client's random id, kept across its reconnects.
    pub client_id: String,
    /// Hash of the token it presented (None in open mode).
    pub token: Option<TokenHash>,
}

impl Claimant {
    fn owns(&self, other: &Claimant) -> bool {
        self.client_id == other.client_id && self.token == other.token
    }
}

/// What the table knows of one name.
enum Entry {
    Live {
        session: u64,
        owner: Claimant,
        cancel: CancellationToken,
        revoked: CancellationToken,
        ended: CancellationToken,
        policy: SharedPolicy,
        /// Set when the session is attached: from then on requests for the name go to it.
        endpoint: Option<Arc<Endpoint>>,
    },
    Held {
        owner: Claimant,
        until: Instant,
    },
}

/// A granted claim: the name, and a token that fires when the session must end (taken over).
#[derive(Debug)]
pub struct Claim {
    /// The name now held.
    pub name: String,
    /// Identifies this session in later calls.
    pub session: u64,
    /// Cancelled when another session of the same client replaces this one.
    pub cancel: CancellationToken,
    /// Cancelled when the session's token is revoked; the name is already free by then.
    pub revoked: CancellationToken,
    /// To be cancelled by the session's task when the session ends, however it ends.
    pub ended: CancellationToken,
}

/// Where requests for a name go: the attached session and what it needs per request.
pub struct Endpoint {
    /// The name served.
    pub name: String,
    /// The session's id.
    pub session: u64,
    /// The shard the session runs on, when the server runs on shards (see [`crate::shard`]).
    pub shard: Option<usize>,
    /// Opens streams on the session.
    pub mux: ggrok_tunnel::mux::Session,
    /// What the tunnel requires of visitors.
    pub policy: SharedPolicy,
    /// Cancelled when the session has ended: work spawned for its streams (uploads, upgraded
    /// connections) stops with it.
    pub ended: CancellationToken,
    /// The tunnel's counters.
    pub metrics: TunnelMetrics,
    /// A TCP tunnel's places under `--max-conns-per-tcp-tunnel`: one count for its own port
    /// and the connections other nodes of a cluster hop to it (see `crate::tcp`).
    pub tcp_conns: Option<Arc<tokio::sync::Semaphore>>,
}

/// The name table.
pub struct Registry {
    table: Mutex<Table>,
    grace: Duration,
    /// Woken when a session attaches or a name is released, for requests waiting on a tunnel
    /// whose client got its `101` but whose session is not up yet.
    changed: tokio::sync::Notify,
}

struct Table {
    /// Looked up once per request by the visitor's Host: foldhash, seeded, instead of SipHash.
    names: HashMap<String, Entry, foldhash::fast::RandomState>,
    next_session: u64,
    last_sweep: Instant,
}

/// Length of generated names: 36^8 ≈ 2.8e12, so guessing a live name is hopeless.
const RANDOM_NAME_LEN: usize = 8;

impl Registry {
    /// An empty table whose released names are held for `grace`.
    pub fn new(grace: Duration) -> Self {
        Self {
            changed: tokio::sync::Notify::new(),
            table: Mutex::new(Table {
                names: HashMap::default(),
                next_session: 1,
                last_sweep: Instant::now(),
            }),
            grace,
        }
    }

    /// Claims `wanted` (or a random free name) for `who`, whose token may hold at most
    /// `max_per_token` live names (0: any number).
    pub fn claim(
        &self,
        wanted: Option<&str>,
        who: &Claimant,
        policy: SharedPolicy,
        max_per_token: usize,
    ) -> Result<Claim, Refusal> {
        let mut st = self.table.lock().expect("registry lock");
        if let (Some(token), true) = (who.token, max_per_token > 0) {
            // HTTP and TCP tunnels have caps of their own.
            let tcp = wanted.is_some_and(is_tcp_key);
            let held = st
                .names
                .iter()
                .filter(|(name, s)| {
                    // A session of the same client replacing itself does not count twice.
                    is_tcp_key(name) == tcp
                        && matches!(s, Entry::Live { owner, .. } if owner.token == Some(token)
                        && !(Some(name.as_str()) == wanted && owner.client_id == who.client_id))
                })
                .count();
            if held >= max_per_token {
                return Err(Refusal::new(
                    RefusalKind::TooManyTunnels,
                    format!(
                        "this token already has {held} {}tunnels online, the most this server allows",
                        if tcp { "TCP " } else { "" }
                    ),
                ));
            }
        }
        let now = Instant::now();
        if now.duration_since(st.last_sweep) > Duration::from_secs(1) {
            st.names
                .retain(|_, s| !matches!(s, Entry::Held { until, .. } if *until <= now));
            st.last_sweep = now;
        }
        let name = match wanted {
            Some(name) => {
                match st.names.get(name) {
                    Some(Entry::Live { owner, cancel, .. }) => {
                        if !owner.owns(who) {
                            return Err(Refusal::new(
                                RefusalKind::NameTaken,
                                format!("the subdomain {name:?} is in use by another client"),
                            ));
                        }
                        // Our own stale session: replace it.
                        cancel.cancel();
                    }
                    Some(Entry::Held { owner, until }) if *until > now => {
                        let same_token = who.token.is_some() && owner.token == who.token;
                        if !(owner.owns(who) || same_token) {
                            let secs = until.duration_since(now).as_secs() + 1;
                            return Err(Refusal::new(
                                RefusalKind::NameTaken,
                                format!(
                                    "the subdomain {name:?} is held for its previous client to reconnect; \
                                     try again in {secs} s"
                                ),
                            ));
                        }
                    }
                    _ => {}
                }
                name.to_owned()
            }
            None => loop {
                let name = random_name();
                if !st.names.contains_key(&name) {
                    break name;
                }
            },
        };
        let session = st.next_session;
        st.next_session += 1;
        let cancel = CancellationToken::new();
        let revoked = CancellationToken::new();
        let ended = CancellationToken::new();
        st.names.insert(
            name.clone(),
            Entry::Live {
                session,
                owner: who.clone(),
                cancel: cancel.clone(),
                revoked: revoked.clone(),
                ended: ended.clone(),
                policy,
                endpoint: None,
            },
        );
        Ok(Claim {
            name,
            session,
            cancel,
            revoked,
            ended,
        })
    }

    /// The distinct tokens that hold names (live or held), for checking them against revocation.
    pub fn tokens(&self) -> Vec<TokenHash> {
        let st = self.table.lock().expect("registry lock");
        let mut tokens: Vec<TokenHash> = st
            .names
            .values()
            .filter_map(|s| match s {
                Entry::Live { owner, .. } | Entry::Held { owner, .. } => owner.token,
            })
            .collect();
        tokens.sort_unstable();
        tokens.dedup();
        tokens
    }

    /// Ends everything `token` holds: its live sessions are told to close and stop being
    /// routed at once, and its names, live or held, are free for anyone. Returns how many live
    /// sessions it ended.
    pub fn revoke(&self, token: &TokenHash) -> usize {
        let mut st = self.table.lock().expect("registry lock");
        let mut ended = 0;
        st.names.retain(|_, s| match s {
            Entry::Live { owner, revoked, .. } if owner.token.as_ref() == Some(token) => {
                revoked.cancel();
                ended += 1;
                false
            }
            Entry::Held { owner, .. } => owner.token.as_ref() != Some(token),
            _ => true,
        });
        drop(st);
        self.changed.notify_waiters();
        ended
    }

    /// Makes a claimed name routable once its session is up.
    pub fn attach(
        &self,
        name: &str,
        session: u64,
        mux: ggrok_tunnel::mux::Session,
        metrics: TunnelMetrics,
        tcp_conns: Option<Arc<tokio::sync::Semaphore>>,
    ) {
        let mut st = self.table.lock().expect("registry lock");
        if let Some(Entry::Live {
            session: s,
            policy,
            ended,
            endpoint,
            ..
        }) = st.names.get_mut(name)
        {
            if *s == session {
                *endpoint = Some(Arc::new(Endpoint {
                    name: name.to_owned(),
                    session,
                    shard: crate::shard::current(),
                    mux,
                    policy: policy.clone(),
                    ended: ended.clone(),
                    metrics,
                    tcp_conns,
                }));
            }
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Ends `session`'s hold on `name`: the name is then held for the grace period when `hold`
    /// (a dropped client may come back), else freed at once (the client stopped on purpose).
    /// `released` runs (under the registry's lock) only if `name` was still `session`'s: a
    /// session that a newer one replaced has nothing left to clean up.
    pub fn release(&self, name: &str, session: u64, hold: bool, released: impl FnOnce()) {
        let mut st = self.table.lock().expect("registry lock");
        let until = Instant::now() + self.grace;
        let Some(Entry::Live {
            session: s, owner, ..
        }) = st.names.get(name)
        else {
            return;
        };
        if *s != session {
            return;
        }
        released();
        self.changed.notify_waiters();
        if hold {
            let owner = owner.clone();
            st.names
                .insert(name.to_owned(), Entry::Held { owner, until });
        } else {
            st.names.remove(name);
        }
    }

    /// Like [`Registry::endpoint`], but a name whose session is still starting (its client already
    /// has the `101`), or that is held for a dropped client, is waited for, up to `limit`,
    /// instead of being reported missing: a client that reconnects in time loses no request.
    pub async fn endpoint_when_ready(&self, name: &str, limit: Duration) -> Option<Arc<Endpoint>> {
        if let Some(endpoint) = self.endpoint(name) {
            return Some(endpoint);
        }
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Registered before looking, so an attach in between is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let starting = {
                let st = self.table.lock().expect("registry lock");
                match st.names.get(name) {
                    Some(Entry::Live {
                        endpoint: Some(_), ..
                    }) => false,
                    Some(Entry::Live { endpoint: None, .. }) => true,
                    // Its client dropped and may be reconnecting: a short wait beats a 404.
                    Some(Entry::Held { until, .. }) if *until > Instant::now() => true,
                    _ => return None,
                }
            };
            if !starting {
                return self.endpoint(name);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return None;
            }
        }
    }

    /// Whether `name` has a session here (online or starting), or is held for its client.
    pub fn knows(&self, name: &str) -> bool {
        match self.table.lock().expect("registry lock").names.get(name) {
            Some(Entry::Live { .. }) => true,
            Some(Entry::Held { until, .. }) => *until > Instant::now(),
            None => false,
        }
    }

    /// Whether `name` is held for a client that dropped and may come back.
    pub fn is_held(&self, name: &str) -> bool {
        matches!(
            self.table.lock().expect("registry lock").names.get(name),
            Some(Entry::Held { until, .. }) if *until > Instant::now()
        )
    }

    /// The session serving `name`, if it is online: its id and its handle for opening streams.
    ///
    /// One `Arc` to clone per request: cloning the handles one by one (a channel sender, a
    /// token, the metric handles) cost allocations and locks on every request.
    pub fn endpoint(&self, name: &str) -> Option<Arc<Endpoint>> {
        match self.table.lock().expect("registry lock").names.get(name) {
            Some(Entry::Live {
                endpoint: Some(endpoint),
                ..
            }) => Some(endpoint.clone()),
            _ => None,
        }
    }

    /// The names with a live session.
    pub fn live_names(&self) -> Vec<String> {
        let st = self.table.lock().expect("registry lock");
        st.names
            .iter()
            .filter(|(_, s)| matches!(s, Entry::Live { .. }))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Ends the session holding `name` as replaced: its client took the name over through
    /// another node of the cluster. The name is no longer this server's to hold.
    pub fn replaced_elsewhere(&self, name: &str) {
        let mut st = self.table.lock().expect("registry lock");
        match st.names.get(name) {
            Some(Entry::Live { cancel, .. }) => {
                cancel.cancel();
                st.names.remove(name);
            }
            Some(Entry::Held { .. }) => {
                st.names.remove(name);
            }
            None => {}
        }
        drop(st);
        self.changed.notify_waiters();
    }

    /// Number of names with a live session.
    pub fn online(&self) -> usize {
        let st = self.table.lock().expect("registry lock");
        st.names
            .values()
            .filter(|s| matches!(s, Entry::Live { .. }))
            .count()
    }
}

/// The key a TCP tunnel on `port` holds in the table: never a valid subdomain (it has a
/// colon), so HTTP requests cannot reach it, and it names the tunnel in logs and metrics.
pub fn tcp_key(port: u16) -> String {
    format!("tcp:{port}")
}

/// Whether `key` is a TCP tunnel's ([`tcp_key`]).
pub fn is_tcp_key(key: &str) -> bool {
    key.starts_with("tcp:")
}

fn random_name() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    // Start with a letter so names never look like numbers.
    let first = ALPHABET[rng.random_range(0..26)] as char;
    std::iter::once(first)
        .chain((1..RANDOM_NAME_LEN).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(id: &str, token: Option<u8>) -> Claimant {
        Claimant {
            client_id: id.into(),
            token: token.map(|t| [t; 32]),
        }
    }

    #[test]
    fn live_names_cannot_be_taken_but_the_owner_can_replace_its_session() {
        let r = Registry::new(Duration::from_secs(60));
        let a = r
            .claim(Some("app"), &who("a", None), Default::default(), 0)
            .unwrap();
        let err = r
            .claim(Some("app"), &who("b", None), Default::default(), 0)
            .unwrap_err();
        assert_eq!(err.error, RefusalKind::NameTaken);
        let a2 = r
            .claim(Some("app"), &who("a", None), Default::default(), 0)
            .unwrap();
        assert!(a.cancel.is_cancelled(), "stale session is told to end");
        // The stale session's release must not free the new one's name, nor clean up after it
        // (the tunnel's metric series now belong to the new session).
        r.release("app", a.session, true, || {
            panic!("stale session cleaned up")
        });
        assert!(r
            .claim(Some("app"), &who("b", None), Default::default(), 0)
            .is_err());
        let mut cleaned = false;
        r.release("app", a2.session, true, || cleaned = true);
        assert!(cleaned);
    }

    #[test]
    fn released_names_are_held_for_the_same_client_or_token() {
        let r = Registry::new(Duration::from_secs(60));
        let a = r
            .claim(Some("app"), &who("a", Some(1)), Default::default(), 0)
            .unwrap();
        r.release("app", a.session, true, || {});
        assert!(r
            .claim(Some("app"), &who("b", Some(2)), Default::default(), 0)
            .is_err());
        assert!(
            r.claim(Some("app"), &who("b", Some(1)), Default::default(), 0)
                .is_ok(),
            "same token may take it"
        );
    }

    #[test]
    fn held_names_free_up_after_the_grace_period() {
        let r = Registry::new(Duration::ZERO);
        let a = r
            .claim(Some("app"), &who("a", None), Default::default(), 0)
            .unwrap();
        r.release("app", a.session, true, || {});
        assert!(r
            .claim(Some("app"), &who("b", None), Default::default(), 0)
            .is_ok());
    }

    #[test]
    fn tunnels_per_token_are_limited() {
        let r = Registry::new(Duration::ZERO);
        r.claim(Some("a1"), &who("a", Some(1)), Default::default(), 2)
            .unwrap();
        r.claim(Some("a2"), &who("b", Some(1)), Default::default(), 2)
            .unwrap();
        let err = r
            .claim(Some("a3"), &who("c", Some(1)), Default::default(), 2)
            .unwrap_err();
        assert_eq!(err.error, RefusalKind::TooManyTunnels);
        // Replacing one's own session is not a new tunnel; other tokens are unaffected.
        r.claim(Some("a1"), &who("a", Some(1)), Default::default(), 2)
            .unwrap();
        r.claim(Some("b1"), &who("d", Some(2)), Default::default(), 2)
            .unwrap();
    }

    #[tokio::test]
    async fn requests_wait_for_a_session_that_is_still_starting() {
        let r = std::sync::Arc::new(Registry::new(Duration::ZERO));
        let c = r
            .claim(Some("app"), &who("a", None), Default::default(), 0)
            .unwrap();
        assert!(r.endpoint("app").is_none(), "not attached yet");
        let waiting = tokio::spawn({
            let r = r.clone();
            async move {
                r.endpoint_when_ready("app", Duration::from_secs(30))
                    .await
                    .map(|x| x.session)
            }
        });
        let (io, _peer) = tokio::io::duplex(64);
        let ws = ggrok_tunnel::ws::Socket::new(io, ggrok_tunnel::ws::Role::Server);
        let (session, _driver) = ggrok_tunnel::mux::start(
            ws,
            ggrok_tunnel::mux::Role::Acceptor,
            ggrok_tunnel::mux::Config::new(false),
        );
        r.attach(
            "app",
            c.session,
            session,
            crate::metrics::Metrics::default().tunnel("app"),
            None,
        );
        assert_eq!(waiting.await.unwrap(), Some(c.session));
        assert!(
            r.endpoint_when_ready("nobody", Duration::from_secs(30))
                .await
                .is_none(),
            "absent names do not wait"
        );
    }

    #[test]
    fn random_names_are_valid_and_distinct() {
        let r = Registry::new(Duration::ZERO);
        let mut names = std::collections::HashSet::new();
        for i in 0..200 {
            let c = r
                .claim(None, &who(&i.to_string(), None), Default::default(), 0)
                .unwrap();
            ggrok_tunnel::protocol::validate_name(&c.name).unwrap();
            assert!(names.insert(c.name));
        }
        assert_eq!(r.online(), 200);
    }

    #[test]
    fn revoking_a_token_ends_its_sessions_and_frees_its_names() {
        let r = Registry::new(Duration::from_secs(60));
        let a = r
            .claim(Some("app"), &who("a", Some(1)), Default::default(), 0)
            .unwrap();
        let held = r
            .claim(Some("old"), &who("a", Some(1)), Default::default(), 0)
            .unwrap();
        r.release("old", held.session, true, || {});
        let other = r
            .claim(Some("other"), &who("b", Some(2)), Default::default(), 0)
            .unwrap();
        assert_eq!(r.tokens(), vec![[1; 32], [2; 32]]);

        assert_eq!(r.revoke(&[1; 32]), 1);
        assert!(a.revoked.is_cancelled());
        assert!(!a.cancel.is_cancelled(), "revoked, not replaced");
        assert!(!other.revoked.is_cancelled());
        assert_eq!(r.tokens(), vec![[2; 32]]);
        // Both names are free for anyone at once, live and held alike.
        for name in ["app", "old"] {
            r.claim(Some(name), &who("c", Some(3)), Default::default(), 0)
                .unwrap();
        }
        // The ended session's late release must not free its successor's name.
        r.release("app", a.session, false, || {});
        assert!(r
            .claim(Some("app"), &who("d", Some(4)), Default::default(), 0)
            .is_err());
    }
}
