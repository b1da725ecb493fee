//! Tokens and reserved names from the SQLite store, administered with the real binary while a
//! server runs: changes take effect without a restart.

use std::{path::PathBuf, process::Command, sync::Arc};

use common::{
    origin::Origin,
    server::{config, Server},
    tunnels::{tunnel_with, wait_status},
    visitors::get,
};
use ggrok_server::{store::Store, Config};
use ggrok_tunnel::{protocol::RefusalKind, Secret, Status, Tunnel, TunnelConfig};

/// A token database in a directory of its own, removed (with SQLite's -wal and -shm files)
/// on drop.
struct Db {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Db {
    fn new() -> Db {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.db");
        Db { _dir: dir, path }
    }

    /// Runs `ggrok-server --db THIS ARGS...`; returns stdout.
    fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_ggrok-server"))
            .arg("--db")
            .arg(&self.path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

async fn attempt(
    server: &Server,
    port: u16,
    token: Option<&str>,
    name: &str,
) -> Result<String, Status> {
    let mut c = TunnelConfig::new(server.url(), port);
    c.token = token.map(Secret::new);
    c.subdomain = Some(name.into());
    let t = Tunnel::start(c).unwrap();
    let result = t.online().await;
    t.stop().await;
    result
}

fn refusal(r: Result<String, Status>) -> RefusalKind {
    match r {
        Err(Status::Failed { kind, .. }) => kind,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn stored_tokens_and_reservations_apply_without_restart() {
    let db = Db::new();
    let laptop = db
        .admin(&["token", "create", "--name", "laptop", "--reserve", "myapp"])
        .trim()
        .to_owned();
    let store = Arc::new(Store::open(&db.path).unwrap());
    let grace = std::time::Duration::ZERO;
    let server = Server::start(Config {
        store: Some(store),
        reconnect_grace: grace,
        ..config()
    })
    .await;
    let origin = Origin::start().await;

    assert_eq!(
        refusal(attempt(&server, origin.port(), None, "free").await),
        RefusalKind::Unauthorized
    );
    assert!(attempt(&server, origin.port(), Some(&laptop), "myapp")
        .await
        .is_ok());

    // Created while the server runs: works at once, but not for a name reserved to another.
    let ci = db
        .admin(&["token", "create", "--name", "ci"])
        .trim()
        .to_owned();
    assert_eq!(
        refusal(attempt(&server, origin.port(), Some(&ci), "myapp").await),
        RefusalKind::NameReserved
    );
    assert!(attempt(&server, origin.port(), Some(&ci), "ci-app")
        .await
        .is_ok());

    let list = db.admin(&["token", "list"]);
    assert!(
        list.contains("laptop") && list.contains("myapp") && !list.contains(&laptop),
        "{list}"
    );

    db.admin(&["release", "myapp"]);
    assert!(attempt(&server, origin.port(), Some(&ci), "myapp")
        .await
        .is_ok());
    db.admin(&["reserve", "myapp", "--for", "laptop"]);
    assert_eq!(
        refusal(attempt(&server, origin.port(), Some(&ci), "myapp").await),
        RefusalKind::NameReserved
    );

    db.admin(&["token", "revoke", "laptop"]);
    assert_eq!(
        refusal(attempt(&server, origin.port(), Some(&laptop), "myapp").await),
        RefusalKind::Unauthorized
    );
}

#[test]
fn check_config_explains_problems_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    let db = dir.path().join("t.db");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ggrok-server"))
            .arg("--config")
            .arg(&file)
            .arg("--db")
            .arg(&db)
            .args(extra)
            .arg("check-config")
            .env_remove("PORT")
            .env("GGROK_DRAIN_TIMEOUT", "5")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8(out.stdout).unwrap())
    };
    std::fs::write(
        &file,
        "domain = \"tunnel.example.com\"\ntokens = [\"a-long-secret-token-value\"]\n",
    )
    .unwrap();
    let (ok, report) = run(&[]);
    assert!(ok, "{report}");
    assert!(
        report.contains("tunnels at *.tunnel.example.com, 1 flag token(s)"),
        "{report}"
    );
    assert!(!report.contains("a-long-secret"), "{report}");
    // A flag beats the file.
    let (ok, report) = run(&["--domain", "other.example.org"]);
    assert!(ok && report.contains("*.other.example.org"), "{report}");
    let (ok, report) = run(&["--heartbeat-interval", "60"]);
    assert!(
        !ok && report.contains("heartbeat_timeout (45s) must be longer"),
        "{report}"
    );
    std::fs::write(&file, "domian = \"typo.example.com\"\n").unwrap();
    let (ok, report) = run(&[]);
    assert!(!ok && report.contains("unknown field `domian`"), "{report}");
}

#[tokio::test]
async fn revoking_a_token_ends_its_live_sessions_and_frees_their_names() {
    let db = Db::new();
    let laptop = db
        .admin(&["token", "create", "--name", "laptop", "--reserve", "myapp"])
        .trim()
        .to_owned();
    let ci = db
        .admin(&["token", "create", "--name", "ci"])
        .trim()
        .to_owned();
    let server = Server::start(Config {
        store: Some(Arc::new(Store::open(&db.path).unwrap())),
        // Long: a name freed by revocation must not wait for it.
        reconnect_grace: std::time::Duration::from_secs(600),
        revocation_check: std::time::Duration::from_millis(100),
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let open = |token: &str, name: &str| {
        let mut c = TunnelConfig::new(server.url(), origin.port());
        c.token = Some(Secret::new(token));
        c.subdomain = Some(name.into());
        tunnel_with(c)
    };
    let (revoked, _) = open(&laptop, "myapp").await;
    let (_second, _) = open(&laptop, "other").await;
    let (kept, _) = open(&ci, "ci-app").await;
    assert_eq!(
        get(&server, "myapp", "/echo")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Revoked by another process, as an admin would.
    db.admin(&["token", "revoke", "laptop"]);
    // The client learns why and stops: no reconnect loop with a dead token.
    let ended = wait_status(&revoked, |s| matches!(s, Status::Failed { .. }));
    // A guard, not a wait for readiness: without the feature the session lives on.
    let ended = tokio::time::timeout(std::time::Duration::from_secs(30), ended)
        .await
        .expect("the session of a revoked token stayed open");
    match ended {
        Status::Failed { kind, message } => {
            assert_eq!(kind, RefusalKind::Unauthorized);
            assert!(message.contains("revoked"), "{message}");
        }
        _ => unreachable!(),
    }
    for name in ["myapp", "other"] {
        let r = get(&server, name, "/echo").send().await.unwrap();
        assert_eq!(r.status(), 404, "{name} is offline");
    }
    // Its names are free at once, not held for a reconnect; other tokens are untouched.
    let (_taker, _) = open(&ci, "other").await;
    assert_eq!(
        get(&server, "ci-app", "/echo")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(matches!(*kept.status().borrow(), Status::Online { .. }));
}
