//! `ggrok config`, `ggrok list` and `ggrok start` over the file the desktop app writes, against
//! a real server that wants a token. Without a Secret Service (a headless machine, or this test's
//! D-Bus address that leads nowhere) the token comes from `--token` or `GGROK_TOKEN`; under
//! `GGROK_TEST_SECRET_SERVICE=1` (scripts/test.sh) the real keyring is used as well.

use std::{path::Path, process::Stdio, time::Duration};

use ggrok_tunnel::{
    saved::{SavedServer, SavedTunnel, Store, FILE_NAME},
    tokens::{KeyringStore, SecretStore, SERVICE},
    TunnelConfig,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::Command,
};

const TOKEN: &str = "saved-tunnel-token-5e1f";
/// A D-Bus address that leads nowhere: what a headless machine without a session bus has.
const NO_BUS: &str = "unix:path=/nonexistent/ggrok-test-bus";

async fn server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ggrok_server::Config {
        tokens: ggrok_server::Tokens::from_plain([TOKEN]),
        ..ggrok_server::Config::new("localhost")
    };
    tokio::spawn(ggrok_server::run(listener, config, std::future::pending()));
    addr
}

/// A local service answering `hello from PORT`.
async fn origin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = format!("hello from {port}");
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all((head + &body).as_bytes()).await;
            });
        }
    });
    port
}

