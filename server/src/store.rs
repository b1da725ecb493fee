//! Tokens, reserved subdomains and reserved TCP ports: the [`TokenStore`] the server reads,
//! kept in an embedded SQLite database ([`Store`], the default) or, for a cluster, in etcd
//! ([`crate::cluster::EtcdStore`]).
//!
//! A reserved port is a row of `reservations` named `tcp:PORT` (the registry's key for the
//! port's tunnel), which no subdomain can be.
//!
//! Tokens are random 256-bit strings shown once at creation; only their SHA-256 is stored. The
//! server reads the database on every connect attempt, so `token create`, `revoke`, `reserve`
//! and `release` (run by another process on the same file) take effect without a restart.

use std::{
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
};

use rusqlite::{params, Connection, OptionalExtension};

use crate::config::{hash_token, TokenHash};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("token database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// No token by that name.
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    /// A token by that name exists already.
    #[error("a token named {0:?} exists already")]
    DuplicateName(String),
    /// The subdomain is reserved for another token.
    #[error("{name:?} is already reserved for token {owner:?}")]
    Reserved {
        /// The subdomain.
        name: String,
        /// The token holding it.
        owner: String,
    },
    /// Not a valid subdomain.
    #[error("{0}")]
    InvalidName(#[from] ggrok_tunnel::protocol::NameError),
    /// The cluster's etcd did not answer, or answered with an error.
    #[error("cluster store unavailable: {0}")]
    Cluster(String),
}

/// Where tokens and reservations live, as the server and the admin commands use them.
///
/// Reads are synchronous: SQLite answers from disk (on the store's thread, see [`blocks`]),
/// etcd from a local copy a watch keeps current. Writes come from the admin commands.
///
/// [`blocks`]: TokenStore::blocks
pub trait TokenStore: Send + Sync + 'static {
    /// Whether any token was ever created (otherwise, without flag tokens, the server is open).
    fn has_tokens(&self) -> Result<bool, StoreError>;
    /// The live token with this hash.
    fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenId>, StoreError>;
    /// Whether a token with this hash exists but was revoked (for a clearer refusal).
    fn is_revoked(&self, hash: &TokenHash) -> Result<bool, StoreError>;
    /// The token a subdomain (or `tcp:PORT` key) is reserved for.
    fn reserved_for(&self, key: &str) -> Result<Option<TokenId>, StoreError>;
    /// Every reserved TCP port and the token it is for.
    fn reserved_ports(&self) -> Result<Vec<(u16, TokenId)>, StoreError>;
    /// Where the store is now; equal versions mean nothing changed in between.
    fn version(&self) -> Result<Version, StoreError>;
    /// Whether reads may wait (on a disk, another process's lock): then the server makes them
    /// on the store's thread, never on a thread that serves traffic.
    fn blocks(&self) -> bool;
    /// Ticks on every change, when the store is told of changes (etcd's watch); `None`: the
    /// server polls [`TokenStore::version`] instead.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>>;

    /// Creates a token named `name`, reserving `reserve`; returns the token (shown only now).
    fn create_token(&self, name: &str, reserve: &[String]) -> Result<String, StoreError>;
    /// All tokens, oldest first.
    fn list(&self) -> Result<Vec<TokenInfo>, StoreError>;
    /// Revokes a token and frees its reservations.
    fn revoke(&self, name: &str) -> Result<(), StoreError>;
    /// Reserves registry key `key` (a valid name, or `tcp:PORT`) for the token `token_name`.
    fn reserve_key(&self, key: &str, token_name: &str) -> Result<(), StoreError>;
    /// Frees a reserved key; returns whether it was reserved.
    fn release_key(&self, key: &str) -> Result<bool, StoreError>;

    /// Reserves subdomain `sub` for the token named `token_name`.
    fn reserve(&self, sub: &str, token_name: &str) -> Result<(), StoreError> {
        ggrok_tunnel::protocol::validate_name(sub)?;
        self.reserve_key(sub, token_name)
    }

    /// Reserves TCP port `port` for the token named `token_name`.
    fn reserve_port(&self, port: u16, token_name: &str) -> Result<(), StoreError> {
        self.reserve_key(&crate::registry::tcp_key(port), token_name)
    }

    /// Frees a reserved subdomain; returns whether it was reserved.
    fn release(&self, sub: &str) -> Result<bool, StoreError> {
        self.release_key(sub)
    }

    /// Frees a reserved TCP port; returns whether it was reserved.
    fn release_port(&self, port: u16) -> Result<bool, StoreError> {
        self.release_key(&crate::registry::tcp_key(port))
    }
}

