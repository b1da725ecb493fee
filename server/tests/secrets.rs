//! Tokens never show up in what the real binaries print: `ggrok-server` (JSON logs) and the
//! `ggrok` CLI, both at `RUST_LOG=trace`, through a session, requests, a wrong token, a revoke
//! and the refusals and exits that follow.
//!
//! The `ggrok` binary is the one next to `ggrok-server` in the target directory: `cargo test
//! --workspace` builds both; a lone `cargo test -p ggrok-server` needs `cargo build -p
//! ggrok-tunnel --bin ggrok` first.

use std::{
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{origin::Origin, tunnels::name_of, visitors::visitor};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::{Child, Command},
    sync::Notify,
};

/// A running binary whose stdout and stderr are collected as they come.
struct Proc {
    child: Child,
    out: Arc<Mutex<String>>,
    changed: Arc<Notify>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let changed = Arc::new(Notify::new());
        let readers = vec![
            collect(child.stdout.take().unwrap(), out.clone(), changed.clone()),
            collect(child.stderr.take().unwrap(), out.clone(), changed.clone()),
        ];
        Proc {
            child,
            out,
            changed,
            readers,
        }
    }

    /// Waits until the output has a line for which `f` gives a value.
    async fn line<T>(&self, f: impl Fn(&str) -> Option<T>) -> T {
        let wait = async {
            loop {
                let note = self.changed.notified();
                tokio::pin!(note);
                note.as_mut().enable();
                if let Some(v) = self.out.lock().unwrap().lines().find_map(&f) {
                    return v;
                }
                note.await;
            }
        };
        // A guard against hanging, not a wait for readiness.
        tokio::time::timeout(Duration::from_secs(60), wait)
            .await
            .unwrap_or_else(|_| panic!("expected line never came:\n{}", self.output()))
    }

    fn output(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits for the process to exit (on its own) and for its pipes to close.
    async fn exit(mut self) -> (ExitStatus, String) {
        let status = tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("did not exit:\n{}", self.output()))
            .unwrap();
        for r in self.readers.drain(..) {
            r.await.unwrap();
        }
        (status, self.output())
    }

    async fn kill(mut self) -> String {
        self.child.start_kill().unwrap();
        self.exit().await.1
    }
}

fn collect(
    pipe: impl AsyncRead + Unpin + Send + 'static,
    out: Arc<Mutex<String>>,
    changed: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = out.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
            drop(out);
            changed.notify_waiters();
        }
    })
}

/// A command for `bin` at trace level, with nothing inherited that could carry a token.
fn command(bin: PathBuf) -> Command {
    let mut c = Command::new(bin);
    c.env("RUST_LOG", "trace")
        .env("RUST_BACKTRACE", "1")
        .env_remove("GGROK_TOKEN")
        .env_remove("GGROK_SERVER");
    c
}

fn server_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ggrok-server"))
}

fn ggrok_bin() -> PathBuf {
    let path = server_bin().with_file_name(format!("ggrok{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p ggrok-tunnel --bin ggrok` (or test the workspace)",
        path.display()
    );
    path
}

/// Every form in which a token could leak: itself, its SHA-256 in hex, and the hash as Rust
/// prints a byte array.
fn forms(token: &str) -> Vec<String> {
    let hash = ggrok_server::config::hash_token(token);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    vec![token.to_owned(), hex, format!("{hash:?}")]
}

#[tokio::test]
async fn tokens_never_appear_in_logs_or_crash_output() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("tokens.db");
    let admin = |args: &[&str]| {
        let mut c = command(server_bin());
        c.arg("--db").arg(&db).args(args);
        Proc::spawn(c)
    };
    let (status, created) = admin(&["token", "create", "--name", "laptop"]).exit().await;
    assert!(status.success(), "{created}");
    // The one place a token may be printed: its creation, to the admin.
    let token = created
        .lines()
        .find(|l| l.starts_with("ggrok_"))
        .unwrap()
        .to_owned();
    let wrong = format!("ggrok_{:064x}", 0xdead_beef_u64);

    let mut server = command(server_bin());
    server
        .arg("--db")
        .arg(&db)
        .args(["--listen", "127.0.0.1:0", "--domain", "localhost"])
        .args(["--log-format", "json", "--workers", "1"]);
    let server = Proc::spawn(server);
    let addr: std::net::SocketAddr = server
        .line(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["fields"]["message"] == "listening")
                .then(|| v["fields"]["addr"].as_str()?.parse().ok())?
        })
        .await;
    let url = format!("http://{addr}");
    let origin = Origin::start().await;
    let port = origin.port().to_string();

    let mut client = command(ggrok_bin());
    client.args([
        "http",
        &port,
        "--server",
        &url,
        "--subdomain",
        "sec",
        "--token",
        &token,
    ]);
    let client = Proc::spawn(client);
    let public = client
        .line(|l| l.starts_with("http://").then(|| l.to_owned()))
        .await;
    assert_eq!(name_of(&public), "sec");
    for path in ["/echo", "/status?404", "/echo?x=1"] {
        let r = visitor()
            .post(format!("{url}{path}"))
            .header(http::header::HOST, format!("sec.localhost:{}", addr.port()))
            .body("payload")
            .send()
            .await
            .unwrap();
        assert!(r.status() == 200 || r.status() == 404);
    }

    // A wrong token, given the way scripts give it (environment): refused, exit non-zero.
    let mut refused = command(ggrok_bin());
    refused
        .args(["http", &port, "--server", &url])
        .env("GGROK_TOKEN", &wrong);
    let (status, refused_out) = Proc::spawn(refused).exit().await;
    assert!(!status.success());
    assert!(refused_out.contains("not accepted"), "{refused_out}");

    // A command line the CLI rejects (port 0) next to a token: the error names no value but
    // the bad one.
    let mut bad = command(ggrok_bin());
    bad.args(["http", "0", "--server", &url, "--token", &token]);
    let (status, bad_out) = Proc::spawn(bad).exit().await;
    assert!(!status.success(), "{bad_out}");

    let (status, revoked_out) = admin(&["token", "revoke", "laptop"]).exit().await;
    assert!(status.success(), "{revoked_out}");
    let (status, client_out) = client.exit().await;
    assert!(!status.success());
    assert!(client_out.contains("revoked"), "{client_out}");
    let server_out = server.kill().await;
    assert!(server_out.contains("token revoked"), "{server_out}");

    for (who, out) in [
        ("ggrok-server", &server_out),
        ("ggrok", &client_out),
        ("ggrok with a wrong token", &refused_out),
        ("ggrok with a bad command line", &bad_out),
        ("token revoke", &revoked_out),
    ] {
        assert!(
            !out.trim().is_empty(),
            "{who} printed nothing at trace level"
        );
        for secret in forms(&token).iter().chain(&forms(&wrong)) {
            if let Some(at) = out.find(secret.as_str()) {
                let line = out[..at].lines().count();
                panic!("{who} printed a token (form {secret:?}) at line {line}:\n{out}");
            }
        }
    }
}
