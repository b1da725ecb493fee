//! Session life: reconnect after a server restart, in-flight requests on a dropped session,
//! liveness of a vanished client, authentication and bad input on the control endpoint.

use std::time::Duration;

use common::{
    origin::Origin,
    relay::Relay,
    server::{config, Server},
    tunnels::{name_of, tunnel, tunnel_with, wait_status},
    visitors::{get, until_gone, visitor},
};
use futures_util::{SinkExt, StreamExt};
use ggrok_server::{Config, Tokens};
use ggrok_tunnel::{
    protocol::{self, Heartbeat, RefusalKind},
    Backoff, Secret, Status, Tunnel, TunnelConfig,
};
use http::header;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message};

fn quick(server: &Server, port: u16) -> TunnelConfig {
    let mut c = TunnelConfig::new(server.url(), port);
    c.backoff = Backoff {
        min: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    c
}

#[tokio::test]
async fn reconnects_with_the_same_name_after_a_server_restart() {
    let server = Server::start(config()).await;
    let addr = server.addr;
    let origin = Origin::start().await;
    // A random name: the client must keep the one it was given.
    let (t, url) = tunnel_with(quick(&server, origin.port())).await;
    let name = name_of(&url);

    server.stop().await;
    let Status::Reconnecting { reason, .. } =
        wait_status(&t, |s| matches!(s, Status::Reconnecting { .. })).await
    else {
        unreachable!()
    };
    // The server said why in its Close frame.
    assert_eq!(
        reason,
        "the server ended the session: the server is shutting down"
    );
    let server = Server::start_at(addr, config()).await;
    let back = tokio::time::timeout(
        Duration::from_secs(5),
        wait_status(&t, |s| matches!(s, Status::Online { .. })),
    )
    .await
    .expect("client should be back online within 5 s");
    assert_eq!(
        back,
        Status::Online {
            url: url.clone(),
            name: name.clone()
        }
    );
    let r = get(&server, &name, "/echo")
        .body("again")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "again");
}

#[tokio::test]
async fn requests_in_flight_on_a_dropped_session_end_in_502() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let (t, _) = tunnel(&server, origin.port(), Some("inflight")).await;
    let pending = tokio::spawn(get(&server, "inflight", "/hang").send());
    origin.state.reached.notified().await;
    t.stop().await;
    let r = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("request must not hang")
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()[protocol::HEADER_ERROR], "tunnel_lost");
}

