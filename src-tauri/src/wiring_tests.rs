//! Command wiring through Tauri's mock runtime: the real `builder`, real IPC requests from a
//! `tauri://localhost` webview, the real state over the embedded server and a real origin.

use std::{sync::mpsc, sync::Arc, time::Duration};

use ggrok_tunnel::{
    saved::{Store, FILE_NAME},
    tokens::Secrets,
};
use serde_json::{json, Value};
use tauri::async_runtime::block_on as rt;
use tauri::{
    ipc::{CallbackFn, InvokeBody},
    test::{get_ipc_response, mock_builder, mock_context, noop_assets, MockRuntime, INVOKE_KEY},
    webview::InvokeRequest,
    Listener, WebviewWindow, WebviewWindowBuilder,
};

use crate::{
    builder, forward_events,
    state::AppState,
    test_support::{get, Origin, TestServer},
    tunnels::Manager,
    EVENT_TUNNEL,
};

fn invoke(w: &WebviewWindow<MockRuntime>, cmd: &str, args: Value) -> Result<Value, Value> {
    get_ipc_response(
        w,
        InvokeRequest {
            cmd: cmd.into(),
            callback: CallbackFn(0),
            error: CallbackFn(1),
            url: "tauri://localhost".parse().unwrap(),
            body: InvokeBody::Json(args),
            headers: Default::default(),
            invoke_key: INVOKE_KEY.to_string(),
        },
    )
    .map(|b| b.deserialize::<Value>().unwrap())
}

/// The app's state over the file in `dir` and `server`, the real command builder on Tauri's mock
/// runtime, and its events forwarded as the app forwards them.
fn wired(dir: &std::path::Path, server: &TestServer) -> (Arc<AppState>, tauri::App<MockRuntime>) {
    let (store, warning) = Store::load(dir.join(FILE_NAME));
    let state = Arc::new(AppState::new(
        store,
        warning,
        Secrets::in_memory(),
        Manager::new(),
        server.url.clone(),
    ));
    let app = builder(mock_builder(), state.clone())
        .build(mock_context(noop_assets()))
        .unwrap();
    let handle = app.handle().clone();
    rt(async { forward_events(&handle, state.clone()) });
    (state, app)
}

#[test]
fn commands_drive_a_real_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let server = rt(TestServer::start());
    let origin = rt(Origin::start());
    let (_state, app) = wired(dir.path(), &server);
    let w = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    app.listen_any(EVENT_TUNNEL, move |e| {
        let _ = tx.send(serde_json::from_str(e.payload()).unwrap());
    });

    let info = invoke(&w, "app_info", json!({})).unwrap();
    assert_eq!(info["builtinServerUrl"], server.url);

    // Typed errors reach the page as { kind, message, field }.
    let bad = invoke(
        &w,
        "expose",
        json!({"input": {"serverId": "local", "localPort": 70000}}),
    )
    .unwrap_err();
    assert_eq!(
        (bad["kind"].as_str(), bad["field"].as_str()),
        (Some("invalid"), Some("port"))
    );

    let t = invoke(
        &w,
        "expose",
        json!({"input": {"serverId": "local", "subdomain": "wired", "localHost": "127.0.0.1", "localPort": origin.port}}),
    )
    .unwrap();
    let url = format!("http://wired.localhost:{}", server.port);
    assert_eq!(
        t["status"],
        json!({"state": "online", "url": url, "name": "wired"})
    );
    let id = t["id"].as_str().unwrap().to_owned();

    let (status, body) = rt(get(server.port, "wired.localhost", "/via/ipc"));
    assert_eq!((status, body.as_str()), (200, "origin saw /via/ipc"));
    // The traffic event reaches listeners.
    let ev = loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("traffic event");
        if ev["type"] == "traffic" {
            break ev;
        }
    };
    assert_eq!(ev["tunnelId"], id.as_str());
    assert_eq!(ev["exchange"]["path"], "/via/ipc");

    let rows = invoke(&w, "list_traffic", json!({"id": id})).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1);
    let xid = rows[0]["id"].as_u64().unwrap();
    let detail = invoke(&w, "get_exchange", json!({"id": id, "exchange": xid})).unwrap();
    assert_eq!(detail["responseBody"]["text"], "origin saw /via/ipc");
    let replayed = invoke(&w, "replay", json!({"id": id, "exchange": xid})).unwrap();
    assert_eq!(replayed["path"], "/via/ipc");
    assert_eq!(origin.hits(), 2);
    // The count is kept by the tunnel's event task; its traffic event follows the increment.
    loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the replay's traffic event");
        if ev["type"] == "traffic" {
            break;
        }
    }

    let listed = invoke(&w, "list_tunnels", json!({})).unwrap();
    assert_eq!(listed[0]["requests"], 2);

    let stopped = invoke(&w, "stop_tunnel", json!({"id": id})).unwrap();
    assert_eq!(stopped["status"], json!({"state": "stopped"}));
    assert_eq!(rt(get(server.port, "wired.localhost", "/")).0, 404);
    invoke(&w, "delete_tunnel", json!({"id": id})).unwrap();
    assert_eq!(invoke(&w, "list_tunnels", json!({})).unwrap(), json!([]));
    let missing = invoke(&w, "start_tunnel", json!({"id": id})).unwrap_err();
    assert_eq!(missing["kind"], "notFound");

    // Servers: the token never comes back unmasked.
    let s = invoke(
        &w,
        "save_server",
        json!({"input": {"name": "work", "url": "https://tunnel.example.com", "token": "abcdefghijklmnop"}}),
    )
    .unwrap();
    assert_eq!(s["tokenMasked"], "abcd****");
    let all = invoke(&w, "list_servers", json!({})).unwrap().to_string();
    assert!(!all.contains("abcdefghijklmnop"));
}

