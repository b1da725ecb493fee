//! Server tokens: in the OS keyring (Secret Service on Linux, Keychain, Credential Manager),
//! shared by the `ggrok` CLI and the desktop app. A server's token is filed under the server's
//! id in the saved file (see [`saved`](crate::saved)), a tunnel's Basic auth under
//! [`basic_auth_key`].
//!
//! [`SecretStore`] is the seam: the programs use [`KeyringStore`], tests use [`MemoryStore`].
//! [`Secrets`] puts a per-run memory fallback in front: when the keyring cannot be reached the
//! token is kept in memory for this run only and [`Secrets::keyring_problem`] says why, so the
//! UI can tell the user instead of silently losing the token at exit.

use std::{collections::HashMap, sync::Mutex};

use serde::Serialize;
use tracing::warn;

use crate::secrets::Secret;

/// Keyring service name entries are filed under (named after the app, which wrote them first).
pub const SERVICE: &str = "dev.ggrok.desktop";

/// Set to `1`, the keyring is not used at all: tokens live in memory for the run (headless
/// machines, CI, tests).
pub const NO_KEYRING_ENV: &str = "GGROK_NO_KEYRING";

/// Where a tunnel's Basic-auth `user:password` is kept (with the tokens, never in the file).
pub fn basic_auth_key(tunnel_id: &str) -> String {
    format!("basic-auth:{tunnel_id}")
}

/// A keyring failure.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct SecretError(pub String);

/// Where tokens are kept.
pub trait SecretStore: Send + Sync {
    /// The token stored under `key`, if any.
    fn get(&self, key: &str) -> Result<Option<String>, SecretError>;
    /// Stores `value` under `key`.
    fn set(&self, key: &str, value: &str) -> Result<(), SecretError>;
    /// Removes `key`; removing a missing key is fine.
    fn delete(&self, key: &str) -> Result<(), SecretError>;
}

/// Tokens in a map: for tests, and for the run-only fallback.
#[derive(Default)]
pub struct MemoryStore(Mutex<HashMap<String, String>>);

impl SecretStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<String>, SecretError> {
        Ok(self.0.lock().expect("secrets lock").get(key).cloned())
    }
    fn set(&self, key: &str, value: &str) -> Result<(), SecretError> {
        self.0
            .lock()
            .expect("secrets lock")
            .insert(key.to_owned(), value.to_owned());
        Ok(())
    }
    fn delete(&self, key: &str) -> Result<(), SecretError> {
        self.0.lock().expect("secrets lock").remove(key);
        Ok(())
    }
}

/// The OS keyring through the `keyring` crate.
pub struct KeyringStore {
    service: String,
}

impl KeyringStore {
    /// Entries under `service`.
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
        }
    }

    fn entry(&self, key: &str) -> Result<keyring::Entry, SecretError> {
        keyring::Entry::new(&self.service, key).map_err(|e| SecretError(e.to_string()))
    }
}

impl SecretStore for KeyringStore {
    fn get(&self, key: &str) -> Result<Option<String>, SecretError> {
        match self.entry(key)?.get_password() {
            Ok(v) => Ok(Some(v)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(SecretError(e.to_string())),
        }
    }
    fn set(&self, key: &str, value: &str) -> Result<(), SecretError> {
        self.entry(key)?
            .set_password(value)
            .map_err(|e| SecretError(e.to_string()))
    }
    fn delete(&self, key: &str) -> Result<(), SecretError> {
        match self.entry(key)?.delete_credential() {
            Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
            Err(e) => Err(SecretError(e.to_string())),
        }
    }
}

/// Where a token ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// In the OS keyring.
    Keyring,
    /// In memory for this run only (the keyring was unavailable).
    Memory,
}

/// The keyring with a run-only memory fallback.
pub struct Secrets {
    store: Box<dyn SecretStore>,
    fallback: MemoryStore,
    problem: Mutex<Option<String>>,
    cause: Mutex<Option<SecretError>>,
}

impl Secrets {
    /// Tokens in `store`, falling back to memory when it fails.
    pub fn new(store: Box<dyn SecretStore>) -> Self {
        Self {
            store,
            fallback: MemoryStore::default(),
            problem: Mutex::new(None),
            cause: Mutex::new(None),
        }
    }

    /// Memory only (tests, and `GGROK_NO_KEYRING=1`).
    pub fn in_memory() -> Self {
        Self::new(Box::new(MemoryStore::default()))
    }

    /// The OS keyring under [`SERVICE`], or memory only when [`NO_KEYRING_ENV`] is `1`.
    pub fn from_env() -> Self {
        if std::env::var(NO_KEYRING_ENV).as_deref() == Ok("1") {
            Self::in_memory()
        } else {
            Self::new(Box::new(KeyringStore::new(SERVICE)))
        }
    }

    /// The keyring's own error from its last failure ("no D-Bus session bus", say): for a
    /// command-line user, who can act on it, where the app's window shows
    /// [`Secrets::keyring_problem`].
    pub fn keyring_error(&self) -> Option<SecretError> {
        self.cause.lock().expect("secrets lock").clone()
    }

