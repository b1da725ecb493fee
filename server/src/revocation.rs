//! Revocation while sessions are open: `ggrok-server token revoke` (another process) ends the
//! sessions of the revoked token within `--revocation-check`.

use std::sync::Arc;

use tracing::{info, warn};

use crate::{
    state::Shared,
    store::{Store, StoreThread, Version},
};

/// Ends the sessions of tokens revoked in the store (by `ggrok-server token revoke`, another
/// process) while they are open. Polls: SQLite has no cross-process change notification, and
/// a poll that finds the database unchanged costs one pragma. Each look runs on the store's
/// thread, so a slow disk never holds up a thread that accepts or serves traffic.
pub(crate) async fn watch(shared: Arc<Shared>, store: Arc<Store>, thread: StoreThread) {
    let mut every = tokio::time::interval(shared.config.revocation_check);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = Watch::default();
    loop {
        every.tick().await;
        let (shared, store) = (shared.clone(), store.clone());
        let look = thread.run(move || {
            watch.look(&shared, &store);
            watch
        });
        // A look that panicked starts over: the next one checks every token again.
        watch = look.await.unwrap_or_default();
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
    fn look(&mut self, shared: &Shared, store: &Store) {
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
