//! `ggrok http` towards local services that are not plain HTTP/1.1: HTTPS with a self-signed
//! certificate (`--upstream-insecure`), gRPC over HTTP/2 (`--upstream-protocol http2`) reached by
//! a visitor on h2c, and the `Host` it is sent (`--host-header`).

use std::{process::Stdio, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

async fn server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = ggrok_server::Config::new("localhost");
    tokio::spawn(ggrok_server::run(listener, config, std::future::pending()));
    addr
}

/// `ggrok ARGS --server SERVER`, once its URL is printed.
async fn ggrok(server: std::net::SocketAddr, args: &[&str]) -> Child {
    let mut cmd = cli(args);
    cmd.args(["--server", &format!("http://{server}")]);
    online(cmd).await
}

/// `ggrok ARGS`, with no token or logging from the environment.
fn cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ggrok"));
    cmd.args(args)
        .env_remove("GGROK_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// `cmd` started, once it printed its URL.
async fn online(mut cmd: Command) -> Child {
    let mut child = cmd.spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), out.next_line())
        .await
        .expect("online in time")
        .unwrap();
    assert!(url.is_some(), "ggrok printed no URL");
    child
}

/// GET `/` for `host` through the server: status line and body.
async fn get(server: std::net::SocketAddr, host: &str) -> (String, String) {
    let mut s = TcpStream::connect(server).await.unwrap();
    s.write_all(format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.lines().next().unwrap_or_default().to_owned();
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// A local service answering every request with the `Host` it got; over TLS with a
/// self-signed certificate for `localhost` when `tls`.
async fn echo_host(tls: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = tls.then(|| {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(s).await {
                            answer_host(s).await;
                        }
                    }
                    None => answer_host(s).await,
                }
            });
        }
    });
    port
}

async fn answer_host<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(s: S) {
    let mut s = BufReader::new(s);
    let mut host = String::new();
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("host") {
                host = v.trim().to_owned();
            }
        }
    }
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{host}",
        host.len()
    );
    let _ = s.get_mut().write_all(resp.as_bytes()).await;
    let _ = s.get_mut().shutdown().await;
}

#[tokio::test]
async fn https_upstream_with_a_self_signed_certificate_needs_upstream_insecure() {
    let server = server().await;
    let port = echo_host(true).await;
    let target = format!("https://localhost:{port}");

    let _strict = ggrok(server, &["http", &target, "--subdomain", "strict"]).await;
    let (status, body) = get(server, "strict.localhost").await;
    assert!(status.contains(" 502 "), "{status}");
    assert!(
        body.contains("certificate is not trusted") && body.contains("--upstream-insecure"),
        "{body}"
    );

    let _dev = ggrok(
        server,
        &["http", &target, "--subdomain", "dev", "--upstream-insecure"],
    )
    .await;
    let (status, body) = get(server, "dev.localhost").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(
        body,
        format!("localhost:{port}"),
        "Host rewritten to the target"
    );
}

#[tokio::test]
async fn the_host_header_is_rewritten_preserved_or_set() {
    let server = server().await;
    let port = echo_host(false).await.to_string();
    let public = format!("{{}}.localhost:{}", server.port());
    for (sub, flags, want) in [
        ("rw", &[][..], format!("localhost:{port}")),
        (
            "pr",
            &["--host-header", "preserve"][..],
            public.replace("{}", "pr"),
        ),
        ("old", &["--keep-host"][..], public.replace("{}", "old")),
        (
            "val",
            &["--host-header", "app.test"][..],
            "app.test".to_owned(),
        ),
    ] {
        let mut args = vec!["http", &port, "--subdomain", sub];
        args.extend_from_slice(flags);
        let _child = ggrok(server, &args).await;
        let host = format!("{sub}.localhost:{}", server.port());
        let (status, body) = get(server, &host).await;
        assert!(status.contains(" 200 "), "{sub}: {status}");
        assert_eq!(body, want, "{sub}");
    }
}

/// A tunnel saved with an https:// target, `--upstream-insecure` and a Host value starts from
/// `ggrok start` speaking TLS to its local service with that Host, as `ggrok http` would.
#[tokio::test]
async fn a_saved_tunnel_keeps_how_it_reaches_its_local_service() {
    let server = server().await;
    let port = echo_host(true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = |args: &[&str]| {
        let mut cmd = cli(args);
        cmd.env("GGROK_CONFIG_DIR", dir.path())
            .env("GGROK_NO_KEYRING", "1");
        cmd
    };
    let saved = |args: &[&str]| {
        let mut cmd = config(args);
        async move {
            let out = cmd.output().await.unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        }
    };
    saved(&["config", "add-server", &format!("http://{server}")]).await;
    let target = format!("https://localhost:{port}");
    saved(&[
        "config",
        "add-tunnel",
        &target,
        "--subdomain",
        "secure",
        "--upstream-insecure",
        "--host-header",
        "app.test",
    ])
    .await;
    let list = saved(&["list"]).await;
    assert!(
        list.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with(&format!("secure  {target}  secure  "))),
        "{list}"
    );

    let _child = online(config(&["start", "secure"])).await;
    let (status, body) = get(server, "secure.localhost").await;
    assert!(status.contains(" 200 "), "{status}");
    assert_eq!(body, "app.test");
}

/// tonic's health service on h2c: unary calls and a server stream through the tunnel, the
/// visitor speaking HTTP/2 with prior knowledge.
#[tokio::test]
async fn grpc_works_end_to_end_over_http2() {
    let server = server().await;
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("ggrok.Test", tonic_health::ServingStatus::Serving)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
        service,
        tonic::transport::server::TcpIncoming::from(listener),
    ));
    let _child = ggrok(
        server,
        &[
            "http",
            &port,
            "--subdomain",
            "grpc",
            "--upstream-protocol",
            "http2",
        ],
    )
    .await;

    let origin = format!("http://grpc.localhost:{}", server.port());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{server}"))
        .unwrap()
        .origin(origin.parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let check = |service: &str| HealthCheckRequest {
        service: service.to_owned(),
    };

    let ok = client.check(check("ggrok.Test")).await.unwrap();
    assert_eq!(ok.into_inner().status(), ServingStatus::Serving);
    let missing = client.check(check("nope")).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");

    let mut watch = client
        .watch(check("ggrok.Test"))
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    reporter
        .set_service_status("ggrok.Test", tonic_health::ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.status(), ServingStatus::NotServing);

    // The status travels in trailers, after the message: seen here as HTTP/2 trailers.
    let io = TokioIo::new(TcpStream::connect(server).await.unwrap());
    let (mut h2, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    tokio::spawn(conn);
    // An empty HealthCheckRequest, framed: not compressed, length 0.
    let req = http::Request::post(format!("{origin}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let body = resp.into_body().collect().await.unwrap();
    let trailers = body.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    let message = body.to_bytes();
    assert_eq!(message[0], 0, "an uncompressed message came first");
}