/// A token as listed (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its name.
    pub name: String,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds, if revoked.
    pub revoked: Option<i64>,
    /// Subdomains reserved for it.
    pub reserved: Vec<String>,
}

/// The database.
pub struct Store {
    conn: Mutex<Connection>,
    /// Writes through this handle: SQLite's `data_version` counts only other connections' writes.
    writes: AtomicU64,
}

/// A point in the store's history: equal versions mean nothing was written in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// SQLite: commits by other connections (the admin CLI), from `PRAGMA data_version`;
    /// etcd: the revision the local copy is at.
    pub(crate) others: i64,
    /// SQLite: commits through this [`Store`].
    pub(crate) ours: u64,
}

/// Identifies a stored token in the registry (its row id; in etcd, its key's create revision).
pub type TokenId = i64;

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::init(Connection::open(path)?)
    }

    /// A private in-memory database (tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        // Another process (the admin CLI) may write while the server reads.
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA foreign_keys = ON;
             CREATE TABLE IF NOT EXISTS tokens (
                 id INTEGER PRIMARY KEY,
                 name TEXT NOT NULL UNIQUE,
                 hash BLOB NOT NULL UNIQUE,
                 created INTEGER NOT NULL,
                 revoked INTEGER
             );
             CREATE TABLE IF NOT EXISTS reservations (
                 name TEXT PRIMARY KEY,
                 token INTEGER NOT NULL REFERENCES tokens(id) ON DELETE CASCADE
             );",
        )?;
        Ok(Self {
            conn: Mutex::new(conn),
            writes: AtomicU64::new(0),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().expect("store lock")
    }

    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
    }

    /// Where the database is now; cheap, so a watcher can skip work while nothing changed.
    pub fn version(&self) -> Result<Version, StoreError> {
        // Read before the pragma: a write in between then shows as a change next time, never
        // as none.
        let ours = self.writes.load(Ordering::SeqCst);
        let others = self
            .conn()
            .query_row("PRAGMA data_version", [], |r| r.get(0))?;
        Ok(Version { others, ours })
    }

    /// Creates a token named `name`, reserving `reserve`; returns the token (shown only now).
    pub fn create_token(&self, name: &str, reserve: &[String]) -> Result<String, StoreError> {
        for sub in reserve {
            ggrok_tunnel::protocol::validate_name(sub)?;
        }
        let token = new_token();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO tokens (name, hash, created) VALUES (?1, ?2, unixepoch())",
            params![name, &hash_token(&token)[..]],
        );
        if let Err(rusqlite::Error::SqliteFailure(e, _)) = &inserted {
            if e.code == rusqlite::ErrorCode::ConstraintViolation {
                return Err(StoreError::DuplicateName(name.to_owned()));
            }
        }
        inserted?;
        let id = tx.last_insert_rowid();
        for sub in reserve {
            reserve_in(&tx, sub, id)?;
        }
        tx.commit()?;
        self.wrote();
        Ok(token)
    }

    /// All tokens, oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT t.name, t.created, t.revoked, group_concat(r.name, ',')
             FROM tokens t LEFT JOIN reservations r ON r.token = t.id
             GROUP BY t.id ORDER BY t.id",
        )?;
        let rows = stmt.query_map([], |row| {
            let reserved: Option<String> = row.get(3)?;
            let mut reserved: Vec<String> = reserved
                .unwrap_or_default()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            reserved.sort();
            Ok(TokenInfo {
                name: row.get(0)?,
                created: row.get(1)?,
                revoked: row.get(2)?,
                reserved,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes a token: it stops working for new sessions at once, and a running server ends
    /// the sessions open with it when it next looks (see `Config::revocation_check`). Its
    /// reservations are freed.
    pub fn revoke(&self, name: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let id: Option<TokenId> = tx
            .query_row(
                "SELECT id FROM tokens WHERE name = ?1 AND revoked IS NULL",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        let id = id.ok_or_else(|| StoreError::NoSuchToken(name.to_owned()))?;
        tx.execute(
            "UPDATE tokens SET revoked = unixepoch() WHERE id = ?1",
            [id],
        )?;
        tx.execute("DELETE FROM reservations WHERE token = ?1", [id])?;
        tx.commit()?;
        self.wrote();
        Ok(())
    }

    /// Reserves registry key `key` (a name, or `tcp:PORT`) for the token named `token_name`.
    fn reserve_key_in_db(&self, key: &str, token_name: &str) -> Result<(), StoreError> {
        let conn = self.conn();
        let id: TokenId = conn
            .query_row(
                "SELECT id FROM tokens WHERE name = ?1 AND revoked IS NULL",
                [token_name],
                |r| r.get(0),
            )
            .optional()?
            .ok_or_else(|| StoreError::NoSuchToken(token_name.to_owned()))?;
        reserve_in(&conn, key, id)?;
        self.wrote();
        Ok(())
    }

    /// Every reserved TCP port and the token it is for.
    pub fn reserved_ports(&self) -> Result<Vec<(u16, TokenId)>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare("SELECT name, token FROM reservations WHERE name LIKE 'tcp:%'")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
        let mut ports = Vec::new();
        for row in rows {
            let (key, token) = row?;
            if let Some(port) = key.strip_prefix("tcp:").and_then(|p| p.parse().ok()) {
                ports.push((port, token));
            }
        }
        Ok(ports)
    }

    fn release_key_in_db(&self, key: &str) -> Result<bool, StoreError> {
        let released = self
            .conn()
            .execute("DELETE FROM reservations WHERE name = ?1", [key])?
            > 0;
        self.wrote();
        Ok(released)
    }

    /// The live token with this hash.
    pub fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenId>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id FROM tokens WHERE hash = ?1 AND revoked IS NULL",
                [&hash[..]],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The token a subdomain is reserved for.
    pub fn reserved_for(&self, sub: &str) -> Result<Option<TokenId>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT token FROM reservations WHERE name = ?1",
                [sub],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Whether a token with this hash exists but was revoked (for a clearer refusal).
    pub fn is_revoked(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM tokens WHERE hash = ?1 AND revoked IS NOT NULL)",
            [&hash[..]],
            |r| r.get(0),
        )?)
    }

    /// Whether any token was ever created (otherwise, without flag tokens, the server is open).
    /// Revoked tokens count: revoking the last token must lock everyone out, not open the
    /// server to anyone.
    pub fn has_tokens(&self) -> Result<bool, StoreError> {
        Ok(self
            .conn()
            .query_row("SELECT EXISTS (SELECT 1 FROM tokens)", [], |r| r.get(0))?)
    }
}