#[test]
fn commands_drive_a_tcp_tunnel() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let server = rt(TestServer::start());
    // A local service that echoes (the manager's local-port check connects too).
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let local_port = local.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in local.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = s.read(&mut buf) {
                    let _ = s.write_all(&buf[..n]);
                }
            });
        }
    });
    let (_state, app) = wired(dir.path(), &server);
    let w = WebviewWindowBuilder::new(&app, "main", Default::default())
        .build()
        .unwrap();
    let (tx, rx) = mpsc::channel::<Value>();
    app.listen_any(EVENT_TUNNEL, move |e| {
        let _ = tx.send(serde_json::from_str(e.payload()).unwrap());
    });

    let bad = invoke(
        &w,
        "expose",
        json!({"input": {"serverId": "local", "kind": "tcp", "localPort": local_port, "remotePort": 0}}),
    )
    .unwrap_err();
    assert_eq!(bad["field"], "remotePort");
    let t = invoke(
        &w,
        "expose",
        json!({"input": {"serverId": "local", "kind": "tcp", "localHost": "127.0.0.1", "localPort": local_port}}),
    )
    .unwrap();
    assert_eq!(t["kind"], "tcp");
    assert_eq!(t["status"]["state"], "online");
    let url = t["status"]["url"].as_str().unwrap().to_owned();
    let port: u16 = url
        .strip_prefix("tcp://localhost:")
        .expect(&url)
        .parse()
        .unwrap();
    let id = t["id"].as_str().unwrap().to_owned();
    // No page to open for a TCP tunnel.
    assert_eq!(
        invoke(&w, "open_url", json!({"id": id})).unwrap_err()["kind"],
        "system"
    );

    let mut visitor = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    visitor.write_all(b"hello").unwrap();
    let mut back = [0u8; 5];
    visitor.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello");
    drop(visitor);
    // The connection reaches the window as it opens and as it ends.
    let ended = loop {
        let ev = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("connection event");
        if ev["type"] == "connection" && !ev["connection"]["end"].is_null() {
            break ev;
        }
    };
    assert_eq!(ended["tunnelId"], id.as_str());
    let c = &ended["connection"];
    assert_eq!(
        (c["bytesUp"].as_u64(), c["bytesDown"].as_u64()),
        (Some(5), Some(5))
    );
    assert_eq!(c["endKind"], "closed");
    assert!(c["from"].as_str().unwrap().starts_with("127.0.0.1:"));
    let rows = invoke(&w, "list_connections", json!({"id": id})).unwrap();
    assert_eq!(rows, json!([c]));
    let listed = invoke(&w, "list_tunnels", json!({})).unwrap();
    assert_eq!(listed[0]["connections"], 1);
    invoke(&w, "delete_tunnel", json!({"id": id})).unwrap();
}

/// The UI is dark only; the window asks GTK for its dark variant too, or WebKitGTK draws native
/// parts (the open list of a `<select>`, scrollbars) light on the dark page.
#[test]
fn the_window_asks_for_the_dark_theme() {
    let conf: Value = serde_json::from_str(include_str!("../tauri.conf.json")).unwrap();
    let windows = conf["app"]["windows"].as_array().unwrap();
    let main = windows
        .iter()
        .find(|w| w["label"] == crate::MAIN_WINDOW)
        .expect("main window in tauri.conf.json");
    assert_eq!(main["theme"], "Dark");
}

/// A tunnel that comes online outside a start (late, or under a new name after a reconnect)
/// has the name the server gave it remembered all the same: the events forwarder saves it.
#[test]
fn a_name_given_outside_a_start_is_remembered() {
    use ggrok_tunnel::{
        saved::{SavedTunnel, BUILTIN_SERVER_ID},
        LocalTarget, Status, TunnelKind,
    };
    let dir = tempfile::tempdir().unwrap();
    let server = rt(TestServer::start());
    let origin = rt(Origin::start());
    let path = dir.path().join(FILE_NAME);
    Store::load(&path)
        .0
        .update(|d| {
            d.tunnels.push(SavedTunnel::new(
                "late".into(),
                BUILTIN_SERVER_ID.into(),
                "127.0.0.1".into(),
                origin.port,
            ))
        })
        .unwrap();
    let (state, _app) = wired(dir.path(), &server);
    let mut changes = state.subscribe_changes();
    let spec = crate::tunnels::Spec {
        kind: TunnelKind::Http,
        server: server.url.clone(),
        token: None,
        subdomain: None,
        given: true,
        local: LocalTarget::new("127.0.0.1", origin.port),
        client_id: None,
        basic_auth: None,
        allow_ips: Vec::new(),
    };
    // Started past `AppState::start`, which remembers what it sees itself.
    rt(state.manager().start("late", spec)).unwrap();
    rt(async { tokio::time::timeout(Duration::from_secs(10), changes.recv()).await })
        .expect("the name is saved in time")
        .unwrap();
    let Status::Online { name, .. } = state.tunnel("late").unwrap().status else {
        panic!("online")
    };
    assert_eq!(
        Store::load(&path).0.data().tunnels[0].given_name,
        Some(name)
    );
    rt(state.manager().stop_all());
}
