//! The `ggrok` binary against a real server: URL on its own line, a log line per request, and a
//! one-line reason with a non-zero exit when refused.

use std::{process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::TcpListener,
    process::Command,
};

async fn server(config: ggrok_server::Config) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(ggrok_server::run(listener, config, std::future::pending()));
    addr
}

/// A one-route origin answering `hello` to anything.
async fn origin() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
                    )
                    .await;
            });
        }
    });
    port
}

fn ggrok(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ggrok"));
    c.args(args)
        .env_remove("GGROK_SERVER")
        .env_remove("GGROK_TOKEN")
        // The inspector on any free port, not 4040 and up.
        .env("GGROK_INSPECT_PORT", "0")
        // What a user gets: no RUST_LOG.
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// `ggrok http PORT --server http://ADDR --subdomain NAME EXTRA…`.
fn ggrok_http(addr: std::net::SocketAddr, port: &str, name: &str, extra: &[&str]) -> Command {
    let mut cmd = ggrok(&[
        "http",
        port,
        "--server",
        &format!("http://{addr}"),
        "--subdomain",
        name,
    ]);
    cmd.args(extra);
    cmd
}

/// A server, an origin and `ggrok http ORIGIN --subdomain NAME EXTRA…` on it: the server's
/// address, the process, its stdout's lines and the URL it printed first.
async fn http_tunnel(
    name: &str,
    extra: &[&str],
) -> (
    std::net::SocketAddr,
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    String,
) {
    let addr = server(ggrok_server::Config::new("localhost")).await;
    let port = origin().await.to_string();
    let mut child = ggrok_http(addr, &port, name, extra).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = out.next_line().await.unwrap().unwrap();
    (addr, child, out, url)
}

#[tokio::test]
async fn prints_the_url_then_one_line_per_request() {
    let (addr, mut child, mut out, url) = http_tunnel("cli", &[]).await;
    assert_eq!(url, format!("http://cli.localhost:{}", addr.port()));

    let body = raw_get(addr, "cli.localhost", "/some/path?x=1").await;
    assert!(body.ends_with("hello"), "{body}");
    let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[1..4], ["GET", "/some/path?x=1", "200"], "{line}");
    assert!(fields[4].ends_with("ms") && line.ends_with("5 B"), "{line}");

    // A normal run logs nothing below its default level (tungstenite's handshake line was
    // raised to debug by the very directive meant to quieten it).
    child.kill().await.unwrap();
    let mut err = String::new();
    use tokio::io::AsyncReadExt;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert!(
        !err.contains("DEBUG") && !err.contains("TRACE"),
        "debug output in a normal run: {err}"
    );
}