impl TokenStore for Store {
    fn has_tokens(&self) -> Result<bool, StoreError> {
        Store::has_tokens(self)
    }
    fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenId>, StoreError> {
        Store::token_by_hash(self, hash)
    }
    fn is_revoked(&self, hash: &TokenHash) -> Result<bool, StoreError> {
        Store::is_revoked(self, hash)
    }
    fn reserved_for(&self, key: &str) -> Result<Option<TokenId>, StoreError> {
        Store::reserved_for(self, key)
    }
    fn reserved_ports(&self) -> Result<Vec<(u16, TokenId)>, StoreError> {
        Store::reserved_ports(self)
    }
    fn version(&self) -> Result<Version, StoreError> {
        Store::version(self)
    }
    fn blocks(&self) -> bool {
        true
    }
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        // SQLite has no cross-process change notification: the server polls `version`.
        None
    }
    fn create_token(&self, name: &str, reserve: &[String]) -> Result<String, StoreError> {
        Store::create_token(self, name, reserve)
    }
    fn list(&self) -> Result<Vec<TokenInfo>, StoreError> {
        Store::list(self)
    }
    fn revoke(&self, name: &str) -> Result<(), StoreError> {
        Store::revoke(self, name)
    }
    fn reserve_key(&self, key: &str, token_name: &str) -> Result<(), StoreError> {
        self.reserve_key_in_db(key, token_name)
    }
    fn release_key(&self, key: &str) -> Result<bool, StoreError> {
        self.release_key_in_db(key)
    }
}