#[tokio::test]
async fn a_vanished_client_is_detected_and_its_name_freed() {
    let server = Server::start(Config {
        heartbeat: Heartbeat {
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(600),
        },
        reconnect_grace: Duration::ZERO,
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let relay = Relay::start(server.addr).await;
    let mut cfg = TunnelConfig::new(format!("http://{}", relay.addr), origin.port());
    cfg.subdomain = Some("vanish".into());
    let (_ghost, _) = tunnel_with(cfg).await;
    assert_eq!(
        get(&server, "vanish", "/echo")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The network stops delivering; nothing is closed.
    relay.pause();
    tokio::time::timeout(Duration::from_secs(10), until_gone(&server, "vanish"))
        .await
        .expect("server should notice the silent client");
    // A restarted client (new client id) may take the name.
    let (_new, url) = tunnel(&server, origin.port(), Some("vanish")).await;
    assert!(url.starts_with("http://vanish.localhost:"));
}

#[tokio::test]
async fn the_client_notices_a_silent_server_and_reconnects() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let relay = Relay::start(server.addr).await;
    let mut cfg = TunnelConfig::new(format!("http://{}", relay.addr), origin.port());
    cfg.heartbeat = Heartbeat {
        interval: Duration::from_millis(100),
        timeout: Duration::from_millis(600),
    };
    let (t, _) = tunnel_with(cfg).await;
    relay.pause();
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        wait_status(&t, |s| matches!(s, Status::Reconnecting { .. })),
    )
    .await
    .expect("client should notice the silent server");
    let Status::Reconnecting { reason, .. } = s else {
        unreachable!()
    };
    assert!(reason.contains("silent"), "{reason}");
}

#[tokio::test]
async fn tokens_are_required_when_configured() {
    let server = Server::start(Config {
        tokens: Tokens::from_plain(["right-token"]),
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    for token in [None, Some("wrong-token")] {
        let mut c = quick(&server, origin.port());
        c.token = token.map(Secret::new);
        let t = Tunnel::start(c).unwrap();
        match t.online().await {
            Err(Status::Failed { kind, .. }) => assert_eq!(kind, RefusalKind::Unauthorized),
            other => panic!("{token:?} should be refused, got {other:?}"),
        }
    }
    let mut c = quick(&server, origin.port());
    c.token = Some(Secret::new("right-token"));
    tunnel_with(c).await;
}

/// A hand-made connect request, so tests can send what no ggrok client would.
fn connect_request(server: &Server) -> http::Request<()> {
    let mut req = format!("ws://{}{}", server.addr, protocol::CONNECT_PATH)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert(protocol::HEADER_VERSION, protocol::PROTOCOL_VERSION.into());
    req
}

/// The handshake says how much credit per stream each side accepts (`ggrok-window`): the
/// server answers with its own, whatever the client said; a server configured as one from
/// before growing windows says nothing, as those do.
#[tokio::test]
async fn the_handshake_offers_the_stream_window_unless_the_server_is_an_old_one() {
    let offer = |resp: &http::Response<Option<Vec<u8>>>| {
        resp.headers()
            .get(protocol::HEADER_WINDOW)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    let server = Server::start(config()).await;
    let mut req = connect_request(&server);
    req.headers_mut()
        .insert(protocol::HEADER_WINDOW, protocol::MAX_STREAM_WINDOW.into());
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(offer(&resp), Some(protocol::MAX_STREAM_WINDOW.to_string()));

    let old = Server::start(Config {
        stream_window: protocol::STREAM_WINDOW,
        ..config()
    })
    .await;
    let mut req = connect_request(&old);
    req.headers_mut()
        .insert(protocol::HEADER_WINDOW, protocol::MAX_STREAM_WINDOW.into());
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(offer(&resp), None);
}

async fn refused(req: http::Request<()>) -> (u16, serde_json::Value) {
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap(),
            )
        }
        Ok(_) => panic!("connect should be refused"),
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[tokio::test]
async fn the_control_endpoint_refuses_bad_requests_clearly() {
    let server = Server::start(config()).await;

    let mut req = connect_request(&server);
    req.headers_mut()
        .insert(protocol::HEADER_VERSION, 99.into());
    let (status, body) = refused(req).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (426, "version_mismatch")
    );

    let mut req = connect_request(&server);
    req.headers_mut()
        .insert(protocol::HEADER_SUBDOMAIN, "Not_A_Label".parse().unwrap());
    let (status, body) = refused(req).await;
    assert_eq!(
        (status, body["error"].as_str().unwrap()),
        (400, "invalid_name")
    );
    let mut req = connect_request(&server);
    req.headers_mut()
        .insert(protocol::HEADER_SUBDOMAIN, "a".repeat(64).parse().unwrap());
    assert_eq!(refused(req).await.1["error"], "invalid_name");
    // Not ASCII: refused, not treated as "no name asked" (which gets a random one).
    let mut req = connect_request(&server);
    req.headers_mut().insert(
        protocol::HEADER_SUBDOMAIN,
        http::HeaderValue::from_bytes("café".as_bytes()).unwrap(),
    );
    assert_eq!(refused(req).await.1["error"], "invalid_name");
    // Reserved in open mode: the operator's look-alikes and every punycode name.
    for name in ["www", "admin", "xn--pple-43d"] {
        let mut req = connect_request(&server);
        req.headers_mut()
            .insert(protocol::HEADER_SUBDOMAIN, name.parse().unwrap());
        let (status, body) = refused(req).await;
        assert_eq!(
            (status, body["error"].as_str().unwrap()),
            (403, "name_reserved"),
            "{name}"
        );
    }

    let mut req = connect_request(&server);
    req.headers_mut()
        .insert(header::ORIGIN, "https://evil.example".parse().unwrap());
    assert_eq!(refused(req).await.0, 400);

    // Not a WebSocket at all.
    let r = visitor()
        .get(format!("{}{}", server.url(), protocol::CONNECT_PATH))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert!(body["message"].as_str().unwrap().contains("WebSocket"));

    // Garbage instead of HTTP: an error response and a closed connection.
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"\x16\x03\x01 definitely not http\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"),
        "{out:?}"
    );

    // The server is unharmed.
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("fine")).await;
    assert_eq!(
        get(&server, "fine", "/echo").send().await.unwrap().status(),
        200
    );
    // Its landing page tells an anonymous visitor nothing about who is online.
    let landing = visitor().get(server.url()).send().await.unwrap();
    let landing = landing.text().await.unwrap();
    assert!(
        landing.contains("Tunnels are served at") && !landing.contains("online"),
        "{landing}"
    );
}

