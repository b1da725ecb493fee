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
    visitors::{answers, get, header, header_count, Answer},
};
use ggrok_server::{
    cluster::{node::Membership, ClusterSecret, EtcdStore, Node},
    Config,
};
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
    bin: PathBuf,
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    _turn: Turn,
}

/// The tests of this file run side by side in one process, except one that measures the
/// process's peak memory: it runs alone, so what it measures is its own.
static MEMORY: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// A test's hold on [`MEMORY`], for as long as its etcd lives.
enum Turn {
    Shared(#[allow(dead_code)] std::sync::RwLockReadGuard<'static, ()>),
    Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>),
}

impl Etcd {
    /// Starts etcd on ports it picks itself; `None` without the binary.
    fn start() -> Option<Etcd> {
        let turn = Turn::Shared(MEMORY.read().unwrap_or_else(|p| p.into_inner()));
        Self::start_taking(turn)
    }

    /// As [`start`](Self::start), for a test that measures the process's peak memory: once the
    /// tests that started before it have ended, and before any other starts.
    fn start_alone() -> Option<Etcd> {
        let turn = Turn::Alone(MEMORY.write().unwrap_or_else(|p| p.into_inner()));
        Self::start_taking(turn)
    }

    fn start_taking(turn: Turn) -> Option<Etcd> {
        let Some(bin) = etcd_binary() else {
            eprintln!("skipped: no etcd binary (Debian package etcd-server)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let (child, port) = Self::spawn(&bin, &dir, 0);
        Some(Etcd {
            bin,
            child,
            port,
            dir,
            _turn: turn,
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

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and data.
    fn restart(&mut self) {
        let (child, _) = Self::spawn(&self.bin, &self.dir, self.port);
        self.child = child;
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
        self.kill();
    }
}

/// The nodes' shared secret.
const SECRET: &str = "a-cluster-secret-for-tests";
/// The nodes' lease: the shortest etcd grants, so fencing tests stay short.
const TTL: Duration = Duration::from_secs(2);

/// Waits until `server` accepts `token` (its copy of the store, kept by etcd's watch, has it).
async fn until_known(server: &Server, port: u16, token: &str) {
    common::eventually(Duration::from_secs(5), || async {
        attempt(server, port, Some(token), "probe").await.ok()
    })
    .await;
}

/// A node of the cluster on the etcd at `endpoints`, in this process.
async fn node_on(endpoints: Vec<String>, tweak: impl FnOnce(&mut Config)) -> Server {
    node_at("127.0.0.1", endpoints, tweak).await
}

/// Like [`node_on`], listening on `ip` (nodes on one machine need addresses of their own for
/// the same TCP tunnel ports).
async fn node_at(ip: &str, endpoints: Vec<String>, tweak: impl FnOnce(&mut Config)) -> Server {
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let advertise = format!("http://{}", listener.local_addr().unwrap());
    node_listening(listener, endpoints, membership(advertise), tweak).await
}

/// This node's part in the test cluster, reached at `advertise`.
fn membership(advertise: String) -> Membership {
    Membership {
        advertise,
        secret: ClusterSecret::new(SECRET),
        lease_ttl: TTL,
        peer_roots: Vec::new(),
    }
}

/// A node of the cluster on `listener`, joined as `member`.
async fn node_listening(
    listener: tokio::net::TcpListener,
    endpoints: Vec<String>,
    member: Membership,
    tweak: impl FnOnce(&mut Config),
) -> Server {
    let store = EtcdStore::connect(endpoints).await.unwrap();
    let node = Node::join(store.clone(), member).await.unwrap();
    let mut config = Config {
        store: Some(store),
        cluster: Some(node),
        ..config()
    };
    tweak(&mut config);
    Server::serve(listener, config)
}

async fn node(etcd: &Etcd, tweak: impl FnOnce(&mut Config)) -> Server {
    node_on(etcd.endpoints(), tweak).await
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
        until_known(server, origin.port(), &ci).await;
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
    until_known(&b, origin.port(), &ci).await;
    until_known(&a, origin.port(), &ci).await;
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

fn with_id(mut c: TunnelConfig, id: &str) -> TunnelConfig {
    c.client_id = Some(id.into());
    c
}

fn named(server: &Server, port: u16, name: &str) -> TunnelConfig {
    let mut c = TunnelConfig::new(server.url(), port);
    c.subdomain = Some(name.into());
    c
}

async fn health(server: &Server) -> u16 {
    reqwest::get(format!("{}/healthz", server.url()))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_name_is_exclusive_across_nodes_and_its_client_takes_it_back_anywhere() {
    let Some(etcd) = Etcd::start() else { return };
    let (a, b) = (node(&etcd, |_| {}).await, node(&etcd, |_| {}).await);
    let origin = Origin::start().await;
    assert_eq!((health(&a).await, health(&b).await), (200, 200));

    let (first, _) = tunnel_with(with_id(named(&a, origin.port(), "app"), "laptop")).await;
    // Another client, through the other node: the registry's own refusal.
    let other = Tunnel::start(with_id(named(&b, origin.port(), "app"), "intruder")).unwrap();
    match other.online().await {
        Err(Status::Failed { kind, message }) => {
            assert_eq!(kind, RefusalKind::NameTaken);
            assert!(message.contains("in use by another client"), "{message}");
        }
        other => panic!("a second client got the name: {other:?}"),
    }
    assert_eq!(get(&a, "app", "/echo").send().await.unwrap().status(), 200);

    // The same client reconnecting through the other node takes its name back at once, and
    // the node it left ends the stale session.
    let (again, url) = tunnel_with(with_id(named(&b, origin.port(), "app"), "laptop")).await;
    assert!(url.contains("app."), "{url}");
    let replaced = wait_status(&first, |s| matches!(s, Status::Failed { .. }));
    match tokio::time::timeout(Duration::from_secs(5), replaced)
        .await
        .expect("the node that lost the name kept its session")
    {
        Status::Failed { message, .. } => {
            assert!(message.contains("took the tunnel over"), "{message}")
        }
        _ => unreachable!(),
    }
    assert_eq!(get(&b, "app", "/echo").send().await.unwrap().status(), 200);
    // A client that stops frees the name for anyone, on any node.
    again.stop().await;
    common::eventually(Duration::from_secs(5), || async {
        let t = Tunnel::start(with_id(named(&a, origin.port(), "app"), "next")).unwrap();
        let online = t.online().await.ok();
        t.stop().await;
        online
    })
    .await;
    drop((first, other));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_node_cut_off_from_etcd_stops_serving_before_its_lease_ends() {
    let Some(etcd) = Etcd::start() else { return };
    let etcd_addr = format!("127.0.0.1:{}", etcd.port).parse().unwrap();
    let link = common::relay::Relay::start(etcd_addr).await;
    let a = node_on(vec![format!("http://{}", link.addr)], |_| {}).await;
    let b = node(&etcd, |_| {}).await;
    let origin = Origin::start().await;
    let (on_a, _) = tunnel_with(with_id(named(&a, origin.port(), "app"), "laptop")).await;
    assert_eq!(health(&a).await, 200);

    // A's link to etcd goes silent; B keeps its own.
    link.pause();
    let cut = std::time::Instant::now();
    let left = wait_status(&on_a, |s| !matches!(s, Status::Online { .. }));
    tokio::time::timeout(TTL, left)
        .await
        .expect("the node kept serving past its lease");
    assert!(cut.elapsed() < TTL, "fenced only after {:?}", cut.elapsed());
    assert_eq!(health(&a).await, 503, "not ready without its lease");
    assert_eq!(health(&b).await, 200);
    assert_ne!(get(&a, "app", "/echo").send().await.unwrap().status(), 200);
    // Its client takes the name back through B at once, though A's lease may not have ended.
    let (on_b, _) = tunnel_with(with_id(named(&b, origin.port(), "app"), "laptop")).await;
    assert_eq!(get(&b, "app", "/echo").send().await.unwrap().status(), 200);
    drop((on_a, on_b));
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn claims_get_503_while_etcd_is_down_and_recover_when_it_returns() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let a = node(&etcd, |_| {}).await;
    let origin = Origin::start().await;
    etcd.kill();
    let waiting = Tunnel::start(named(&a, origin.port(), "later")).unwrap();
    let refused = wait_status(
        &waiting,
        |s| matches!(s, Status::Reconnecting { reason, .. } if reason.contains("cluster store unavailable")),
    );
    tokio::time::timeout(Duration::from_secs(8), refused)
        .await
        .expect("no 503 while etcd is down");
    waiting.stop().await;
    etcd.restart();
    // The node recovers its lease (or takes a new one) and claims work again, by themselves.
    common::eventually(Duration::from_secs(15), || async {
        (health(&a).await == 200).then_some(())
    })
    .await;
    let (_back, _) = tunnel_with(named(&a, origin.port(), "later")).await;
    assert_eq!(
        get(&a, "later", "/echo").send().await.unwrap().status(),
        200
    );
    a.stop().await;
}

#[tokio::test]
async fn every_node_serves_every_tunnel_with_one_hop() {
    use futures_util::{SinkExt, StreamExt};
    use sha2::Digest;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let Some(etcd) = Etcd::start_alone() else {
        return;
    };
    let nodes = [
        node(&etcd, |_| {}).await,
        node(&etcd, |_| {}).await,
        node(&etcd, |_| {}).await,
    ];
    let origin = Origin::start().await;
    let mut guarded = named(&nodes[0], origin.port(), "app");
    guarded.basic_auth = Some(Secret::new("alice:wonderland"));
    let (_app, _) = tunnel_with(guarded).await;
    let (_big, _) = tunnel_with(named(&nodes[0], origin.port(), "big")).await;

    for (i, node) in nodes.iter().enumerate() {
        // The holder alone checks the password, once, whichever node the visitor reached (as
        // soon as etcd's watch told that node where the tunnel is).
        let denied = common::eventually(Duration::from_secs(5), || async {
            let r = get(node, "app", "/echo").send().await.unwrap();
            (r.status() != 404).then_some(r)
        })
        .await;
        assert_eq!(denied.status(), 401, "node {i}");
        let r = get(node, "app", "/echo")
            .basic_auth("alice", Some("wonderland"))
            .header("x-forwarded-for", "203.0.113.9")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "node {i}");
        let h = r.headers();
        // The visitor's chain, then the visitor as the first node saw it: once.
        assert_eq!(
            h["x-echo-x-forwarded-for"], "203.0.113.9, 127.0.0.1",
            "node {i}"
        );
        assert_eq!(
            h["x-echo-authorization"], "",
            "the password stays with ggrok"
        );
        assert_eq!(r.text().await.unwrap(), "hello");
    }

    // The allowlist judges the visitor's address, which the hop carries to the holder.
    let mut listed = named(&nodes[0], origin.port(), "listed");
    listed.allow_ips = vec!["127.0.0.2/32".into()];
    let (_listed, _) = tunnel_with(listed).await;
    let from = |ip: [u8; 4]| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(ip))
            .build()
            .unwrap()
            .get(format!("{}/echo", nodes[1].url()))
            .header(http::header::HOST, "listed.localhost")
    };
    let allowed = common::eventually(Duration::from_secs(5), || async {
        let r = from([127, 0, 0, 2]).send().await.unwrap();
        (r.status() != 404).then_some(r)
    })
    .await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(allowed.headers()["x-echo-x-forwarded-for"], "127.0.0.2");
    assert_eq!(from([127, 0, 0, 1]).send().await.unwrap().status(), 403);

    // A large download through a node that does not hold the tunnel, streamed under the
    // sessions' flow control, and checked whole: 256 MiB, about 2.5 s in a debug build on a
    // busy 2-core machine. Every part runs in this process, so its peak memory bounds what
    // the nodes, the client and the origin buffered between them.
    const SIZE: u64 = 256 << 20;
    let peak_before = peak_memory();
    let r = get(&nodes[1], "big", &format!("/bytes?{SIZE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.bytes_stream();
    let (mut n, mut hash) = (0u64, sha2::Sha256::new());
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        n += chunk.len() as u64;
        hash.update(&chunk);
    }
    assert_eq!(n, SIZE);
    if let (Some(before), Some(after)) = (peak_before, peak_memory()) {
        assert!(
            after - before < 64 << 20,
            "peak memory grew by {} MiB while 256 MiB passed",
            (after - before) >> 20
        );
    }
    assert_eq!(
        format!("{:x}", hash.finalize()),
        common::bodies::big_sha256(SIZE)
    );

    // Server-Sent Events one by one through the hop: each event arrives before the origin
    // sends the next.
    let mut r = get(&nodes[1], "big", "/sse")
        .header(http::header::ACCEPT, "text/event-stream")
        .send()
        .await
        .unwrap();
    for i in 0..3 {
        let chunk = r.chunk().await.unwrap().unwrap();
        assert_eq!(chunk, format!("id: {i}\ndata: event {i}\n\n"));
        origin.state.gate.notify_one();
    }

    // An upload streamed the other way.
    let up = reqwest::Body::wrap_stream(
        common::bodies::big_chunks(4 << 20).map(Ok::<_, std::io::Error>),
    );
    let r = common::visitors::visitor()
        .post(format!("{}/upload", nodes[2].url()))
        .header(http::header::HOST, "big.localhost")
        .body(up)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        format!("{} {}", 4 << 20, common::bodies::big_sha256(4 << 20))
    );

    // A WebSocket through a node that does not hold the tunnel.
    let mut req = format!("ws://{}/ws", nodes[2].addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert(http::header::HOST, "big.localhost".parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["one hop", "and back"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.close(None).await.unwrap();

    // Only nodes with the cluster's secret may open a session for hops.
    for bearer in ["", "Bearer not-the-cluster-secret"] {
        let r = reqwest::Client::new()
            .get(format!("{}/_ggrok/peer", nodes[0].url()))
            .header(http::header::AUTHORIZATION, bearer)
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header(http::header::SEC_WEBSOCKET_VERSION, "13")
            .header(http::header::SEC_WEBSOCKET_KEY, "dGhlIHNhbXBsZSBub25jZQ==")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{bearer:?}");
    }

    // Unknown names are still 404 everywhere, and the apex of a node is its own.
    assert_eq!(
        get(&nodes[1], "nobody", "/").send().await.unwrap().status(),
        404
    );
    for node in nodes {
        node.stop().await;
    }
}

/// Tunnel `name`, held by another node, served through `via`: a GET (once `via` knows where
/// the tunnel is), a POST of 1 MiB streamed both ways and echoed back whole, and a
/// WebSocket.
async fn served_through(via: &Server, name: &str) {
    use futures_util::{SinkExt, StreamExt};
    use sha2::Digest;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

    let r = common::eventually(Duration::from_secs(5), || async {
        let r = get(via, name, "/echo").send().await.unwrap();
        (r.status() != 404).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 200, "{name} through {}", via.addr);

    // Echoed whole by the origin: small enough not to move the 256 MiB test's memory check when
    // the two run at once, larger than a stream's window (256 KiB) four times over.
    const SIZE: u64 = 1 << 20;
    let up =
        reqwest::Body::wrap_stream(common::bodies::big_chunks(SIZE).map(Ok::<_, std::io::Error>));
    let r = common::visitors::visitor()
        .post(format!("{}/echo", via.url()))
        .header(http::header::HOST, format!("{name}.localhost"))
        .body(up)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-method"], "POST");
    let body = r.bytes().await.unwrap();
    assert_eq!(body.len() as u64, SIZE);
    assert_eq!(
        format!("{:x}", sha2::Sha256::digest(&body)),
        common::bodies::big_sha256(SIZE)
    );

    let mut req = format!("ws://{}/ws", via.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        http::header::HOST,
        format!("{name}.localhost").parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["one hop", "and back"] {
        ws.send(Message::text(text)).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn hops_carry_requests_as_frames_and_a_body_cut_at_the_holder_fails_at_the_visitor() {
    let Some(etcd) = Etcd::start() else { return };
    let (a, b) = (node(&etcd, |_| {}).await, node(&etcd, |_| {}).await);
    let origin = Origin::start().await;
    let (_app, _) = tunnel_with(named(&a, origin.port(), "app")).await;
    served_through(&b, "app").await;

    // A response without a length, cut when the tunnel's client goes: the visitor who came
    // through the other node gets a failed body, not one that looks whole.
    let (cut, _) = tunnel_with(named(&a, origin.port(), "cut")).await;
    let mut r = common::eventually(Duration::from_secs(5), || async {
        let r = get(&b, "cut", "/sse").send().await.unwrap();
        (r.status() != 404).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().get(http::header::CONTENT_LENGTH).is_none());
    assert_eq!(
        r.chunk().await.unwrap().unwrap(),
        "id: 0\ndata: event 0\n\n"
    );
    drop(cut);
    let rest = tokio::time::timeout(Duration::from_secs(5), r.chunk())
        .await
        .expect("the cut body did not end");
    assert!(rest.is_err(), "a cut body ended cleanly: {rest:?}");

    // A request body that turns out malformed on the way: the visitor's fault, said as on a
    // single server (400, closed), not a node that "cannot be reached".
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut raw = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    raw.write_all(
        b"POST /echo HTTP/1.1\r\nHost: app.localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\nzz\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
        .await
        .expect("the connection was not closed after the refusal")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(answer.contains("ggrok-error: bad_request"), "{answer}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_node_that_speaks_only_the_first_hop_format_is_served_and_serves_in_it() {
    let Some(etcd) = Etcd::start() else { return };
    // B is a node from before hop format 2 (and growing stream windows), in a cluster being
    // upgraded node by node: A never sends it credit beyond 256 KiB, or B would end the session.
    let a = node(&etcd, |_| {}).await;
    let b = node(&etcd, |c| {
        c.hop_version = 1;
        c.stream_window = ggrok_tunnel::protocol::STREAM_WINDOW;
    })
    .await;
    let origin = Origin::start().await;
    let (_on_a, _) = tunnel_with(named(&a, origin.port(), "on-a")).await;
    let (_on_b, _) = tunnel_with(named(&b, origin.port(), "on-b")).await;
    // The old node sends the first format; the new one serves it.
    served_through(&b, "on-a").await;
    // The new node learns from the old one's 101 that it must send the first format.
    served_through(&a, "on-b").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_hop_whose_head_does_not_decode_is_reset_with_the_reason() {
    use ggrok_tunnel::{
        mux,
        protocol::{self, HopHead},
    };
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let Some(etcd) = Etcd::start() else { return };
    let new = node(&etcd, |_| {}).await;
    let old = node(&etcd, |c| c.hop_version = 1).await;
    // A session as another node opens it.
    let session = |server: &Server| {
        let mut req = format!("ws://{}{}", server.addr, protocol::PEER_PATH)
            .into_client_request()
            .unwrap();
        req.headers_mut().insert(
            http::header::AUTHORIZATION,
            format!("Bearer {SECRET}").parse().unwrap(),
        );
        async move {
            let (ws, resp) = ggrok_tunnel::ws::connect(req, None).await.unwrap();
            let hop = resp
                .headers()
                .get(protocol::HEADER_HOP_VERSION)
                .map(|v| v.to_str().unwrap().to_owned());
            let (session, driver) = mux::start(ws, mux::Role::Connector, mux::Config::new(false));
            tokio::spawn(driver.run(|_| {}));
            (session, hop)
        }
    };
    let reset = |stream: mux::MuxStream| async move {
        match stream.recv().await {
            Some(Err(mux::MuxError::Reset { code, reason })) => (code, reason),
            other => panic!("expected a reset, got {other:?}"),
        }
    };
    // A whole format-2 head: GET / from 127.0.0.1.
    let get_head = || {
        HopHead {
            ip: "127.0.0.1".parse().unwrap(),
            secure: false,
            proxied: false,
            tcp_port: None,
        }
        .encode_request(
            &http::Method::GET,
            &"/".parse().unwrap(),
            &http::HeaderMap::new(),
        )
    };
    let (to_new, hop) = session(&new).await;
    assert_eq!(
        hop.as_deref(),
        Some("2"),
        "the node says the format it serves"
    );
    for garbage in [&b"not a visitor"[..], &[protocol::HOP_HTTP, 9, 4]] {
        let stream = to_new.open(garbage.to_vec().into(), true).await.unwrap();
        let (code, reason) = reset(stream).await;
        assert_eq!(code, protocol::RESET_PROTOCOL);
        assert!(reason.contains("who its visitor is"), "{reason}");
    }
    // A visitor part that decodes, then a request head that does not.
    let mut cut = get_head().to_vec();
    cut.truncate(cut.len() - 1);
    let stream = to_new.open(cut.clone().into(), true).await.unwrap();
    let (code, reason) = reset(stream).await;
    assert_eq!(code, protocol::RESET_PROTOCOL);
    assert!(reason.contains("request head"), "{reason}");

    // A node held to the first format says nothing on its 101 and refuses the second, as
    // nodes from before it do.
    let (to_old, hop) = session(&old).await;
    assert_eq!(hop, None);
    let stream = to_old.open(get_head(), true).await.unwrap();
    assert_eq!(reset(stream).await.0, protocol::RESET_PROTOCOL);
    new.stop().await;
    old.stop().await;
}

/// Sends `requests` on one connection to `server` from loopback address `from`, and reads the
/// answers until the server closes (the last request asks it to); `head_of` as in `answers`.
async fn exchange(server: &Server, from: [u8; 4], requests: &str, head_of: &[bool]) -> Vec<Answer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    let mut conn = socket.connect(server.addr).await.unwrap();
    conn.write_all(requests.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut bytes))
        .await
        .expect("the connection was not closed after the last request")
        .unwrap();
    answers(&bytes, head_of)
}

/// The value of series `series` in `server`'s /metrics (token "metrics-token"); 0 when the
/// series has not been written yet.
async fn series(server: &Server, series: &str) -> u64 {
    let text = common::visitors::metrics(&server.url(), "metrics-token").await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Every header of `answer` but `except` is there once.
fn each_header_once(answer: &Answer, except: &[&str]) {
    for (name, _) in &answer.1 {
        if !except.contains(&name.as_str()) {
            assert_eq!(header_count(answer, name), 1, "{name} in {answer:?}");
        }
    }
}

/// Plain requests through a node that does not hold their tunnel, which both nodes serve on
/// their own paths (the visitor's node writes the hop's head from the visitor's, the holder
/// relays the hop to the client: docs/internals.md, "Hop"), pipelined and with a small body,
/// to a tunnel with a password and to one with an allowlist. The local service gets what a
/// visitor of the holder would give it, `X-Forwarded-*` once; the visitor gets every answer
/// header once and the cookies narrowed; refusals are the router's pages, counted once, on the
/// holder.
#[tokio::test]
async fn plain_requests_through_another_node_arrive_as_if_sent_to_the_holder() {
    let Some(etcd) = Etcd::start() else { return };
    let metrics = |c: &mut Config| {
        c.metrics_token = Some(ggrok_server::config::hash_token("metrics-token"));
    };
    let (holder, other) = (node(&etcd, metrics).await, node(&etcd, metrics).await);
    let origin = Origin::start().await;
    let (_app, _) = tunnel_with(named(&holder, origin.port(), "app")).await;
    let mut guarded = named(&holder, origin.port(), "guarded");
    guarded.basic_auth = Some(Secret::new("alice:wonderland"));
    let (_guarded, _) = tunnel_with(guarded).await;
    let mut listed = named(&holder, origin.port(), "listed");
    listed.allow_ips = vec!["127.0.0.2/32".into()];
    let (_listed, _) = tunnel_with(listed).await;
    for name in ["app", "guarded", "listed"] {
        common::eventually(Duration::from_secs(5), || async {
            (status_at(&other.url(), name).await != 404).then_some(())
        })
        .await;
    }
    const HOPS: &str = "ggrok_cluster_hops_total";
    const APP_REQUESTS: &str = r#"ggrok_requests_total{tunnel="app"}"#;
    const APP_IN: &str = r#"ggrok_bytes_total{tunnel="app",direction="In"}"#;
    let hops = series(&other, HOPS).await;
    let app_requests = series(&holder, APP_REQUESTS).await;
    let app_in = series(&holder, APP_IN).await;

    let host = "app.localhost";
    let requests = format!(
        "GET /echo?1 HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 203.0.113.9\r\nX-Multi: 1\r\n\
         Keep-Alive: timeout=5\r\nConnection: keep-alive\r\nX-Multi: 2\r\n\
         X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\r\n\
         HEAD /bytes?100 HTTP/1.1\r\nHost: {host}\r\n\r\n\
         GET /cookies HTTP/1.1\r\nHost: {host}\r\n\r\n\
         POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let got = exchange(
        &other,
        [127, 0, 0, 1],
        &requests,
        &[false, true, false, false],
    )
    .await;
    let echo = &got[0];
    assert_eq!(echo.0, 200);
    assert_eq!(header(echo, "x-echo-uri"), Some("/echo?1"));
    // The visitor's chain, then the visitor as the first node saw it; the rest written anew.
    assert_eq!(
        header(echo, "x-echo-x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(header(echo, "x-echo-x-forwarded-proto"), Some("http"));
    assert_eq!(header(echo, "x-echo-x-forwarded-host"), Some(host));
    assert_eq!(header(echo, "x-echo-x-multi"), Some("1|2"));
    each_header_once(echo, &[]);
    assert!(header(echo, "date").is_some());
    assert_eq!(header(echo, "connection"), None);

    let head = &got[1];
    assert_eq!((head.0, header(head, "content-length")), (200, Some("100")));
    assert!(head.2.is_empty());
    each_header_once(head, &[]);

    let cookies = &got[2];
    let set: Vec<&str> = cookies
        .1
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.as_str())
        .collect();
    // Narrowed to the tunnel's own host (once: a second narrowing would change nothing, but
    // the first node leaves them alone), in order.
    assert_eq!(
        set,
        [
            "a=1; Path=/",
            "b=2; HttpOnly",
            "c=3",
            "toss=1; Path=/",
            "own=1"
        ]
    );
    assert_eq!(header_count(cookies, "x-multi"), 2);
    each_header_once(cookies, &["set-cookie", "x-multi"]);

    let post = &got[3];
    assert_eq!((post.0, &post.2[..]), (200, &b"hello"[..]));
    assert_eq!(header(post, "x-echo-method"), Some("POST"));
    assert_eq!(header(post, "connection"), Some("close"));
    each_header_once(post, &[]);

    // One hop each, counted on the visitor's node; the requests and their bytes on the
    // holder's tunnel.
    assert_eq!(series(&other, HOPS).await - hops, 4);
    assert_eq!(series(&holder, APP_REQUESTS).await - app_requests, 4);
    assert_eq!(series(&holder, APP_IN).await - app_in, 5);

    // The password: the router's page for a visitor without it, counted by the holder alone;
    // with it, the request goes on without it.
    const UNAUTHORIZED: &str = r#"ggrok_errors_total{kind="unauthorized"}"#;
    let (denied_here, denied_there) = (
        series(&holder, UNAUTHORIZED).await,
        series(&other, UNAUTHORIZED).await,
    );
    let requests = "GET /echo HTTP/1.1\r\nHost: guarded.localhost\r\n\r\n\
         GET /echo HTTP/1.1\r\nHost: guarded.localhost\r\n\
         Authorization: Basic YWxpY2U6d29uZGVybGFuZA==\r\nConnection: close\r\n\r\n";
    let got = exchange(&other, [127, 0, 0, 1], requests, &[false, false]).await;
    assert_eq!(got[0].0, 401);
    assert_eq!(header(&got[0], "ggrok-error"), Some("unauthorized"));
    each_header_once(&got[0], &[]);
    assert_eq!(got[1].0, 200);
    assert_eq!(header(&got[1], "x-echo-authorization"), Some(""));
    assert_eq!(header(&got[1], "x-echo-x-forwarded-for"), Some("127.0.0.1"));
    each_header_once(&got[1], &[]);
    assert_eq!(series(&holder, UNAUTHORIZED).await - denied_here, 1);
    assert_eq!(series(&other, UNAUTHORIZED).await, denied_there);

    // The allowlist judges the visitor's address, as the first node saw it.
    const FORBIDDEN: &str = r#"ggrok_errors_total{kind="forbidden"}"#;
    let forbidden = series(&holder, FORBIDDEN).await;
    let request = "GET /echo HTTP/1.1\r\nHost: listed.localhost\r\nConnection: close\r\n\r\n";
    let got = exchange(&other, [127, 0, 0, 2], request, &[false]).await;
    assert_eq!(got[0].0, 200);
    assert_eq!(header(&got[0], "x-echo-x-forwarded-for"), Some("127.0.0.2"));
    let got = exchange(&other, [127, 0, 0, 1], request, &[false]).await;
    assert_eq!(got[0].0, 403);
    assert_eq!(series(&holder, FORBIDDEN).await - forbidden, 1);
    holder.stop().await;
    other.stop().await;
}

/// This process's peak resident memory in bytes (Linux's `VmHWM`); `None` elsewhere.
fn peak_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

fn haproxy_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
}

/// The real `ggrok-server` binary as a node of the cluster on `etcd`, its log kept; killed
/// (SIGKILL) on drop.
struct NodeProcess {
    child: Child,
    addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl NodeProcess {
    fn spawn(etcd: &Etcd) -> NodeProcess {
        Self::spawn_with(etcd, &[])
    }

    /// Like [`NodeProcess::spawn`], with more environment variables.
    fn spawn_with(etcd: &Etcd, env: &[(&str, &str)]) -> NodeProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ggrok-server"))
            .args(["--listen", "127.0.0.1:0", "--domain", "localhost"])
            .args(["--cluster", &etcd.url()])
            .env("GGROK_CLUSTER_SECRET", SECRET)
            .env("GGROK_RECONNECT_GRACE", "2")
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ggrok-server");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr = loop {
            let line = lines
                .next()
                .expect("the node exited before listening")
                .unwrap();
            assert!(
                !line.contains(SECRET),
                "the cluster secret in a log: {line}"
            );
            if line.contains("listening") {
                if let Some(rest) = line.split("addr=").nth(1) {
                    break rest.split_whitespace().next().unwrap().parse().unwrap();
                }
            }
            log.lock().unwrap().push(line);
        };
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().unwrap().push(line);
            }
        });
        NodeProcess { child, addr, log }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Whether its log says the session of tunnel `name` came online here.
    fn serves(&self, name: &str) -> bool {
        self.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(&format!("name={name} ")) && l.contains("tunnel online"))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// HAProxy in TCP mode in front of `nodes`, health-checking their /healthz; killed on drop.
struct Balancer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Balancer {
    async fn start(bin: &PathBuf, nodes: &[&NodeProcess]) -> Balancer {
        // HAProxy cannot report a port it chose.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("haproxy.cfg");
        let servers: String = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                format!(
                    "  server node{i} {} check inter 200ms fall 1 rise 1\n",
                    n.addr
                )
            })
            .collect();
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 256\n\
                 defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 60s\n  timeout server 60s\n  retries 3\n  option redispatch\n\
                 frontend front\n  bind 127.0.0.1:{port}\n  default_backend nodes\n\
                 backend nodes\n  balance roundrobin\n  option httpchk GET /healthz\n{servers}"
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        common::until_listening(port).await;
        Balancer {
            child,
            port,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `/echo` on tunnel `name` at `base`; its status, 0 when the node cannot be reached.
async fn status_at(base: &str, name: &str) -> u16 {
    reqwest::Client::new()
        .get(format!("{base}/echo"))
        .header(http::header::HOST, format!("{name}.localhost"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test]
async fn three_nodes_behind_haproxy_survive_a_sigkill_an_etcd_restart_and_a_sigterm() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let Some(haproxy) = haproxy_binary() else {
        return eprintln!("skipped: no haproxy binary (scripts/deps.sh installs it)");
    };
    let mut nodes: Vec<NodeProcess> = (0..3).map(|_| NodeProcess::spawn(&etcd)).collect();
    let balancer = Balancer::start(&haproxy, &nodes.iter().collect::<Vec<_>>()).await;
    let origin = Origin::start().await;
    let mut c = TunnelConfig::new(balancer.url(), origin.port());
    c.subdomain = Some("app".into());
    c.client_id = Some("laptop".into());
    let (tunnel, _) = tunnel_with(c).await;

    // Every node serves the tunnel, whichever holds it, once etcd's watch told it where.
    for node in &nodes {
        let url = node.url();
        common::eventually(Duration::from_secs(5), || {
            let url = url.clone();
            async move { (status_at(&url, "app").await == 200).then_some(()) }
        })
        .await;
    }
    assert_eq!(status_at(&balancer.url(), "app").await, 200);

    // SIGKILL the holder: its client reconnects through HAProxy to another node, takes its
    // name back, and every node left serves it again.
    let holder = common::eventually(Duration::from_secs(5), || {
        let found = nodes.iter().position(|n| n.serves("app"));
        async move { found }
    })
    .await;
    let killed = std::time::Instant::now();
    drop(nodes.remove(holder));
    for node in &nodes {
        let url = node.url();
        common::eventually(Duration::from_secs(20), || {
            let url = url.clone();
            async move { (status_at(&url, "app").await == 200).then_some(()) }
        })
        .await;
    }
    assert!(killed.elapsed() < Duration::from_secs(20));
    assert!(matches!(*tunnel.status().borrow(), Status::Online { .. }));

    // etcd restarts: the nodes keep or retake their leases and serve on; new claims work.
    etcd.kill();
    etcd.restart();
    for node in &nodes {
        let url = node.url();
        common::eventually(Duration::from_secs(15), || {
            let url = url.clone();
            async move {
                let healthy = reqwest::get(format!("{url}/healthz"))
                    .await
                    .is_ok_and(|r| r.status() == 200);
                (healthy && status_at(&url, "app").await == 200).then_some(())
            }
        })
        .await;
    }
    let mut c = TunnelConfig::new(balancer.url(), origin.port());
    c.subdomain = Some("after".into());
    let (_after, _) = tunnel_with(c).await;
    for node in &nodes {
        let url = node.url();
        common::eventually(Duration::from_secs(5), || {
            let url = url.clone();
            async move { (status_at(&url, "after").await == 200).then_some(()) }
        })
        .await;
    }

    // SIGTERM the node holding "app" now: it drains, then its client moves to the last node.
    let holder = nodes
        .iter()
        .position(|n| n.serves("app"))
        .expect("a node took the tunnel over");
    let stopped = Command::new("kill")
        .args(["-TERM", &nodes[holder].child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let _ = nodes[holder].child.wait();
    let last = nodes[1 - holder].url();
    common::eventually(Duration::from_secs(20), || {
        let url = last.clone();
        async move { (status_at(&url, "app").await == 200).then_some(()) }
    })
    .await;
    assert!(matches!(*tunnel.status().borrow(), Status::Online { .. }));
}

#[test]
fn the_example_haproxy_configs_are_valid() {
    let Some(bin) = haproxy_binary() else {
        return eprintln!("skipped: no haproxy binary (scripts/deps.sh installs it)");
    };
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster");
    for file in ["haproxy.cfg", "haproxy-compose.cfg"] {
        let out = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(dir.join(file))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// compose.yml cannot run here (no container registry), so at least the settings it gives the
/// nodes must be ones the server reads: a misspelt or renamed variable would be ignored silently.
#[test]
fn the_compose_file_sets_only_variables_the_server_reads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster");
    let compose = std::fs::read_to_string(dir.join("compose.yml")).unwrap();
    let help = Command::new(env!("CARGO_BIN_EXE_ggrok-server"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let mut names = std::collections::BTreeSet::new();
    for line in compose.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for (at, _) in line.match_indices("GGROK_") {
            let rest = &line[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                .unwrap_or(rest.len());
            names.insert(&rest[..end]);
        }
    }
    assert!(names.contains("GGROK_CLUSTER") && names.contains("GGROK_ADVERTISE"));
    for name in names {
        assert!(
            help.contains(&format!("[env: {name}=")) || help.contains(&format!("[env: {name}]")),
            "compose.yml sets {name}, which `ggrok-server --help` does not list"
        );
    }
}

#[tokio::test]
async fn every_node_listens_for_the_clusters_tcp_tunnels() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Some(etcd) = Etcd::start() else { return };
    let port = port_free_on(&["127.0.0.2"]);
    let tcp = |c: &mut Config| c.tcp_ports = Some(port..=port);
    let a = node_at("127.0.0.1", etcd.endpoints(), tcp).await;
    let b = node_at("127.0.0.2", etcd.endpoints(), tcp).await;
    let echo_port = common::origin::tcp_echo().await;
    let tcp_tunnel = |server: &Server| {
        let mut c = TunnelConfig::new(server.url(), echo_port);
        c.kind = ggrok_tunnel::TunnelKind::Tcp {
            remote_port: Some(port),
        };
        c.local.host = "127.0.0.1".into();
        c.client_id = Some("db".into());
        c
    };
    let exchange = |ip: &'static str, data: &'static [u8]| async move {
        let mut s = tokio::net::TcpStream::connect((ip, port)).await.ok()?;
        s.write_all(data).await.ok()?;
        s.shutdown().await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        (out == data).then_some(())
    };

    let (first, _) = tunnel_with(tcp_tunnel(&a)).await;
    // The holder serves the port, and so does the other node, through a hop.
    exchange("127.0.0.1", b"to the holder").await.unwrap();
    common::eventually(Duration::from_secs(5), || exchange("127.0.0.2", b"one hop")).await;

    // The client moves to B: B serves the port itself now, and A through a hop.
    let (second, _) = tunnel_with(tcp_tunnel(&b)).await;
    exchange("127.0.0.2", b"to the new holder").await.unwrap();
    common::eventually(Duration::from_secs(5), || {
        exchange("127.0.0.1", b"back the other way")
    })
    .await;
    drop((first, second));
    a.stop().await;
    b.stop().await;
}

/// A port free on 127.0.0.1 and on each of `others`, for a TCP tunnel whose port nodes on one
/// machine (each on an address of its own) all listen on.
fn port_free_on(others: &[&str]) -> u16 {
    (0..50)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .find(|&p| {
            others
                .iter()
                .all(|ip| std::net::TcpListener::bind((*ip, p)).is_ok())
        })
        .unwrap()
}

#[tokio::test]
async fn hopped_tcp_visitors_count_under_the_same_limits_as_direct_ones() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let Some(etcd) = Etcd::start() else { return };
    let port = port_free_on(&["127.0.0.2", "127.0.0.3"]);
    let range = |c: &mut Config| c.tcp_ports = Some(port..=port);
    // A holds the tunnel, whose limit of 3 connections counts them through every node; B
    // allows one connection per address, C two connections in all (its main listener always
    // keeps one place, so one visitor fills it).
    let a = node_at("127.0.0.1", etcd.endpoints(), |c| {
        range(c);
        c.max_conns_per_tcp_tunnel = 3;
    })
    .await;
    let b = node_at("127.0.0.2", etcd.endpoints(), |c| {
        range(c);
        c.max_conns_per_ip = 1;
    })
    .await;
    let c = node_at("127.0.0.3", etcd.endpoints(), |c| {
        range(c);
        c.max_conns = 2;
    })
    .await;
    let echo_port = common::origin::tcp_echo().await;
    let mut tcp = TunnelConfig::new(a.url(), echo_port);
    tcp.kind = ggrok_tunnel::TunnelKind::Tcp {
        remote_port: Some(port),
    };
    tcp.local.host = "127.0.0.1".into();
    let (_tunnel, _) = tunnel_with(tcp).await;

    // A visitor from address `from` to the node at `to`: its connection once its bytes came
    // back through the tunnel, `None` if it was closed without an answer.
    let visit = |from: &'static str, to: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut s = socket
            .connect(format!("{to}:{port}").parse().unwrap())
            .await
            .ok()?;
        s.write_all(b"ping").await.ok()?;
        let mut b = [0u8; 4];
        let answered = tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut b))
            .await
            .expect("neither answered nor closed");
        (answered.is_ok() && &b == b"ping").then_some(s)
    };
    let (holder, node_b, node_c) = ("127.0.0.1", "127.0.0.2", "127.0.0.3");

    // B and C serve the port once etcd's watch told them where the tunnel is.
    let first = common::eventually(Duration::from_secs(5), || visit("127.0.0.5", node_b)).await;
    assert!(
        visit("127.0.0.5", node_b).await.is_none(),
        "a second connection from one address past B's --max-conns-per-ip"
    );
    let second = common::eventually(Duration::from_secs(5), || visit("127.0.0.1", node_c)).await;
    assert!(
        visit("127.0.0.1", node_c).await.is_none(),
        "a connection past C's --max-conns"
    );
    let third = visit("127.0.0.1", holder)
        .await
        .expect("the tunnel's third");
    assert!(
        visit("127.0.0.1", holder).await.is_none(),
        "the holder counts hopped connections under --max-conns-per-tcp-tunnel"
    );
    assert!(
        visit("127.0.0.6", node_b).await.is_none(),
        "a hopped connection past the tunnel's --max-conns-per-tcp-tunnel"
    );
    // A place freed on the holder is anyone's, through any node.
    drop(third);
    let fourth = common::eventually(Duration::from_secs(5), || visit("127.0.0.6", node_b)).await;
    drop((first, second, fourth));
    for node in [a, b, c] {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_node_takes_the_lease_ttl_it_is_given() {
    let Some(etcd) = Etcd::start() else { return };
    // etcd's own client says what etcd granted.
    let etcdctl = |args: &[&str]| {
        Command::new("etcdctl")
            .args(["--endpoints", &etcd.endpoints()[0]])
            .args(args)
            .env("ETCDCTL_API", "3")
            .output()
            .ok()
            .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    if etcdctl(&["version"]).is_none() {
        return eprintln!("skipped: no etcdctl (Debian package etcd-client)");
    }
    let _node = NodeProcess::spawn_with(&etcd, &[("GGROK_CLUSTER_LEASE_TTL", "7")]);
    let list = etcdctl(&["lease", "list"]).unwrap();
    let leases: Vec<&str> = list.lines().skip(1).map(str::trim).collect();
    assert_eq!(leases.len(), 1, "{list}");
    let granted = etcdctl(&["lease", "timetolive", leases[0]]).unwrap();
    assert!(granted.contains("granted with TTL(7s)"), "{granted}");

    // Nonsense is refused before anything starts.
    let out = Command::new(env!("CARGO_BIN_EXE_ggrok-server"))
        .args(["--listen", "127.0.0.1:0", "--cluster", &etcd.url()])
        .env("GGROK_CLUSTER_SECRET", SECRET)
        .env("GGROK_CLUSTER_LEASE_TTL", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cluster_lease_ttl must be from 2 to 3600 seconds, not 1"),
        "{err}"
    );
}

/// A private CA and a certificate it issued for the apex `tunnel.test`, `*.tunnel.test` and
/// 127.0.0.1, in files.
struct PrivateCa {
    dir: tempfile::TempDir,
    ca_pem: String,
}

impl PrivateCa {
    fn new() -> PrivateCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ggrok cluster test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let names = ["tunnel.test", "*.tunnel.test", "127.0.0.1"].map(String::from);
        let cert = CertificateParams::new(names.to_vec())
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        PrivateCa {
            dir,
            ca_pem: ca.pem(),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

#[tokio::test]
async fn nodes_serving_tls_reach_each_other_over_https_checked_against_the_cluster_ca() {
    let Some(etcd) = Etcd::start() else { return };
    let pki = PrivateCa::new();
    let ca_roots = {
        use rustls_pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::pem_file_iter(pki.path("ca.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap()
    };
    // A node serving HTTPS with the CA's certificate, advertising https://ADDRESS, that
    // trusts `peer_roots` for other nodes' certificates (besides the system's).
    let tls_node = |peer_roots: Vec<rustls_pki_types::CertificateDer<'static>>| async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let advertise = format!("https://{}", listener.local_addr().unwrap());
        let tls =
            ggrok_server::config::load_tls(&pki.path("cert.pem"), &pki.path("key.pem")).unwrap();
        let member = Membership {
            peer_roots,
            ..membership(advertise)
        };
        node_listening(listener, etcd.endpoints(), member, |c| {
            c.domain = "tunnel.test".into();
            c.tls = Some(tls);
        })
        .await
    };
    let holder = tls_node(ca_roots.clone()).await;
    let hop = tls_node(ca_roots).await;
    let untrusting = tls_node(Vec::new()).await;
    let origin = Origin::start().await;
    let mut c = TunnelConfig::new(
        format!("https://127.0.0.1:{}", holder.addr.port()),
        origin.port(),
    );
    c.subdomain = Some("app".into());
    c.ca_cert = Some(pki.path("ca.pem"));
    let (_tunnel, url) = tunnel_with(c).await;
    assert!(url.starts_with("https://app.tunnel.test"), "{url}");

    let visit = |node: &Server| {
        let addr = node.addr;
        let ca = pki.ca_pem.clone();
        async move {
            common::tls::https_get(addr, "app.tunnel.test", &ca, "/echo")
                .await
                .unwrap()
                .0
        }
    };
    assert_eq!(visit(&holder).await, 200);
    // Through a node that does not hold the tunnel, over HTTPS between the nodes, once etcd's
    // watch told it where the tunnel is.
    let through = common::eventually(Duration::from_secs(5), || async {
        let status = visit(&hop).await;
        (status != 404).then_some(status)
    })
    .await;
    assert_eq!(through, 200);
    // A node that does not trust the holder's certificate does not send it the cluster secret.
    let refused = common::eventually(Duration::from_secs(5), || async {
        let status = visit(&untrusting).await;
        (status != 404).then_some(status)
    })
    .await;
    assert_eq!(refused, 502);
    for node in [holder, hop, untrusting] {
        node.stop().await;
    }
}

/// The value of counter `name` in `server`'s /metrics (its metrics token is "metrics-token").
async fn counter(server: &Server, name: &str) -> u64 {
    let text = common::visitors::metrics(&server.url(), "metrics-token").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test]
async fn a_name_claimed_through_one_node_is_served_through_another_before_the_watch_says_so() {
    let Some(etcd) = Etcd::start() else { return };
    let a = node(&etcd, |_| {}).await;
    // B talks to etcd through a relay that can hold its traffic back, watch included. Its
    // lease outlasts any hold here.
    let link =
        common::relay::Relay::start(format!("127.0.0.1:{}", etcd.port).parse().unwrap()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = Membership {
        lease_ttl: Duration::from_secs(10),
        ..membership(format!("http://{}", listener.local_addr().unwrap()))
    };
    let endpoints = vec![format!("http://{}", link.addr)];
    let b = node_listening(listener, endpoints, member, |c| {
        c.metrics_token = Some(ggrok_server::config::hash_token("metrics-token"));
    })
    .await;
    let origin = Origin::start().await;
    const LOOKUPS: &str = "ggrok_cluster_lookups_total";

    // The claim goes through A while B's copy of the table cannot hear of it.
    link.hold();
    let (_fresh, _) = tunnel_with(named(&a, origin.port(), "fresh")).await;
    let visit = tokio::spawn({
        let url = b.url();
        async move { status_at(&url, "fresh").await }
    });
    // B, missing the name, reads it in etcd (held back as well) rather than answering 404.
    common::eventually(Duration::from_secs(5), || async {
        (counter(&b, LOOKUPS).await == 1).then_some(())
    })
    .await;
    assert!(!visit.is_finished());
    link.release();
    assert_eq!(visit.await.unwrap(), 200);

    // Unknown names stay 404, and a flood of them does not become an etcd read per request:
    // one read per name at a time, its answer kept a moment...
    let url = b.url();
    let same = (0..30).map(|_| status_at(&url, "nobody"));
    let statuses = futures_util::future::join_all(same).await;
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
    assert_eq!(counter(&b, LOOKUPS).await, 2);
    // ...and at most 20 reads a second (as many in a burst) over the node, 8 at once.
    let started = std::time::Instant::now();
    let names: Vec<String> = (0..100).map(|i| format!("unknown{i}")).collect();
    let statuses =
        futures_util::future::join_all(names.iter().map(|name| status_at(&url, name))).await;
    let took = started.elapsed().as_secs_f64();
    assert!(statuses.iter().all(|&s| s == 404), "{statuses:?}");
    let reads = counter(&b, LOOKUPS).await - 2;
    assert!(
        reads as f64 <= 20.0 + 20.0 * took,
        "{reads} etcd reads for 100 unknown names in {took:.2} s"
    );
    a.stop().await;
    b.stop().await;
}