/// A new token: 256 random bits, shown once.
pub(crate) fn new_token() -> String {
    format!(
        "ggrok_{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

fn reserve_in(conn: &Connection, sub: &str, id: TokenId) -> Result<(), StoreError> {
    let owner: Option<(TokenId, String)> = conn
        .query_row(
            "SELECT t.id, t.name FROM reservations r JOIN tokens t ON t.id = r.token WHERE r.name = ?1",
            [sub],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    match owner {
        Some((owner, _)) if owner == id => Ok(()),
        Some((_, owner)) => Err(StoreError::Reserved {
            name: sub.to_owned(),
            owner,
        }),
        None => {
            conn.execute(
                "INSERT INTO reservations (name, token) VALUES (?1, ?2)",
                params![sub, id],
            )?;
            Ok(())
        }
    }
}

/// Database work queued for the store's own thread.
type Job = Box<dyn FnOnce() + Send>;

/// Jobs waiting for the store thread before callers wait for room (connects are rate limited
/// per address; this bounds what a flood from many addresses can queue).
const QUEUE: usize = 1024;

/// One thread of its own for everything that calls SQLite while the server runs, in order.
///
/// A query may wait on the disk or, for up to the busy timeout, on another process's lock; on
/// a shard that would stall every tunnel served there. tokio's blocking pool would do it, but
/// a burst of connects starts a thread for each at once (183 for 10,000 tunnels connecting
/// 200 at a time), and what those threads allocate for sessions that outlive them stays
/// scattered over their abandoned allocator heaps: +3 KiB of server RSS per idle tunnel. One
/// thread costs no more, as the connection is behind one lock anyway.
#[derive(Clone)]
pub struct StoreThread {
    jobs: tokio::sync::mpsc::Sender<Job>,
}

impl StoreThread {
    /// Starts the thread; it ends when the last handle is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (jobs, mut queue) = tokio::sync::mpsc::channel::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("ggrok-store".into())
            .spawn(move || {
                while let Some(job) = queue.blocking_recv() {
                    // A job that panics only drops its answer; the next one still runs.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the store thread; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = answer.send(f());
        });
        self.jobs.send(job).await.ok()?;
        answered.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_store_thread_runs_every_job_on_one_thread_and_outlives_a_panic() {
        let store = StoreThread::start().unwrap();
        let first = store.run(|| std::thread::current().id()).await.unwrap();
        assert_ne!(first, std::thread::current().id());
        assert!(store
            .run(|| -> u8 { panic!("a job panics") })
            .await
            .is_none());
        let again = store.run(|| std::thread::current().id()).await.unwrap();
        assert_eq!(again, first);
    }

    #[test]
    fn tokens_are_stored_hashed_and_revocable() {
        let s = Store::in_memory().unwrap();
        assert!(!s.has_tokens().unwrap());
        let token = s.create_token("laptop", &["myapp".into()]).unwrap();
        assert!(token.starts_with("ggrok_") && token.len() > 60);
        let id = s.token_by_hash(&hash_token(&token)).unwrap().unwrap();
        assert_eq!(s.reserved_for("myapp").unwrap(), Some(id));
        assert!(matches!(
            s.create_token("laptop", &[]),
            Err(StoreError::DuplicateName(_))
        ));
        let other = s.create_token("ci", &[]).unwrap();
        assert!(matches!(
            s.reserve("myapp", "ci"),
            Err(StoreError::Reserved { .. })
        ));
        s.reserve("ci-app", "ci").unwrap();
        let list = s.list().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].reserved, vec!["myapp".to_owned()]);
        // The plain token is nowhere in the database.
        let conn = s.conn();
        let stored: Vec<u8> = conn
            .query_row("SELECT hash FROM tokens WHERE name = 'ci'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(stored, hash_token(&other).to_vec());
        drop(conn);

        s.revoke("laptop").unwrap();
        assert_eq!(s.token_by_hash(&hash_token(&token)).unwrap(), None);
        assert!(s.is_revoked(&hash_token(&token)).unwrap());
        assert!(!s.is_revoked(&hash_token(&other)).unwrap());
        assert_eq!(s.reserved_for("myapp").unwrap(), None);
        assert!(matches!(
            s.revoke("laptop"),
            Err(StoreError::NoSuchToken(_))
        ));
        assert!(s.release("ci-app").unwrap());
        assert!(!s.release("ci-app").unwrap());
        assert!(matches!(
            s.reserve("Bad_Name", "ci"),
            Err(StoreError::InvalidName(_))
        ));
    }

    #[test]
    fn ports_are_reserved_beside_names_and_freed_with_their_token() {
        let s = Store::in_memory().unwrap();
        s.create_token("ops", &["tcp".into()]).unwrap();
        s.create_token("dev", &[]).unwrap();
        s.reserve_port(2222, "ops").unwrap();
        assert!(matches!(
            s.reserve_port(2222, "dev"),
            Err(StoreError::Reserved { .. })
        ));
        assert!(matches!(
            s.reserve_port(2223, "nobody"),
            Err(StoreError::NoSuchToken(_))
        ));
        s.reserve_port(2223, "dev").unwrap();
        let ops = s.list().unwrap()[0].clone();
        assert_eq!(ops.reserved, ["tcp", "tcp:2222"]);
        let mut ports = s.reserved_ports().unwrap();
        ports.sort();
        assert_eq!(ports.iter().map(|p| p.0).collect::<Vec<_>>(), [2222, 2223]);
        assert!(s.release_port(2223).unwrap());
        assert!(!s.release_port(2223).unwrap());
        s.revoke("ops").unwrap();
        assert!(s.reserved_ports().unwrap().is_empty());
    }

    #[test]
    fn revoking_the_last_token_keeps_the_server_closed() {
        let s = Store::in_memory().unwrap();
        s.create_token("only", &[]).unwrap();
        s.revoke("only").unwrap();
        assert!(
            s.has_tokens().unwrap(),
            "a revoked token must not open the server"
        );
    }

    #[test]
    fn versions_change_with_writes_from_this_handle_and_other_processes() {
        let path = std::env::temp_dir().join(format!("ggrok-ver-{:x}.db", rand::random::<u64>()));
        let s = Store::open(&path).unwrap();
        let v0 = s.version().unwrap();
        assert_eq!(s.version().unwrap(), v0, "reads are no change");
        s.create_token("a", &[]).unwrap();
        let v1 = s.version().unwrap();
        assert_ne!(v1, v0);
        // Another connection stands for the admin CLI in another process.
        Store::open(&path).unwrap().revoke("a").unwrap();
        assert_ne!(s.version().unwrap(), v1);
        drop(s);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }
}
