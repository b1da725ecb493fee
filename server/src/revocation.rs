//! Revocation while sessions are open: `ggrok-server token revoke` (another process, or in a
//! cluster any node's admin) ends the sessions of the revoked token: within
//! `--revocation-check` with SQLite, at once with etcd's watch.

use std::{sync::Arc, time::Duration};

use tracing::{info, warn};

use crate::{
    state::Shared,
    store::{TokenStore, Version},
};

/// After a change the store tells of, one more look this much later: a connect that read the
/// token just before the revocation may register its session just after the first look.
const LOOK_AGAIN: Duration = Duration::from_millis(500);

/// Ends the sessions of tokens revoked in the store while they are open.
///
/// SQLite has no cross-process change notification, so it is polled, and a poll that finds the
/// database unchanged costs one pragma; each look runs on the store's thread, so a slow disk
/// never holds up a thread that accepts or serves traffic. etcd says when something changed
/// (its watch keeps the store's copy current), so there each change is looked at once it comes.
pub(crate) async fn watch(shared: Arc<Shared>, store: Arc<dyn TokenStore>) {
    match store.changes() {
        Some(changes) => on_changes(shared, store, changes).await,
        None => poll(shared, store).await,
    }
}

async fn on_changes(
    shared: Arc<Shared>,
    store: Arc<dyn TokenStore>,
    mut changes: tokio::sync::watch::Receiver<u64>,
) {
    let mut watch = Watch::default();
    loop {
        let again = tokio::time::sleep(LOOK_AGAIN);
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // Only while a change is recent: otherwise nothing to look at.
            _ = again, if watch.again => {}
        }
        watch.look(&shared, &*store);
    }
}

async fn poll(shared: Arc<Shared>, store: Arc<dyn TokenStore>) {
    let mut every = tokio::time::interval(shared.config.revocation_check);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::default();
    loop {
        every.tick().await;
        let thread = shared.store_thread.clone();
        let (shared, store) = (shared.clone(), store.clone());
        let mut look = move || {
            watch.look(&shared, &*store);
            watch
        };
        let looked = match thread {
            Some(thread) => thread.run(look).await,
            None => Some(look()),
        };
        // A look that panicked starts over: the next one checks every token again.
        watch = looked.unwrap_or_default();
    }
}

/// What [`watch`] remembers between looks.
#[derive(Debug, Default, Clone, Copy)]
struct Watch {
    /// The store's version when every open token was last found valid.
    seen: Option<Version>,
    /// One more look after a change: a connect that read the token just before the revoke may
    /// register its session just after this look.
    again: bool,
}

impl Watch {
    fn look(&mut self, shared: &Shared, store: &dyn TokenStore) {
        let version = match store.version() {
            Ok(v) => v,
            Err(e) => {
                warn!(%e, "cannot check the token database for revocations");
                return;
            }
        };
        let changed = self.seen != Some(version);
        if !changed && !self.again {
            return;
        }
        self.again = changed;
        let mut checked = true;
        for token in shared.registry.tokens() {
            if shared.config.tokens.contains_hash(&token) {
                // Flag tokens live in the configuration, not the store.
                continue;
            }
            match store.token_by_hash(&token) {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let ended = shared.registry.revoke(&token);
                    // Never the token or its hash: the log names what ended, not who.
                    info!(sessions = ended, "token revoked: ending its sessions");
                }
                Err(e) => {
                    warn!(%e, "cannot check a token against the database");
                    checked = false;
                }
            }
        }
        if checked {
            self.seen = Some(version);
        }
    }
}