    /// Why the keyring is not being used, if it failed this run.
    pub fn keyring_problem(&self) -> Option<String> {
        self.problem.lock().expect("secrets lock").clone()
    }

    fn note(&self, err: &SecretError) {
        warn!(%err, "keyring unavailable; tokens are kept in memory for this run");
        *self.cause.lock().expect("secrets lock") = Some(err.clone());
        // The raw error ("Secret Service: no result found") is for the log: it tells a user
        // nothing they can act on.
        *self.problem.lock().expect("secrets lock") = Some(
            "The system keyring is not available, so tokens are kept in memory for this run only and must be entered again after a restart."
                .to_owned(),
        );
    }

    /// Stores `token` for server `key`.
    pub fn set(&self, key: &str, token: &Secret) -> Storage {
        match self.store.set(key, token.expose()) {
            Ok(()) => {
                let _ = self.fallback.delete(key);
                Storage::Keyring
            }
            Err(err) => {
                self.note(&err);
                let _ = self.fallback.set(key, token.expose());
                Storage::Memory
            }
        }
    }

    /// The token for server `key` and where it is kept.
    pub fn get(&self, key: &str) -> Option<(Secret, Storage)> {
        if let Ok(Some(v)) = self.fallback.get(key) {
            return Some((Secret::new(v), Storage::Memory));
        }
        match self.store.get(key) {
            Ok(v) => v.map(|v| (Secret::new(v), Storage::Keyring)),
            Err(err) => {
                self.note(&err);
                None
            }
        }
    }

    /// Forgets the token for server `key` everywhere.
    pub fn delete(&self, key: &str) {
        let _ = self.fallback.delete(key);
        if let Err(err) = self.store.delete(key) {
            self.note(&err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keyring that is never there, like a headless session without D-Bus.
    struct Broken;
    impl SecretStore for Broken {
        fn get(&self, _: &str) -> Result<Option<String>, SecretError> {
            Err(SecretError("no D-Bus session".into()))
        }
        fn set(&self, _: &str, _: &str) -> Result<(), SecretError> {
            Err(SecretError("no D-Bus session".into()))
        }
        fn delete(&self, _: &str) -> Result<(), SecretError> {
            Err(SecretError("no D-Bus session".into()))
        }
    }

    #[test]
    fn memory_store_round_trip() {
        let s = Secrets::in_memory();
        assert!(s.get("srv").is_none());
        assert_eq!(s.set("srv", &Secret::new("tok-123")), Storage::Keyring);
        let (tok, storage) = s.get("srv").unwrap();
        assert_eq!(tok.expose(), "tok-123");
        assert_eq!(storage, Storage::Keyring);
        s.delete("srv");
        assert!(s.get("srv").is_none());
        assert!(s.keyring_problem().is_none());
    }

    #[test]
    fn broken_keyring_keeps_token_for_this_run_and_says_so() {
        let s = Secrets::new(Box::new(Broken));
        assert_eq!(s.set("srv", &Secret::new("tok-123")), Storage::Memory);
        let (tok, storage) = s.get("srv").unwrap();
        assert_eq!((tok.expose(), storage), ("tok-123", Storage::Memory));
        let problem = s.keyring_problem().unwrap();
        assert!(problem.contains("keyring is not available"), "{problem}");
        assert_eq!(s.keyring_error().unwrap().0, "no D-Bus session");
        assert!(!problem.contains("no D-Bus session"), "{problem}");
        assert!(!problem.contains("tok-123"));
        s.delete("srv");
        assert!(s.get("srv").is_none());
    }

    /// The real Secret Service. Run under `dbus-run-session` with an unlocked gnome-keyring
    /// (see `scripts/test.sh`) and `GGROK_TEST_SECRET_SERVICE=1`; skipped otherwise, because a
    /// plain CI shell has no session bus.
    #[test]
    fn real_secret_service_round_trip() {
        if std::env::var("GGROK_TEST_SECRET_SERVICE").as_deref() != Ok("1") {
            eprintln!("skipped: set GGROK_TEST_SECRET_SERVICE=1 under dbus-run-session");
            return;
        }
        let service = format!("{SERVICE}.test-{:x}", rand::random::<u32>());
        let key = "server-under-test";
        let s = Secrets::new(Box::new(KeyringStore::new(&service)));
        assert_eq!(s.set(key, &Secret::new("real-token-42")), Storage::Keyring);
        assert!(s.keyring_problem().is_none(), "{:?}", s.keyring_problem());
        // A second handle reads it back from the keyring, not from our memory.
        let fresh = KeyringStore::new(&service);
        assert_eq!(fresh.get(key).unwrap().as_deref(), Some("real-token-42"));
        s.delete(key);
        assert_eq!(fresh.get(key).unwrap(), None);
        assert!(s.keyring_problem().is_none());
    }
}
