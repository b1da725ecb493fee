//! Several nodes as one server: the cluster's state in etcd (`--cluster`).
//!
//! Layout:
//! - [`store`]: tokens and reservations in etcd, copied locally and kept current by a watch,
//!   with the table of names and nodes.
//! - [`node`]: this node's lease, its name claims, and fencing.
//! - `hop`: visitors of tunnels held by another node, served through it; `plain`: the
//!   holder's side of a plain hopped request, relayed without the router.
//! - `lookup`: names the local copy misses, read from etcd (a claim the watch has not brought
//!   yet), within bounds.
//! - `shadow`: the ports of other nodes' TCP tunnels, listened on here too.
//! - `background`: the runtime on a thread of its own that does every etcd call.
//!
//! See docs/deploy.md ("A cluster") for running one, and DESIGN.md §7 for why etcd.

mod background;
pub(crate) mod hop;
mod lookup;
pub mod node;
pub(crate) mod plain;
mod shadow;
pub mod store;

pub use node::Node;
pub use store::EtcdStore;

pub(crate) use shadow::keep as shadow_tcp_ports;

/// Ends the local sessions whose names another node took over (their clients reconnected
/// there), as the cluster's table of names changes.
pub(crate) async fn end_taken_sessions(
    shared: std::sync::Arc<crate::state::Shared>,
    node: std::sync::Arc<Node>,
) {
    let mut changes = node.names_changes();
    while changes.changed().await.is_ok() {
        for name in shared.registry.live_names() {
            if node.taken_elsewhere(&name) {
                tracing::info!(%name, "tunnel taken over through another node");
                shared.registry.replaced_elsewhere(&name);
            }
        }
    }
}

/// Parses `etcd://HOST:PORT[,HOST:PORT...]` (the `--cluster` value) into the endpoints the etcd
/// client dials (`http://HOST:PORT`).
pub fn parse_endpoints(url: &str) -> Result<Vec<String>, String> {
    let bad =
        |why: &str| format!("cluster {url:?} should be etcd://HOST:PORT[,HOST:PORT...] ({why})");
    let hosts = url
        .trim()
        .strip_prefix("etcd://")
        .ok_or_else(|| bad("the scheme is etcd://"))?;
    let mut endpoints = Vec::new();
    for host in hosts.trim_end_matches('/').split(',') {
        let host = host.trim();
        let port = host
            .rsplit_once(':')
            .and_then(|(h, p)| (!h.is_empty()).then_some(p))
            .ok_or_else(|| bad("every member needs HOST:PORT"))?;
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad("every member needs a port from 1 to 65535"));
        }
        if host.contains(['/', '@', '?', '#']) {
            return Err(bad("a member is HOST:PORT only"));
        }
        endpoints.push(format!("http://{host}"));
    }
    Ok(endpoints)
}

/// The cluster secret (`--cluster-secret`): authenticates nodes to each other. Its `Debug`
/// never shows it.
#[derive(Clone)]
pub struct ClusterSecret(String);

impl ClusterSecret {
    /// Wraps `secret`.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the authentication between nodes only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(MASKED)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_urls_name_etcd_members() {
        assert_eq!(
            parse_endpoints("etcd://127.0.0.1:2379").unwrap(),
            ["http://127.0.0.1:2379"]
        );
        assert_eq!(
            parse_endpoints("etcd://a:1,b:2, c:3").unwrap(),
            ["http://a:1", "http://b:2", "http://c:3"]
        );
        for bad in [
            "http://a:1",
            "etcd://a",
            "etcd://a:0",
            "etcd://a:x",
            "etcd://:1",
            "etcd://u@a:1",
            "etcd://a:1,",
        ] {
            assert!(parse_endpoints(bad).is_err(), "{bad}");
        }
        assert!(!format!("{:?}", ClusterSecret::new("hunter2")).contains("hunter2"));
    }
}
