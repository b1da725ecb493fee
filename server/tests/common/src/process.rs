//! The real `ggrok-server` binary as a child process, and memory figures from `/proc`.

use std::{net::SocketAddr, path::Path};

/// The real `ggrok-server` binary on an ephemeral port, so its memory can be measured apart
/// from the test process (which runs client, origin and visitors). Killed on drop.
pub struct ServerBinary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl ServerBinary {
    /// Starts `binary` (the test's `env!("CARGO_BIN_EXE_ggrok-server")`) on a free port and
    /// waits until it listens.
    pub fn spawn(binary: &Path) -> ServerBinary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--domain",
                "localhost",
                "--db",
                ":memory:",
            ])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start ggrok-server");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .unwrap();
            if let Some(rest) = line.split("addr=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ServerBinary { child, addr }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its peak resident set size so far, in kB.
    pub fn peak_rss_kb(&self) -> u64 {
        proc_status_kb(&self.child.id().to_string(), "VmHWM")
    }
}

impl Drop for ServerBinary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `kB` field (`VmRSS`, `VmHWM`...) of `/proc/PID/status`; `pid` may be `"self"`.
pub fn proc_status_kb(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
}

/// Sends SIGINT to process `pid`, as Ctrl-C in its terminal would.
pub fn interrupt(pid: u32) {
    let sent = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success(), "kill -INT {pid}: {sent}");
}