#[tokio::test]
async fn a_stdout_nobody_reads_holds_no_request_back_and_loses_no_line_unsaid() {
    let (addr, mut child, mut out, _url) = http_tunnel("full", &[]).await;

    // Then stdout is not read while lines of about 1.1 KB pile up: 2.3 MB, beyond the pipe's
    // 64 KiB and the 1 MiB the CLI holds for a reader that does not read.
    const REQUESTS: usize = 2_000;
    let path = format!("/{}", "p".repeat(1_000));
    let client = reqwest::Client::builder()
        .resolve("full.localhost", addr)
        .build()
        .unwrap();
    let url = format!("http://full.localhost:{}{path}", addr.port());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                for _ in 0..REQUESTS / 8 {
                    let resp =
                        tokio::time::timeout(Duration::from_secs(10), client.get(&url).send())
                            .await
                            .expect("answered while stdout is not read")
                            .unwrap();
                    assert_eq!(resp.text().await.unwrap(), "hello");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }

    // Read again: every request is a line on stdout or counted on stderr as not shown.
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let (mut shown, mut dropped) = (0, 0);
    tokio::time::timeout(Duration::from_secs(20), async {
        while shown + dropped < REQUESTS {
            tokio::select! {
                line = out.next_line() => {
                    let line = line.unwrap().expect("stdout open");
                    assert!(line.contains(&path), "{line}");
                    shown += 1;
                }
                line = err.next_line() => {
                    let line = line.unwrap().expect("stderr open");
                    if let Some(n) = line
                        .strip_prefix("ggrok: ")
                        .and_then(|l| l.strip_suffix(" log lines not shown: stdout was not being read"))
                    {
                        dropped += n.parse::<usize>().unwrap();
                    }
                }
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{shown} shown and {dropped} counted of {REQUESTS}"));
    assert!(dropped > 0 && shown > 0, "shown {shown}, dropped {dropped}");
}

#[tokio::test]
async fn ctrl_c_stops_the_tunnel_frees_its_name_and_exits_zero() {
    let addr = server(ggrok_server::Config::new("localhost")).await;
    let port = origin().await.to_string();
    let server_url = format!("http://{addr}");
    let args = ["http", &port, "--server", &server_url, "--subdomain", "bye"];
    let mut child = ggrok(&args).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = out.next_line().await.unwrap().unwrap();
    assert_eq!(url, format!("http://bye.localhost:{}", addr.port()));
    // Requests first, so that the wait for Ctrl-C has been through the loop's turns.
    for _ in 0..3 {
        assert!(raw_get(addr, "bye.localhost", "/").await.ends_with("hello"));
        out.next_line().await.unwrap().unwrap();
    }
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("exits on Ctrl-C")
        .unwrap();
    assert!(status.success(), "{status:?}");
    // A stop, not a drop: the server freed the name at once, so it is given again.
    let mut again = ggrok(&args).spawn().unwrap();
    let mut out = BufReader::new(again.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), out.next_line())
        .await
        .expect("online again")
        .unwrap()
        .unwrap();
    assert_eq!(url, format!("http://bye.localhost:{}", addr.port()));
}

/// Reads stderr lines until one starts with `prefix`; returns the rest of that line.
async fn stderr_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    prefix: &str,
) -> String {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let line = lines.next_line().await.unwrap().expect("stderr closed");
            if let Some(rest) = line.strip_prefix(prefix) {
                return rest.to_owned();
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no line starting with {prefix:?}"))
}

#[tokio::test]
async fn the_inspector_is_served_from_the_next_free_port_and_can_be_turned_off() {
    let addr = server(ggrok_server::Config::new("localhost")).await;
    let port = origin().await.to_string();
    // The first port is taken: the inspector takes a later one and says which.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let first = taken.local_addr().unwrap().port().to_string();
    let mut child = ggrok_http(addr, &port, "insp", &[])
        .env("GGROK_INSPECT_PORT", &first)
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let at = stderr_line(&mut err, "ggrok: inspector on http://").await;
    let at: std::net::SocketAddr = at.parse().unwrap();
    assert!(at.ip().is_loopback(), "{at}");
    assert!(at.port() > taken.local_addr().unwrap().port(), "{at}");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    out.next_line().await.unwrap().unwrap();
    let api = raw_get(at, &format!("127.0.0.1:{}", at.port()), "/api/tunnels").await;
    assert!(api.starts_with("HTTP/1.1 200"), "{api}");
    assert!(api.contains(r#""name":"command_line""#), "{api}");
    assert!(
        api.contains(r#""public_url":"http://insp.localhost:"#),
        "{api}"
    );
    child.kill().await.unwrap();

    let mut child = ggrok_http(addr, &port, "noinsp", &["--inspect=false"])
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    stderr_line(&mut err, "ggrok: forwarding ").await;
    // A request's log line comes after anything said on going online.
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    out.next_line().await.unwrap().unwrap();
    raw_get(addr, "noinsp.localhost", "/").await;
    out.next_line().await.unwrap().unwrap();
    child.kill().await.unwrap();
    let mut rest = Vec::new();
    while let Ok(Some(line)) = err.next_line().await {
        rest.push(line);
    }
    assert!(!rest.iter().any(|l| l.contains("inspector")), "{rest:?}");
}

#[tokio::test]
async fn refusals_exit_non_zero_with_one_line() {
    let addr = server(ggrok_server::Config {
        tokens: ggrok_server::Tokens::from_plain(["the-token"]),
        ..ggrok_server::Config::new("localhost")
    })
    .await;
    let server_url = format!("http://{addr}");
    let out = ggrok(&["http", "3000", "--server", &server_url, "--token", "wrong"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim(), "ggrok: refused: the token was not accepted");

    let out = ggrok(&[
        "http",
        "3000",
        "--server",
        &server_url,
        "--subdomain",
        "Bad_Name",
    ])
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    // Said once: the chain used to repeat the reason after a "bad subdomain" prefix.
    assert_eq!(
        err.trim(),
        "ggrok: cannot start the tunnel: subdomain must be lowercase (found 'B')"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn an_empty_allow_ip_is_refused_before_connecting() {
    // `--allow-ip "$OFFICE_IP"` with the variable unset; no server needs to exist.
    let out = ggrok(&[
        "http",
        "3000",
        "--server",
        "http://127.0.0.1:9",
        "--allow-ip",
        "",
    ])
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err.trim(),
        "ggrok: cannot start the tunnel: an allowed IP entry is empty: give an address or CIDR range, or no --allow-ip"
    );
}

#[tokio::test]
async fn a_servers_escape_codes_never_reach_the_terminal() {
    // A fake server that refuses every connect with a message that would retitle the
    // terminal, clear it and hide what follows.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"{"error":"unauthorized","message":"\u001b]0;pwned\u0007\u001b[2Jno\r\u009b2K"}"#;
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    let out = ggrok(&["http", "3000", "--server", &format!("http://{addr}")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        !err.contains(['\u{1b}', '\u{7}', '\r', '\u{9b}']),
        "{err:?}"
    );
    assert_eq!(
        err.trim_end(),
        "ggrok: refused: \\u{1b}]0;pwned\\u{7}\\u{1b}[2Jno\\r\\u{9b}2K"
    );
}

/// A minimal HTTP/1.1 GET over a raw socket, with an explicit Host.
async fn raw_get(addr: std::net::SocketAddr, host: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// A server with a range of TCP ports.
async fn tcp_server() -> std::net::SocketAddr {
    server(ggrok_server::Config {
        tcp_ports: Some(ggrok_test_support::server::tcp_port_range()),
        ..ggrok_server::Config::new("localhost")
    })
    .await
}

/// Sends `data`, half-closes and reads until the tunnel closes the connection.
async fn tcp_exchange(port: u16, data: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let _ = s.write_all(data).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    out
}

#[tokio::test]
async fn tcp_prints_the_address_then_one_line_per_connection() {
    let addr = tcp_server().await;
    let server_url = format!("http://{addr}");
    let local = ggrok_test_support::origin::tcp_echo().await.to_string();
    let mut child = ggrok(&["tcp", &local, "--server", &server_url])
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = out.next_line().await.unwrap().unwrap();
    let port: u16 = url
        .strip_prefix("tcp://localhost:")
        .unwrap_or_else(|| panic!("{url}"))
        .parse()
        .unwrap();
    assert_eq!(tcp_exchange(port, b"ping").await, b"ping");
    let line = tokio::time::timeout(Duration::from_secs(10), out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(fields[1].starts_with("127.0.0.1:"), "{line}");
    assert!(fields[2].ends_with("ms"), "{line}");
    assert_eq!(
        fields[3..],
        ["up", "4", "B", "down", "4", "B", "closed"],
        "{line}"
    );
}

/// `ggrok tcp` to a local port nothing listens on, through a server with `config` and TCP ports:
/// the process, its stdout's lines, the public port it printed and the dead local port.
async fn tcp_tunnel_to_a_dead_port(
    config: ggrok_server::Config,
) -> (
    tokio::process::Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    u16,
    String,
) {
    let addr = server(ggrok_server::Config {
        tcp_ports: Some(ggrok_test_support::server::tcp_port_range()),
        ..config
    })
    .await;
    let server_url = format!("http://{addr}");
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port().to_string()
    };
    let args = [
        "tcp",
        &dead,
        "--server",
        &server_url,
        "--local-host",
        "127.0.0.1",
    ];
    let mut child = ggrok(&args).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = out.next_line().await.unwrap().unwrap();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    (child, out, port, dead)
}

#[tokio::test]
async fn tcp_to_a_dead_local_port_closes_the_visitor_and_says_why() {
    let (mut child, mut out, port, dead) =
        tcp_tunnel_to_a_dead_port(ggrok_server::Config::new("localhost")).await;
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let got = tokio::time::timeout(Duration::from_secs(5), tcp_exchange(port, b"hi"))
        .await
        .expect("closed at once");
    assert!(got.is_empty());
    let line = out.next_line().await.unwrap().unwrap();
    let reason = format!("local service unreachable: cannot connect to 127.0.0.1:{dead}");
    assert!(line.contains(&reason), "{line}");
    // The log says it too, on stderr, beside the forwarding line.
    loop {
        let l = err.next_line().await.unwrap().expect("a log line about it");
        if l.contains("WARN") {
            assert!(
                l.contains(&format!("cannot connect to 127.0.0.1:{dead}")),
                "{l}"
            );
            break;
        }
    }
}

#[tokio::test]
async fn a_stderr_nobody_reads_holds_no_connection_back() {
    let (mut child, mut out, port, dead) = tcp_tunnel_to_a_dead_port(ggrok_server::Config {
        connect_rate: 0,
        max_conns_per_ip: 0,
        ..ggrok_server::Config::new("localhost")
    })
    .await;
    // Stdout is read; stderr is not while each visitor logs a warning there: 1,000 of them are
    // about 150 KB, beyond the pipe's 64 KiB.
    tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
    const VISITORS: usize = 1_000;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                for _ in 0..VISITORS / 4 {
                    let got =
                        tokio::time::timeout(Duration::from_secs(5), tcp_exchange(port, b"hi"))
                            .await
                            .expect("closed at once while stderr is not read");
                    assert!(got.is_empty());
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    // Then every warning is there to read.
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let warnings = tokio::time::timeout(Duration::from_secs(20), async {
        let mut warnings = 0;
        while warnings < VISITORS {
            let line = err.next_line().await.unwrap().expect("stderr open");
            if line.contains("WARN")
                && line.contains(&format!("cannot connect to 127.0.0.1:{dead}"))
            {
                warnings += 1;
            }
        }
        warnings
    })
    .await
    .expect("a warning per visitor");
    assert_eq!(warnings, VISITORS);
}

#[tokio::test]
async fn tcp_refusals_exit_non_zero_with_one_line() {
    let plain = server(ggrok_server::Config::new("localhost")).await;
    let out = ggrok(&["tcp", "22", "--server", &format!("http://{plain}")])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim(),
        "ggrok: refused: this server offers no TCP tunnels (it runs without --tcp-ports)"
    );
    let range = ggrok_test_support::server::tcp_port_range();
    let addr = server(ggrok_server::Config {
        tcp_ports: Some(range.clone()),
        ..ggrok_server::Config::new("localhost")
    })
    .await;
    let outside = (range.end() + 1).to_string();
    let out = ggrok(&[
        "tcp",
        "22",
        "--server",
        &format!("http://{addr}"),
        "--remote-port",
        &outside,
    ])
    .output()
    .await
    .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim(),
        format!(
            "ggrok: refused: port {outside} is outside this server's TCP ports ({}-{})",
            range.start(),
            range.end()
        )
    );
}

/// `--qr` piped: the QR code goes to stderr after the "forwarding" line; stdout is still the
/// URL alone, as scripts read it.
#[tokio::test]
async fn qr_goes_to_stderr_and_stdout_keeps_the_url_alone() {
    let (addr, mut child, _out, url) = http_tunnel("qr", &["--qr"]).await;
    assert_eq!(url, format!("http://qr.localhost:{}", addr.port()));
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let forwarding = err.next_line().await.unwrap().unwrap();
    assert!(forwarding.starts_with("ggrok: forwarding"), "{forwarding}");
    let mut qr = Vec::new();
    while qr.len() < 10 {
        qr.push(err.next_line().await.unwrap().unwrap());
    }
    assert!(
        qr.iter()
            .all(|l| !l.is_empty() && l.chars().all(|c| matches!(c, ' ' | '█' | '▀' | '▄'))),
        "{qr:#?}"
    );
    child.kill().await.unwrap();
}

/// `ggrok` on a pseudo-terminal of 120 × 40: what it draws, and the keys typed.
#[cfg(target_os = "linux")]
struct Terminal {
    child: tokio::process::Child,
    keys: std::fs::File,
    drawn: tokio::sync::mpsc::UnboundedReceiver<String>,
    screen: String,
}

#[cfg(target_os = "linux")]
impl Terminal {
    fn spawn(mut cmd: Command) -> Self {
        use std::io::Read;
        let size = nix::pty::Winsize {
            ws_row: 40,
            ws_col: 120,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(&size, None).unwrap();
        let terminal = std::fs::File::from(pty.slave);
        let child = cmd
            .stdout(terminal.try_clone().unwrap())
            .stderr(terminal)
            .spawn()
            .unwrap();
        // The terminal's side: what ggrok draws, read by a thread.
        let keys = std::fs::File::from(pty.master);
        let mut shown = keys.try_clone().unwrap();
        let (tx, drawn) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1 << 16];
            while let Ok(n @ 1..) = shown.read(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        Self {
            child,
            keys,
            drawn,
            screen: String::new(),
        }
    }

    /// Waits until `text` was drawn.
    async fn wait_for(&mut self, text: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !self.screen.contains(text) {
                let more = self.drawn.recv().await.expect("the terminal open");
                self.screen.push_str(&more);
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{text:?} not on the screen: {:?}", self.screen));
    }

    fn type_keys(&mut self, keys: &[u8]) {
        std::io::Write::write_all(&mut self.keys, keys).unwrap();
    }
}

/// A terminal stopped with Ctrl-S (or slow, over SSH) holds the live screen back, never the
/// tunnels: requests go on through it, and once the terminal takes output again the screen
/// counts every one of them.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_terminal_stopped_with_ctrl_s_holds_no_request_back() {
    let addr = server(ggrok_server::Config::new("localhost")).await;
    let port = origin().await.to_string();
    let mut t = Terminal::spawn(ggrok_http(addr, &port, "tty", &[]));
    t.wait_for(&format!("http://tty.localhost:{}", addr.port()))
        .await;

    t.type_keys(b"\x13"); // Ctrl-S
                          // Long enough for several redraws (one each 200 ms), each of which the terminal holds.
    let mut answered = 0;
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) || answered < 20 {
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            raw_get(addr, "tty.localhost", "/while-stopped"),
        )
        .await
        .unwrap_or_else(|_| panic!("request {} held back by the terminal", answered + 1));
        assert!(body.ends_with("hello"), "{body}");
        answered += 1;
    }

    t.type_keys(b"\x11"); // Ctrl-Q
    t.wait_for(&format!("requests {answered} total")).await;
    t.child.kill().await.unwrap();
}

/// On the live screen the log shows among the last lines, plain: written to the terminal as
/// it came (in colour) it would land on top of the screen until the next draw.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_log_shows_on_the_live_screen_not_over_it() {
    let addr = server(ggrok_server::Config::new("localhost")).await;
    let port = origin().await.to_string();
    let mut cmd = ggrok_http(addr, &port, "logged", &[]);
    cmd.env("RUST_LOG", "ggrok_tunnel::client=info");
    let mut t = Terminal::spawn(cmd);
    // The engine's "online" line, after the screen's URL.
    t.wait_for(&format!("http://logged.localhost:{}", addr.port()))
        .await;
    t.wait_for("ggrok_tunnel::client: online").await;
    assert!(
        !t.screen.contains("\x1b[32m INFO"),
        "the log was written as it came: {:?}",
        t.screen
    );
    t.child.kill().await.unwrap();
}

/// The CLI runs where no D-Bus library is installed (slim containers, minimal servers): libdbus
/// is built in, and nothing else beyond the C runtime is loaded.
#[cfg(target_os = "linux")]
#[test]
fn the_binary_needs_no_shared_library_beyond_the_c_runtime() {
    let out = std::process::Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_ggrok"))
        .output()
        .expect("ldd runs");
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{libs}");
    for line in libs.lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let c_runtime = [
            "linux-vdso",
            "libc.so",
            "libm.so",
            "libgcc_s.so",
            "ld-linux",
        ]
        .iter()
        .any(|lib| name.contains(lib));
        assert!(c_runtime, "the CLI links {name}: {libs}");
    }
}

/// A call to the inspector's API at `at`: status and JSON body.
async fn api(
    at: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let url = format!("http://{at}{path}");
    let req = match method {
        "POST" => client
            .post(url)
            .header("content-type", "application/json")
            .body(body.unwrap_or_default().to_string()),
        "DELETE" => client.delete(url),
        _ => client.get(url),
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// ngrok's agent API: `POST /api/tunnels` starts a tunnel on the running ggrok's server (HTTP or
/// TCP), answered once it is online; `DELETE /api/tunnels/{name}` stops one. Neither ends the
/// run, which lasts until Ctrl-C even with no tunnel left.
#[tokio::test]
async fn the_api_starts_and_stops_tunnels_as_ngroks_agent_does() {
    use serde_json::json;
    let addr = tcp_server().await;
    let port = origin().await.to_string();
    let mut child = ggrok_http(addr, &port, "main", &[]).spawn().unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
    let at: std::net::SocketAddr = stderr_line(&mut err, "ggrok: inspector on http://")
        .await
        .parse()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    out.next_line().await.unwrap().unwrap();

    let (status, t) = api(
        at,
        "POST",
        "/api/tunnels",
        Some(json!({"name": "extra", "addr": port, "proto": "http", "subdomain": "extra", "inspect": true})),
    )
    .await;
    assert_eq!(status, 201, "{t}");
    let extra_url = format!("http://extra.localhost:{}", addr.port());
    assert_eq!(t["public_url"], extra_url, "{t}");
    assert_eq!(t["name"], "extra");
    assert_eq!(
        out.next_line().await.unwrap().unwrap(),
        format!("extra {extra_url}")
    );
    assert!(raw_get(addr, "extra.localhost", "/")
        .await
        .ends_with("hello"));
    let line = out.next_line().await.unwrap().unwrap();
    assert!(
        line.starts_with("extra ") && line.contains(" GET / 200 "),
        "{line}"
    );

    for (body, says) in [
        (json!({"name": "extra", "addr": port}), "is running"),
        (
            json!({"name": "x", "addr": port, "proto": "udp"}),
            "http or tcp",
        ),
        (json!({"name": "x", "addr": "nope"}), "addr"),
        (json!({"addr": port}), "name"),
    ] {
        let (status, e) = api(at, "POST", "/api/tunnels", Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert!(e["msg"].as_str().unwrap().contains(says), "{body}: {e}");
    }

    // A page of another origin cannot start one (nor a rebinding name reach the API at all).
    let refused = reqwest::Client::new()
        .post(format!("http://{at}/api/tunnels"))
        .header("content-type", "application/json")
        .header("origin", "http://evil.example")
        .body(json!({"name": "evil", "addr": "22"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);

    let echo = ggrok_test_support::origin::tcp_echo().await.to_string();
    let (status, t) = api(
        at,
        "POST",
        "/api/tunnels",
        Some(json!({"name": "ssh", "addr": echo, "proto": "tcp"})),
    )
    .await;
    assert_eq!(status, 201, "{t}");
    assert_eq!(t["proto"], "tcp");
    let public: u16 = t["public_url"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(tcp_exchange(public, b"ping").await, b"ping");
    let (_, list) = api(at, "GET", "/api/tunnels", None).await;
    let names: Vec<&str> = list["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["command_line", "extra", "ssh"]);

    // Stopped, each is gone from the server and the list; the run goes on with none left.
    for name in ["extra", "command_line", "ssh"] {
        let (status, _) = api(at, "DELETE", &format!("/api/tunnels/{name}"), None).await;
        assert_eq!(status, 204, "{name}");
    }
    // Whichever ends last, the API's stops do not end the run.
    let mut stopped = Vec::new();
    while stopped.len() < 3 {
        let line = tokio::time::timeout(Duration::from_secs(10), err.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("stderr open");
        if line.ends_with("stopped") {
            stopped.push(line);
        }
    }
    stopped.sort();
    assert_eq!(
        stopped,
        [
            "ggrok: extra: stopped",
            "ggrok: ssh: stopped",
            "ggrok: stopped"
        ]
    );
    assert!(raw_get(addr, "extra.localhost", "/")
        .await
        .starts_with("HTTP/1.1 404"));
    let (status, _) = api(at, "DELETE", "/api/tunnels/extra", None).await;
    assert_eq!(status, 404);
    let (status, t) = api(
        at,
        "POST",
        "/api/tunnels",
        Some(json!({"name": "again", "addr": port})),
    )
    .await;
    assert_eq!(status, 201, "{t}");
    assert!(child.try_wait().unwrap().is_none(), "still running");
    ggrok_test_support::process::interrupt(child.id().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