#[tokio::test]
async fn reserved_names_are_configurable() {
    let server = Server::start(Config {
        reserved_names: vec!["team-*".into()],
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("www")).await;
    let mut req = connect_request(&server);
    req.headers_mut()
        .insert(protocol::HEADER_SUBDOMAIN, "team-a".parse().unwrap());
    assert_eq!(refused(req).await.1["error"], "name_reserved");
}

#[tokio::test]
async fn malformed_and_oversized_frames_close_only_their_session() {
    let server = Server::start(Config {
        reconnect_grace: Duration::ZERO,
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let (_good, _) = tunnel(&server, origin.port(), Some("good")).await;

    let junk_frames = [
        Message::binary(vec![0xffu8; 64]), // not a frame header
        Message::binary(vec![0u8; 2 * protocol::MAX_MESSAGE]), // over the message limit
        Message::text("{\"hello\":1}"),    // text is not part of the protocol
    ];
    for (i, junk) in junk_frames.into_iter().enumerate() {
        let name = format!("bad{i}");
        let mut req = connect_request(&server);
        req.headers_mut()
            .insert(protocol::HEADER_SUBDOMAIN, name.parse().unwrap());
        let big = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(big), true)
            .await
            .unwrap();
        let _ = ws.send(junk).await;
        // The server closes the session: the stream ends (close frame, reset or EOF).
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "session {name} was not closed");
        tokio::time::timeout(Duration::from_secs(10), until_gone(&server, &name))
            .await
            .unwrap();
    }
    let r = get(&server, "good", "/echo")
        .body("unaffected")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "unaffected");
}

#[tokio::test]
async fn shutdown_lets_requests_in_flight_finish() {
    let server = Server::start(Config {
        drain_timeout: Duration::from_secs(30),
        ..config()
    })
    .await;
    let addr = server.addr;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("drain")).await;
    let pending = tokio::spawn(get(&server, "drain", "/hang").send());
    origin.state.reached.notified().await;

    let stopping = tokio::spawn(server.stop());
    // Draining: no new connections...
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("listener should close when shutdown begins");
    assert!(
        !stopping.is_finished(),
        "server must wait for the request in flight"
    );
    // ...but the request in flight completes.
    origin.state.gate.notify_one();
    let r = pending.await.unwrap().unwrap();
    assert_eq!(r.text().await.unwrap(), "released");
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn shutdown_cuts_requests_past_the_drain_deadline() {
    let server = Server::start(Config {
        drain_timeout: Duration::from_millis(200),
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let (_t, _) = tunnel(&server, origin.port(), Some("cut")).await;
    let pending = tokio::spawn(get(&server, "cut", "/hang").send());
    origin.state.reached.notified().await;
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown must not hang");
    let outcome = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("visitor must not hang");
    // Both ends are clean: the visitor connection is cut, or, when the session's end reaches
    // the request first, the visitor gets the 502 that says the tunnel went away.
    match outcome.unwrap() {
        Err(_) => {}
        Ok(r) => {
            assert_eq!(r.status(), 502, "a cut request must not look answered");
            assert_eq!(r.headers()[protocol::HEADER_ERROR], "tunnel_lost");
        }
    }
}

#[tokio::test]
async fn a_stopped_tunnel_gives_its_name_up_at_once() {
    // A long grace period: only a deliberate stop can free the name this fast.
    let server = Server::start(Config {
        reconnect_grace: Duration::from_secs(600),
        ..config()
    })
    .await;
    let origin = Origin::start().await;
    let (first, _) = tunnel(&server, origin.port(), Some("again")).await;
    first.stop().await;
    tokio::time::timeout(Duration::from_secs(10), until_gone(&server, "again"))
        .await
        .unwrap();
    // Another process (another client id) may take it right away.
    let (_second, url) = tunnel(&server, origin.port(), Some("again")).await;
    assert!(url.starts_with("http://again.localhost:"));
}

#[tokio::test]
async fn a_second_process_with_the_same_client_id_takes_over_and_the_first_stops() {
    let server = Server::start(config()).await;
    let origin = Origin::start().await;
    let mut cfg = quick(&server, origin.port());
    cfg.subdomain = Some("twin".into());
    cfg.client_id = Some("one-id-in-two-processes".into());
    let (first, url) = tunnel_with(cfg.clone()).await;
    let (second, again) = tunnel_with(cfg).await;
    assert_eq!(url, again);
    // The first does not take the tunnel back (the two would take turns forever): it stops,
    // saying why.
    let Status::Failed { message, .. } =
        wait_status(&first, |s| matches!(s, Status::Failed { .. })).await
    else {
        unreachable!()
    };
    assert!(
        message.contains("replaced by a new session of the same client"),
        "{message}"
    );
    assert!(matches!(*second.status().borrow(), Status::Online { .. }));
    let r = get(&server, "twin", "/echo")
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "still here");
}