async fn get(addr: std::net::SocketAddr, host: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// `ggrok` with its config in `dir` and no keyring reachable unless the test says otherwise.
fn ggrok(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ggrok"));
    c.args(args)
        .env("GGROK_CONFIG_DIR", dir)
        .env("DBUS_SESSION_BUS_ADDRESS", NO_BUS)
        .env_remove("GGROK_NO_KEYRING")
        .env_remove("GGROK_TOKEN")
        .env_remove("GGROK_SERVER")
        .env_remove("RUST_LOG")
        // The inspector on any free port, not 4040 and up.
        .env("GGROK_INSPECT_PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn run(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = ggrok(dir, args).output().await.unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Reads stdout lines until `n` URLs were printed.
async fn urls(
    out: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    n: usize,
) -> Vec<String> {
    let mut urls = Vec::new();
    while urls.len() < n {
        let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
            .await
            .expect("a URL in time")
            .unwrap()
            .expect("stdout open");
        urls.push(line);
    }
    urls
}

#[tokio::test]
async fn headless_the_keyring_is_missing_and_the_token_comes_from_the_environment() {
    let addr = server().await;
    let port = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}");

    let (ok, _, err) = run(
        dir.path(),
        &[
            "config",
            "add-server",
            &url,
            "--token",
            TOKEN,
            "--name",
            "box",
        ],
    )
    .await;
    assert!(!ok, "a token it could not keep is a failure: {err}");
    assert!(
        err.contains("saved server box") && err.contains("keyring is not available"),
        "{err}"
    );
    assert!(!err.contains(TOKEN), "{err}");
    let (ok, _, err) = run(
        dir.path(),
        &[
            "config",
            "add-tunnel",
            &port.to_string(),
            "--name",
            "web",
            "--subdomain",
            "headless",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (ok, list, _) = run(dir.path(), &["list"]).await;
    assert!(ok);
    assert!(
        list.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("web ") && l.contains(&url)),
        "{list}"
    );
    let saved = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
    assert!(!saved.contains(TOKEN), "never a token in the file");

    // No token anywhere: a clear word about the keyring, then the server's refusal.
    let (ok, _, err) = run(dir.path(), &["start", "web"]).await;
    assert!(!ok);
    assert!(err.contains("keyring is not available"), "{err}");
    assert!(
        err.contains("refused: this server requires a token"),
        "{err}"
    );

    let mut child = ggrok(dir.path(), &["start", "web"])
        .env("GGROK_TOKEN", TOKEN)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = urls(&mut out, 1).await;
    assert_eq!(url, [format!("http://headless.localhost:{}", addr.port())]);
    assert!(get(addr, "headless.localhost")
        .await
        .ends_with(&format!("hello from {port}")));
}

/// What the desktop app saves (`SavedServer`, `SavedTunnel` without a name, the token under the
/// server's id) starts from the terminal; `--all` runs every saved tunnel, each line labelled.
#[tokio::test]
async fn tunnels_saved_by_the_app_start_from_the_terminal() {
    let addr = server().await;
    let (a, b) = (origin().await, origin().await);
    let dir = tempfile::tempdir().unwrap();
    let real_keyring = std::env::var("GGROK_TEST_SECRET_SERVICE").as_deref() == Ok("1");
    let server_id = format!("test-{:016x}", rand::random::<u64>());
    let (mut store, _) = Store::load(dir.path().join(FILE_NAME));
    store
        .update(|d| {
            d.servers.push(SavedServer {
                id: server_id.clone(),
                name: "work".into(),
                url: format!("http://{addr}"),
                unknown: Default::default(),
            });
            let mut one = SavedTunnel::new("aaaa".into(), server_id.clone(), "localhost".into(), a);
            one.subdomain = Some("from-app".into());
            d.tunnels.push(one);
            let mut two = SavedTunnel::new("bbbb".into(), server_id.clone(), "127.0.0.1".into(), b);
            two.subdomain = Some("second".into());
            d.tunnels.push(two);
        })
        .unwrap();

    let mut start = ggrok(dir.path(), &["start", "--all"]);
    if real_keyring {
        KeyringStore::new(SERVICE).set(&server_id, TOKEN).unwrap();
        start.env_remove("DBUS_SESSION_BUS_ADDRESS");
        if let Some(bus) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
            start.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
    } else {
        start.env("GGROK_TOKEN", TOKEN);
    }
    let mut child = start.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut got = urls(&mut out, 2).await;
    got.sort();
    assert_eq!(
        got,
        [
            format!("from-app http://from-app.localhost:{}", addr.port()),
            format!("second http://second.localhost:{}", addr.port()),
        ]
    );
    assert!(get(addr, "second.localhost")
        .await
        .ends_with(&format!("hello from {b}")));
    let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("second ") && line.contains(" GET / 200 "),
        "{line}"
    );
    child.kill().await.unwrap();
    if real_keyring {
        KeyringStore::new(SERVICE).delete(&server_id).unwrap();
    }

    // One by name: its lines as `ggrok http` prints them, with no label.
    let mut child = ggrok(dir.path(), &["start", "from-app"])
        .env("GGROK_TOKEN", TOKEN)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(
        urls(&mut out, 1).await,
        [format!("http://from-app.localhost:{}", addr.port())]
    );

    let (ok, _, err) = run(dir.path(), &["start", "nope"]).await;
    assert!(!ok);
    assert_eq!(
        err.trim(),
        "ggrok: no saved tunnel \"nope\" (see `ggrok list`)"
    );
}

/// `config add-server --token` with a real Secret Service: the token is in the keyring under the
/// server's id, where the app looks for it, and not in the file. Runs under
/// `GGROK_TEST_SECRET_SERVICE=1` (scripts/test.sh); skipped otherwise.
#[tokio::test]
async fn add_server_keeps_the_token_in_the_real_keyring() {
    if std::env::var("GGROK_TEST_SECRET_SERVICE").as_deref() != Ok("1") {
        eprintln!("skipped: set GGROK_TEST_SECRET_SERVICE=1 under dbus-run-session");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut add = ggrok(
        dir.path(),
        &[
            "config",
            "add-server",
            "https://keyring.example.com",
            "--token",
            TOKEN,
        ],
    );
    add.env_remove("DBUS_SESSION_BUS_ADDRESS");
    if let Some(bus) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
        add.env("DBUS_SESSION_BUS_ADDRESS", bus);
    }
    let out = add.output().await.unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("in the system keyring") && !err.contains(TOKEN),
        "{err}"
    );
    let (store, _) = Store::load(dir.path().join(FILE_NAME));
    let id = store.data().servers[0].id.clone();
    let keyring = KeyringStore::new(SERVICE);
    assert_eq!(keyring.get(&id).unwrap().as_deref(), Some(TOKEN));
    keyring.delete(&id).unwrap();
    let file = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
    assert!(!file.contains(TOKEN));
}

#[tokio::test]
async fn a_server_is_removed_only_once_no_saved_tunnel_uses_it() {
    let dir = tempfile::tempdir().unwrap();
    let url = "https://tunnel.example.com";
    assert!(
        run(dir.path(), &["config", "add-server", url, "--name", "box"])
            .await
            .0
    );
    assert!(
        run(
            dir.path(),
            &["config", "add-tunnel", "3000", "--name", "web"]
        )
        .await
        .0
    );

    let (ok, _, err) = run(dir.path(), &["config", "remove-server", "box"]).await;
    assert!(!ok, "a server in use stays");
    assert!(
        err.contains("saved tunnels use server") && err.contains("web"),
        "{err}"
    );
    let (ok, _, err) = run(dir.path(), &["config", "remove-server", "local"]).await;
    assert!(!ok && err.contains("built-in server"), "{err}");
    let (ok, _, err) = run(dir.path(), &["config", "remove-server", "nothing"]).await;
    assert!(!ok && err.contains("no saved server"), "{err}");

    assert!(run(dir.path(), &["config", "remove-tunnel", "web"]).await.0);
    let (ok, _, err) = run(dir.path(), &["config", "remove-server", &format!("{url}/")]).await;
    assert!(ok, "{err}");
    assert!(err.contains("removed server"), "{err}");
    let mut saved = Store::load(dir.path().join(FILE_NAME)).0;
    assert!(
        saved.fresh().servers.is_empty(),
        "{:?}",
        saved.fresh().servers
    );
}

/// `config add-tunnel --tcp` saves a TCP tunnel that `ggrok start` runs as `ggrok tcp` does, on
/// the port it asked for. What only HTTP has is refused with it, and a Basic auth password with
/// no keyring to keep it saves nothing.
#[tokio::test]
async fn a_tcp_tunnel_saved_from_the_terminal_starts_on_its_port() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let range = ggrok_test_support::server::tcp_port_range();
    let low = *range.start();
    let config = ggrok_server::Config {
        tokens: ggrok_server::Tokens::from_plain([TOKEN]),
        tcp_ports: Some(range),
        ..ggrok_server::Config::new("localhost")
    };
    tokio::spawn(ggrok_server::run(listener, config, std::future::pending()));
    let echo = ggrok_test_support::origin::tcp_echo().await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}");
    assert!(run(dir.path(), &["config", "add-server", &url]).await.0);

    let refused = [
        (
            &["https://localhost:8443", "--tcp"][..],
            "--tcp forwards raw TCP",
        ),
        (
            &["22", "--tcp", "--upstream-protocol", "http2"][..],
            "--tcp forwards raw TCP",
        ),
        (
            &["22", "--tcp", "--subdomain", "x"][..],
            "cannot be used with",
        ),
        (&["22", "--remote-port", "2222"][..], "--tcp"),
    ];
    for (args, says) in refused {
        let (ok, _, err) = run(dir.path(), &[&["config", "add-tunnel"][..], args].concat()).await;
        assert!(!ok && err.contains(says), "{args:?}: {err}");
    }
    let (ok, _, err) = run(
        dir.path(),
        &[
            "config",
            "add-tunnel",
            "3000",
            "--name",
            "guarded",
            "--basic-auth",
            "me:secret",
        ],
    )
    .await;
    assert!(!ok, "{err}");
    assert!(
        err.contains("not saved: the system keyring") && err.contains("is not available"),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");

    let remote = low.to_string();
    let (ok, _, err) = run(
        dir.path(),
        &[
            "config",
            "add-tunnel",
            &echo,
            "--tcp",
            "--remote-port",
            &remote,
            "--name",
            "ssh",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let (_, list, _) = run(dir.path(), &["list"]).await;
    let rows: Vec<&str> = list.lines().skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(
        rows.len(),
        1,
        "nothing of the refused ones was saved: {list}"
    );
    assert!(
        rows[0].starts_with(&format!("ssh   tcp://localhost:{echo}  -")),
        "{list}"
    );

    let mut child = ggrok(dir.path(), &["start", "ssh"])
        .env("GGROK_TOKEN", TOKEN)
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(urls(&mut out, 1).await, [format!("tcp://localhost:{low}")]);
    let mut s = TcpStream::connect(("127.0.0.1", low)).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"ping");
}

/// A saved tunnel without a fixed subdomain keeps the name the server gave it: `ggrok start`
/// remembers it in the file and asks for it next time; when someone else holds it by then, the
/// tunnel comes online under a new name instead of failing, and remembers that one.
#[tokio::test]
async fn a_name_the_server_gave_is_asked_for_again_next_time() {
    let (addr, port, dir) = saved_server().await;
    let url = format!("http://{addr}");
    assert!(
        run(
            dir.path(),
            &["config", "add-tunnel", &port.to_string(), "--name", "web"]
        )
        .await
        .0
    );
    let given = || {
        let (mut store, _) = Store::load(dir.path().join(FILE_NAME));
        store.fresh().tunnels[0].given_name.clone()
    };
    let start = || async {
        let mut child = ggrok(dir.path(), &["start", "web", "--inspect=false"])
            .env("GGROK_TOKEN", TOKEN)
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = urls(&mut out, 1).await.remove(0);
        (child, url)
    };
    // Stopped as Ctrl-C stops it: the server lets the name go at once.
    let interrupt = |child: &tokio::process::Child| {
        ggrok_test_support::process::interrupt(child.id().unwrap());
    };

    let (mut child, first) = start().await;
    let name = first
        .strip_prefix("http://")
        .and_then(|u| u.split_once('.'))
        .map(|(n, _)| n.to_owned())
        .unwrap();
    assert_eq!(given(), Some(name.clone()), "remembered once online");
    interrupt(&child);
    assert!(child.wait().await.unwrap().success());
    let (mut child, again) = start().await;
    assert_eq!(again, first, "the same URL on the next start");
    interrupt(&child);
    child.wait().await.unwrap();

    // Someone else takes the name while the tunnel is down.
    let mut squatter = TunnelConfig::new(url.clone(), port);
    squatter.token = Some(ggrok_tunnel::Secret::new(TOKEN));
    squatter.subdomain = Some(name.clone());
    let squatter = ggrok_tunnel::Tunnel::start(squatter).unwrap();
    squatter.online().await.unwrap();
    let (_child, moved) = start().await;
    assert_ne!(moved, first);
    let new_name = given().expect("a name");
    assert_ne!(new_name, name);
    assert!(moved.starts_with(&format!("http://{new_name}.")), "{moved}");
}

/// A server that wants [`TOKEN`], an origin, and a config directory with that server saved.
async fn saved_server() -> (std::net::SocketAddr, u16, tempfile::TempDir) {
    let addr = server().await;
    let port = origin().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}");
    let (ok, _, err) = run(dir.path(), &["config", "add-server", &url]).await;
    assert!(ok, "{err}");
    (addr, port, dir)
}

