//! "Listening on this machine": the TCP ports local services listen on, for the Expose form's
//! port picker. The `listeners` crate matches sockets to the processes this user may inspect;
//! on Linux the socket table (`procfs`) adds the ports of other users' processes, shown
//! without a name, since an unprivileged user cannot see who owns them.

use std::{collections::BTreeMap, net::SocketAddr};

use serde::Serialize;

/// One listening port as the picker shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListeningPort {
    pub port: u16,
    /// Loopback only, rather than all (or some) interfaces.
    pub loopback: bool,
    /// `None` when another user's process owns the socket.
    pub pid: Option<u32>,
    /// `None` when another user's process owns the socket.
    pub process: Option<String>,
    /// A saved tunnel already forwards to this port.
    pub exposed: bool,
}

/// Why the socket table could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot list listening ports: {0}")]
pub struct ListeningError(String);

/// A listening TCP socket whose owner this user can see.
struct Owned {
    addr: SocketAddr,
    pid: u32,
    name: String,
}

/// TCP ports in LISTEN state, one entry per port (IPv4 and IPv6 sockets merged), newest
/// process first (highest pid, the best the socket table says about age), then the ports whose
/// owner is not visible. Ports of process `skip_pid` (ggrok itself: its embedded server) are
/// left out; `exposed` marks ports saved tunnels forward to.
pub fn listening(skip_pid: u32, exposed: &[u16]) -> Result<Vec<ListeningPort>, ListeningError> {
    let owned = listeners::get_all()
        .map_err(|e| ListeningError(e.to_string()))?
        .into_iter()
        .filter(|l| {
            l.protocol == listeners::Protocol::TCP && l.state == listeners::SocketState::Listen
        })
        .map(|l| Owned {
            addr: l.socket,
            pid: l.process.pid,
            name: l.process.name,
        })
        .collect();
    Ok(merge(owned, socket_table()?, skip_pid, exposed))
}

/// Every listening TCP socket, whoever owns it.
#[cfg(target_os = "linux")]
fn socket_table() -> Result<Vec<SocketAddr>, ListeningError> {
    let err = |e: procfs::ProcError| ListeningError(e.to_string());
    let v4 = procfs::net::tcp().map_err(err)?;
    // A kernel without IPv6 has no tcp6 table.
    let v6 = procfs::net::tcp6().unwrap_or_default();
    Ok(v4
        .into_iter()
        .chain(v6)
        .filter(|e| e.state == procfs::net::TcpState::Listen)
        .map(|e| e.local_address)
        .collect())
}

/// Elsewhere `listeners` is all there is.
#[cfg(not(target_os = "linux"))]
fn socket_table() -> Result<Vec<SocketAddr>, ListeningError> {
    Ok(Vec::new())
}

/// The picker's list from the sockets with a visible owner and the whole table.
fn merge(
    owned: Vec<Owned>,
    table: Vec<SocketAddr>,
    skip_pid: u32,
    exposed: &[u16],
) -> Vec<ListeningPort> {
    let own: Vec<u16> = owned
        .iter()
        .filter(|o| o.pid == skip_pid)
        .map(|o| o.addr.port())
        .collect();
    let mut by_port: BTreeMap<u16, ListeningPort> = BTreeMap::new();
    let sockets = owned
        .into_iter()
        .filter(|o| o.pid != skip_pid)
        .map(|o| (o.addr, Some((o.pid, o.name))))
        .chain(table.into_iter().map(|addr| (addr, None)));
    for (addr, owner) in sockets {
        let port = addr.port();
        if own.contains(&port) {
            continue;
        }
        let loopback = addr.ip().is_loopback();
        match by_port.get_mut(&port) {
            // The table repeats the sockets `listeners` named; a named entry wins.
            Some(p) => {
                p.loopback &= loopback;
                if p.pid.is_none() {
                    if let Some((pid, name)) = owner {
                        p.pid = Some(pid);
                        p.process = Some(name);
                    }
                }
            }
            None => {
                let (pid, process) = owner.unzip();
                by_port.insert(
                    port,
                    ListeningPort {
                        port,
                        loopback,
                        pid,
                        process,
                        exposed: exposed.contains(&port),
                    },
                );
            }
        }
    }
    let mut out: Vec<_> = by_port.into_values().collect();
    // Named first, newest (highest pid) first; `None` sorts below every `Some`.
    out.sort_by(|a, b| b.pid.cmp(&a.pid).then(a.port.cmp(&b.port)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_a_listener_with_its_process_and_skips_its_own() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = std::process::id();
        let all = listening(0, &[port]).unwrap();
        let found = all.iter().find(|p| p.port == port).expect("our port");
        assert_eq!(found.pid, Some(me));
        assert!(found.loopback);
        assert!(found.exposed);
        assert!(!found.process.as_deref().unwrap_or("").is_empty());
        // A connected (not listening) socket is not a service.
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(all.iter().filter(|p| p.port == port).count(), 1);
        let others = listening(me, &[]).unwrap();
        assert!(others.iter().all(|p| p.pid != Some(me) && p.port != port));
    }

    #[test]
    fn a_port_without_a_visible_owner_is_listed_without_a_name() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let owned = vec![
            Owned {
                addr: addr("127.0.0.1:3000"),
                pid: 10,
                name: "node".into(),
            },
            Owned {
                addr: addr("[::1]:3000"),
                pid: 10,
                name: "node".into(),
            },
            Owned {
                addr: addr("127.0.0.1:7070"),
                pid: 99,
                name: "ggrok".into(),
            },
        ];
        let table = vec![
            addr("127.0.0.1:3000"),
            addr("[::1]:3000"),
            addr("127.0.0.1:7070"),
            addr("0.0.0.0:5432"),
            addr("[::]:5432"),
        ];
        let out = merge(owned, table, 99, &[5432]);
        assert_eq!(
            out,
            vec![
                ListeningPort {
                    port: 3000,
                    loopback: true,
                    pid: Some(10),
                    process: Some("node".into()),
                    exposed: false
                },
                ListeningPort {
                    port: 5432,
                    loopback: false,
                    pid: None,
                    process: None,
                    exposed: true
                },
            ]
        );
    }

    /// As root: a port of root's, listed by a child running as `nobody`, who may not see
    /// whose it is. Elsewhere there is no other user to ask for.
    #[cfg(target_os = "linux")]
    #[test]
    fn another_users_port_is_listed_by_an_unprivileged_user() {
        use std::os::unix::{fs::MetadataExt, process::CommandExt};
        if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
            eprintln!("skipped: needs root to run a child as another user");
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "listening::tests::child_prints_the_listening_ports",
                "--ignored",
                "--nocapture",
            ])
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("PORT {port} ")))
            .unwrap_or_else(|| panic!("port {port} not listed:\n{stdout}"));
        assert_eq!(line, format!("PORT {port} None None"));
    }

    /// The child of the test above.
    #[test]
    #[ignore = "run by another_users_port_is_listed_by_an_unprivileged_user"]
    fn child_prints_the_listening_ports() {
        for p in listening(0, &[]).unwrap() {
            println!("PORT {} {:?} {:?}", p.port, p.pid, p.process);
        }
    }
}
