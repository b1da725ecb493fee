//! "Listening on this machine": the TCP ports local services listen on, for the Expose form's
//! port picker. The socket table comes from the `listeners` crate; ports of processes this user
//! may not inspect are simply not in it.

use std::collections::BTreeMap;

use serde::Serialize;

/// One listening port as the picker shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListeningPort {
    /// TCP port.
    pub port: u16,
    /// Whether it listens on loopback only (else on all or some interfaces).
    pub loopback: bool,
    /// Owning process id.
    pub pid: u32,
    /// Owning process name.
    pub process: String,
    /// Whether a saved tunnel already forwards to this port.
    pub exposed: bool,
}

/// Why the socket table could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot list listening ports: {0}")]
pub struct ListeningError(String);

/// TCP ports in LISTEN state, one entry per port (IPv4 and IPv6 sockets merged), newest
/// process first (highest pid, the best the socket table says about age). Sockets of process
/// `skip_pid` (ggrok itself: its embedded server) are left out; `exposed` marks ports saved
/// tunnels forward to.
pub fn listening(skip_pid: u32, exposed: &[u16]) -> Result<Vec<ListeningPort>, ListeningError> {
    let all = listeners::get_all().map_err(|e| ListeningError(e.to_string()))?;
    let mut by_port: BTreeMap<u16, ListeningPort> = BTreeMap::new();
    for l in all {
        if l.protocol != listeners::Protocol::TCP
            || l.state != listeners::SocketState::Listen
            || l.process.pid == skip_pid
        {
            continue;
        }
        let port = l.socket.port();
        let loopback = l.socket.ip().is_loopback();
        by_port
            .entry(port)
            .and_modify(|p| p.loopback &= loopback)
            .or_insert_with(|| ListeningPort {
                port,
                loopback,
                pid: l.process.pid,
                process: l.process.name.clone(),
                exposed: exposed.contains(&port),
            });
    }
    let mut out: Vec<_> = by_port.into_values().collect();
    out.sort_by(|a, b| b.pid.cmp(&a.pid).then(a.port.cmp(&b.port)));
    Ok(out)
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
        assert_eq!(found.pid, me);
        assert!(found.loopback);
        assert!(found.exposed);
        assert!(!found.process.is_empty());
        // A connected (not listening) socket is not a service.
        let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(all.iter().filter(|p| p.port == port).count(), 1);
        let others = listening(me, &[]).unwrap();
        assert!(others.iter().all(|p| p.pid != me && p.port != port));
    }
}