/// `ggrok` with the real keyring when the test runs under a Secret Service.
fn with_real_keyring(mut cmd: Command) -> Command {
    cmd.env_remove("DBUS_SESSION_BUS_ADDRESS");
    if let Some(bus) = std::env::var_os("DBUS_SESSION_BUS_ADDRESS") {
        cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
    }
    cmd
}

/// A tunnel saved with Basic auth keeps it when `ggrok start` is given the server's token on
/// the command line: the password comes from the keyring all the same. Runs under
/// `GGROK_TEST_SECRET_SERVICE=1` (scripts/test.sh); skipped otherwise.
#[tokio::test]
async fn basic_auth_from_the_keyring_holds_with_a_token_on_the_command_line() {
    if std::env::var("GGROK_TEST_SECRET_SERVICE").as_deref() != Ok("1") {
        eprintln!("skipped: set GGROK_TEST_SECRET_SERVICE=1 under dbus-run-session");
        return;
    }
    let (addr, port, dir) = saved_server().await;
    let port = port.to_string();
    let out = with_real_keyring(ggrok(
        dir.path(),
        &[
            "config",
            "add-tunnel",
            &port,
            "--subdomain",
            "guarded",
            "--basic-auth",
            "ann:s3cret",
        ],
    ))
    .output()
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut child = with_real_keyring(ggrok(dir.path(), &["start", "guarded", "--token", TOKEN]))
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    urls(&mut out, 1).await;
    assert!(get(addr, "guarded.localhost")
        .await
        .starts_with("HTTP/1.1 401"));
    let (mut store, _) = Store::load(dir.path().join(FILE_NAME));
    let id = store.fresh().tunnels[0].id.clone();
    KeyringStore::new(SERVICE)
        .delete(&ggrok_tunnel::tokens::basic_auth_key(&id))
        .unwrap();
}

