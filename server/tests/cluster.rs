//! Several server nodes as one cluster on a real etcd (Debian's `etcd-server`), each node in
//! this process on its own port: one token everywhere, revocation on every node.
//!
//! Needs the `etcd` binary (scripts/deps.sh installs it); without it the tests say so and pass.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{
    origin::Origin,
    server::{config, Server},
    tunnels::{tunnel_with, wait_status},
    visitors::get,
};
use ggrok_server::{cluster::EtcdStore, Config};
use ggrok_tunnel::{protocol::RefusalKind, Secret, Status, Tunnel, TunnelConfig};

fn etcd_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|dir| dir.join("etcd"))
        .find(|p| p.is_file())
}

/// A one-member etcd on loopback with a throwaway data directory, killed on drop.
struct Etcd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd on ports it picks itself; `None` without the binary.
    fn start() -> Option<Etcd> {
        let Some(bin) = etcd_binary() else {
            eprintln!("skipped: no etcd binary (Debian package etcd-server)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (child, port) = Self::spawn(&bin, &dir, 0);
        Some(Etcd {
            child,
            port,
            _dir: dir,
        })
    }

    /// Runs etcd on client port `port` (0: any), and waits until it serves clients, which
    /// its log says with the port it got.
    fn spawn(bin: &PathBuf, dir: &tempfile::TempDir, port: u16) -> (Child, u16) {
        let client = format!("http://127.0.0.1:{port}");
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            // Peers: none, but etcd listens for them anyway.
            .args(["--listen-peer-urls", "http://127.0.0.1:0"])
            .args(["--initial-advertise-peer-urls", "http://127.0.0.1:0"])
            .args(["--initial-cluster", "default=http://127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines
                .next()
                .expect("etcd exited before serving clients")
                .unwrap();
            if let Some(rest) = line.split("serving insecure client requests on ").nth(1) {
                let addr: std::net::SocketAddr =
                    rest.split([',', ' ']).next().unwrap().parse().unwrap();
                break addr.port();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (child, port)
    }

    /// `--cluster`'s value for this etcd.
    fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }

    fn endpoints(&self) -> Vec<String> {
        vec![format!("http://127.0.0.1:{}", self.port)]
    }

    /// Runs `ggrok-server --cluster THIS ARGS...` (an admin command); returns stdout.
    fn admin(&self, args: &[&str]) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_ggrok-server"))
            .args(args)
            .args(["--cluster", &self.url()])
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

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node of the cluster on `etcd`, in this process.
async fn node(etcd: &Etcd, tweak: impl FnOnce(&mut Config)) -> Server {
    let store = EtcdStore::connect(etcd.endpoints()).await.unwrap();
    let mut config = Config {
        store: Some(store),
        ..config()
    };
    tweak(&mut config);
    Server::start(config).await
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

fn open(server: &Server, port: u16, token: &str, name: &str) -> TunnelConfig {
    let mut c = TunnelConfig::new(server.url(), port);
    c.token = Some(Secret::new(token));
    c.subdomain = Some(name.into());
    c
}

#[tokio::test]
async fn a_token_created_once_is_honoured_by_every_node() {
    let Some(etcd) = Etcd::start() else { return };
    let (a, b) = (node(&etcd, |_| {}).await, node(&etcd, |_| {}).await);
    let origin = Origin::start().await;

    // Created while the nodes run, by the admin command against etcd.
    let laptop = etcd
        .admin(&["token", "create", "--name", "laptop", "--reserve", "myapp"])
        .trim()
        .to_owned();
    let ci = etcd
        .admin(&["token", "create", "--name", "ci"])
        .trim()
        .to_owned();
    for server in [&a, &b] {
        assert_eq!(
            refusal(attempt(server, origin.port(), None, "free").await),
            RefusalKind::Unauthorized
        );
        assert_eq!(
            refusal(attempt(server, origin.port(), Some(&ci), "myapp").await),
            RefusalKind::NameReserved
        );
    }
    assert!(attempt(&a, origin.port(), Some(&laptop), "myapp")
        .await
        .is_ok());
    assert!(attempt(&b, origin.port(), Some(&ci), "ci-app")
        .await
        .is_ok());

    let list = etcd.admin(&["token", "list"]);
    assert!(
        list.contains("laptop") && list.contains("myapp") && !list.contains(&laptop),
        "{list}"
    );
    etcd.admin(&["release", "myapp"]);
    etcd.admin(&["reserve", "--port", "20001", "--for", "ci"]);
    let list = etcd.admin(&["token", "list"]);
    assert!(
        list.contains("tcp:20001") && !list.contains("myapp"),
        "{list}"
    );
    // Once released, the name is anyone's, on either node (the watch brought the change).
    common::eventually(Duration::from_secs(5), || async {
        attempt(&b, origin.port(), Some(&ci), "myapp").await.ok()
    })
    .await;
    // Stored hashed: the token itself is nowhere in etcd.
    let dump = Command::new("etcdctl")
        .args([
            "--endpoints",
            &etcd.endpoints()[0],
            "get",
            "--prefix",
            "ggrok/",
        ])
        .env("ETCDCTL_API", "3")
        .output();
    if let Ok(dump) = dump {
        let dump = String::from_utf8_lossy(&dump.stdout);
        assert!(dump.contains("laptop") && !dump.contains(&laptop), "{dump}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn revoking_on_one_node_ends_the_session_on_another_within_two_seconds() {
    let Some(etcd) = Etcd::start() else { return };
    // Polling every minute: only the watch can end the session in time.
    let slow_poll = |c: &mut Config| c.revocation_check = Duration::from_secs(60);
    let (a, b) = (node(&etcd, slow_poll).await, node(&etcd, slow_poll).await);
    let origin = Origin::start().await;
    let laptop = etcd
        .admin(&["token", "create", "--name", "laptop"])
        .trim()
        .to_owned();
    let ci = etcd
        .admin(&["token", "create", "--name", "ci"])
        .trim()
        .to_owned();
    let (revoked, _) = tunnel_with(open(&b, origin.port(), &laptop, "myapp")).await;
    let (kept, _) = tunnel_with(open(&b, origin.port(), &ci, "ci-app")).await;
    assert_eq!(
        get(&b, "myapp", "/echo").send().await.unwrap().status(),
        200
    );

    // Revoked through node A's store, as an admin on another machine would.
    let a_store = EtcdStore::connect(etcd.endpoints()).await.unwrap();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        ggrok_server::store::TokenStore::revoke(&*a_store, "laptop").unwrap()
    })
    .await
    .unwrap();
    let ended = wait_status(&revoked, |s| matches!(s, Status::Failed { .. }));
    let ended = tokio::time::timeout(Duration::from_secs(2), ended)
        .await
        .expect("the session of a revoked token outlived 2 s on another node");
    assert!(started.elapsed() < Duration::from_secs(2));
    match ended {
        Status::Failed { kind, message } => {
            assert_eq!(kind, RefusalKind::Unauthorized);
            assert!(message.contains("revoked"), "{message}");
        }
        _ => unreachable!(),
    }
    assert_eq!(
        get(&b, "myapp", "/echo").send().await.unwrap().status(),
        404
    );
    assert!(matches!(*kept.status().borrow(), Status::Online { .. }));
    // And no node accepts it any more.
    assert_eq!(
        refusal(attempt(&a, origin.port(), Some(&laptop), "again").await),
        RefusalKind::Unauthorized
    );
    drop((revoked, kept));
    a.stop().await;
    b.stop().await;
}
