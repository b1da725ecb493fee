//! Certificates on demand over ACME (TLS-ALPN-01), end to end against pebble, the ACME test
//! server (Debian package `pebble`), with its DNS test server resolving every name to 127.0.0.1.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    sync::Arc,
    time::Duration,
};

use common::{
    eventually, origin::Origin, server::config, tls::https_get, tunnels::tunnel_with,
    until_listening,
};
use ggrok_server::{
    acme::{Acme, AcmeSettings},
    Config,
};
use ggrok_tunnel::TunnelConfig;
use tokio::{net::TcpListener, process::Command};

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_issued_on_demand_for_the_apex_and_live_tunnels() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| -> PathBuf { dir.path().join(name) };

    // pebble's own API certificate.
    let api =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(path("api.pem"), api.cert.pem()).unwrap();
    std::fs::write(path("api.key"), api.signing_key.serialize_pem()).unwrap();

    // The ggrok listener comes first: pebble validates TLS-ALPN-01 on its port.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ggrok_addr = listener.local_addr().unwrap();
    let (acme_port, mgmt_port, dns_port, dns_mgmt_port) = (
        free_tcp_port(),
        free_tcp_port(),
        free_udp_port(),
        free_tcp_port(),
    );
    let pebble_config = serde_json::json!({ "pebble": {
        "listenAddress": format!("127.0.0.1:{acme_port}"),
        "managementListenAddress": format!("127.0.0.1:{mgmt_port}"),
        "certificate": path("api.pem"), "privateKey": path("api.key"),
        "httpPort": ggrok_addr.port(), "tlsPort": ggrok_addr.port(),
        "ocspResponderURL": "", "externalAccountBindingRequired": false,
    }});
    std::fs::write(path("pebble.json"), pebble_config.to_string()).unwrap();

    let _dns = Command::new("pebble-challtestsrv")
        .args([
            "-dns01",
            &format!("127.0.0.1:{dns_port}"),
            "-http01",
            "",
            "-https01",
            "",
            "-tlsalpn01",
            "",
        ])
        .args([
            "-management",
            &format!("127.0.0.1:{dns_mgmt_port}"),
            "-defaultIPv4",
            "127.0.0.1",
            "-defaultIPv6",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pebble-challtestsrv (apt-get install pebble)");
    let _pebble = Command::new("pebble")
        .arg("-config")
        .arg(path("pebble.json"))
        .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("pebble (apt-get install pebble)");
    until_listening(acme_port).await;
    until_listening(mgmt_port).await;
    until_listening(dns_mgmt_port).await;

    let acme = Acme::new(AcmeSettings {
        directory: format!("https://localhost:{acme_port}/dir"),
        contact: vec!["mailto:ops@example.com".into()],
        cache_dir: path("cache"),
        directory_root: Some(path("api.pem")),
    })
    .unwrap();
    let server = ServerWith(Arc::clone(&acme));
    let config = Config {
        tls: Some(acme.server_config()),
        acme: Some(acme.clone()),
        ..config()
    };
    tokio::spawn(ggrok_server::run(listener, config, std::future::pending()));

    // The apex certificate is ordered at start.
    eventually(Duration::from_secs(60), || async {
        server.has("localhost").then_some(())
    })
    .await;
    // pebble's issuing root, for our clients to trust.
    let api_pem = api.cert.pem();
    let mgmt = format!("127.0.0.1:{mgmt_port}").parse().unwrap();
    let (status, root) = https_get(mgmt, "localhost", &api_pem, "/roots/0")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let root_pem = String::from_utf8(root.to_vec()).unwrap();
    std::fs::write(path("root.pem"), &root_pem).unwrap();

    // A client over wss:// with the issued certificate.
    let origin = Origin::start().await;
    let mut c = TunnelConfig::new(
        format!("https://localhost:{}", ggrok_addr.port()),
        origin.port(),
    );
    c.subdomain = Some("app".into());
    c.ca_cert = Some(path("root.pem"));
    let (_t, url) = tunnel_with(c).await;
    assert_eq!(url, format!("https://app.localhost:{}", ggrok_addr.port()));

    // A name that is no tunnel is never ordered; the live tunnel's name is, on first contact.
    assert!(https_get(ggrok_addr, "ghost.localhost", &root_pem, "/")
        .await
        .is_err());
    let (status, body) = eventually(Duration::from_secs(60), || {
        let root_pem = root_pem.clone();
        async move {
            https_get(ggrok_addr, "app.localhost", &root_pem, "/echo")
                .await
                .ok()
        }
    })
    .await;
    assert_eq!((status, &body[..]), (200, &b""[..]));
    assert!(
        !server.has("ghost.localhost"),
        "names of no tunnel must not be ordered"
    );
    assert!(Path::new(&path("cache/app.localhost.cert.json")).exists());
}

struct ServerWith(Arc<Acme>);

impl ServerWith {
    fn has(&self, name: &str) -> bool {
        self.0.names().iter().any(|n| n == name)
    }
}