/// `POST /api/tunnels` with only a name starts that saved tunnel, as ngrok starts a tunnel of
/// its config file: on its own server, with the run's token when the keyring has none. A saved
/// tunnel already running is not started twice.
#[tokio::test]
async fn the_api_starts_a_saved_tunnel_by_name() {
    let (addr, port, dir) = saved_server().await;
    let port = port.to_string();
    for name in ["web", "docs"] {
        let (ok, _, err) = run(
            dir.path(),
            &[
                "config",
                "add-tunnel",
                &port,
                "--name",
                name,
                "--subdomain",
                name,
            ],
        )
        .await;
        assert!(ok, "{err}");
    }
    let mut child = ggrok(dir.path(), &["start", "web"])
        .env("GGROK_TOKEN", TOKEN)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let inspector = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), err.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("stderr open");
        if let Some(at) = line.strip_prefix("ggrok: inspector on ") {
            break at.to_owned();
        }
    };
    let post = |body: &'static str| {
        let url = format!("{inspector}/api/tunnels");
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = resp.status().as_u16();
            (status, resp.text().await.unwrap())
        }
    };
    let (status, body) = post(r#"{"name": "docs"}"#).await;
    assert_eq!(status, 201, "{body}");
    assert!(
        body.contains(&format!(
            r#""public_url":"http://docs.localhost:{}""#,
            addr.port()
        )),
        "{body}"
    );
    assert!(get(addr, "docs.localhost")
        .await
        .ends_with(&format!("hello from {port}")));
    let (status, body) = post(r#"{"name": "web"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains(r#"is running, as \"command_line\""#),
        "{body}"
    );
    let (status, body) = post(r#"{"name": "nope"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no saved tunnel"), "{body}");
    let (status, body) = post(r#"{"name": "docs2", "subdomain": "x"}"#).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("give addr"), "{body}");
}
